"""Checkpoint format ``state_dict``: ``torch.save`` of plain weights and state, loaded safely.

Loading uses ``weights_only=True`` (no arbitrary pickled code runs) and
``map_location`` (a checkpoint written on a GPU loads on a CPU-only machine).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

from exptorch import Checkpoint, ExptError, hookimpl

FORMAT_VERSION = 1


def to_payload(checkpoint: Checkpoint, kind: str, **model: Any) -> dict[str, Any]:
    """The dict that ``torch.save`` writes for format ``kind``; ``model`` holds the weights
    (``model_state=...``) or the module itself (``model=...``)."""
    return {
        "format": f"exptorch.{kind}",
        "format_version": FORMAT_VERSION,
        **model,
        "optimizer_state": checkpoint.optimizer_state,
        "epoch": checkpoint.epoch,
        "step": checkpoint.step,
        "config": checkpoint.config,
        "meta": checkpoint.meta,
        "extra": checkpoint.extra,
    }


def from_payload(data: Any, kind: str, **model: Any) -> Checkpoint:
    """The :class:`Checkpoint` in a loaded payload of format ``kind``, else ``ValueError``."""
    if not isinstance(data, dict) or data.get("format") != f"exptorch.{kind}":
        raise ValueError(f"not an exptorch {kind} checkpoint")
    return Checkpoint(
        **model,
        optimizer_state=data.get("optimizer_state"),
        epoch=int(data["epoch"]),
        step=int(data.get("step", 0)),
        config=data.get("config", {}),
        meta=data.get("meta", {}),
        extra=data.get("extra", {}),
    )


class StateDictFormat:
    suffix = ".pt"

    def save(self, checkpoint: Checkpoint, path: Path) -> None:
        import torch

        torch.save(to_payload(checkpoint, "state_dict", model_state=checkpoint.model_state), path)

    def load(self, path: Path, *, map_location: Any = "cpu", trust: bool = False) -> Checkpoint:
        import torch

        try:
            with warnings.catch_warnings():  # torch's notes on pickle protocols are not ours
                warnings.simplefilter("ignore")
                data = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            # torch's message advises weights_only=False, which would run code from the file.
            raise ExptError(
                f"{path} is not an exptorch checkpoint: it holds pickled Python objects that "
                "exptorch does not load (unpickling them could run code)."
            ) from None
        model_state = data.get("model_state") if isinstance(data, dict) else None
        return from_payload(data, "state_dict", model_state=model_state)


@hookimpl
def register_checkpoint_formats(register: Any) -> None:
    register(
        "state_dict",
        StateDictFormat,
        description="torch.save of weights and optimizer state (.pt); loads with weights_only",
    )
