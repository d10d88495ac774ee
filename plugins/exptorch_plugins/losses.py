"""Loss plugin ``cross-entropy``, for ``--loss``; it takes class indices or class probabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from exptorch import hookimpl

if TYPE_CHECKING:
    import torch


def cross_entropy(
    *, label_smoothing: float = 0.0, **_: Any
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    import functools

    import torch.nn.functional as F

    return functools.partial(F.cross_entropy, label_smoothing=label_smoothing)


@hookimpl
def register_losses(register: Any) -> None:
    register(
        "cross-entropy",
        cross_entropy,
        description="softmax cross-entropy with --label-smoothing; soft targets accepted",
    )
