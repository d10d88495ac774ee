"""The ``vgg16`` model plugin: both heads, small and grey inputs, freezing, pretrained weights."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.parametrize("head", ["replace", "append"])
def test_both_heads_give_the_class_count_and_train(head: str) -> None:
    torch.manual_seed(0)
    model = vgg16.build(CIFAR, vgg16_head=head)
    if head == "replace":
        assert model.classifier[6].out_features == 10 and len(model.classifier) == 7
    else:
        assert model.classifier[6].out_features == 1000
        assert model.classifier.add_linear.in_features == 1000
        assert model.classifier.add_linear.out_features == 10
    assert train_one_step(model, CIFAR) > 0


def test_grey_28x28_input_and_frozen_backbone() -> None:
    torch.manual_seed(0)
    model = vgg16.build(FASHION, vgg16_head="append", vgg16_freeze_backbone=True)
    assert model.features[0].in_channels == 1
    # 28 px: four halvings fit (28 -> 1), the fifth max-pool became an identity.
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 4
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.add_linear.weight", "classifier.add_linear.bias"}
    head = model.classifier.add_linear.weight.detach().clone()
    first = model.features[0].weight.detach().clone()
    assert train_one_step(model, FASHION) > 0
    assert not torch.equal(model.classifier.add_linear.weight, head)
    assert torch.equal(model.features[0].weight, first)


def test_pretrained_weights_from_a_local_file(tmp_path: Path) -> None:
    """The file's weights land in the model; grey input sees the sum of the RGB kernels."""
    from torchvision.models import vgg16 as tv_vgg16

    torch.manual_seed(1)
    reference = tv_vgg16()
    state = reference.state_dict()
    path = tmp_path / "vgg16-test.safetensors"
    from safetensors.torch import save_file

    save_file({f"module.{k}": v for k, v in state.items()}, path)  # DDP-style keys
    model = vgg16.build(FASHION, vgg16_pretrained=str(path), vgg16_head="replace")
    assert torch.equal(model.features[2].weight, state["features.2.weight"])
    assert torch.equal(model.classifier[3].weight, state["classifier.3.weight"])
    assert torch.equal(model.features[0].weight, state["features.0.weight"].sum(1, keepdim=True))
    # Grey image through the adapted conv == the grey image repeated into RGB, original conv.
    grey = torch.rand(1, 1, 28, 28)
    adapted = model.features[0](grey)
    original = reference.features[0](grey.repeat(1, 3, 1, 1))
    torch.testing.assert_close(adapted, original, rtol=1e-4, atol=1e-5)


def test_wrong_weights_file_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "quicknet.pt"
    torch.save({"model.0.weight": torch.zeros(3)}, path)
    with pytest.raises(ExptError, match="does not hold torchvision VGG16 weights"):
        vgg16.build(CIFAR, vgg16_pretrained=str(path))
    with pytest.raises(ExptError, match="does not exist"):
        vgg16.build(CIFAR, vgg16_pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ExptError, match="is not a readable weights file"):
        vgg16.build(CIFAR, vgg16_pretrained=str(tmp_path / "junk.pth"))


def test_imagenet_weights_without_cache_or_network_is_one_sentence(tmp_path: Path) -> None:
    """A real ``expt run`` with an empty torchvision cache and no reachable download server."""
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch-home"),
        "http_proxy": "http://127.0.0.1:9",  # nothing listens on the discard port
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, "-m", "exptorch", "run", "--model", "vgg16", "--dataset",
         "fashion-mnist-sample", "--vgg16-pretrained", "imagenet", "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: VGG16's ImageNet weights are not in torchvision's cache")
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg16-397923af.pth") in last
    assert "--vgg16-pretrained PATH" in last
    assert not (tmp_path / "runs").exists()


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
