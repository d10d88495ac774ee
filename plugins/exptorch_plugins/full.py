"""Checkpoint format ``full``: the tutorial's first way, ``torch.save(model)``.

The file holds the pickled model object itself, plus the optimizer and resume
state, so it loads without knowing which plugin built the model. The price is
that loading unpickles, and unpickling can run any code the file contains:
exptorch loads a ``full`` checkpoint only when the user passes
``--trust-checkpoint`` (``trust=True``), and otherwise says why it refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exptorch import Checkpoint, ExptError, hookimpl

FORMAT_VERSION = 1


class FullFormat:
    suffix = ".full.pt"

    def save(self, checkpoint: Checkpoint, path: Path) -> None:
        import torch

        if checkpoint.module is None:
            raise ValueError("the full format needs the model object (Checkpoint.module)")
        torch.save(
            {
                "format": "exptorch.full",
                "format_version": FORMAT_VERSION,
                "model": checkpoint.module,
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

        if not trust:
            raise ExptError(
                f"{path} is a full checkpoint (a pickled model), and loading it runs whatever "
                "code the file contains; pass --trust-checkpoint if you made it or trust its "
                "source, or save with --checkpoint-format safetensors or state_dict instead."
            )
        data = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(data, dict) or data.get("format") != "exptorch.full":
            raise ValueError("not an exptorch full checkpoint")
        model = data["model"]
        return Checkpoint(
            model_state=model.state_dict(),
            module=model,
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
        "full",
        FullFormat,
        description="torch.save(model): the whole pickled model (.full.pt); "
        "loading needs --trust-checkpoint",
    )
