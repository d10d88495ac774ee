"""The ``vgg16`` model plugin: both heads, small and grey inputs, freezing, pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import WritesMarker, file_server
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
    assert message.endswith("or pass a local weights file with --vgg16-pretrained PATH.")
    assert "\n" not in message
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


def test_a_weights_file_with_a_pickled_payload_is_refused_unrun(tmp_path: Path) -> None:
    ran = tmp_path / "payload-ran"
    torch.save({"features.0.bias": torch.zeros(64), "x": WritesMarker(ran)}, tmp_path / "evil.pth")
    with pytest.raises(ExptError) as info:
        vgg16.read_weights(str(tmp_path / "evil.pth"))
    assert str(info.value).startswith(
        f"{tmp_path / 'evil.pth'} is not a readable weights file (UnpicklingError: Weights only "
        "load failed."
    )  # the first line of torch's message
    assert not ran.exists()


def test_a_loader_error_without_a_message_says_no_detail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*_args, **_kwargs):
        raise EOFError

    (tmp_path / "empty.pth").write_bytes(b"")
    monkeypatch.setattr(torch, "load", fails)
    with pytest.raises(ExptError) as info:
        vgg16.read_weights(str(tmp_path / "empty.pth"))
    assert str(info.value) == (
        f"{tmp_path / 'empty.pth'} is not a readable weights file (EOFError: no detail)."
    )


@pytest.mark.parametrize("wrapper", ["model_state", "state_dict", None])
def test_weights_are_found_inside_a_checkpoint_and_lose_ddp_and_compile_prefixes(
    tmp_path: Path, wrapper: str | None
) -> None:
    """A training checkpoint (``model_state``, Lightning's ``state_dict``) or a bare state
    dict; keys saved from a DDP (``module.``) or ``torch.compile`` (``_orig_mod.``) model."""
    state = {
        "module._orig_mod.features.0.bias": torch.arange(64.0),
        "_orig_mod.classifier.0.bias": torch.ones(4096),
    }
    torch.save({wrapper: state, "epoch": 3} if wrapper else state, tmp_path / "ckpt.pth")
    weights = vgg16.read_weights(str(tmp_path / "ckpt.pth"))
    assert sorted(weights) == ["classifier.0.bias", "features.0.bias"]
    assert torch.equal(weights["features.0.bias"], torch.arange(64.0))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ExptError) as info:
        vgg16.read_weights(str(tmp_path / "list.pth"))
    assert str(info.value) == f"{tmp_path / 'list.pth'} does not hold a state dict of weights."


def test_a_weights_file_missing_parameters_names_the_counts_and_the_first(tmp_path: Path) -> None:
    state = tv_state()
    del state["features.0.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ExptError) as missing:
        vgg16.build(CIFAR, vgg16_pretrained=str(tmp_path / "missing.pth"))
    assert str(missing.value) == (
        f"{tmp_path / 'missing.pth'} does not hold torchvision VGG16 weights (1 missing and 0 "
        "unexpected parameters, e.g. features.0.weight)."
    )
    state = tv_state()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ExptError, match=r"\(0 missing and 1 unexpected parameters, e.g. extra"):
        vgg16.build(CIFAR, vgg16_pretrained=str(tmp_path / "extra.pth"))


def tv_state() -> dict[str, torch.Tensor]:
    from torchvision.models import vgg16 as tv_vgg16

    return tv_vgg16().state_dict()


def test_a_downloaded_weights_file_is_checked_against_the_checksum_in_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision names its files after the first 8 hex digits of their sha256; a download
    that does not match is removed, one that matches is read."""
    import hashlib
    import io

    buffer = io.BytesIO()
    torch.save({"features.0.bias": torch.arange(64.0)}, buffer)
    good = buffer.getvalue()
    prefix = hashlib.sha256(good).hexdigest()[:8]

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    files = {"/vgg16-00000000.pth": good, f"/vgg16-{prefix}.pth": good}
    with file_server(monkeypatch, files) as base:
        monkeypatch.setattr(vgg16, "IMAGENET_URL", f"{base}/vgg16-00000000.pth")
        with pytest.raises(ExptError) as damaged:
            vgg16.read_weights("imagenet")
        assert (
            str(damaged.value)
            == f"{base}/vgg16-00000000.pth arrived damaged (wrong checksum); try again."
        )
        assert not (tmp_path / "hub" / "checkpoints" / "vgg16-00000000.pth").exists()
        monkeypatch.setattr(vgg16, "IMAGENET_URL", f"{base}/vgg16-{prefix}.pth")
        weights = vgg16.read_weights("imagenet")
    assert torch.equal(weights["features.0.bias"], torch.arange(64.0))
    assert (tmp_path / "hub" / "checkpoints" / f"vgg16-{prefix}.pth").read_bytes() == good


def test_a_wrong_head_and_a_frozen_backbone_without_weights_say_so(caplog) -> None:
    with pytest.raises(ExptError) as info:
        vgg16.build(CIFAR, vgg16_head="swap")
    assert str(info.value) == "--vgg16-head must be replace or append, not 'swap'."
    with caplog.at_level("WARNING", logger="exptorch.vgg16"):
        vgg16.build(CIFAR, vgg16_freeze_backbone=True)
    assert caplog.messages == [
        "--vgg16-freeze-backbone without --vgg16-pretrained trains only the head"
    ]


@pytest.mark.parametrize(
    ("size", "pools"), [(1, 0), (2, 1), (3, 1), (4, 2), (16, 4), (32, 5), (224, 5)]
)
def test_as_many_max_pools_are_kept_as_halvings_fit_the_smaller_side(size: int, pools: int) -> None:
    info = DatasetInfo(3, size, 64, ("a", "b"), (0.5,) * 3, (0.25,) * 3)
    model = vgg16.build(info)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == pools
    assert model.features[0].in_channels == 3
    assert model(torch.zeros(1, 3, size, 64)).shape == (1, 2)


@pytest.mark.parametrize("channels", [2, 3])
def test_pretrained_weights_see_any_channel_count_as_the_rgb_network_sees_grey(
    tmp_path: Path, channels: int
) -> None:
    """RGB keeps the first convolution as it is; N channels get the RGB kernels' sum divided
    among them, so N copies of a grey image give what RGB gives on three."""
    from torchvision.models import vgg16 as tv_vgg16

    torch.manual_seed(2)
    reference = tv_vgg16()
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    info = DatasetInfo(channels, 32, 32, ("a", "b"), (0.5,) * channels, (0.25,) * channels)
    model = vgg16.build(info, vgg16_pretrained=str(tmp_path / "weights.pth"))
    grey = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(
        model.features[0](grey.repeat(1, channels, 1, 1)),
        reference.features[0](grey.repeat(1, 3, 1, 1)),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    if channels == 3:
        assert torch.equal(model.features[0].weight, reference.features[0].weight)
