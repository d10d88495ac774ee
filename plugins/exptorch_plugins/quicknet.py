"""Model plugin ``quicknet``: the tutorial's CIFAR10-quick convolutional net."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exptorch import DatasetInfo, ExptError, hookimpl

if TYPE_CHECKING:
    from torch import nn


def build(info: DatasetInfo, **_: Any) -> nn.Module:
    from exptorch_plugins.networks import QuickNet

    if info.height < 8 or info.width < 8:
        raise ExptError(
            f"quicknet needs images of at least 8x8 pixels; this dataset's are "
            f"{info.height}x{info.width}."
        )
    return QuickNet(info.channels, info.height, info.width, info.num_classes)


#: ``--channels-last auto`` turns channels-last on for this model on a CPU too: it pays
#: there (measured with benchmarks/bench.py; see the README's "Performance" section).
build.channels_last_on_cpu = True  # type: ignore[attr-defined]


@hookimpl
def register_models(register: Any) -> None:
    register(
        "quicknet",
        build,
        description="CIFAR10-quick: 3 x (conv 5x5, max-pool 2), then linear 64 and the classes",
    )
