"""Checkpoint format ``safetensors``: weights in a ``.safetensors`` file, no pickle anywhere.

A checkpoint is three files with one stem::

    epoch-003.safetensors        the model's weights (the file you point exptorch at)
    epoch-003.safetensors.json   sidecar: epoch, step, config, meta (model, classes,
                                 input size, normalisation, versions), the layout of
                                 the optimizer and resume state, and the files' sizes
    epoch-003.safetensors.state  the optimizer's and the resume state's tensors
                                 (momentum buffers, RNG states), also safetensors

Nested optimizer state is flattened: every tensor is stored under its path
(``optimizer/state/0/momentum_buffer``) and the JSON keeps the structure with a
``{"__tensor__": path}`` marker in its place; a ``nan`` or ``inf`` becomes
``{"__float__": "nan"}``, so the sidecar is strict JSON. Loading reads JSON and
safetensors only, so no code from the files ever runs. The sidecar and the state file are
moved into place before the weights file, so the weights file's presence means
the set is complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch import Checkpoint, hookimpl

if TYPE_CHECKING:
    import torch

FORMAT = "exptorch.safetensors"
FORMAT_VERSION = 1
SIDECAR = ".json"
STATE = ".state"


def encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, with every tensor moved into ``tensors`` under its path."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {"__tensor__": path}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v, f"{path}/{k}", tensors) for k, v in value.items()}
        return {"__items__": [[k, encode(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{path} holds a {type(value).__name__}, which safetensors cannot store")


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__items__" in value:
            return {k: decode(v, tensors) for k, v in value["__items__"]}
        if "__tuple__" in value:
            return tuple(decode(v, tensors) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        return {k: decode(v, tensors) for k, v in value.items()}
    return value


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that share no memory, as ``safetensors`` requires."""
    seen: set[tuple[str, int]] = set()
    out = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach()
        storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
        if storage in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(storage)
        out[key] = tensor.contiguous()
    return out


def _device(map_location: Any) -> str:
    if map_location is None:
        return "cpu"
    if callable(map_location) or isinstance(map_location, dict):
        raise ValueError("the safetensors format takes a device as map_location")
    return str(map_location)


class SafetensorsFormat:
    suffix = ".safetensors"

    def save(self, checkpoint: Checkpoint, path: Path) -> None:
        from safetensors.torch import save_file

        state_path = path.with_name(path.name + STATE)
        tensors: dict[str, torch.Tensor] = {}
        optimizer = encode(checkpoint.optimizer_state, "optimizer", tensors)
        extra = encode(checkpoint.extra, "extra", tensors)
        config = encode(checkpoint.config, "config", tensors)
        meta = encode(checkpoint.meta, "meta", tensors)
        save_file(_storable(tensors), state_path, metadata={"format": FORMAT})
        save_file(
            _storable(checkpoint.model_state),
            path,
            metadata={"format": FORMAT, "epoch": str(checkpoint.epoch)},
        )
        sidecar = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "epoch": checkpoint.epoch,
            "step": checkpoint.step,
            "config": config,
            "meta": meta,
            "weights": {
                "file": path.name,
                "bytes": path.stat().st_size,
                "order": list(checkpoint.model_state),  # safetensors sorts its keys
            },
            "state": {"file": state_path.name, "bytes": state_path.stat().st_size},
            "optimizer_state": optimizer,
            "extra": extra,
        }
        text = json.dumps(sidecar, indent=1, allow_nan=False)
        path.with_name(path.name + SIDECAR).write_text(text + "\n")

    def load(self, path: Path, *, map_location: Any = "cpu", trust: bool = False) -> Checkpoint:
        from safetensors.torch import load_file

        sidecar_path = path.with_name(path.name + SIDECAR)
        if not sidecar_path.is_file():
            raise ValueError(f"its sidecar {sidecar_path.name} is missing")
        sidecar = json.loads(sidecar_path.read_text())
        if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
            raise ValueError(f"{sidecar_path.name} is not an exptorch safetensors sidecar")
        for part, file in ((sidecar["weights"], path), (sidecar["state"], None)):
            file = file or path.with_name(part["file"])
            size = file.stat().st_size if file.is_file() else None
            if size != part["bytes"]:
                raise ValueError(
                    f"{file.name} has {size} bytes where the sidecar says {part['bytes']}"
                )
        device = _device(map_location)
        tensors = load_file(path.with_name(sidecar["state"]["file"]), device=device)
        weights = load_file(path, device=device)
        order = sidecar["weights"].get("order") or sorted(weights)
        if sorted(order) != sorted(weights):
            raise ValueError(f"{path.name} does not hold the tensors its sidecar lists")
        return Checkpoint(
            model_state={key: weights[key] for key in order},
            optimizer_state=decode(sidecar["optimizer_state"], tensors),
            epoch=int(sidecar["epoch"]),
            step=int(sidecar["step"]),
            config=decode(sidecar.get("config", {}), tensors),
            meta=decode(sidecar.get("meta", {}), tensors),
            extra=decode(sidecar["extra"], tensors),
        )


@hookimpl
def register_checkpoint_formats(register: Any) -> None:
    register(
        "safetensors",
        SafetensorsFormat,
        description="weights in .safetensors plus a JSON sidecar and a safetensors state "
        "file; loads without pickle",
    )
