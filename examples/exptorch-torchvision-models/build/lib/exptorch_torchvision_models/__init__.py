"""exptorch plugin: torchvision's classification models by name (``tv-resnet18``, ...).

This module is what the ``exptorch`` entry point names, so exptorch imports it
for every ``expt`` command, ``expt --help`` included. It therefore imports only
``exptorch`` (cheap) and registers factories; torch and torchvision are imported
by the factories, when a model is actually built (see :mod:`.models`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from exptorch import DatasetInfo, Option, hookimpl

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"

#: exptorch model name -> (torchvision builder name, one-line description).
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "tv-resnet18": ("resnet18", "ResNet-18 (11.7M parameters at 1000 classes)"),
    "tv-resnet34": ("resnet34", "ResNet-34 (21.8M)"),
    "tv-resnet50": ("resnet50", "ResNet-50 (25.6M)"),
    "tv-resnext50_32x4d": ("resnext50_32x4d", "ResNeXt-50 32x4d (25.0M)"),
    "tv-wide_resnet50_2": ("wide_resnet50_2", "Wide ResNet-50-2 (68.9M)"),
    "tv-densenet121": ("densenet121", "DenseNet-121 (8.0M)"),
    "tv-mobilenet_v2": ("mobilenet_v2", "MobileNetV2 (3.5M)"),
    "tv-mobilenet_v3_small": ("mobilenet_v3_small", "MobileNetV3-Small (2.5M)"),
    "tv-mobilenet_v3_large": ("mobilenet_v3_large", "MobileNetV3-Large (5.5M)"),
    "tv-efficientnet_b0": ("efficientnet_b0", "EfficientNet-B0 (5.3M)"),
    "tv-efficientnet_b1": ("efficientnet_b1", "EfficientNet-B1 (7.8M)"),
    "tv-regnet_y_400mf": ("regnet_y_400mf", "RegNetY-400MF (4.3M)"),
    "tv-shufflenet_v2_x1_0": ("shufflenet_v2_x1_0", "ShuffleNetV2 x1.0 (2.3M)"),
    "tv-convnext_tiny": ("convnext_tiny", "ConvNeXt-Tiny (28.6M)"),
}

#: Options every model of this plugin takes; each becomes an ``expt run`` flag
#: (``--tv-pretrained``, ``--tv-small-input``) and a config-file key.
OPTIONS = (
    Option(
        "tv_pretrained",
        default=False,
        is_flag=True,
        help="Start from torchvision's ImageNet weights (downloaded once, then cached).",
    ),
    Option(
        "tv_small_input",
        default=False,
        is_flag=True,
        help="Stride-1 stem without max-pool, for small images such as CIFAR-10's 32x32.",
    ),
)


def build(
    architecture: str,
    info: DatasetInfo,
    *,
    tv_pretrained: bool = False,
    tv_small_input: bool = False,
    **_: Any,
) -> nn.Module:
    """Build torchvision's ``architecture`` for ``info``'s channels, image size and classes."""
    from exptorch_torchvision_models.models import build_model

    return build_model(architecture, info, pretrained=tv_pretrained, small_input=tv_small_input)


@hookimpl
def register_models(register: Any) -> None:
    for name, (architecture, description) in ARCHITECTURES.items():
        register(
            name,
            functools.partial(build, architecture),
            description=f"torchvision {description}; random init unless --tv-pretrained",
            options=OPTIONS,
        )
