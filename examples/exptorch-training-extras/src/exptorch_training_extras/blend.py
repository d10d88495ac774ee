"""A mixup-style batch transform, from the public API only."""

from __future__ import annotations

from collections.abc import Callable

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


def make_blend(
    classes: int, alpha: float
) -> Callable[[torch.Tensor, torch.Tensor, torch.Generator], Batch]:
    """Blend each image with a shuffled partner by a Beta(alpha, alpha) weight, labels alike.

    Every random number comes from the generator exptorch passes, so a resumed run
    blends the same pairs by the same weights.
    """
    gamma = torch.distributions.Gamma(torch.tensor(alpha), torch.tensor(1.0))

    def transform(images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Batch:
        # Beta(a, a) as X / (X + Y) of two Gamma(a) draws, made reproducible by seeding
        # torch's global generator from ours inside a fork of the RNG state.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x, y = gamma.sample(), gamma.sample()
        weight = float(x / (x + y))
        order = torch.randperm(len(images), generator=generator).to(images.device)
        soft = (
            targets if targets.dim() == 2 else torch.nn.functional.one_hot(targets, classes).float()
        )
        return weight * images + (1 - weight) * images[order], weight * soft + (1 - weight) * soft[
            order
        ]

    return transform
