"""Balanced accuracy: each class's accuracy, averaged over the classes seen."""

from __future__ import annotations

import torch
from exptorch import Metric


class BalancedAccuracy(Metric):
    def __init__(self, classes: int) -> None:
        self.classes = classes

    def reset(self, device: torch.device) -> None:
        self.totals = torch.zeros(2, self.classes, dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        hits = (logits.argmax(dim=1) == labels).double()
        self.totals[0].index_add_(0, labels, hits)
        self.totals[1].index_add_(0, labels, torch.ones_like(hits))

    def sums(self) -> torch.Tensor:
        return self.totals

    def compute(self, sums: torch.Tensor) -> float:
        seen = sums[1] > 0
        return float((sums[0][seen] / sums[1][seen]).mean()) if seen.any() else 0.0
