"""Building and adapting torchvision models (imports torch and torchvision: load lazily)."""

from __future__ import annotations

import torch
import torchvision
from exptorch import DatasetInfo, ExptError
from torch import nn


def build_model(
    architecture: str, info: DatasetInfo, *, pretrained: bool = False, small_input: bool = False
) -> nn.Module:
    """torchvision's ``architecture``, adapted to the dataset.

    * ``info.num_classes`` outputs: a fresh classifier layer (or, without
      pretrained weights, torchvision's own ``num_classes`` argument);
    * ``info.channels`` inputs: the first convolution is rebuilt, and with
      pretrained weights its kernels are summed over the RGB channels and spread
      over the dataset's channels, so a grayscale image sees the same filters;
    * ``small_input``: the first convolution gets stride 1 and a max-pool
      directly after it is removed, which keeps 32x32 images from shrinking
      to 8x8 before the first block.

    Raises :class:`ExptError` when the weights cannot be downloaded or the
    dataset's images are too small for the architecture.
    """
    builder = torchvision.models.get_model_builder(architecture)
    if pretrained:
        model = _pretrained(architecture, builder)
        _replace_classifier(model, info.num_classes)
    else:
        model = builder(weights=None, num_classes=info.num_classes)
    _adapt_stem(model, info.channels, small_input=small_input, keep_weights=pretrained)
    _check_input_size(model, architecture, info, small_input)
    return model


def _pretrained(architecture: str, builder: object) -> nn.Module:
    try:
        model: nn.Module = builder(weights="DEFAULT")  # type: ignore[operator]
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
        reason = str(getattr(exc, "reason", exc)).strip().splitlines()
        raise ExptError(
            f"The pretrained weights of tv-{architecture} could not be downloaded "
            f"({reason[0] if reason else type(exc).__name__}); run once where "
            "download.pytorch.org is reachable (torch caches them under $TORCH_HOME), "
            "or leave out --tv-pretrained to start from random weights."
        ) from None
    return model


def _named_modules_of(model: nn.Module, kind: type[nn.Module]) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    name, last = _named_modules_of(model, nn.Linear)[-1]
    assert isinstance(last, nn.Linear)
    if last.out_features != num_classes:
        _set_module(model, name, nn.Linear(last.in_features, num_classes))


def _adapt_stem(model: nn.Module, channels: int, *, small_input: bool, keep_weights: bool) -> None:
    modules = list(model.named_modules())
    index, (name, conv) = next(
        (i, item) for i, item in enumerate(modules) if isinstance(item[1], nn.Conv2d)
    )
    assert isinstance(conv, nn.Conv2d)
    if small_input:
        # A max-pool right after the first convolution (ResNet, DenseNet, ShuffleNet) goes too.
        for later_name, later in modules[index + 1 :]:
            if isinstance(later, nn.Conv2d):
                break
            if isinstance(later, nn.MaxPool2d):
                _set_module(model, later_name, nn.Identity())
                break
    if channels == conv.in_channels and not small_input:
        return
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=1 if small_input else conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    if keep_weights:
        with torch.no_grad():
            weight = conv.weight
            if channels != conv.in_channels:
                weight = weight.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1)
                weight = weight * (conv.in_channels / channels)
            new.weight.copy_(weight)
            if conv.bias is not None and new.bias is not None:
                new.bias.copy_(conv.bias)
    _set_module(model, name, new)


def _check_input_size(
    model: nn.Module, architecture: str, info: DatasetInfo, small_input: bool
) -> None:
    """One forward pass on a blank batch, so a too-small image fails now and clearly."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, info.channels, info.height, info.width))
    except RuntimeError as exc:
        hint = "" if small_input else " (--tv-small-input keeps more resolution)"
        raise ExptError(
            f"tv-{architecture} cannot take this dataset's {info.height}x{info.width} images "
            f"({str(exc).splitlines()[0]}); choose another model or larger images{hint}."
        ) from None
    finally:
        model.train(was_training)
