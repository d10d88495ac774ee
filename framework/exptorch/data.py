"""Batches from in-memory uint8 tensors: slice, move, convert and normalise per batch.

Decoding happens once, in the dataset plugin; per step the loop only gathers a
batch of ``uint8`` images, copies it to the device and does everything else
there, on whole batches: conversion to float, normalisation, and the memory
format (batch transforms such as ``crop-flip`` run after, in the loop). On a GPU
the whole uint8 dataset can live in device memory (CIFAR-10 is 150 MB), so a step
copies nothing.

The order of each epoch comes from a generator seeded with ``(seed, epoch)``, so
a resumed run sees exactly the batches it would have seen.
Under DDP every rank draws the same permutation and takes its own stride of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Data-on-device modes: ``auto`` keeps the data on a GPU when it fits comfortably.
DATA_ON_DEVICE = ("auto", "on", "off")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random generator for one epoch's shuffle."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, padding: int = 4
) -> torch.Tensor:
    """Random crop (zero padding of ``padding`` pixels) and horizontal flip, per image.

    Works on a whole ``(N, C, H, W)`` batch at once, on whatever device it lives on;
    the random numbers come from ``generator`` (on the CPU) so they are reproducible.
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    device = images.device
    shifts = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (torch.arange(h, device=device)[None, :] + shifts[0][:, None])[:, None, :, None]
    cols = torch.arange(w, device=device)[None, :] + shifts[1][:, None]
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def fits_on_device(nbytes: int, device: torch.device, fraction: float = 0.25) -> bool:
    """Whether ``nbytes`` can stay on ``device`` using at most ``fraction`` of its free memory."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return nbytes < fraction * free
    return device.type != "cpu"


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
        channels_last: bool = False,
        data_on_device: str = "auto",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        import torch

        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.limit = limit
        self.channels_last = channels_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 1
        self.start = 0
        resident = data_on_device == "on" or (
            data_on_device == "auto" and fits_on_device(images.nbytes, device)
        )
        self.on_device = resident and device.type != "cpu"
        if self.on_device:
            images, labels = images.to(device), labels.to(device)
        elif device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        self.images = images
        self.labels = labels
        channels = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, channels, 1, 1)

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (all of them without DDP)."""
        n = len(self.labels)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        batches = -(-self.num_samples // self.batch_size)
        return batches if self.limit is None else min(batches, self.limit)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate over epoch ``epoch``, from batch ``start`` on (a run resumed mid-epoch)."""
        self.epoch = epoch
        self.start = start

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` on the device to normalised float32."""
        import torch

        out = (images.float().div_(255) - self.mean) / self.std
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        n = len(self.labels)
        generator = epoch_generator(self.seed, self.epoch)
        order: torch.Tensor | None = None
        if self.shuffle:
            order = torch.randperm(n, generator=generator)
        if self.world_size > 1:
            order = (order if order is not None else torch.arange(n))[self.rank :: self.world_size]
        if order is not None and self.on_device:
            order = order.to(self.device)
        non_blocking = self.device.type == "cuda"
        for i in range(len(self)):
            lo = i * self.batch_size
            hi = min(lo + self.batch_size, self.num_samples)
            if i < self.start:
                continue
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = self.images[idx], self.labels[idx]
            x = x.to(self.device, non_blocking=non_blocking)
            y = y.to(self.device, non_blocking=non_blocking)
            yield self.normalise(x), y
