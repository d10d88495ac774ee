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
from exptorch_plugins.state_dict import from_payload, to_payload


class FullFormat:
    suffix = ".full.pt"

    def save(self, checkpoint: Checkpoint, path: Path) -> None:
        import torch

        if checkpoint.module is None:
            raise ValueError("the full format needs the model object (Checkpoint.module)")
        torch.save(to_payload(checkpoint, "full", model=checkpoint.module), path)

    def load(self, path: Path, *, map_location: Any = "cpu", trust: bool = False) -> Checkpoint:
        import torch

        if not trust:
            raise ExptError(
                f"{path} is a full checkpoint (a pickled model), and loading it runs whatever "
                "code the file contains; pass --trust-checkpoint if you made it or trust its "
                "source, or save with --checkpoint-format safetensors or state_dict instead."
            )
        data = torch.load(path, map_location=map_location, weights_only=False)
        model = data.get("model") if isinstance(data, dict) else None
        if model is None:
            raise ValueError("not an exptorch full checkpoint")
        return from_payload(data, "full", model_state=model.state_dict(), module=model)


@hookimpl
def register_checkpoint_formats(register: Any) -> None:
    register(
        "full",
        FullFormat,
        description="torch.save(model): the whole pickled model (.full.pt); "
        "loading needs --trust-checkpoint",
    )
