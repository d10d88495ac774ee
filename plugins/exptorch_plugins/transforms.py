"""Batch transform plugins ``crop-flip``, ``mixup`` and ``cutmix``, for ``--transform``.

They work on whole normalised training batches on the training device. Their
random numbers come from the generator exptorch hands them, seeded from the
run's seed, the epoch and the batch's index, so a run resumed in the middle
of an epoch transforms the remaining batches exactly as the first run would.
``mixup`` and ``cutmix`` turn class indices into class probabilities, which
the ``cross-entropy`` loss accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from exptorch import DatasetInfo, ExptError, Option, hookimpl

if TYPE_CHECKING:
    import torch

Batch = tuple["torch.Tensor", "torch.Tensor"]
Transform = Callable[["torch.Tensor", "torch.Tensor", "torch.Generator"], Batch]


def crop_flip(info: DatasetInfo, *, crop_flip_padding: int = 4, **_: Any) -> Transform:
    """Random crop after zero padding (black, in pixel terms) and a random horizontal flip."""
    import torch

    if crop_flip_padding >= min(info.height, info.width):
        raise ExptError(
            f"--crop-flip-padding {crop_flip_padding} must be smaller than the images "
            f"({info.height}x{info.width})."
        )
    black = [-m / s for m, s in zip(info.mean, info.std, strict=True)]

    def transform(images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Batch:
        from exptorch.data import random_crop_flip

        fill = torch.tensor(black, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        shifted = random_crop_flip(images - fill, generator, crop_flip_padding) + fill
        return shifted.contiguous(memory_format=_format(images)), targets

    return transform


def _format(images: torch.Tensor) -> torch.memory_format:
    import torch

    if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last if not images.is_contiguous() else torch.contiguous_format
    return torch.contiguous_format


def soft_targets(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Class indices as one-hot probabilities; probabilities as they are."""
    import torch.nn.functional as F

    return F.one_hot(targets, classes).float() if targets.dim() == 1 else targets


def beta(alpha: float, generator: torch.Generator) -> float:
    """One draw from Beta(alpha, alpha), reproducibly from ``generator``."""
    import numpy as np
    import torch

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(info: DatasetInfo, *, mixup_alpha: float = 0.2, **_: Any) -> Transform:
    """Each image blended with another of the batch, and the targets alike (Zhang et al. 2018)."""
    import torch

    def transform(images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Batch:
        lam = beta(mixup_alpha, generator)
        order = torch.randperm(len(images), generator=generator).to(images.device)
        soft = soft_targets(targets, info.num_classes)
        return lam * images + (1 - lam) * images[order], lam * soft + (1 - lam) * soft[order]

    return transform


def cutmix(info: DatasetInfo, *, cutmix_alpha: float = 1.0, **_: Any) -> Transform:
    """A random box of each image replaced by another image's (Yun et al. 2019)."""
    import math

    import torch

    if info.height < 2 or info.width < 2:
        raise ExptError(
            f"--transform cutmix needs images of at least 2x2 pixels; this dataset's are "
            f"{info.height}x{info.width}."
        )

    def transform(images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Batch:
        lam = beta(cutmix_alpha, generator)
        order = torch.randperm(len(images), generator=generator).to(images.device)
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=generator))
        cy, cx = cy % h, cx % w
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = images[order][..., top:bottom, left:right]
        kept = 1 - (bottom - top) * (right - left) / (h * w)
        soft = soft_targets(targets, info.num_classes)
        return mixed, kept * soft + (1 - kept) * soft[order]

    return transform


@hookimpl
def register_transforms(register: Any) -> None:
    register(
        "crop-flip",
        crop_flip,
        description="random crop after padding, and horizontal flip (--augment)",
        options=(
            Option("crop_flip_padding", 4, "Pixels of padding before the crop.", int, minimum=0),
        ),
    )
    register(
        "mixup",
        mixup,
        description="blend pairs of images and their labels",
        options=(
            Option("mixup_alpha", 0.2, "Beta(alpha, alpha) of the blend.", float, minimum=1e-6),
        ),
    )
    register(
        "cutmix",
        cutmix,
        description="paste a box of another image, labels mixed by area",
        options=(
            Option(
                "cutmix_alpha", 1.0, "Beta(alpha, alpha) of the kept area.", float, minimum=1e-6
            ),
        ),
    )
