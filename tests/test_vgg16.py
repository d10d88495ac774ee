"""The ``vgg16`` model plugin: both heads, small and grey inputs, freezing, pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from exptorch import DatasetInfo, ExptError
from exptorch_plugins import vgg16

CIFAR = DatasetInfo(3, 32, 32, tuple(f"c{i}" for i in range(10)), (0.5,) * 3, (0.25,) * 3)
FASHION = DatasetInfo(1, 28, 28, tuple(f"c{i}" for i in range(7)), (0.3,), (0.35,))


def train_one_step(model: nn.Module, info: DatasetInfo) -> float:
    """One SGD step on a batch of 2; returns how far the trainable weights moved."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.01)
    x = torch.randn(2, info.channels, info.height, info.width)
    logits = model(x)
    assert logits.shape == (2, info.num_classes)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    return sum(float((p.detach() - b).abs().sum()) for p, b in zip(params, before, strict=True))


def test_append_head_on_32x32_rgb_gives_the_classes_and_trains() -> None:
    torch.manual_seed(0)
    model = vgg16.build(CIFAR, vgg16_head="append")
    assert model.classifier[6].out_features == 1000
    assert model.classifier.add_linear.in_features == 1000
    assert model.classifier.add_linear.out_features == 10
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5  # 32 px: all fit
    assert all(p.requires_grad for p in model.parameters())
    assert train_one_step(model, CIFAR) > 0


def test_replace_head_on_grey_28x28_from_a_local_file_with_frozen_backbone(tmp_path: Path) -> None:
    """Pretrained weights land in the model, grey input sees the sum of the RGB kernels,
    and with a frozen backbone only the new layer moves."""
    from safetensors.torch import save_file
    from torchvision.models import vgg16 as tv_vgg16

    torch.manual_seed(1)
    reference = tv_vgg16()
    state = reference.state_dict()
    path = tmp_path / "vgg16-test.safetensors"
    save_file({f"module.{k}": v for k, v in state.items()}, path)  # DDP-style keys
    model = vgg16.build(
        FASHION, vgg16_pretrained=str(path), vgg16_head="replace", vgg16_freeze_backbone=True
    )
    assert len(model.classifier) == 7 and model.classifier[6].out_features == 7
    assert torch.equal(model.features[2].weight, state["features.2.weight"])
    assert torch.equal(model.classifier[3].weight, state["classifier.3.weight"])
    assert torch.equal(model.features[0].weight, state["features.0.weight"].sum(1, keepdim=True))
    # Grey image through the adapted conv == the grey image repeated into RGB, original conv.
    grey = torch.rand(1, 1, 28, 28)
    torch.testing.assert_close(
        model.features[0](grey), reference.features[0](grey.repeat(1, 3, 1, 1)),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    # 28 px: four halvings fit (28 -> 1); the fifth max-pool became an identity.
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 4
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.6.weight", "classifier.6.bias"}
    head = model.classifier[6].weight.detach().clone()
    assert train_one_step(model, FASHION) > 0
    assert not torch.equal(model.classifier[6].weight, head)
    assert torch.equal(model.features[0].weight, state["features.0.weight"].sum(1, keepdim=True))
    assert torch.equal(model.classifier[3].weight, state["classifier.3.weight"])


def test_wrong_weights_file_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "quicknet.pt"
    torch.save({"model.0.weight": torch.zeros(3)}, path)
    with pytest.raises(ExptError, match="does not hold torchvision VGG16 weights"):
        vgg16.build(CIFAR, vgg16_pretrained=str(path))
    with pytest.raises(ExptError) as info:
        vgg16.build(CIFAR, vgg16_pretrained=str(tmp_path / "missing.pth"))
    assert str(info.value) == (
        f"Pretrained weights file {tmp_path / 'missing.pth'} does not exist (use a "
        ".pth/.safetensors file, or 'imagenet' for torchvision's weights)."
    )
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ExptError, match="is not a readable weights file"):
        vgg16.build(CIFAR, vgg16_pretrained=str(tmp_path / "junk.pth"))


def test_imagenet_weights_without_cache_or_network_is_one_sentence(
    tmp_path: Path, monkeypatch
) -> None:
    """An empty torchvision cache (TORCH_HOME) and no reachable download server."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for name in ("http_proxy", "https_proxy", "HTTPS_PROXY"):  # nothing listens on port 9
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    with pytest.raises(ExptError) as info:
        vgg16.build(CIFAR, vgg16_pretrained="imagenet")
    message = str(info.value)
    assert message.startswith("VGG16's ImageNet weights are not in torchvision's cache")
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "--vgg16-pretrained PATH" in message and "\n" not in message
    assert not (tmp_path / "torch-home" / "hub" / "checkpoints").exists() or not list(
        (tmp_path / "torch-home" / "hub" / "checkpoints").iterdir()
    )  # no partial download left behind


def test_imagenet_weights_come_from_torchvisions_cache(tmp_path: Path, monkeypatch) -> None:
    """With the file in torchvision's cache nothing is downloaded: the cached file is read."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a download would fail
    cached = vgg16.imagenet_weights_file()
    assert cached == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    torch.save({"module.features.0.bias": torch.arange(64.0)}, cached)
    weights = vgg16.read_weights("imagenet")
    assert list(weights) == ["features.0.bias"]
    assert torch.equal(weights["features.0.bias"], torch.arange(64.0))
