"""Device plugin: ``cpu``, ``cuda`` (and ``cuda:N``), ``mps``, and ``auto`` (cuda > mps > cpu)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exptorch import ExptError, hookimpl

if TYPE_CHECKING:
    import torch


def cpu(index: int | None = None) -> torch.device:
    import torch

    if index not in (None, 0):
        raise ExptError("The cpu device takes no index; use --device cpu.")
    return torch.device("cpu")


def cuda(index: int | None = None) -> torch.device:
    import torch

    if not torch.cuda.is_available():
        raise ExptError(
            "CUDA is not available on this machine (no NVIDIA GPU or driver, or a CPU-only "
            "torch build); use --device cpu or --device auto."
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ExptError(
            f"There is no cuda:{index}; this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}."
        )
    return torch.device("cuda", index or 0)


def mps(index: int | None = None) -> torch.device:
    import torch

    if not torch.backends.mps.is_available():
        raise ExptError(
            "Apple's MPS is not available here (it needs an Apple-silicon Mac with macOS 12.3+); "
            "use --device cpu or --device auto."
        )
    if index not in (None, 0):
        raise ExptError("There is only one MPS device; use --device mps.")
    return torch.device("mps")


def auto(index: int | None = None) -> torch.device:
    import torch

    if index is not None:
        raise ExptError("--device auto takes no index; name the device, as in cuda:1.")
    if torch.cuda.is_available():
        return cuda()
    if torch.backends.mps.is_available():
        return mps()
    return cpu()


@hookimpl
def register_devices(register: Any) -> None:
    register("cpu", cpu, description="the CPU")
    register("cuda", cuda, description="an NVIDIA GPU; cuda:N picks one")
    register("mps", mps, description="Apple-silicon GPU (Metal Performance Shaders)")
    register("auto", auto, description="cuda if available, else mps, else cpu")
