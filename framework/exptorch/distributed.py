"""Data-parallel training on PyTorch's own engine: ``torch.distributed.run`` and DDP.

``expt run --nproc-per-node N`` re-launches itself through ``torch.distributed.run``
(torchrun) on this machine; for several machines, start ``torchrun ... -m exptorch
run ...`` on each with a rendezvous. Every process trains on its own stride of one
shared, seeded permutation; the gradients are averaged by DDP (``gloo`` on CPU,
``nccl`` on CUDA), and only rank 0 writes the run folder, metrics, logs and
checkpoints -- plain state dicts that a single process loads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class World:
    """Where this process sits in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_world() -> World:
    """Read the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def launch(nproc_per_node: int, args: Sequence[str]) -> int:
    """Run ``expt <args>`` in ``nproc_per_node`` processes under ``torch.distributed.run``."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc_per_node}", "-m", "exptorch", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(command, env=env)


def init(world: World, device: torch.device) -> None:
    """Join the process group: ``nccl`` for CUDA devices, ``gloo`` otherwise."""
    import torch.distributed as dist

    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all ranks (a no-op outside a distributed run)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_tensor(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` summed over all ranks, as a copy on ``device`` (itself outside DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    total = tensor.to(device).clone()
    dist.all_reduce(total)
    return total


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (for stop decisions all ranks must share)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def broadcast_objects(values: list[Any]) -> list[Any]:
    """Rank 0's ``values`` (picklable) on every rank, such as the run name and seed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    dist.broadcast_object_list(values, src=0)
    return values


def shutdown(clean: bool = True) -> None:
    """Leave the process group. ``clean``: every rank got here the same way (no error)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if not clean:
            # Another rank may be waiting in a collective this one will never join; exit and
            # let torch.distributed.run stop the others.
            return
        # Meet first: a rank that tears gloo down while another is still busy can hang
        # in the process group's destructor (seen with torch 2.4).
        dist.barrier()
        dist.destroy_process_group()
