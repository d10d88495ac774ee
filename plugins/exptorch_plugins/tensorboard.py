"""Logger plugin ``tensorboard``: event files in the run's own folder.

What a run shows in TensorBoard (``tensorboard --logdir runs``):

* Scalars, named like the metrics: ``train_loss``, ``test_loss``, ``test_accuracy``,
  ``lr``, ``images_per_second``, ...
* Images: ``test_predictions``, a grid of test images captioned with the predicted
  and true class (red when they differ), after every epoch.
* Graphs: the model, traced once on one test image.
* HParams: the resolved configuration with the final metrics, written into the
  run's own event file (``SummaryWriter.add_hparams`` would start a stray
  timestamped sub-folder, which shows up as a second run).

Events are flushed at every epoch's end, so a live TensorBoard follows the run.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from exptorch import Logger, RunContext, hookimpl

if TYPE_CHECKING:
    import torch

log = logging.getLogger("exptorch.tensorboard")

#: Width in pixels of one captioned tile of the image grid.
TILE = 112
_CAPTION_HEIGHT = 28


class TensorBoardLogger(Logger):
    def __init__(self, run: RunContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.run_dir))
        self.graph_logged = False
        log.info("tensorboard: writing events to %s", run.run_dir)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        flat = _flatten(hparams)  # exptorch masks secrets before any logger sees hparams
        # The metric tags are the run's own scalars, so the HParams dashboard shows
        # their last values; no extra scalars and no sub-folder are needed.
        final = {tag: float(value) for tag, value in metrics.items()}
        writer = self.writer.file_writer  # the run's own event file, not a sub-folder
        assert writer is not None, "log_hparams after finish"
        for summary in hparams_summary(flat, final):
            writer.add_summary(summary)

    def log_images(
        self, tag: str, images: torch.Tensor, captions: Sequence[str], step: int
    ) -> None:
        self.writer.add_image(tag, captioned_grid(images, captions), step, dataformats="HWC")

    def log_graph(self, model: torch.nn.Module, example_input: torch.Tensor) -> None:
        if self.graph_logged:
            return
        import torch

        training = model.training
        model.eval()  # tracing runs the model: keep batch-norm statistics untouched
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.writer.add_graph(model, example_input)
        finally:
            model.train(training)
        self.graph_logged = True

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, state: str) -> None:
        self.writer.close()


def _flatten(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """HParams values must be numbers, strings or booleans: nest with dots, join lists."""
    flat: dict[str, Any] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(str(v) for v in value)
        elif value is None:
            continue
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def captioned_grid(images: torch.Tensor, captions: Sequence[str], columns: int = 8) -> Any:
    """One ``uint8`` HWC array: each image scaled into a tile with its caption below.

    A caption ``"pred: A\\ntrue: B"`` is drawn in red when A differs from B.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    count = len(images)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    tile_h = TILE + _CAPTION_HEIGHT
    canvas = Image.new("RGB", (columns * TILE, rows * tile_h), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        array = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
        array = array.transpose(1, 2, 0)
        if array.shape[2] == 1:
            array = array.repeat(3, axis=2)
        tile = Image.fromarray(array, "RGB").resize((TILE - 4, TILE - 4), Image.Resampling.NEAREST)
        x, y = (i % columns) * TILE, (i // columns) * tile_h
        canvas.paste(tile, (x + 2, y + 2))
        colour = (120, 220, 120) if _agrees(caption) else (255, 110, 110)
        draw.multiline_text((x + 3, y + TILE), caption, fill=colour, spacing=2)
    return np.asarray(canvas)


def _agrees(caption: str) -> bool:
    lines = dict(line.split(":", 1) for line in caption.splitlines() if ":" in line)
    return lines.get("pred", "").strip() == lines.get("true", "").strip()


@hookimpl
def register_loggers(register: Any) -> None:
    register(
        "tensorboard",
        TensorBoardLogger,
        description="TensorBoard scalars, hparams, prediction images and graph in the run folder",
    )
