"""The models, built through exptorch's registry exactly as ``expt run`` builds them."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torchvision
from exptorch import DatasetInfo, ExptError

from exptorch_torchvision_models import ARCHITECTURES

GRAY_28 = DatasetInfo(1, 28, 28, tuple("0123456789"), (0.5,), (0.25,))
RGB_32 = DatasetInfo(3, 32, 32, tuple("abcde"), (0.5,) * 3, (0.25,) * 3)


def build(plugins, name: str, info: DatasetInfo, **options):
    """What exptorch's training loop does: look the name up, call the factory with the options."""
    reg = plugins.get("model", name)
    values = {opt.name: options.get(opt.name, opt.default) for opt in reg.options}
    return reg.factory(info, **values)


def test_every_architecture_is_registered_with_its_options(expt_plugins) -> None:
    assert set(ARCHITECTURES) <= set(expt_plugins.names("model"))
    reg = expt_plugins.get("model", "tv-resnet18")
    assert reg.plugin == "exptorch_torchvision_models"
    assert [opt.flag for opt in reg.options] == ["--tv-pretrained", "--tv-small-input"]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_each_model_fits_the_dataset(expt_plugins, name: str) -> None:
    model = build(expt_plugins, name, RGB_32, tv_small_input=True).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_grayscale_input_and_class_count(expt_plugins, expt_splits) -> None:
    info = expt_splits.info
    assert (info.channels, info.height, info.num_classes) == (1, 28, 10)
    model = build(expt_plugins, "tv-resnet18", info).eval()
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    with torch.no_grad():
        assert model(expt_splits.train_images[:4].float() / 255).shape == (4, 10)


def test_small_input_keeps_resolution(expt_plugins) -> None:
    plain = build(expt_plugins, "tv-resnet18", RGB_32)
    small = build(expt_plugins, "tv-resnet18", RGB_32, tv_small_input=True)
    assert plain.conv1.stride == (2, 2) and isinstance(plain.maxpool, torch.nn.MaxPool2d)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)


def test_too_small_images_are_one_sentence_with_a_hint(expt_plugins) -> None:
    with pytest.raises(ExptError, match=r"tv-densenet121 cannot take .* 28x28 .*--tv-small-input"):
        build(expt_plugins, "tv-densenet121", GRAY_28)


def test_pretrained_weights_are_adapted(expt_plugins, monkeypatch) -> None:
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(weights=None).state_dict()  # stands in for the download
    monkeypatch.setattr(
        torchvision.models.WeightsEnum, "get_state_dict", lambda self, *a, **k: imagenet
    )
    model = build(expt_plugins, "tv-resnet18", GRAY_28, tv_pretrained=True)
    # Grayscale sees the RGB filters summed; the head is new, sized for 10 classes.
    assert torch.allclose(model.conv1.weight, imagenet["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.layer1[0].conv1.weight, imagenet["layer1.0.conv1.weight"])
    assert model.fc.out_features == 10


def test_missing_download_is_one_sentence(expt_plugins, monkeypatch) -> None:
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ExptError) as info:
        build(expt_plugins, "tv-resnet18", GRAY_28, tv_pretrained=True)
    message = str(info.value)
    assert message.startswith("The pretrained weights of tv-resnet18 could not be downloaded")
    assert "name resolution" in message and "leave out --tv-pretrained" in message
    assert message.count(". ") == 0 and "\n" not in message


def test_expt_run_trains_and_checkpoints(expt_run) -> None:
    run = expt_run(model="tv-mobilenet_v3_small", tv_small_input=True, limit_train_batches=3)
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["model"] == "tv-mobilenet_v3_small"
    assert config["config"]["options"]["tv_small_input"] is True
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= records[-1]["test_accuracy"] <= 1.0
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
    assert (run / "checkpoints" / "epoch-001.pt").is_file()
