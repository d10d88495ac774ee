"""``expt run`` end to end: metrics, TensorBoard events, checkpoints, hooks, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from exptorch import ExptError, Logger, hookimpl
from exptorch.checkpoint import load_checkpoint
from exptorch.config import RunConfig
from exptorch.rundir import read_metrics
from exptorch.train import run_experiment
from exptorch.types import DatasetInfo
from exptorch_plugins import quicknet
from exptorch_plugins.networks import QuickNet


def quick_config(tmp_path: Path, **overrides) -> RunConfig:
    values = dict(
        dataset="fashion-mnist-sample", device="cpu", epochs=2, seed=0,
        runs_dir=str(tmp_path / "runs"), name="r", limit_train_batches=10,
        limit_eval_batches=2, log_every=5,
    )  # fmt: skip
    values.update(overrides)
    return RunConfig(**values)


def test_main_job_in_a_real_process(expt, tmp_path: Path) -> None:
    """The README's offline main job: run folder with metrics, events and a checkpoint per epoch."""
    result = expt(
        "run", "--model", "quicknet", "--dataset", "fashion-mnist-sample", "--logger",
        "tensorboard", "--epochs", "2", "--limit-train-batches", "20", "--log-every", "10",
        "--name", "main", "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stdout and "test_accuracy" in result.stdout
    run = tmp_path / "runs" / "main"
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["model"] == "quicknet" and config["config"]["seed"] == 3
    assert config["versions"]["torch"] == torch.__version__
    assert config["plugins"]["quicknet"]["distribution"] == "exptorch"

    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if "train_loss" in r]
    tests = [r for r in records if "test_accuracy" in r]
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    assert [(r["epoch"], r["step"]) for r in tests] == [(1, 20), (2, 40)]
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-001.pt",
        "epoch-002.pt",
    ]

    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train_loss", "test_loss", "test_accuracy"} <= set(tags)
    assert [e.step for e in events.Scalars("train_loss")] == [10, 20, 30, 40]
    accuracy = [e.value for e in events.Scalars("test_accuracy")]
    assert accuracy == pytest.approx([r["test_accuracy"] for r in tests])


@pytest.mark.slow
def test_bundled_sample_learns(tmp_path: Path, plugins) -> None:
    """Three epochs on the real Fashion-MNIST sample beat chance (10%) by far."""
    config = quick_config(
        tmp_path, epochs=3, limit_train_batches=None, limit_eval_batches=None,
        lr=0.01, momentum=0.9, log_every=100,
    )  # fmt: skip
    run = run_experiment(config, plugins, echo=lambda _: None)
    final = [r for r in read_metrics(run / "metrics.jsonl") if "test_accuracy" in r][-1]
    assert final["test_accuracy"] > 0.70


def test_checkpoint_loads_into_a_fresh_model(tmp_path: Path, plugins) -> None:
    run = run_experiment(quick_config(tmp_path, epochs=1), plugins, echo=lambda _: None)
    checkpoint = load_checkpoint(plugins, run / "checkpoints" / "epoch-001.pt")
    assert checkpoint.epoch == 1 and checkpoint.step == 10
    info = DatasetInfo.from_dict(checkpoint.meta["info"])
    assert (info.channels, info.height, info.num_classes) == (1, 28, 10)
    model = QuickNet(info.channels, info.height, info.width, info.num_classes)
    model.load_state_dict(checkpoint.model_state)
    assert checkpoint.optimizer_state is not None and "param_groups" in checkpoint.optimizer_state
    # The reloaded model reproduces the run's own test metrics.
    from exptorch.data import Batches
    from exptorch.train import evaluate

    splits = plugins.get("dataset", "fashion-mnist-sample").factory()
    batches = Batches(splits.test_images, splits.test_labels, batch_size=256,
                      device=torch.device("cpu"), mean=info.mean, std=info.std,
                      shuffle=False, limit=2)  # fmt: skip
    recorded = [r for r in read_metrics(run / "metrics.jsonl") if "test_loss" in r][-1]
    assert evaluate(model, batches)["test_loss"] == pytest.approx(recorded["test_loss"], rel=1e-5)


def test_same_seed_same_result(tmp_path: Path, plugins) -> None:
    a = run_experiment(quick_config(tmp_path, name="a"), plugins, echo=lambda _: None)
    b = run_experiment(quick_config(tmp_path, name="b"), plugins, echo=lambda _: None)
    wa = load_checkpoint(plugins, a / "checkpoints" / "epoch-002.pt").model_state
    wb = load_checkpoint(plugins, b / "checkpoints" / "epoch-002.pt").model_state
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cifar10_fixture_trains_through_the_cli(expt, cifar10_dir: Path, tmp_path: Path) -> None:
    result = expt(
        "run", "--dataset", "cifar10", "--data-dir", str(cifar10_dir), "--epochs", "1",
        "--batch-size", "16", "--name", "c", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "not the official CIFAR-10" in result.stderr  # a subset is read, with a warning
    config = json.loads((tmp_path / "runs" / "c" / "config.json").read_text())
    assert config["dataset"]["channels"] == 3 and config["dataset"]["height"] == 32
    assert (tmp_path / "runs" / "c" / "checkpoints" / "epoch-001.pt").is_file()


class Recorder:
    """A test plugin that records lifecycle hook calls and stops the run after epoch 1."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @hookimpl
    def run_start(self, run):
        self.calls.append(("run_start", run.config.name, run.info.num_classes))

    @hookimpl
    def epoch_end(self, run, epoch, metrics):
        self.calls.append(("epoch_end", epoch, round(metrics["test_accuracy"], 6)))
        run.request_stop("enough for a test")

    @hookimpl
    def run_end(self, run, state, metrics):
        self.calls.append(("run_end", state, "test_loss" in metrics))


def test_lifecycle_hooks_observe_and_stop_a_run(tmp_path: Path, make_plugins) -> None:
    recorder = Recorder()
    plugins = make_plugins(("recorder", recorder))
    run = run_experiment(quick_config(tmp_path, epochs=5), plugins, echo=lambda _: None)
    accuracy = [r for r in read_metrics(run / "metrics.jsonl") if "test_accuracy" in r]
    assert len(accuracy) == 1
    assert recorder.calls == [
        ("run_start", "r", 10),
        ("epoch_end", 1, round(accuracy[0]["test_accuracy"], 6)),
        ("run_end", "stopped", True),
    ]
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "stopped" and state["stop_reason"] == "enough for a test"


class Exploding(Logger):
    def __init__(self, run) -> None:
        self.calls = 0

    def log_metrics(self, metrics, step) -> None:
        raise ConnectionError("tracking server went away")


class ExplodingLoggerPlugin:
    @hookimpl
    def register_loggers(self, register):
        register("exploding", Exploding)


def test_failing_logger_is_switched_off_and_run_finishes(tmp_path, make_plugins, caplog) -> None:
    plugins = make_plugins(("exploding", ExplodingLoggerPlugin()))
    config = quick_config(tmp_path, logger=["exploding", "tensorboard"])
    run = run_experiment(config, plugins, echo=lambda _: None)
    assert "logger 'exploding' failed in log_metrics" in caplog.text
    assert "tracking server went away" in caplog.text
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
    events = EventAccumulator(str(run))
    events.Reload()
    assert len(events.Scalars("test_accuracy")) == 2  # the other logger kept going
    assert len([r for r in read_metrics(run / "metrics.jsonl") if "test_accuracy" in r]) == 2


def test_config_file_and_flags(expt, tmp_path: Path) -> None:
    (tmp_path / "exp.toml").write_text(
        'dataset = "fashion-mnist-sample"\nepochs = 1\nbatch-size = 32\nlr = 0.02\n'
        'limit_train_batches = 3\nlogger = ["tensorboard"]\nname = "from-file"\n'
    )
    result = expt("run", "--config", "exp.toml", "--lr", "0.05", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "runs" / "from-file" / "config.json").read_text())["config"]
    assert config["batch_size"] == 32 and config["epochs"] == 1  # from the file
    assert config["lr"] == 0.05  # the flag wins
    assert config["logger"] == ["tensorboard"]
    assert list((tmp_path / "runs" / "from-file").glob("events.out.tfevents.*"))


def grey(height: int, width: int) -> DatasetInfo:
    return DatasetInfo(1, height, width, tuple("abc"), (0.5,), (0.25,))


def test_quicknet_takes_images_down_to_8x8_and_says_why_it_refuses_smaller() -> None:
    """Three 2x2 poolings need at least 8 pixels on each side, whichever side is short."""
    build = quicknet.build
    assert build(grey(8, 8))(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    for height, width in ((7, 8), (8, 7)):
        with pytest.raises(ExptError) as caught:
            build(grey(height, width))
        assert str(caught.value) == (
            f"quicknet needs images of at least 8x8 pixels; this dataset's are {height}x{width}."
        )
        # the network itself refuses too, for code that builds it without the plugin
        with pytest.raises(ValueError, match=f"at least 8x8 pixels, not {height}x{width}$"):
            QuickNet(1, height, width, 3)


class FirstPixelClass(torch.nn.Module):
    """Predicts class 0 for an image whose first (normalised) pixel is negative, else 1."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        first = images[:, 0, 0, 0]
        return torch.stack([-first, first], dim=1)


def test_prediction_samples_show_the_pixels_in_0_1_and_caption_prediction_and_truth() -> None:
    from exptorch.data import Batches
    from exptorch.loop import prediction_samples

    # every grey level; with this mean and std, un-normalising in float32 lands a hair
    # outside [0, 1] at 0 and 255, which the display must not
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(4, 1, 1, 1)
    pixels[2:, 0, 0, 0] = 255
    batches = Batches(pixels, torch.tensor([0, 1, 1, 0]), batch_size=4,
                      device=torch.device("cpu"), mean=[0.1224], std=[0.338],
                      shuffle=False)  # fmt: skip
    seen, shown, captions = prediction_samples(FirstPixelClass(), batches, ["dark", "light"], n=3)
    assert torch.equal(seen, batches.normalise(pixels[:3]))  # the first 3, as the model saw them
    assert shown.min() >= 0 and shown.max() <= 1
    assert torch.allclose(shown, pixels[:3].float() / 255, atol=1e-6)
    assert captions == [
        "pred: dark\ntrue: dark",
        "pred: dark\ntrue: light",
        "pred: light\ntrue: light",
    ]
