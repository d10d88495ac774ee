"""Model plugin ``vgg16``: torchvision's VGG16 adapted to the dataset, both ways the tutorial shows.

``--vgg16-head replace`` (default) swaps the last classifier layer for
``Linear(4096, classes)``; ``--vgg16-head append`` keeps the 1000-way ImageNet
layer and appends ``Linear(1000, classes)`` as ``classifier.add_linear``.

``--vgg16-pretrained`` starts from ImageNet weights: a local file (a torchvision
state dict ``.pth``, or ``.safetensors``), or ``imagenet`` for torchvision's own
weights, read from torchvision's cache (``$TORCH_HOME/hub/checkpoints``) and
downloaded there when missing, with a 30-second timeout: without a network
exptorch says in one sentence what to fetch and where to put it.
``--vgg16-freeze-backbone`` freezes every pretrained layer, so only the new
``classes``-way layer learns.

Other inputs than 224x224 RGB:

* Greyscale (or any channel count other than 3): the first convolution takes
  that many channels; from pretrained weights its kernels are the sum of the RGB
  kernels, which is exactly what the RGB network computes on the grey image
  repeated in all three channels.
* Small images: VGG16 halves the size five times and its adaptive average pool
  turns whatever is left into 7x7, so 32x32 (CIFAR-10) works as it is (1x1
  before the pool). Below 32 pixels (28x28 Fashion-MNIST), the last max-pools,
  which would shrink the map below 1x1, become identities; they have no
  weights, so parameter names and pretrained weights are unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch import DatasetInfo, ExptError, Option, hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger("exptorch.vgg16")

IMAGENET_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
HEADS = ("replace", "append")


def imagenet_weights_file() -> Path:
    """Where torchvision keeps VGG16's ImageNet weights: ``$TORCH_HOME/hub/checkpoints``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URL.rsplit("/", 1)[1]


def fetch_imagenet_weights() -> Path:
    """torchvision's cached VGG16 weights, downloaded into the cache if missing."""
    from exptorch_plugins._download import DownloadFailed, download

    dest = imagenet_weights_file()
    if dest.is_file():
        return dest
    try:
        download(IMAGENET_URL, dest)
    except DownloadFailed as exc:
        raise ExptError(
            f"VGG16's ImageNet weights are not in torchvision's cache ({dest}) and {exc}; "
            f"download {IMAGENET_URL} to that path on a machine with a network, or pass a "
            "local weights file with --vgg16-pretrained PATH."
        ) from None
    expected = dest.name.rsplit("-", 1)[1].split(".")[0]  # torchvision's sha256 prefix
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        dest.unlink()
        raise ExptError(f"{IMAGENET_URL} arrived damaged (wrong checksum); try again.")
    return dest


def read_weights(spec: str) -> dict[str, torch.Tensor]:
    """The 1000-class VGG16 state dict named by ``--vgg16-pretrained``."""
    import torch

    path = fetch_imagenet_weights() if spec == "imagenet" else Path(os.path.expanduser(spec))
    if not path.is_file():
        raise ExptError(
            f"Pretrained weights file {path} does not exist (use a .pth/.safetensors file, "
            "or 'imagenet' for torchvision's weights)."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExptError(
            f"{path} is not a readable weights file ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})."
        ) from None
    for key in ("model_state", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ExptError(f"{path} does not hold a state dict of weights.")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def adapt_input(model: nn.Module, channels: int, height: int, width: int) -> None:
    """Fit VGG16's first convolution to ``channels`` and its pooling to small images."""
    import torch
    from torch import nn

    features: nn.Sequential = model.features  # type: ignore[assignment]
    if channels != 3:
        old = features[0]
        assert isinstance(old, nn.Conv2d)
        new = nn.Conv2d(channels, old.out_channels, kernel_size=3, padding=1)  # as VGG's own
        with torch.no_grad():
            summed = old.weight.sum(dim=1, keepdim=True)
            new.weight.copy_(summed.repeat(1, channels, 1, 1) / channels)
            if old.bias is not None and new.bias is not None:
                new.bias.copy_(old.bias)
        features[0] = new
    pools = [i for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    smallest = min(height, width)
    fits = 0
    while fits < len(pools) and smallest >> (fits + 1) >= 1:
        fits += 1
    for index in pools[fits:]:
        features[index] = nn.Identity()


def build(
    info: DatasetInfo,
    vgg16_head: str = "replace",
    vgg16_pretrained: str | None = None,
    vgg16_freeze_backbone: bool = False,
    **_: Any,
) -> nn.Module:
    from torch import nn
    from torchvision.models import vgg16

    if vgg16_head not in HEADS:
        raise ExptError(f"--vgg16-head must be replace or append, not {vgg16_head!r}.")
    weights = read_weights(vgg16_pretrained) if vgg16_pretrained else None
    model = vgg16(weights=None)
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ExptError(
                f"{vgg16_pretrained} does not hold torchvision VGG16 weights "
                f"({len(missing)} missing and {len(unexpected)} unexpected parameters, "
                f"e.g. {(missing or unexpected)[0]})."
            )
    elif vgg16_freeze_backbone:
        log.warning("--vgg16-freeze-backbone without --vgg16-pretrained trains only the head")
    adapt_input(model, info.channels, info.height, info.width)

    classifier: nn.Sequential = model.classifier
    if vgg16_head == "replace":
        classifier[6] = nn.Linear(4096, info.num_classes)
        head: nn.Module = classifier[6]
    else:
        head = nn.Linear(1000, info.num_classes)
        classifier.add_module("add_linear", head)
    if vgg16_freeze_backbone:
        model.requires_grad_(False)
        head.requires_grad_(True)
    return model


@hookimpl
def register_models(register: Any) -> None:
    register(
        "vgg16",
        build,
        description="torchvision VGG16 with a classes-way head (replaced or appended); "
        "optional ImageNet weights; any channels, 32x32 and up (smaller works too)",
        options=[
            Option(
                "vgg16_head",
                "replace",
                "replace: classifier[6] becomes Linear(4096, classes); "
                "append: keep the 1000-way layer and add Linear(1000, classes).",
                choices=HEADS,
            ),
            Option(
                "vgg16_pretrained",
                None,
                "Start from ImageNet weights: a .pth/.safetensors file, or 'imagenet' for "
                "torchvision's cached (or downloaded) weights.",
                initial_weights=True,
            ),
            Option(
                "vgg16_freeze_backbone",
                False,
                "Train only the new classes-way layer.",
                is_flag=True,
            ),
        ],
    )
