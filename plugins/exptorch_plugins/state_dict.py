"""Checkpoint format ``state_dict``: ``torch.save`` of plain weights and state, loaded safely.

Loading uses ``weights_only=True`` (no arbitrary pickled code runs) and
``map_location`` (a checkpoint written on a GPU loads on a CPU-only machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exptorch import Checkpoint, hookimpl

FORMAT_VERSION = 1


class StateDictFormat:
    suffix = ".pt"

    def save(self, checkpoint: Checkpoint, path: Path) -> None:
        import torch

        torch.save(
            {
                "format": "exptorch.state_dict",
                "format_version": FORMAT_VERSION,
                "model_state": checkpoint.model_state,
                "optimizer_state": checkpoint.optimizer_state,
                "epoch": checkpoint.epoch,
                "step": checkpoint.step,
                "config": checkpoint.config,
                "meta": checkpoint.meta,
                "extra": checkpoint.extra,
            },
            path,
        )

    def load(self, path: Path, *, map_location: Any = "cpu", trust: bool = False) -> Checkpoint:
        import torch

        data = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(data, dict) or data.get("format") != "exptorch.state_dict":
            raise ValueError("not an exptorch state_dict checkpoint")
        return Checkpoint(
            model_state=data["model_state"],
            optimizer_state=data.get("optimizer_state"),
            epoch=int(data["epoch"]),
            step=int(data.get("step", 0)),
            config=data.get("config", {}),
            meta=data.get("meta", {}),
            extra=data.get("extra", {}),
        )


@hookimpl
def register_checkpoint_formats(register: Any) -> None:
    register(
        "state_dict",
        StateDictFormat,
        description="torch.save of weights and optimizer state (.pt); loads with weights_only",
    )
