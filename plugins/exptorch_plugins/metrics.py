"""Metric plugins ``accuracy`` (always on), ``top5`` and ``macro-f1``, for ``--metric``.

Each accumulates additive sums over the test batches; exptorch adds the sums of
all processes under DDP and records the value as ``test_<name>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exptorch import DatasetInfo, Metric, Option, hookimpl

if TYPE_CHECKING:
    import torch


class TopK(Metric):
    """The fraction of images whose class is among the ``k`` highest logits."""

    def __init__(self, k: int) -> None:
        self.k = k

    def reset(self, device: torch.device) -> None:
        import torch

        self.totals = torch.zeros(2, dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        k = min(self.k, logits.shape[1])
        hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
        self.totals[0] += hits.sum()
        self.totals[1] += len(labels)

    def sums(self) -> torch.Tensor:
        return self.totals

    def compute(self, sums: torch.Tensor) -> float:
        return float(sums[0] / sums[1].clamp(min=1))


class MacroF1(Metric):
    """The mean over classes of F1 = 2 TP / (2 TP + FP + FN).

    A class never seen nor predicted counts as 0.
    """

    def __init__(self, classes: int) -> None:
        self.classes = classes

    def reset(self, device: torch.device) -> None:
        import torch

        self.totals = torch.zeros(3, self.classes, dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        import torch

        predicted = logits.argmax(dim=1)
        ones = torch.ones_like(labels, dtype=torch.float64)
        hit = (predicted == labels).double()
        self.totals[0].index_add_(0, labels, hit)  # true positives
        self.totals[1].index_add_(0, predicted, ones - hit)  # false positives
        self.totals[2].index_add_(0, labels, ones - hit)  # false negatives

    def sums(self) -> torch.Tensor:
        return self.totals

    def compute(self, sums: torch.Tensor) -> float:
        tp, fp, fn = sums
        return float((2 * tp / (2 * tp + fp + fn).clamp(min=1)).mean())


def accuracy(info: DatasetInfo, **_: Any) -> Metric:
    return TopK(1)


def top5(info: DatasetInfo, *, top5_k: int = 5, **_: Any) -> Metric:
    return TopK(top5_k)


def macro_f1(info: DatasetInfo, **_: Any) -> Metric:
    return MacroF1(info.num_classes)


@hookimpl
def register_metrics(register: Any) -> None:
    register("accuracy", accuracy, description="fraction of test images classified right")
    register(
        "top5",
        top5,
        description="fraction whose class is among the k most probable",
        options=(
            Option("top5_k", 5, "How many of the most probable classes count.", int, minimum=1),
        ),
    )
    register("macro-f1", macro_f1, description="F1 score averaged over the classes")
