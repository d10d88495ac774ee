"""What the loop hands to loggers, what it saves for an evaluation model and the fp16 scaler,
how it records an interrupted or failing end, and how it picks the best of equal epochs.

Each test is one short in-process run of the tiny dataset, with a logger or callback plugin
that keeps what it was given.
"""

from __future__ import annotations

import copy
import errno
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_loop_phases import SHORT
from test_loop_phases import state as read_state
from test_training_plugins import epochs

from exptorch import Callback, ExptError, Logger, hookimpl
from exptorch.checkpoint import load_checkpoint
from exptorch.distributed import World
from exptorch.loop import evaluate
from exptorch.testing import make_plugins, run_config, run_expt, tiny_splits
from exptorch.train import make_batches


class KeepingLogger(Logger):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def log_metrics(self, metrics: Any, step: int) -> None:
        self.calls.append(("metrics", dict(metrics), step))

    def log_hparams(self, hparams: Any, metrics: Any) -> None:
        self.calls.append(("hparams", dict(hparams), dict(metrics)))

    def log_images(self, tag: str, images: Any, captions: Any, step: int) -> None:
        self.calls.append(("images", tag, images, list(captions), step))

    def log_graph(self, model: Any, example_input: Any) -> None:
        self.calls.append(("graph", model, example_input))

    def flush(self) -> None:
        self.calls.append(("flush",))

    def finish(self, state: str) -> None:
        self.calls.append(("finish", state))


class Plugin:
    def __init__(self, callback: Callback | None = None) -> None:
        self.logger = KeepingLogger()
        self.callback = callback
        self.runs: list[Any] = []

    @hookimpl
    def register_loggers(self, register: Any) -> None:
        def make(run: Any) -> KeepingLogger:
            self.runs.append(run)
            return self.logger

        register("keeping", make)

    @hookimpl
    def register_callbacks(self, register: Any) -> None:
        register("test-callback", lambda run: self.callback)


def run(tmp_path: Path, plugin: Plugin, **options: Any) -> Path:
    plugins = make_plugins(("test-plugin", plugin))
    return run_expt(plugins, tmp_path / "runs", echo=lambda _: None, **{**SHORT, **options})


def test_loggers_get_each_record_the_graph_the_predictions_and_the_settings(
    tmp_path: Path,
) -> None:
    plugin = Plugin()
    folder = run(tmp_path, plugin, logger=["keeping"], epochs=2, lr=0.02)
    calls = plugin.logger.calls
    model = plugin.runs[0].model
    assert calls[0][0] == "graph" and calls[0][1] is model
    assert calls[0][2].shape == (1, 1, 28, 28)  # one test image as the model sees it
    records = epochs(folder)
    logged = [c for c in calls if c[0] == "metrics"]
    assert logged == [
        ("metrics", {k: v for k, v in r.items() if k not in ("step", "epoch")}, r["step"])
        for r in records
    ]
    images = [c for c in calls if c[0] == "images"]
    assert [(c[1], c[4]) for c in images] == [("test_predictions", 2), ("test_predictions", 4)]
    shown, captions = images[0][2], images[0][3]
    assert shown.shape == (16, 1, 28, 28) and 0 <= float(shown.min()) <= float(shown.max()) <= 1
    assert len(captions) == 16 and all(c.startswith("pred: ") and "\ntrue: " in c for c in captions)
    assert captions[0].endswith("\ntrue: Ankle boot")  # the first tiny test image
    assert [c[0] for c in calls].count("flush") == 2  # once an epoch, after its checkpoint
    (hparams,) = [c for c in calls if c[0] == "hparams"]
    assert hparams[1]["lr"] == 0.02 and hparams[1]["logger"] == ["keeping"]
    assert "data_dir" not in hparams[1]  # unset settings are left out
    assert hparams[2] == {k: v for k, v in records[-1].items() if k not in ("step", "epoch")}
    assert calls[-1] == ("finish", "finished")


class Averaged(Callback):
    """Evaluates a frozen copy of the model, as an EMA callback would keep one."""

    def __init__(self, same_shape: bool = True) -> None:
        self.same_shape = same_shape
        self.copy: Any = None

    def on_run_start(self, run: Any) -> None:
        other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
        self.copy = copy.deepcopy(run.model) if self.same_shape else other
        run.eval_model = self.copy


def test_an_evaluation_model_is_evaluated_and_saved_beside_the_model(tmp_path: Path) -> None:
    callback = Averaged()
    folder = run(tmp_path, Plugin(callback), epochs=1, lr=0.05, name="e")
    saved = load_checkpoint(make_plugins(), folder / "checkpoints" / "epoch-001.pt")
    assert set(saved.extra["eval_model_state"]) == set(saved.model_state)
    for key, value in callback.copy.state_dict().items():
        assert torch.equal(saved.extra["eval_model_state"][key], value), key
    assert not all(
        torch.equal(saved.model_state[k], v) for k, v in callback.copy.state_dict().items()
    )  # the model trained on; the copy did not
    [record] = epochs(folder)
    config = run_config(make_plugins(), tmp_path, **SHORT, seed=0)  # the run's test split
    _, tests = make_batches(config, tiny_splits(), torch.device("cpu"), World())
    assert record["test_loss"] == pytest.approx(evaluate(callback.copy, tests)["test_loss"])
    other = run(tmp_path, Plugin(Averaged(same_shape=False)), epochs=1, name="o")
    saved = load_checkpoint(make_plugins(), other / "checkpoints" / "epoch-001.pt")
    assert "eval_model_state" not in saved.extra  # not shaped like the model: not saved


def test_evaluation_is_the_mean_loss_per_image_in_eval_mode() -> None:
    from exptorch.data import Batches

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(4, 3))
    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    batches = Batches(images, labels, batch_size=4, device=torch.device("cpu"), mean=[0.5],
                      std=[0.5], shuffle=False)  # fmt: skip
    model.train()
    used: list[bool] = []

    def autocast() -> Any:
        used.append(True)
        return torch.autocast("cpu", enabled=False)

    result = evaluate(model, batches, autocast)
    assert not model.training and len(used) == 3  # once per batch: 4 + 4 + 2 images
    normalised = (images.float() / 255 - 0.5) / 0.5
    expected = F.cross_entropy(model(normalised), labels).item()
    assert result == {"test_loss": pytest.approx(expected)}


def test_the_fp16_scalers_state_is_saved_in_every_checkpoint(tmp_path: Path) -> None:
    folder = run(tmp_path, Plugin(), epochs=1, precision="fp16")
    saved = load_checkpoint(make_plugins(), folder / "checkpoints" / "epoch-001.pt")
    assert saved.extra["grad_scaler"]["scale"] == 65536.0
    assert saved.extra["grad_scaler"]["_growth_tracker"] == 2  # two good steps since
    assert set(saved.extra) == {"torch_rng_state", "callbacks", "grad_scaler"}


class Interrupts(Callback):
    def on_step_end(self, run: Any, step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt


def test_a_keyboard_interrupt_is_recorded_as_interrupted_by_sigint(tmp_path: Path) -> None:
    plugin = Plugin(Interrupts())
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, plugin, logger=["keeping"], epochs=2, name="k")
    state = read_state(tmp_path / "runs" / "k")
    assert (state["state"], state["stop_reason"], state["error"]) == (
        "interrupted", "interrupted by SIGINT", None
    )  # fmt: skip
    assert (state["epoch"], state["checkpoint"]) == (1, "epoch-001.pt")
    assert plugin.logger.calls[-1] == ("finish", "interrupted")


def test_a_full_disk_while_checkpointing_says_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("exptorch.loop.save_checkpoint", full)
    with pytest.raises(ExptError) as refused:
        run(tmp_path, Plugin(), epochs=1, name="d")
    folder = tmp_path / "runs" / "d"
    message = str(refused.value)
    assert message.startswith(
        f"Cannot write checkpoint {folder / 'checkpoints' / 'epoch-001.pt'}: No space left on "
        "device; free some space, then continue with: "
    )
    assert message.endswith(f" run --resume {folder}.")
    state = read_state(folder)
    assert (state["state"], state["error"]) == ("failed", message)


@pytest.mark.parametrize(("monitor", "mode"), [("test_accuracy", "max"), ("test_loss", "min")])
def test_of_epochs_that_tie_the_first_stays_the_best(
    tmp_path: Path, monitor: str, mode: str
) -> None:
    folder = run(tmp_path, Plugin(), epochs=2, lr=1e-30, monitor=monitor, keep="all")
    records = epochs(folder)
    assert records[0][monitor] == records[1][monitor]  # nothing learned: a tie
    state = read_state(folder)
    assert (state["best_checkpoint"], state["best_value"]) == ("epoch-001.pt", records[0][monitor])
