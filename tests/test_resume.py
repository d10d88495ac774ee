"""``expt run --resume``, interrupts and NaN stops: exact continuation, real signals, real files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import exptorch
from conftest import EXPT
from exptorch import ExptError, Logger, hookimpl
from exptorch.checkpoint import checkpoint_files, latest_checkpoint, load_checkpoint
from exptorch.config import RunConfig, resolve_config
from exptorch.program import python_command
from exptorch.rundir import read_metrics
from exptorch.train import RunInterrupted, find_resume_point, run_experiment

SUFFIXES = [".pt", ".safetensors", ".full.pt"]
TIMING = ("images_per_second", "epoch_time")


def config(tmp_path: Path, name: str, **overrides) -> RunConfig:
    values = dict(
        dataset="fashion-mnist-sample", device="cpu", epochs=2, seed=7, momentum=0.9,
        runs_dir=str(tmp_path / "runs"), name=name, limit_train_batches=6,
        limit_eval_batches=1, log_every=2, batch_size=32,
    )  # fmt: skip
    values.update(overrides)
    return RunConfig(**values)


def resume(plugins, run: Path, trust: bool = False, **flags) -> Path:
    """What ``expt run --resume RUN [--flag value ...]`` does, in this process."""
    point = find_resume_point(plugins, run, trust=trust)
    resolved = resolve_config(
        {**flags}, explicit=list(flags), base=point.checkpoint.config,
        plugin_options=[opt for _, opt in plugins.options()],
    )  # fmt: skip
    return run_experiment(resolved, plugins, echo=lambda _: None, resume=point)


def final_state(plugins, run: Path) -> tuple[dict, dict]:
    checkpoint = load_checkpoint(plugins, latest_checkpoint(run, plugins), trust=True)
    return checkpoint.model_state, checkpoint.optimizer_state


def metrics_without_timing(run: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run / "metrics.jsonl")
    ]


def assert_identical(plugins, a: Path, b: Path) -> None:
    weights_a, optimizer_a = final_state(plugins, a)
    weights_b, optimizer_b = final_state(plugins, b)
    assert list(weights_a) == list(weights_b)
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    for index, state in optimizer_a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, optimizer_b["state"][index][key])
    assert metrics_without_timing(a) == metrics_without_timing(b)


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors"])
def test_two_epochs_equal_one_plus_a_resumed_one(plugins, tmp_path: Path, fmt: str) -> None:
    straight = run_experiment(
        config(tmp_path, "straight", checkpoint_format=fmt), plugins, echo=lambda _: None
    )
    first = run_experiment(
        config(tmp_path, "split", epochs=1, checkpoint_format=fmt), plugins, echo=lambda _: None
    )
    torch.manual_seed(12345)  # whatever the process did in between does not matter
    torch.rand(100)
    with open(first / "metrics.jsonl", "a") as fh:  # as if killed after logging step 8...
        fh.write(json.dumps({"step": 8, "epoch": 2, "train_loss": 9.9}) + "\n")
        fh.write('{"step": 9, "epo')  # ...in the middle of a line
    resumed = resume(plugins, first, epochs=2)
    assert resumed == first
    assert_identical(plugins, straight, resumed)
    assert [p.name for p in checkpoint_files(resumed / "checkpoints", SUFFIXES)] == [
        p.name for p in checkpoint_files(straight / "checkpoints", SUFFIXES)
    ]
    saved = json.loads((resumed / "config.json").read_text())
    assert saved["config"]["epochs"] == 2 and saved["resumed"][0]["from"].startswith("epoch-001")
    assert json.loads((resumed / "state.json").read_text())["state"] == "finished"


def test_config_json_records_what_the_run_used_and_each_resume(plugins, tmp_path: Path) -> None:
    """config.json: the settings, the command, the distribution and version of each plugin the
    run used; each resume adds when, from which checkpoint, on what device, by which command,
    and how many metric lines past the checkpoint it dropped."""
    first = run_experiment(config(tmp_path, "run", epochs=1), plugins, echo=lambda _: None)
    saved = json.loads((first / "config.json").read_text())
    assert saved["command"] == sys.argv and saved["config"]["name"] == "run"
    # the plugins of its device, dataset, loss, metric, optimizer, model, schedule and format
    used = ["devices", "fashion_mnist", "losses", "metrics", "optimizers", "quicknet"]
    assert sorted(saved["plugins"]) == [*used, "schedules", "state_dict"]
    source = {"distribution": "exptorch", "version": exptorch.__version__}
    assert saved["plugins"] and all(s == source for s in saved["plugins"].values())
    with open(first / "metrics.jsonl", "a") as fh:  # a line past the checkpoint
        fh.write(json.dumps({"step": 99, "epoch": 2, "train_loss": 9.9}) + "\n")
    resume(plugins, first, epochs=2)
    again = json.loads((first / "config.json").read_text())
    assert again["config"]["epochs"] == 2 and again["plugins"] == saved["plugins"]
    (entry,) = again["resumed"]
    assert entry.pop("from").startswith("epoch-001")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", entry.pop("time"))
    assert entry == {"device": "cpu", "command": sys.argv, "dropped_metrics": 1}


class StopAtStep(Logger):
    """Sends this process SIGTERM when the training loss of step ``at`` is logged."""

    at = 0

    def __init__(self, run) -> None:
        self.run = run

    def log_metrics(self, metrics, step) -> None:
        if step == self.at and "train_loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)


class StopPlugin:
    @hookimpl
    def register_loggers(self, register):
        register("stop-at-step", StopAtStep)


class Seen:
    """Records what RunContext says about the start of each process of a run."""

    def __init__(self) -> None:
        self.starts: list[tuple[int, bool]] = []

    @hookimpl
    def run_start(self, run):
        self.starts.append((run.start_epoch, run.resumed))


def test_sigterm_mid_epoch_then_resume_is_exact(make_plugins, tmp_path: Path) -> None:
    seen = Seen()
    plugins = make_plugins(("stop", StopPlugin()), ("seen", seen))
    straight = run_experiment(config(tmp_path, "straight"), plugins, echo=lambda _: None)

    StopAtStep.at = 8  # epoch 2, batch 2 of 6
    lines: list[str] = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as info:
        run_experiment(config(tmp_path, "cut", logger=["stop-at-step"]), plugins, echo=lines.append)
    assert info.value.exit_code == 128 + signal.SIGTERM
    # the run's handlers are gone: the process's own are back
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    cut = tmp_path / "runs" / "cut"
    assert "expt run --resume" in str(info.value)  # said once, in the error
    assert not any("--resume" in line for line in lines)
    state = json.loads((cut / "state.json").read_text())
    assert state["state"] == "interrupted" and state["epoch"] == 1
    assert state["checkpoint"] == "epoch-002-step-000008.pt"
    partial = load_checkpoint(plugins, cut / "checkpoints" / state["checkpoint"])
    assert partial.extra["position"]["batch"] == 2 and partial.step == 8

    StopAtStep.at = 0
    resumed = resume(plugins, cut)
    assert_identical(plugins, straight, resumed)
    # The partial checkpoint is gone once epoch 2 is complete.
    names = [p.name for p in checkpoint_files(cut / "checkpoints", SUFFIXES)]
    assert names == ["epoch-001.pt", "epoch-002.pt"]
    assert seen.starts == [(1, False), (1, False), (2, True)]


def test_sigterm_to_a_real_process_leaves_a_resumable_checkpoint(expt, tmp_path: Path) -> None:
    env = {**os.environ, "EXPT_DATA_DIR": str(tmp_path / "none"), "PYTHONUNBUFFERED": "1"}
    args = ["run", "--dataset", "fashion-mnist-sample", "--epochs", "2", "--batch-size", "16",
            "--device", "cpu", "--seed", "3", "--name", "t", "--log-every", "5",
            "--limit-eval-batches", "1", "--transform", "crop-flip",
            "--crop-flip-padding", "2"]  # fmt: skip
    child = subprocess.Popen(
        [*EXPT, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    metrics = tmp_path / "runs" / "t" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.stat().st_size > 0):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err
    # Said once, naming the program as it was run (python -m exptorch, not on PATH as expt).
    hint = "continue with: " + python_command() + " -m exptorch run --resume runs/t"
    assert hint in err and "--resume" not in out
    assert "Interrupted by SIGTERM" in err and "Traceback" not in err
    run = tmp_path / "runs" / "t"
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "interrupted"
    assert (run / "checkpoints" / state["checkpoint"]).is_file()

    checkpoint = f"runs/t/checkpoints/{state['checkpoint']}"  # a file works as well as the folder
    result = expt("run", "--resume", checkpoint, "--epochs", "1", "--limit-train-batches", "1")
    assert result.returncode == 0, result.stderr
    assert "resuming from epoch-001-step-" in result.stdout
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
    resumed = json.loads((run / "config.json").read_text())["config"]  # a plugin's option too
    assert resumed["transform"] == ["crop-flip"] and resumed["options"]["crop_flip_padding"] == 2


def test_resume_refuses_what_would_not_continue_the_same_run(plugins, tmp_path: Path) -> None:
    run = run_experiment(config(tmp_path, "r", epochs=2), plugins, echo=lambda _: None)
    with pytest.raises(ExptError, match="already trained 2 epoch"):
        resume(plugins, run)
    with pytest.raises(ExptError, match="--model cannot change"):
        resume(plugins, run, epochs=3, model="vgg16")
    with pytest.raises(ExptError, match="--batch-size cannot change"):
        resume(plugins, run, epochs=3, batch_size=8)
    with pytest.raises(ExptError, match="is not the newest checkpoint"):
        resume(plugins, run / "checkpoints" / "epoch-001.pt", epochs=3)
    with pytest.raises(ExptError, match="is not a run folder"):
        resume(plugins, tmp_path, epochs=3)
    with pytest.raises(ExptError, match="does not exist"):
        resume(plugins, tmp_path / "nope", epochs=3)


def quicknet(info) -> torch.nn.Module:
    from exptorch_plugins.networks import QuickNet

    return QuickNet(info.channels, info.height, info.width, info.num_classes)


class ModelPlugin:
    """Registers test models, each given as ``name=factory(info)``."""

    def __init__(self, **factories) -> None:
        self.factories = factories

    @hookimpl
    def register_models(self, register):
        for name, factory in self.factories.items():
            register(name, lambda info, _factory=factory, **_: _factory(info))


class NaNAfter(torch.nn.Module):
    """QuickNet whose output turns to NaN after ``n`` training steps."""

    def __init__(self, info, n: int) -> None:
        super().__init__()
        self.net = quicknet(info)
        self.n = n

    def forward(self, x):
        if self.training:
            self.n -= 1
        out = self.net(x)
        return out * float("nan") if self.n < 0 else out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(make_plugins, tmp_path: Path) -> None:
    plugins = make_plugins(("nan", ModelPlugin(**{"nan-after-8": lambda info: NaNAfter(info, 8)})))
    with pytest.raises(ExptError, match=r"training loss became nan at epoch 2, step 9") as info:
        run_experiment(config(tmp_path, "n", model="nan-after-8"), plugins, echo=lambda _: None)
    assert "last good checkpoint is epoch 1" in str(info.value)
    run = tmp_path / "runs" / "n"
    assert json.loads((run / "state.json").read_text())["state"] == "failed"
    assert [p.name for p in checkpoint_files(run / "checkpoints", SUFFIXES)] == ["epoch-001.pt"]
    weights = load_checkpoint(plugins, run / "checkpoints" / "epoch-001.pt").model_state
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_nan_stop_names_the_last_good_checkpoint_only_when_there_is_one(
    make_plugins, tmp_path: Path
) -> None:
    nan = types.SimpleNamespace(steps=2)  # NaN after this many training steps
    plugins = make_plugins(("nan", ModelPlugin(**{"nan-later": lambda i: NaNAfter(i, nan.steps)})))
    with pytest.raises(ExptError) as info:
        run_experiment(config(tmp_path, "a", model="nan-later"), plugins, echo=lambda _: None)
    assert str(info.value) == (
        "The training loss became nan at epoch 1, step 3, so the run stopped; "
        "lower --lr and start again."
    )
    nan.steps = 10**9
    run_experiment(config(tmp_path, "b", model="nan-later"), plugins, echo=lambda _: None)
    nan.steps = 0  # the resumed run's first step
    with pytest.raises(ExptError) as info:
        resume(plugins, tmp_path / "runs" / "b", epochs=3)
    assert str(info.value) == (
        "The training loss became nan at epoch 3, step 13, so the run stopped; "
        "the last good checkpoint is epoch 2; lower --lr and start again."
    )


class DropoutNet(torch.nn.Module):
    """QuickNet behind a dropout layer: every training step draws from torch's generator."""

    def __init__(self, info) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.3)
        self.net = quicknet(info)

    def forward(self, x):
        return self.net(self.drop(x))


def test_resume_is_exact_when_training_draws_random_numbers(make_plugins, tmp_path: Path) -> None:
    """The checkpoint keeps torch's random state and a resume puts it back: the dropout masks
    after a mid-epoch SIGTERM are the ones an uninterrupted run drew."""
    plugins = make_plugins(
        ("stop", StopPlugin()), ("dropout", ModelPlugin(**{"dropout-net": DropoutNet}))
    )
    quiet = lambda _: None  # noqa: E731
    straight = run_experiment(
        config(tmp_path, "straight", model="dropout-net"), plugins, echo=quiet
    )
    StopAtStep.at = 8  # epoch 2, batch 2 of 6
    try:
        with pytest.raises(RunInterrupted):
            cut = config(tmp_path, "cut", model="dropout-net", logger=["stop-at-step"])
            run_experiment(cut, plugins, echo=quiet)
    finally:
        StopAtStep.at = 0
    torch.manual_seed(12345)  # whatever state this process's generator is in now
    assert_identical(plugins, straight, resume(plugins, tmp_path / "runs" / "cut"))


def test_a_resumed_run_keeps_the_best_accuracy_of_its_earlier_epochs(
    make_plugins, tmp_path: Path
) -> None:
    """state.json's best test accuracy after a resume is the best of every epoch, those before
    the resume included (read back from metrics.jsonl, here made the best on purpose)."""
    plugins = make_plugins()
    run = run_experiment(config(tmp_path, "b", epochs=1), plugins, echo=lambda _: None)
    metrics = run / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    for record in records:
        if "test_accuracy" in record:
            record["test_accuracy"] = 0.99
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    resume(plugins, run, epochs=2)
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2 and state["best_test_accuracy"] == 0.99


class NaNWhenEvaluated(torch.nn.Module):
    """QuickNet whose output is NaN in eval mode only: the training loss stays finite."""

    def __init__(self, info) -> None:
        super().__init__()
        self.net = quicknet(info)

    def forward(self, x):
        out = self.net(x)
        return out if self.training else out * float("nan")


def test_a_nan_test_loss_stops_the_run(make_plugins, tmp_path: Path) -> None:
    plugins = make_plugins(("nan-test", ModelPlugin(**{"nan-test": NaNWhenEvaluated})))
    with pytest.raises(ExptError) as info:
        run_experiment(config(tmp_path, "t", model="nan-test"), plugins, echo=lambda _: None)
    assert str(info.value) == (
        "The test loss became nan after epoch 1, so the run stopped; lower --lr and start again."
    )


def stopped_before_its_first_checkpoint(folder: Path, saved: dict) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": saved}))
    (folder / "state.json").write_text(json.dumps({"state": "interrupted", "epoch": 0}))
    return folder


def test_a_run_stopped_before_its_first_checkpoint_starts_again_from_its_config(
    plugins, tmp_path: Path
) -> None:
    saved = {"model": "quicknet", "seed": 3, "lr": 0.05}
    point = find_resume_point(plugins, stopped_before_its_first_checkpoint(tmp_path / "r", saved))
    try:
        assert point.fresh and point.checkpoint.config == saved
        assert (point.checkpoint.epoch, point.checkpoint.step, point.next_epoch) == (0, 0, 1)
        assert point.state == {"state": "interrupted", "epoch": 0}
    finally:
        point.release()


@pytest.mark.parametrize("saved", [{"model": "quicknet"}, {"seed": 3}, ["quicknet", 3]])
def test_a_run_without_a_checkpoint_or_a_whole_config_is_one_sentence(
    plugins, tmp_path: Path, saved
) -> None:
    folder = stopped_before_its_first_checkpoint(tmp_path / "r", saved)
    with pytest.raises(ExptError) as info:
        find_resume_point(plugins, folder)
    assert str(info.value) == (
        f"{folder} holds no checkpoint and no config.json to start it again from; it never "
        "started, so remove it and start the run anew."
    )
