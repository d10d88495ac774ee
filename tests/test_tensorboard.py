"""Logger ``tensorboard`` in depth, and several loggers at once with one of them failing.

One real run with ``--logger tensorboard --logger exploding`` (a logger that raises
on every call) serves every assertion; events are read back with ``EventAccumulator``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from exptorch import Callback, Logger, hookimpl
from exptorch.config import RunConfig
from exptorch.plugins import NO_AUTOLOAD_ENV, load_plugins
from exptorch.rundir import read_metrics
from exptorch.train import GuardedLogger, run_experiment

LOGGER_METHODS = ["log_metrics", "log_hparams", "log_images", "log_graph", "flush", "finish"]


class Exploding(Logger):
    """Raises on every call of every method."""

    def __init__(self, run: Any) -> None:
        pass

    def __getattribute__(self, name: str) -> Any:
        if name in LOGGER_METHODS:

            def boom(*args: Any) -> None:
                raise ConnectionError(f"{name}: tracking server went away")

            return boom
        return super().__getattribute__(name)


class Plugin(Callback):
    """Registers the exploding logger and looks at the event file at the end of epoch 1."""

    def __init__(self) -> None:
        self.live_scalars: list[str] = []

    @hookimpl
    def register_loggers(self, register: Any) -> None:
        register("exploding", Exploding)

    @hookimpl
    def register_callbacks(self, register: Any) -> None:
        register("peek", lambda run: self)

    def on_epoch_start(self, run: Any, epoch: int) -> None:
        if epoch == 2:  # what a live TensorBoard sees while the run goes on
            events = EventAccumulator(str(run.run_dir))
            events.Reload()
            self.live_scalars = events.Tags()["scalars"]


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Plugin, list[str]]:
    root = tmp_path_factory.mktemp("tb")
    plugin = Plugin()
    plugins = load_plugins(extra=[("exploding", plugin)], environ={NO_AUTOLOAD_ENV: "1"})
    config = RunConfig(
        dataset="fashion-mnist-sample", device="cpu", epochs=2, seed=0, lr=0.02,
        runs_dir=str(root / "runs"), name="tb", limit_train_batches=10, limit_eval_batches=2,
        log_every=5, logger=["exploding", "tensorboard"],
    )  # fmt: skip
    handler = _Collect()
    logging.getLogger("exptorch").addHandler(handler)
    try:
        run = run_experiment(config, plugins, echo=lambda _: None)
    finally:
        logging.getLogger("exptorch").removeHandler(handler)
    return run, plugin, handler.messages


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def events(tb_run: tuple[Path, Plugin, list[str]]) -> EventAccumulator:
    acc = EventAccumulator(str(tb_run[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_scalars_including_learning_rate(tb_run, events: EventAccumulator) -> None:
    records = read_metrics(tb_run[0] / "metrics.jsonl")
    tests = [r for r in records if "test_accuracy" in r]
    assert [e.step for e in events.Scalars("train_loss")] == [5, 10, 15, 20]
    assert [e.step for e in events.Scalars("lr")] == [10, 20]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([0.02, 0.02])
    assert [e.value for e in events.Scalars("test_accuracy")] == pytest.approx(
        [r["test_accuracy"] for r in tests]
    )
    assert tb_run[1].live_scalars and "test_accuracy" in tb_run[1].live_scalars  # flushed


def test_hparams_with_final_metrics_in_the_runs_own_folder(tb_run, events) -> None:
    run = tb_run[0]
    assert [p.parent for p in run.rglob("events.out.tfevents.*")] == [run]  # no sub-folder
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"test_accuracy", "test_loss"} <= metrics
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.02)
    assert hparams["model"].string_value == "quicknet"
    assert hparams["logger"].string_value == "exploding,tensorboard"
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == api_pb2.STATUS_SUCCESS


def test_prediction_grid_after_each_epoch(events: EventAccumulator) -> None:
    images = events.Images("test_predictions")
    assert [i.step for i in images] == [10, 20]
    # 16 tiles of 112 px, 8 per row, each with a caption strip below the image
    assert (images[0].width, images[0].height) == (8 * 112, 2 * (112 + 28))
    assert images[0].encoded_image_string.startswith(b"\x89PNG")


def test_model_graph(events: EventAccumulator) -> None:
    assert events.Tags()["graph"]
    nodes = {node.op for node in events.Graph().node}
    assert any("conv" in op.lower() for op in nodes), nodes


def test_failing_logger_is_reported_once_and_the_run_finishes(tb_run) -> None:
    run, _, messages = tb_run
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
    failures = [m for m in messages if "logger 'exploding' failed" in m]
    assert len(failures) == 1 and "tracking server went away" in failures[0]
    assert len([r for r in read_metrics(run / "metrics.jsonl") if "test_accuracy" in r]) == 2


def test_guarded_logger_covers_every_logger_method(caplog) -> None:
    public = sorted(n for n in vars(Logger) if not n.startswith("_"))
    assert public == sorted(LOGGER_METHODS)
    assert all(name in vars(GuardedLogger) for name in public)  # none bypasses the guard
    args = {
        "log_metrics": ({"x": 1.0}, 1),
        "log_hparams": ({"lr": 0.1}, {"x": 1.0}),
        "log_images": ("tag", None, [], 1),
        "log_graph": (None, None),
        "flush": (),
        "finish": ("finished",),
    }
    for method in LOGGER_METHODS:
        caplog.clear()
        guarded = GuardedLogger("exploding", Exploding(None))
        getattr(guarded, method)(*args[method])
        for other in LOGGER_METHODS:  # switched off: later calls neither raise nor warn
            getattr(guarded, other)(*args[other])
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and f"failed in {method}" in warnings[0]


def test_a_prediction_agrees_when_its_class_names_hold_colons() -> None:
    from exptorch_plugins.tensorboard import _agrees

    assert _agrees("pred: type:a\ntrue: type:a")
    assert not _agrees("pred: type:a\ntrue: type:b")


def test_the_model_graph_is_written_once_however_often_it_is_asked_for(tmp_path: Path) -> None:
    import torch
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from exptorch.types import RunContext
    from exptorch_plugins.networks import QuickNet
    from exptorch_plugins.tensorboard import TensorBoardLogger

    config = RunConfig(dataset="fashion-mnist-sample", runs_dir=str(tmp_path), name="g")
    logger = TensorBoardLogger(RunContext(run_dir=tmp_path, config=config))
    model = QuickNet(1, 28, 28)
    for _ in range(2):
        logger.log_graph(model, torch.zeros(1, 1, 28, 28))
    logger.finish("finished")
    (events,) = tmp_path.glob("events.out.tfevents.*")
    graphs = [e for e in EventFileLoader(str(events)).Load() if e.HasField("graph_def")]
    assert len(graphs) == 1


def test_nested_hyperparameters_are_named_with_dots_and_lists_joined() -> None:
    from exptorch_plugins.tensorboard import _flatten

    assert _flatten({"lr": 0.1, "options": {"gone": None, "sgd_nesterov": True},
                     "metric": ["top5", "macro-f1"], "path": Path("/data")}) == {
        "lr": 0.1, "options.sgd_nesterov": True, "metric": "top5,macro-f1", "path": "/data",
    }  # fmt: skip


def test_the_prediction_grid_shows_each_image_pixel_for_pixel_on_a_dark_canvas() -> None:
    """A 2x2 image becomes a 108-pixel tile of four blocks (nearest-neighbour, values clamped
    to 0..1 and scaled to 0..255) at (2, 2) in its 112-pixel cell, on a (24, 24, 24) canvas;
    one image makes a one-column grid."""
    import torch

    from exptorch_plugins.tensorboard import TILE, captioned_grid

    image = torch.tensor([[[-0.5, 0.5], [1.0, 2.0]]]).expand(3, 2, 2)  # grey, channels first
    one = captioned_grid(image[None], ["pred: a\ntrue: a"])
    assert one.shape[1] == TILE and one.dtype.name == "uint8"
    assert one[0, 0].tolist() == [24, 24, 24] and one[1, 1].tolist() == [24, 24, 24]
    half = (TILE - 4) // 2  # each source pixel covers a half-tile block
    blocks = [one[2 + r * half + half // 2, 2 + c * half + half // 2, 0] for r in (0, 1)
              for c in (0, 1)]  # fmt: skip
    assert blocks == [0, 128, 255, 255]
    tile = one[2 : TILE - 2, 2 : TILE - 2, 0]
    assert set(tile.flatten().tolist()) == {0, 128, 255}  # no blending between blocks
    assert one[TILE - 2, 2].tolist() == [24, 24, 24]  # the tile ends 2 pixels short of the cell
    two = captioned_grid(image[None].expand(2, 3, 2, 2), ["a", "b"])
    gap = two[TILE // 2, TILE - 2 : TILE + 2]  # the first tile's right edge, the second's left
    assert gap.tolist() == [[24, 24, 24]] * 4
    with pytest.raises(ValueError):  # a caption per image
        captioned_grid(image[None].expand(2, 3, 2, 2), ["only one"])


def test_a_caption_is_green_under_a_right_prediction_and_red_under_a_wrong_one() -> None:
    """Below each tile, in its own column: green when ``pred`` and ``true`` agree (a caption
    without them agrees), red when they differ."""
    import torch

    from exptorch_plugins.tensorboard import TILE, captioned_grid

    captions = ["pred: cat\ntrue: cat", "pred: dog\ntrue: cat", "no labels"]
    grid = captioned_grid(torch.zeros(3, 3, 2, 2), captions, columns=3).astype(int)

    def hues(column: int) -> set[str]:
        area = grid[TILE:, column * TILE : (column + 1) * TILE].reshape(-1, 3)
        red, green = area[:, 0] - area[:, 1] > 50, area[:, 1] - area[:, 0] > 50
        return {name for name, found in (("red", red), ("green", green)) if found.any()}

    assert [hues(c) for c in range(3)] == [{"green"}, {"red"}, {"green"}]
