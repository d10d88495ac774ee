"""The small types that hooks receive and return.

Only the standard library is imported at module level; torch types appear in
annotations alone, so that importing this module (and therefore ``exptorch``)
stays cheap for the CLI's start-up path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from exptorch.config import RunConfig


@dataclass(frozen=True)
class Option:
    """An option a plugin adds to ``expt run`` (and to the config file).

    ``name`` is the config key, in snake_case and prefixed with the plugin's
    registered name (``vgg16_head``); the command-line flag is derived from it
    (``--vgg16-head``). ``choices`` restricts the value; ``type`` converts it.
    The resolved value reaches the factory as a keyword argument of that name.

    ``minimum`` and ``maximum`` bound a number; a value outside them (or a
    ``nan``/``inf`` given to a ``float`` option) is refused before anything is written.

    ``initial_weights`` marks an option that only chooses where the starting
    weights come from (a pretrained file): when exptorch rebuilds a model to load
    a checkpoint into it (resume, ``expt predict``, ``expt eval``) it passes the
    option's default instead, so the original file is neither read nor needed.
    """

    name: str
    default: Any = None
    help: str = ""
    type: type = str
    choices: Sequence[str] | None = None
    is_flag: bool = False
    initial_weights: bool = False
    #: Bounds checked before a run starts (for ``int`` and ``float`` options).
    minimum: float | None = None
    maximum: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def off_flag(self) -> str:
        """What turns an ``is_flag`` option off (``--no-tv-pretrained``), whatever its default."""
        return "--no-" + self.flag[2:]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data, and what a checkpoint keeps for prediction."""

    channels: int
    height: int
    width: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetInfo:
        """The info a checkpoint recorded, checked: ``ValueError`` says what is wrong with it
        (see :func:`exptorch.datasets_check.checked_info`)."""
        from exptorch.datasets_check import checked_info

        return cls(**checked_info(data))


@dataclass
class Splits:
    """A dataset decoded once into memory, as a dataset factory returns it.

    Images are ``uint8`` tensors of shape ``(N, C, H, W)``; labels are ``int64``
    tensors of shape ``(N,)``. Conversion to float and normalisation with
    ``mean``/``std`` happen per batch, on the training device.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: Sequence[str]
    mean: Sequence[float]
    std: Sequence[float]

    def validate(self, dataset_name: str) -> None:
        """Raise :class:`~exptorch.ExptError` in one sentence if exptorch cannot use this data:
        labels outside ``[0, len(classes))``, pixels that are not ``uint8``, fewer than 2
        classes, an empty split, ... (see :mod:`exptorch.datasets_check`)."""
        from exptorch.datasets_check import check_splits

        check_splits(self, dataset_name)

    @property
    def info(self) -> DatasetInfo:
        _, channels, height, width = self.train_images.shape
        return DatasetInfo(
            channels=int(channels),
            height=int(height),
            width=int(width),
            classes=tuple(self.classes),
            mean=tuple(float(m) for m in self.mean),
            std=tuple(float(s) for s in self.std),
        )


class Logger:
    """A metrics sink. Subclass it and override what your backend supports.

    Every method may raise: the run reports the failure, switches this logger
    off and carries on; ``metrics.jsonl`` always holds everything.
    """

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar ``metrics`` at global training ``step`` (steps never decrease)."""

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Record the run's hyperparameters with its final ``metrics`` (called once, at the end).

        ``hparams`` is the resolved configuration with secrets (keys, tokens) already masked.
        """

    def log_images(
        self, tag: str, images: torch.Tensor, captions: Sequence[str], step: int
    ) -> None:
        """Record a batch of float images in ``[0, 1]``, shape ``(N, C, H, W)``, with captions.

        exptorch calls it after each epoch with ``tag="test_predictions"`` and
        captions ``"pred: CLASS\\ntrue: CLASS"`` for a fixed set of test images.
        """

    def log_graph(self, model: torch.nn.Module, example_input: torch.Tensor) -> None:
        """Record the model's graph, traced on ``example_input`` (called once per process)."""

    def flush(self) -> None:
        """Make what was logged so far visible (called at each epoch's end)."""

    def finish(self, state: str) -> None:
        """Close the backend; ``state`` is ``finished``, ``interrupted`` or ``failed``."""


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, independent of the file format that stores it.

    ``meta`` carries what ``expt predict`` needs without any other file: the
    model name and options and the dataset info (classes, input size,
    normalisation), plus versions. ``extra`` holds resume state (RNG states,
    data order) that a format may store however it likes.
    """

    model_state: dict[str, torch.Tensor]
    epoch: int
    step: int
    config: dict[str, Any]
    meta: dict[str, Any]
    optimizer_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The live model, for formats that store the whole module (``full``); loading
    #: such a file sets it. Other formats ignore it and store ``model_state`` only.
    module: Any = None


class CheckpointFormat(Protocol):
    """A way of writing a :class:`Checkpoint` to one file and reading it back.

    ``save`` writes to exactly the path it is given; exptorch hands it a path
    inside a hidden staging folder and moves the file into place once it is
    flushed, so a format never has to handle atomicity itself. A format that
    needs more than one file writes the others beside ``path``, named
    ``path.name`` plus a further suffix (``epoch-001.safetensors.json``); they are
    moved into place first and the main file last, so a checkpoint whose main
    file exists is complete. ``load`` gets the main file and raises
    :class:`~exptorch.ExptError` (or any exception, reported as unreadable) when
    the file is not one of its checkpoints; ``trust`` is the user's explicit
    permission to run pickled code from the file.
    """

    suffix: str

    def save(self, checkpoint: Checkpoint, path: Path) -> None: ...

    def load(self, path: Path, *, map_location: Any = "cpu", trust: bool = False) -> Checkpoint: ...


@dataclass
class RunContext:
    """A run in progress, as hooks, callbacks and logger factories see it.

    Fields below ``stop_reason`` are filled in as the run is built: ``model`` and
    ``optimizer`` before callbacks are created, ``step`` and ``epoch`` as it trains.
    """

    run_dir: Path
    config: RunConfig
    info: DatasetInfo | None = None
    model: Any = None
    #: The first epoch this process trains (greater than 1 when the run was resumed).
    start_epoch: int = 1
    #: True when this process continues an earlier run folder (``expt run --resume``).
    resumed: bool = False
    stop_reason: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: The optimizer the run trains with (``torch.optim.Optimizer``).
    optimizer: Any = None
    #: The ``torch.device`` the run trains on.
    device: Any = None
    #: Optimizer steps taken so far, over the whole run (resumes included).
    step: int = 0
    #: The epoch being trained (counting from 1).
    epoch: int = 0
    #: The model that evaluation and the "best" checkpoint use; a callback may set
    #: it (an EMA of the weights). ``None`` means ``model``.
    eval_model: Any = None
    #: The metric that decides the best checkpoint (``test_accuracy``), and ``max`` or ``min``.
    monitor: str = "test_accuracy"
    monitor_mode: str = "max"
    _pending: list[dict[str, float]] = field(default_factory=list, repr=False)

    def request_stop(self, reason: str) -> None:
        """Ask the run to stop after the current epoch; the reason is printed and recorded."""
        self.stop_reason = reason

    @property
    def lr(self) -> float:
        """The learning rate of the optimizer's first parameter group right now."""
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer else 0.0

    def log(self, metrics: Mapping[str, float]) -> None:
        """Record scalar ``metrics`` at the current step, in metrics.jsonl and every logger.

        Written right after the event that called it returns; names must not be
        ``step`` or ``epoch``.
        """
        self._pending.append({str(k): float(v) for k, v in metrics.items()})

    def take_pending(self) -> list[dict[str, float]]:
        """The metrics :meth:`log` collected since the last call (used by the loop)."""
        pending, self._pending = self._pending, []
        return pending
