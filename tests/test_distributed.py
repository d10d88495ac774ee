"""DDP through torch.distributed.run: 2 CPU processes on gloo against one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exptorch.checkpoint import load_checkpoint
from exptorch.rundir import read_metrics

ARGS = [
    "run", "--dataset", "fashion-mnist-sample", "--device", "cpu", "--epochs", "2",
    "--batch-size", "64", "--limit-train-batches", "15", "--log-every", "5", "--seed", "11",
    "--momentum", "0.9", "--channels-last", "off",
]  # fmt: skip


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(expt, tmp_path: Path, plugins) -> None:
    single = expt(*ARGS, "--name", "single")
    assert single.returncode == 0, single.stderr
    ddp = expt(*ARGS, "--name", "ddp", "--nproc-per-node", "2", env={"OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr + ddp.stdout

    runs = tmp_path / "runs"
    # Only rank 0 wrote: one run folder, one line per metric, one checkpoint per epoch.
    assert sorted(p.name for p in runs.iterdir()) == ["ddp", "single"]
    assert ddp.stdout.count("epoch 2/2") == 1
    a, b = (read_metrics(runs / n / "metrics.jsonl") for n in ("single", "ddp"))
    assert [r["step"] for r in a] == [r["step"] for r in b]  # same global batch, same steps
    for x, y in zip(a, b, strict=True):
        for key in ("train_loss", "test_loss", "test_accuracy", "epoch_train_loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-3, abs=1e-3), (key, x, y)
    config = json.loads((runs / "ddp" / "config.json").read_text())["config"]
    assert config["nproc_per_node"] == 2 and config["seed"] == 11

    # The DDP checkpoint is a plain state dict that one process loads.
    ddp_ckpt = load_checkpoint(plugins, runs / "ddp" / "checkpoints" / "epoch-002.pt")
    one_ckpt = load_checkpoint(plugins, runs / "single" / "checkpoints" / "epoch-002.pt")
    assert list(ddp_ckpt.model_state) == list(one_ckpt.model_state)
    for key, value in one_ckpt.model_state.items():
        assert torch.allclose(ddp_ckpt.model_state[key], value, atol=1e-4), key


def test_global_batch_must_divide(expt) -> None:
    result = expt(*ARGS, "--batch-size", "63", "--name", "odd", "--nproc-per-node", "2",
                  env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--batch-size 63 is the global batch and must divide evenly" in result.stderr


@pytest.mark.parametrize(("given", "passed"), [(None, "1"), ("3", "3")])
def test_the_launcher_keeps_the_users_thread_count_or_gives_each_process_one(
    monkeypatch: pytest.MonkeyPatch, given: str | None, passed: str
) -> None:
    # N processes each starting all the CPU's threads oversubscribe it N times over
    import subprocess

    from exptorch import distributed

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command, env: calls.append((command, env)) or 0)
    if given is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", given)
    assert distributed.launch(2, ["run", "--epochs", "1"]) == 0
    ((command, env),) = calls
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "exptorch", "run", "--epochs", "1"]  # fmt: skip
    assert env["OMP_NUM_THREADS"] == passed
