"""Writing, finding, pruning and reading checkpoints through the checkpoint-format plugins.

A run's ``checkpoints/`` folder holds one checkpoint per epoch, ``epoch-003.pt``
(or another format's suffix), plus ``epoch-003-step-000250.pt`` when a run was
interrupted in the middle of epoch 3. A format may add companion files named
after the main file (``epoch-003.safetensors.json``); the main file is always
the last one moved into place, so a checkpoint whose main file exists is complete.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.errors import ExptError, first_line
from exptorch.rundir import atomic_files

if TYPE_CHECKING:
    import torch

    from exptorch.plugins import Plugins
    from exptorch.types import Checkpoint, CheckpointFormat, DatasetInfo

#: Prefixes that torch.compile and DistributedDataParallel add to parameter names.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
#: What ``--keep`` accepts: every epoch, only the newest, or the best and the newest.
KEEP_CHOICES = ("all", "last", "best")

_NAME = re.compile(r"^epoch-(\d+)(?:-step-(\d+))?\.")


def checkpoint_name(epoch: int, suffix: str, step: int | None = None) -> str:
    """``epoch-003.pt`` for a finished epoch, ``epoch-003-step-000250.pt`` inside one."""
    within = f"-step-{step:06d}" if step is not None else ""
    return f"epoch-{epoch:03d}{within}{suffix}"


def save_checkpoint(fmt: CheckpointFormat, checkpoint: Checkpoint, path: Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: the previous files survive any crash.

    The format writes into a hidden staging folder; every file is fsynced and
    moved into place, the main file last (see :func:`exptorch.rundir.atomic_files`).
    """
    with atomic_files(path) as staged:
        try:
            fmt.save(checkpoint, staged)
        except (OSError, ExptError):
            raise
        except Exception as exc:  # torch.save reports a full disk as a RuntimeError
            if _nearly_full(path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
            raise
    return path


def _nearly_full(folder: Path) -> bool:
    """Whether the disk under ``folder`` has less than 1 MiB left (checked while the failed
    checkpoint still takes its space)."""
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return stats.f_bavail * stats.f_frsize < 2**20


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``torch.compile``/DDP wrapper prefixes so the weights load into a plain model."""
    cleaned = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        cleaned[key] = value
    return cleaned


def formats(plugins: Plugins) -> dict[str, CheckpointFormat]:
    """Every registered checkpoint format, by name."""
    return {
        name: plugins.get("checkpoint format", name).factory()
        for name in plugins.names("checkpoint format")
    }


def format_for(plugins: Plugins, path: Path) -> tuple[str, CheckpointFormat]:
    """The registered format whose suffix ``path`` has (the longest match wins)."""
    matches = [
        (len(fmt.suffix), name, fmt)
        for name, fmt in formats(plugins).items()
        if path.name.endswith(fmt.suffix)
    ]
    if not matches:
        suffixes = ", ".join(sorted(fmt.suffix for fmt in formats(plugins).values()))
        raise ExptError(
            f"{path} is not a checkpoint file this install can read (known: {suffixes})."
        )
    _, name, fmt = max(matches, key=lambda m: m[0])
    return name, fmt


def load_checkpoint(
    plugins: Plugins, path: Path, *, map_location: Any = "cpu", trust: bool = False
) -> Checkpoint:
    """Load any checkpoint file (or a run folder's newest), choosing the format by its suffix.

    ``map_location`` defaults to the CPU, so a checkpoint written on a GPU loads
    anywhere. A missing, truncated or foreign file raises :class:`ExptError`
    naming the file; ``trust`` allows formats that run pickled code (``full``).
    """
    if path.is_dir():
        path = latest_checkpoint(path, plugins)
    if not path.is_file():
        raise ExptError(f"Checkpoint {path} does not exist.")
    name, fmt = format_for(plugins, path)
    try:
        checkpoint = fmt.load(path, map_location=map_location, trust=trust)
    except ExptError:
        raise
    except pickle.UnpicklingError:
        # Never pass on torch's advice to retry with weights_only=False: that runs the file's code.
        raise ExptError(
            f"{path} is not an exptorch {name} checkpoint: it holds pickled Python objects that "
            "cannot be read safely."
        ) from None
    except Exception as exc:
        reason = first_line(exc)
        raise ExptError(
            f"{path} is not a readable {name} checkpoint (truncated or not a checkpoint: {reason})."
        ) from None
    checkpoint.model_state = clean_state_dict(checkpoint.model_state)
    return checkpoint


def _order(path: Path) -> tuple[int, float]:
    match = _NAME.match(path.name)
    assert match is not None
    epoch, step = match.groups()
    return int(epoch), (int(step) if step is not None else math.inf)


def checkpoint_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """The main files of the checkpoints in ``folder``, oldest first (companions excluded)."""
    suffixes = tuple(suffixes)
    found = [
        p
        for p in folder.iterdir()
        if p.is_file() and _NAME.match(p.name) and p.name.endswith(suffixes)
    ]
    # A companion (``x.safetensors.json``) never ends with a format's suffix unless it is one.
    found = [p for p in found if not any(p.name.startswith(q.name + ".") for q in found)]
    return sorted(found, key=_order)


def latest_checkpoint(folder: Path, plugins: Plugins) -> Path:
    """The newest checkpoint in a run folder (or its ``checkpoints/`` folder)."""
    where = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    suffixes = [fmt.suffix for fmt in formats(plugins).values()]
    files = checkpoint_files(where, suffixes) if where.is_dir() else []
    if not files:
        raise ExptError(f"{folder} holds no checkpoint.")
    return files[-1]


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint: its main file first (so it stops counting), then its companions."""
    path.unlink(missing_ok=True)
    for companion in path.parent.glob(glob_escape(path.name) + ".*"):
        companion.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def prune_checkpoints(
    folder: Path, suffixes: Iterable[str], keep: str, newest: Path, best: Path | None
) -> list[Path]:
    """Apply ``--keep`` after ``newest`` was written; return the checkpoints removed.

    ``all`` keeps every finished epoch, ``last`` only ``newest``, ``best`` the
    best epoch and ``newest`` (to resume from). Checkpoints written inside an
    interrupted epoch are removed under every policy once a later one exists.
    """
    if keep not in KEEP_CHOICES:
        raise ExptError(f"--keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}.")
    removed = []
    for path in checkpoint_files(folder, suffixes):
        if path == newest:
            continue
        partial = _order(path)[1] != math.inf
        if partial or keep == "last" or (keep == "best" and path != best):
            remove_checkpoint(path)
            removed.append(path)
    return removed


def build_model(plugins: Plugins, checkpoint: Checkpoint) -> torch.nn.Module:
    """The model a checkpoint holds, with its weights, in eval mode, on the CPU.

    A ``full`` checkpoint carries the module itself; otherwise the model plugin
    named in the checkpoint is called with the recorded options (those marked
    ``initial_weights`` reset to their defaults) and the weights are loaded.
    """
    from exptorch.types import DatasetInfo

    if checkpoint.module is not None:
        module: torch.nn.Module = checkpoint.module
        return module.cpu().eval()
    meta = checkpoint.meta
    if "model" not in meta or "info" not in meta:
        raise ExptError("The checkpoint does not say which model it holds (no model in its meta).")
    try:
        info = DatasetInfo.from_dict(meta["info"])
    except ValueError as exc:
        raise ExptError(f"The checkpoint has bad metadata: {exc}.") from None
    reg = plugins.get("model", meta["model"])
    options = dict(meta.get("model_options", {}))
    for opt in reg.options:
        if opt.initial_weights or opt.name not in options:
            options[opt.name] = opt.default
    model: torch.nn.Module = reg.factory(info, **options)
    # A run evaluated with other weights of the same model (an EMA) saved them for prediction.
    weights = checkpoint.extra.get("eval_model_state") or checkpoint.model_state
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ExptError(
            f"The checkpoint's weights do not fit model {meta['model']!r} as this install "
            f"builds it ({fit_error(exc)})."
        ) from None
    return model.eval()


def fit_error(exc: RuntimeError) -> str:
    """What did not fit: torch's first line only names the model ("Error(s) in loading
    state_dict for QuickNet:"), the next one says which keys or shapes differ."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    detail = lines[0].rstrip(".") if lines else type(exc).__name__
    return detail if len(detail) <= 300 else detail[:297] + "..."


@dataclass
class Trained:
    """A trained model ready to use, as ``expt predict`` and ``expt eval`` start from."""

    checkpoint: Checkpoint
    info: DatasetInfo
    model: torch.nn.Module
    device: torch.device


def checked_meta(checkpoint: Checkpoint, path: Path) -> DatasetInfo:
    """The dataset info a checkpoint claims, checked before anything is built from it.

    A checkpoint is a file from anywhere: its class names are printed, its input
    size sizes the model, its ``std`` divides every pixel. Anything malformed or
    out of range (see :func:`exptorch.datasets_check.checked_info`) is one sentence:
    ``Checkpoint X has bad metadata: ...``.
    """
    from exptorch.types import DatasetInfo

    def bad(reason: str) -> ExptError:
        return ExptError(f"Checkpoint {path} has bad metadata: {reason}.")

    meta, config = checkpoint.meta, checkpoint.config
    if not isinstance(meta, dict) or not isinstance(config, dict):
        raise bad("its meta or config is not a mapping")
    if "info" not in meta:
        raise ExptError(f"{path} does not record its classes and input size.")
    if not isinstance(meta.get("model"), str):
        raise bad(f"its model name is {meta.get('model')!r}, not a string")
    for key, where in (("model_options", meta), ("options", config)):
        if not isinstance(where.get(key) or {}, dict):
            raise bad(f"its {key} are a {type(where[key]).__name__}, not a mapping")
    for key, where in (("dataset", meta), ("dataset", config), ("data_dir", config)):
        if where.get(key) is not None and not isinstance(where[key], str):
            raise bad(f"its {key} is {where[key]!r}, not a string")
    try:
        return DatasetInfo.from_dict(meta["info"])
    except ValueError as exc:
        raise bad(str(exc)) from None


def check_finite(checkpoint: Checkpoint, path: Path) -> None:
    """Refuse weights that are not all finite (a run that diverged): they predict nothing."""
    import torch

    state = checkpoint.module.state_dict() if checkpoint.module is not None else {}
    state = state or checkpoint.model_state
    for name, tensor in state.items():
        floating = torch.is_tensor(tensor) and tensor.is_floating_point()
        if floating and not bool(torch.isfinite(tensor).all()):
            raise ExptError(
                f"Checkpoint {path} holds weights that are not finite ({name} has nan or "
                "inf): the run diverged; use an earlier checkpoint or train again with a "
                "lower --lr."
            )


def load_trained(plugins: Plugins, path: Path, *, device: str, trust: bool = False) -> Trained:
    """Load ``path``, check what it claims, rebuild its model with its weights, move it to
    ``device``."""
    from exptorch.train import make_device

    checkpoint = load_checkpoint(plugins, path, trust=trust)
    info = checked_meta(checkpoint, path)
    check_finite(checkpoint, path)
    target = make_device(plugins, device)
    return Trained(
        checkpoint=checkpoint,
        info=info,
        model=build_model(plugins, checkpoint).to(target),
        device=target,
    )
