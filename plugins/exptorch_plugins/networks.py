"""Network definitions used by the built-in model plugins (imports torch: load lazily)."""

from __future__ import annotations

import torch
from torch import nn


class QuickNet(nn.Module):
    """The "CIFAR10-quick" net: three 5x5 conv + 2x2 max-pool stages, then two linear layers.

    Sized from the input: ``channels`` in, ``num_classes`` out, and a first linear
    layer of ``64 * (height // 8) * (width // 8)`` inputs (64 * 4 * 4 for 32x32 images).
    """

    def __init__(self, channels: int = 3, height: int = 32, width: int = 32, num_classes: int = 10):
        super().__init__()
        if height < 8 or width < 8:
            raise ValueError(f"QuickNet needs images of at least 8x8 pixels, not {height}x{width}")
        self.model = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 8) * (width // 8), 64),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out
