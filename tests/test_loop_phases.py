"""The training loop's phases, as a callback, a plugin and the run folder see them.

Each test is one short in-process run of the tiny dataset (2 steps an epoch) with a
callback that writes down every event it is handed, so the order of the events, what
each one carries, the lines ``expt run`` prints, the records in ``metrics.jsonl``, the
fields of ``state.json`` and what a checkpoint holds are all pinned exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_training_plugins import epochs

from exptorch import Callback, hookimpl
from exptorch.checkpoint import load_checkpoint
from exptorch.rundir import RunDir
from exptorch.testing import make_plugins, resume_expt, run_expt

#: Two steps of 16 images an epoch and one test batch (of 256: all 128 tiny test images);
#: the training loss is logged once an epoch, at its end.
SHORT = dict(batch_size=16, limit_train_batches=2, limit_eval_batches=1, log_every=100)


class Recorder(Callback):
    """Every event in order, with a copy of what it carried."""

    def __init__(self, stop_at: int | None = None, fail_at: int | None = None) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.stop_at, self.fail_at = stop_at, fail_at

    def on_run_start(self, run: Any) -> None:
        self.seen.append(("run_start", run.step, run.start_epoch, run.resumed))

    def on_epoch_start(self, run: Any, epoch: int) -> None:
        self.seen.append(("epoch_start", epoch, run.epoch, run.model.training))

    def on_before_optimizer_step(self, run: Any, step: int) -> None:
        has_grad = all(p.grad is not None for p in run.model.parameters())
        self.seen.append(("before_step", step, run.step, has_grad))

    def on_step_end(self, run: Any, step: int, loss: float) -> None:
        self.seen.append(("step_end", step, run.step, loss, run.lr))
        if step == self.fail_at:
            raise ValueError("the callback broke\nsecond line")

    def on_evaluate_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        self.seen.append(("evaluate_end", epoch, dict(metrics), run.model.training))
        metrics["from_evaluate"] = float(epoch)

    def on_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        self.seen.append(("epoch_end", epoch, dict(metrics)))
        if epoch == self.stop_at:
            run.request_stop("seen enough")

    def on_run_end(self, run: Any, state: str, metrics: Any) -> None:
        self.seen.append(("run_end", state, dict(metrics)))

    def state_dict(self) -> dict[str, Any]:
        return {"events": len(self.seen)}

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.seen if e[0] == name]


class RecordingPlugin:
    """Adds the recorder as a callback and keeps what the run hooks were told."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.hooks: list[tuple[Any, ...]] = []

    @hookimpl
    def register_callbacks(self, register: Any) -> None:
        register("recorder", lambda run: self.recorder)

    @hookimpl
    def run_start(self, run: Any) -> None:
        self.hooks.append(("run_start", run.step))

    @hookimpl
    def epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        self.hooks.append(("epoch_end", epoch, sorted(metrics)))
        metrics["from_plugin"] = 2.0 * epoch

    @hookimpl
    def run_end(self, run: Any, state: str, metrics: Any) -> None:
        self.hooks.append(("run_end", state, sorted(metrics)))


def run(tmp_path: Path, recorder: Recorder, **options: Any) -> tuple[Path, list[str], Any]:
    plugin = RecordingPlugin(recorder)
    plugins = make_plugins(("recording", plugin))
    said: list[str] = []
    folder = run_expt(plugins, tmp_path / "runs", echo=said.append, **{**SHORT, **options})
    return folder, said, plugin


def state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "state.json").read_text())


def test_events_come_in_order_and_carry_the_steps_losses_and_metrics(tmp_path: Path) -> None:
    recorder = Recorder()
    folder, _, plugin = run(tmp_path, recorder, epochs=2, lr=0.05)
    names = [e[0] for e in recorder.seen]
    epoch = ["epoch_start", "before_step", "step_end", "before_step", "step_end",
             "evaluate_end", "epoch_end"]  # fmt: skip
    assert names == ["run_start", *epoch, *epoch, "run_end"]
    assert recorder.seen[0] == ("run_start", 0, 1, False)
    assert recorder.named("epoch_start") == [
        ("epoch_start", 1, 1, True),
        ("epoch_start", 2, 2, True),
    ]
    assert [e[1:] for e in recorder.named("before_step")] == [
        (1, 0, True), (2, 1, True), (3, 2, True), (4, 3, True)
    ]  # fmt: skip
    steps = recorder.named("step_end")
    assert [(e[1], e[2], e[4]) for e in steps] == [(s, s, 0.05) for s in (1, 2, 3, 4)]
    losses = [e[3] for e in steps]
    assert all(isinstance(v, float) and 0 < v < 10 for v in losses)
    evaluated = recorder.named("evaluate_end")
    assert [e[1] for e in evaluated] == [1, 2] and not any(e[3] for e in evaluated)
    first = evaluated[0][2]
    assert set(first) == {
        "test_loss", "test_accuracy", "epoch_train_loss", "lr", "images_per_second", "epoch_time"
    }  # fmt: skip
    assert first["epoch_train_loss"] == pytest.approx((losses[0] + losses[1]) / 2)
    assert evaluated[1][2]["epoch_train_loss"] == pytest.approx((losses[2] + losses[3]) / 2)
    assert first["lr"] == 0.05 and first["images_per_second"] > 0
    assert 0 < first["epoch_time"] < 60 and 0 <= first["test_accuracy"] <= 1
    ended = recorder.named("epoch_end")[1][2]
    assert ended["from_evaluate"] == 2.0 and "from_plugin" not in ended  # the plugin runs after
    assert ended["train_loss"] == pytest.approx((losses[2] + losses[3]) / 2)
    assert recorder.seen[-1] == ("run_end", "finished", {**ended, "from_plugin": 4.0})
    assert plugin.hooks == [
        ("run_start", 0),
        ("epoch_end", 1, sorted([*first, "from_evaluate", "train_loss"])),
        ("epoch_end", 2, sorted([*first, "from_evaluate", "train_loss"])),
        ("run_end", "finished", sorted([*first, "from_evaluate", "train_loss", "from_plugin"])),
    ]
    records = epochs(folder)
    assert [(r["step"], r["epoch"]) for r in records] == [(2, 1), (4, 2)]
    assert records[1] == {"step": 4, "epoch": 2, **ended, "from_plugin": 4.0}


def test_the_lines_a_run_prints_name_its_folder_sizes_and_each_epochs_figures(
    tmp_path: Path,
) -> None:
    folder, said, _ = run(tmp_path, Recorder(), epochs=2, seed=7)
    n = sum(p.numel() for p in torch.load(folder / "checkpoints" / "epoch-002.pt",
                                          weights_only=True)["model_state"].values())  # fmt: skip
    assert said[0] == (
        f"run {folder}: quicknet ({n:,} parameters) on tiny-fashion-mnist "
        "(512 train / 128 test images), device cpu, seed 7"
    )
    records = epochs(folder)
    for line, r in zip(said[1:3], records, strict=True):
        assert line == (
            f"epoch {r['epoch']}/2  train_loss {r['epoch_train_loss']:.4f}  "
            f"test_loss {r['test_loss']:.4f}  test_accuracy {100 * r['test_accuracy']:.2f}%  "
            f"{r['epoch_time']:.1f}s ({r['images_per_second']:,.0f} img/s)"
        )
    assert re.fullmatch(rf"finished in \d+\.\ds; run folder {re.escape(str(folder))}", said[3])
    assert len(said) == 4


def test_state_and_checkpoints_track_the_best_epoch_by_the_monitored_metric(
    tmp_path: Path,
) -> None:
    folder, _, _ = run(tmp_path, Recorder(), epochs=3, monitor="test_loss", lr=0.05, keep="best")
    records = epochs(folder)
    losses = [r["test_loss"] for r in records]
    best = losses.index(min(losses)) + 1
    saved = state(folder)
    assert (saved["state"], saved["epoch"], saved["checkpoint"]) == ("finished", 3, "epoch-003.pt")
    assert saved["best_checkpoint"] == f"epoch-{best:03d}.pt"
    assert (saved["best_metric"], saved["best_value"]) == ("test_loss", min(losses))
    assert (saved["stop_reason"], saved["error"]) == (None, None)
    assert saved["pid"] == os.getpid() and 0 < time.time() - saved["started"] < 600
    assert isinstance(saved["elapsed"], float) and 0 < saved["elapsed"] < 600
    assert saved["best_test_accuracy"] == max(r["test_accuracy"] for r in records)  # still
    assert saved["final"] == {k: records[-1][k] for k in saved["final"]}
    kept = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert kept == sorted({f"epoch-{best:03d}.pt", "epoch-003.pt"})  # the best and the newest


def test_the_best_by_accuracy_is_also_recorded_as_best_test_accuracy(tmp_path: Path) -> None:
    folder, _, _ = run(tmp_path, Recorder(), epochs=2, keep="all")
    records = epochs(folder)
    accuracies = [r["test_accuracy"] for r in records]
    best = accuracies.index(max(accuracies)) + 1  # the first of equals stays the best
    saved = state(folder)
    assert saved["best_checkpoint"] == f"epoch-{best:03d}.pt"
    assert saved["best_value"] == saved["best_test_accuracy"] == max(accuracies)
    assert saved["best_metric"] == "test_accuracy"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "epoch-001.pt", "epoch-002.pt"
    ]  # fmt: skip


def test_an_epoch_checkpoint_holds_what_resuming_needs(tmp_path: Path) -> None:
    recorder = Recorder()
    folder, _, _ = run(tmp_path, recorder, epochs=1, lr=0.05, weight_decay=0.001, momentum=0.9)
    saved = load_checkpoint(make_plugins(), folder / "checkpoints" / "epoch-001.pt")
    assert (saved.epoch, saved.step) == (1, 2)
    assert set(saved.extra) == {"torch_rng_state", "callbacks"}
    assert saved.extra["callbacks"] == {  # taken after epoch 1's end event: 8 events so far
        "train-loss": {"window_loss": 0.0, "window_steps": 0}, "recorder": {"events": 8}
    }  # fmt: skip
    assert saved.config["lr"] == 0.05 and saved.config["weight_decay"] == 0.001
    assert saved.config["name"] == folder.name
    assert saved.meta["model"] == "quicknet" and saved.meta["dataset"] == "tiny-fashion-mnist"
    assert saved.meta["info"]["classes"][0] == "T-shirt/top"
    assert saved.optimizer_state["param_groups"][0]["lr"] == 0.05
    assert len(saved.optimizer_state["state"]) == len(saved.model_state)  # momentum buffers


class KeepsFirstStep(Recorder):
    """Copies aside the checkpoint written after step 1 (the epoch's own one replaces it)."""

    def __init__(self, aside: Path) -> None:
        super().__init__()
        self.aside = aside

    def on_before_optimizer_step(self, run: Any, step: int) -> None:
        super().on_before_optimizer_step(run, step)
        if step == 2:
            for path in (run.run_dir / "checkpoints").iterdir():
                (self.aside / path.name).write_bytes(path.read_bytes())


def test_a_checkpoint_inside_an_epoch_records_the_position_and_resumes_from_it(
    tmp_path: Path,
) -> None:
    aside = tmp_path / "aside"
    aside.mkdir()
    recorder = KeepsFirstStep(aside)
    folder, _, _ = run(tmp_path, recorder, epochs=1, checkpoint_every="1", keep="all")
    assert sorted(p.name for p in aside.iterdir()) == ["epoch-001-step-000001.pt"]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["epoch-001.pt"]
    inside = load_checkpoint(make_plugins(), aside / "epoch-001-step-000001.pt")
    first, second = (e[3] for e in recorder.named("step_end"))
    assert (inside.epoch, inside.step) == (0, 1)
    assert inside.extra["position"] == {
        "epoch": 1, "batch": 1, "epoch_loss": pytest.approx(16 * first), "seen": 16
    }  # fmt: skip
    (folder / "checkpoints" / "epoch-001.pt").unlink()
    (aside / "epoch-001-step-000001.pt").rename(folder / "checkpoints" / "epoch-001-step-000001.pt")
    again = Recorder()
    said: list[str] = []
    resume_expt(make_plugins(("recording", RecordingPlugin(again))), folder, echo=said.append)
    assert "resuming from epoch-001-step-000001.pt at epoch 1, batch 2 of 2" in said[1]
    assert again.seen[0] == ("run_start", 1, 1, True)
    assert [e[1] for e in again.named("step_end")] == [2]  # only the step that was left
    assert again.named("step_end")[0][3] == pytest.approx(second, rel=1e-5)  # the same batch
    ended = again.named("evaluate_end")[0][2]
    assert ended["epoch_train_loss"] == pytest.approx((first + second) / 2, rel=1e-5)


def test_a_stop_request_ends_the_run_after_its_epoch_as_stopped(tmp_path: Path) -> None:
    recorder = Recorder(stop_at=1)
    folder, said, plugin = run(tmp_path, recorder, epochs=3)
    assert "stopping after epoch 1: seen enough" in said
    assert recorder.seen[-1][:2] == ("run_end", "stopped")
    assert plugin.hooks[-1][:2] == ("run_end", "stopped")
    saved = state(folder)
    assert (saved["state"], saved["stop_reason"], saved["epoch"]) == ("stopped", "seen enough", 1)
    assert said[-1].startswith("stopped in ")


def test_a_failing_step_is_recorded_with_its_error_and_the_run_end_still_fires(
    tmp_path: Path,
) -> None:
    recorder = Recorder(fail_at=3)
    plugin = RecordingPlugin(recorder)
    plugins = make_plugins(("recording", plugin))
    with pytest.raises(ValueError, match="the callback broke"):
        run_expt(plugins, tmp_path / "runs", epochs=2, name="f", echo=lambda _: None, **SHORT)
    saved = state(tmp_path / "runs" / "f")
    assert saved["state"] == "failed"
    assert saved["error"] == "ValueError: the callback broke"
    assert saved["epoch"] == 1 and saved["checkpoint"] == "epoch-001.pt"
    assert recorder.seen[-1][:2] == ("run_end", "failed")
    assert set(recorder.seen[-1][2]) >= {"test_loss", "from_plugin"}  # epoch 1's metrics
    assert plugin.hooks[-1][:2] == ("run_end", "failed")
    assert RunDir.is_locked(tmp_path / "runs" / "f") is not True  # the lock was given back


def test_verbose_says_what_was_resolved(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exptorch")
    run(tmp_path, Recorder(), epochs=1, checkpoint_every="5m")
    said = [r.getMessage() for r in caplog.records if r.name == "exptorch"]
    assert said[:3] == [
        "device cpu, precision fp32, channels-last on, compile off, data on device auto",
        "plugins used: model quicknet (quicknet, exptorch), dataset tiny-fashion-mnist "
        "(tiny_dataset, registered in code), device cpu (devices, exptorch), checkpoint format "
        "state_dict (state_dict, exptorch), optimizer sgd (optimizers, exptorch), schedule "
        "constant (schedules, exptorch), loss cross-entropy (losses, exptorch), metric accuracy "
        "(metrics, exptorch), callback recorder (recording, registered in code)",
        "data: 512 train images in 2 batches of 16 per epoch, 128 test images in 1 batches; "
        "checkpoints at each epoch's end and every 5m inside one",
    ]


def test_losses_and_learning_rates_follow_the_schedule_step_by_step(tmp_path: Path) -> None:
    recorder = Recorder()
    run(tmp_path, recorder, epochs=2, lr=0.1, schedule="step", step_milestones="2", warmup=0.5)
    rates = [e[4] for e in recorder.named("step_end")]
    assert rates == pytest.approx([0.05, 0.1, 0.01, 0.01])
    assert all(math.isfinite(e[3]) for e in recorder.named("step_end"))
