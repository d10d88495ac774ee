"""Batches from in-memory uint8 tensors: slice, move, convert and normalise per batch.

Decoding happens once, in the dataset plugin; per step the loop only gathers a
batch of ``uint8`` images, copies it to the device and normalises it there. The
order of each epoch comes from a generator seeded with ``(seed, epoch)``, so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random generator for one epoch's shuffle (and augmentation)."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Batches:
    """An iterable of ``(images, labels)`` device batches over one split."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        import torch

        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.limit = limit
        self.epoch = 1
        channels = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, channels, 1, 1)

    def __len__(self) -> int:
        n = -(-len(self.labels) // self.batch_size)
        return n if self.limit is None else min(n, self.limit)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` on the device to normalised float32."""
        return (images.float().div_(255) - self.mean) / self.std

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        else:
            order = None
        non_blocking = self.device.type == "cuda"
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = self.images[idx], self.labels[idx]
            x = x.to(self.device, non_blocking=non_blocking)
            y = y.to(self.device, non_blocking=non_blocking)
            yield self.normalise(x), y
