"""Writing and reading checkpoints through the checkpoint-format plugins."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.errors import ExptError
from exptorch.rundir import atomic_path

if TYPE_CHECKING:
    import torch

    from exptorch.plugins import Plugins
    from exptorch.types import Checkpoint, CheckpointFormat

#: Prefixes that torch.compile and DistributedDataParallel add to parameter names.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def save_checkpoint(fmt: CheckpointFormat, checkpoint: Checkpoint, path: Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: the previous file survives any crash."""
    with atomic_path(path) as tmp:
        fmt.save(checkpoint, tmp)
    return path


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


def format_for(plugins: Plugins, path: Path) -> tuple[str, CheckpointFormat]:
    """The registered format whose suffix ``path`` has."""
    for name in plugins.names("checkpoint format"):
        fmt = plugins.get("checkpoint format", name).factory()
        if path.name.endswith(fmt.suffix):
            return name, fmt
    suffixes = ", ".join(
        plugins.get("checkpoint format", n).factory().suffix
        for n in plugins.names("checkpoint format")
    )
    raise ExptError(f"{path} is not a checkpoint file this install can read (known: {suffixes}).")


def load_checkpoint(
    plugins: Plugins, path: Path, *, map_location: Any = "cpu", trust: bool = False
) -> Checkpoint:
    """Load any checkpoint file, choosing the format by its suffix.

    A missing, truncated or foreign file raises :class:`ExptError` naming the file.
    """
    if path.is_dir():
        path = latest_checkpoint(path)
    if not path.is_file():
        raise ExptError(f"Checkpoint {path} does not exist.")
    name, fmt = format_for(plugins, path)
    try:
        checkpoint = fmt.load(path, map_location=map_location, trust=trust)
    except ExptError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExptError(
            f"{path} is not a readable {name} checkpoint (truncated or not a checkpoint: {reason})."
        ) from None
    checkpoint.model_state = clean_state_dict(checkpoint.model_state)
    return checkpoint


def latest_checkpoint(folder: Path) -> Path:
    """The newest checkpoint in a run folder (or its ``checkpoints/`` folder)."""
    where = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    files = sorted(p for p in where.glob("epoch-*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ExptError(f"{folder} holds no checkpoint.")
    return files[-1]
