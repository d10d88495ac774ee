"""The README's promises, each pinned by what the code does, not only by how a run ends.

Each test names the one-line bug it is there to catch (found by planting such bugs and by
``tox -e mutation``): a prediction normalised with 0.5/0.5, EXIF ignored, transparency dropped,
16-bit grey clipped, evaluation in train mode, crop-flip on the test split, autocast or
channels-last never reaching the model, label smoothing ignored, the datasets' constants swapped
for others, flags given with --resume ignored, a signal's exit status, the checkpoint loader
unpickling code, the safetensors size check switched off, the fp16 scaler's state lost.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import EXPT, WritesMarker, normalised
from exptorch import ExptError, hookimpl, load_image
from exptorch.checkpoint import build_model, latest_checkpoint, load_checkpoint
from exptorch.rundir import read_json, read_metrics
from exptorch.testing import make_plugins, resume_expt, run_expt, tiny_splits
from exptorch_plugins import fashion_mnist, losses

# Published normalisation constants: CIFAR-10's per-channel mean and standard deviation over
# all training pixels, and Fashion-MNIST's over its 60,000 training images.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


def quiet(_: str) -> None:
    pass


# --- a model that reports what it is given ---------------------------------------------------


class Probe(torch.nn.Module):
    """conv -> batch norm -> dropout -> linear; each call appends what the model saw to ``seen``."""

    def __init__(self, info: Any, seen: list[dict[str, Any]]) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(info.channels, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(4 * info.height * info.width, info.num_classes)
        self.seen = seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.seen.append(
            {
                "training": self.training,
                "grad": torch.is_grad_enabled(),
                "autocast": torch.is_autocast_enabled("cpu"),
                "conv_dtype": y.dtype,
                "input_dtype": x.dtype,
                "input_channels_last": x.is_contiguous(memory_format=torch.channels_last)
                and not x.is_contiguous(),
                "weight_channels_last": self.conv.weight.is_contiguous(
                    memory_format=torch.channels_last
                )
                and not self.conv.weight.is_contiguous(),
                "input": x.detach().float().clone() if not torch.is_grad_enabled() else None,
            }
        )
        return self.head(self.drop(torch.relu(self.norm(y))).flatten(1).float())


class ProbePlugin:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @hookimpl
    def register_models(self, register: Any) -> None:
        register("probe", lambda info, **_: Probe(info, self.seen), description="records inputs")


def cifar10_run(tmp_path: Path, cifar10_dir: Path, **options: Any) -> tuple[Path, ProbePlugin]:
    probe = ProbePlugin()
    plugins = make_plugins(("probe", probe))
    run = run_expt(
        plugins, tmp_path / "runs", model="probe", dataset="cifar10", data_dir=str(cifar10_dir),
        batch_size=20, echo=quiet, **options,
    )  # fmt: skip
    return run, probe


def test_evaluation_runs_in_eval_mode_on_the_untouched_normalised_test_split(
    tmp_path: Path, cifar10_dir: Path
) -> None:
    """README: test metrics after every epoch; crop-flip augments training only.

    Bugs caught: ``model.eval()`` or ``model.train()`` dropped around evaluation (dropout and
    batch norm then change the test loss), the transforms applied to test batches, the test
    batches normalised with other constants.
    """
    run, probe = cifar10_run(tmp_path, cifar10_dir, epochs=2, transform=["crop-flip"])
    modes = {(s["training"], s["grad"]) for s in probe.seen}
    assert modes == {(True, True), (False, False)}  # train steps train, evaluation evaluates
    evaluations = [s["input"] for s in probe.seen if not s["grad"]]
    assert len(evaluations) == 2  # one batch of 40 test images per epoch

    plugins = make_plugins(("probe", ProbePlugin()))
    splits = plugins.get("dataset", "cifar10").factory(data_dir=cifar10_dir, download=False)
    expected = normalised(splits.test_images, CIFAR10_MEAN, CIFAR10_STD)
    for seen in evaluations:
        assert torch.allclose(seen, expected, atol=1e-5)  # no crop, no flip, same order

    checkpoint = load_checkpoint(plugins, latest_checkpoint(run, plugins))
    model = build_model(plugins, checkpoint).eval()
    with torch.no_grad():
        logits = model(expected)
    loss = torch.nn.functional.cross_entropy(logits, splits.test_labels).item()
    accuracy = (logits.argmax(1) == splits.test_labels).float().mean().item()
    last = [r for r in read_metrics(run / "metrics.jsonl") if "test_loss" in r][-1]
    assert last["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert last["test_accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    ("precision", "dtype", "scaled"),
    [
        ("fp32", torch.float32, False),
        ("bf16", torch.bfloat16, False),
        ("fp16", torch.float16, True),
    ],
)
@pytest.mark.parametrize("channels_last", ["on", "off"])
def test_precision_and_memory_format_reach_the_model(
    tmp_path: Path, cifar10_dir: Path, precision: str, dtype: Any, scaled: bool, channels_last: str
) -> None:
    """--precision runs the model under autocast (with a gradient scaler for fp16), in training
    and in evaluation; --channels-last hands the model channels-last inputs and weights."""
    run, probe = cifar10_run(
        tmp_path, cifar10_dir, epochs=1, limit_train_batches=2, precision=precision,
        channels_last=channels_last,
    )  # fmt: skip
    assert len(probe.seen) == 3  # two training steps, one evaluation
    for seen in probe.seen:
        assert seen["autocast"] is (precision != "fp32")
        assert seen["conv_dtype"] == dtype
        assert seen["input_dtype"] == torch.float32  # autocast casts inside the ops
        assert seen["input_channels_last"] is (channels_last == "on")
        assert seen["weight_channels_last"] is (channels_last == "on")
    plugins = make_plugins(("probe", ProbePlugin()))
    extra = load_checkpoint(plugins, latest_checkpoint(run, plugins)).extra
    assert ("grad_scaler" in extra) is scaled


# --- label smoothing ---------------------------------------------------------------------------


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    """(1 - eps) * cross-entropy + eps * the mean over classes of -log p, per sample, averaged."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    hard = -log_p[torch.arange(len(labels)), labels]
    uniform = -log_p.mean(dim=1)
    return float(((1 - eps) * hard + eps * uniform).mean())


def test_label_smoothing_is_the_textbook_formula() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([0, 2])
    for eps in (0.0, 0.1, 0.3):
        got = losses.cross_entropy(label_smoothing=eps)(logits, labels).item()
        assert got == pytest.approx(smoothed_cross_entropy(logits, labels, eps), rel=1e-6)


class ConstantLogits(torch.nn.Module):
    """The same logits for every image, whatever the weights: the loss is known in advance."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("logits", torch.linspace(2.0, -1.0, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1) + 0 * self.unused


class ConstantPlugin:
    @hookimpl
    def register_models(self, register: Any) -> None:
        register("constant", lambda info, **_: ConstantLogits(info.num_classes))


def test_label_smoothing_reaches_the_training_loss(tmp_path: Path) -> None:
    """--label-smoothing 0.2: the epoch's training loss is the smoothed loss of every image."""
    plugins = make_plugins(("constant", ConstantPlugin()))
    run = run_expt(plugins, tmp_path / "runs", model="constant", label_smoothing=0.2, echo=quiet)
    labels = tiny_splits().train_labels
    logits = torch.linspace(2.0, -1.0, 10).expand(len(labels), -1)
    record = [r for r in read_metrics(run / "metrics.jsonl") if "epoch_train_loss" in r][-1]
    expected = smoothed_cross_entropy(logits, labels, 0.2)
    assert record["epoch_train_loss"] == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(smoothed_cross_entropy(logits, labels, 0.0), rel=1e-3)


# --- the datasets' constants -------------------------------------------------------------------


def test_cifar10_and_fashion_mnist_normalise_with_their_published_constants(
    cifar10_dir: Path,
) -> None:
    plugins = make_plugins()
    cifar = plugins.get("dataset", "cifar10").factory(data_dir=cifar10_dir, download=False)
    assert (cifar.info.mean, cifar.info.std) == (CIFAR10_MEAN, CIFAR10_STD)
    assert (fashion_mnist.MEAN, fashion_mnist.STD) == (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    # the bundled sample is real Fashion-MNIST: its own statistics are the published ones
    sample = plugins.get("dataset", "fashion-mnist-sample").factory(
        data_dir=Path("."), download=False
    )
    assert (sample.info.mean, sample.info.std) == (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    pixels = sample.train_images.double() / 255
    assert pixels.mean().item() == pytest.approx(FASHION_MNIST_MEAN[0], abs=0.01)
    assert pixels.std().item() == pytest.approx(FASHION_MNIST_STD[0], abs=0.01)


# --- expt predict normalises with the checkpoint's statistics ----------------------------------


def test_prediction_equals_a_hand_computed_forward_pass(tmp_path: Path) -> None:
    """predict reads the file, scales to 0-1 and normalises with the checkpoint's mean and std
    (Fashion-MNIST's 0.2860/0.3530 here, not 0.5/0.5), then takes the softmax."""
    from exptorch.predict import predict_files

    plugins = make_plugins()
    run = run_expt(plugins, tmp_path / "runs", limit_train_batches=2, echo=quiet)
    checkpoint = latest_checkpoint(run, plugins)
    pixels = (np.arange(28 * 28).reshape(28, 28) * 7 % 256).astype(np.uint8)
    image = tmp_path / "pattern.png"
    Image.fromarray(pixels).save(image)

    x = torch.from_numpy(pixels)[None, None]
    model = build_model(plugins, load_checkpoint(plugins, checkpoint)).eval()
    with torch.no_grad():
        expected = torch.softmax(model(normalised(x, FASHION_MNIST_MEAN, FASHION_MNIST_STD)), 1)[0]
    result = predict_files(plugins, checkpoint, [image], top=10, device="cpu")
    got = dict(result.predictions[0].top)
    classes = load_checkpoint(plugins, checkpoint).meta["info"]["classes"]
    for i, name in enumerate(classes):
        assert got[name] == pytest.approx(expected[i].item(), abs=2e-6), name


# --- exptorch.load_image: known images, known pixels -------------------------------------------

RED, BLUE, WHITE = [255, 0, 0], [0, 0, 255], [255, 255, 255]


def pixels_of(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """The loaded image as an (height, width, channels) array."""
    return (
        load_image(path, channels=channels, height=height, width=width).numpy().transpose(1, 2, 0)
    )


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Stored 4 wide and 2 high, left half red, right half blue, with EXIF orientation 6
    (rotate 90 degrees clockwise to show): upright it is 2 wide and 4 high, red on top."""
    stored = np.zeros((2, 4, 3), np.uint8)
    stored[:, :2], stored[:, 2:] = RED, BLUE
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation
    path = tmp_path / "phone.png"
    img.save(path, exif=exif.tobytes())
    got = pixels_of(path, 3, 4, 2)
    expected = np.array([[RED] * 2] * 2 + [[BLUE] * 2] * 2, np.uint8)
    assert np.array_equal(got, expected)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]], np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    got = pixels_of(path, 3, 1, 3).astype(int)
    # opaque red stays red, transparent becomes white, half-transparent blue is a pale blue
    assert got[0, 0].tolist() == [255, 0, 0] and got[0, 1].tolist() == [255, 255, 255]
    assert np.abs(got[0, 2] - [127, 127, 255]).max() <= 1
    grey = pixels_of(path, 1, 1, 3)[0, :, 0].astype(int)  # ITU-R 601-2 luma of the same
    assert np.abs(grey - [76, 255, 142]).max() <= 1


def test_grey_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    la = np.array([[[0, 255], [0, 0], [100, 128]]], np.uint8)  # black, clear, half-clear grey
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    assert Image.open(path).mode == "LA"
    grey = pixels_of(path, 1, 1, 3)[0, :, 0].astype(int)
    assert np.abs(grey - [0, 255, 177]).max() <= 1  # 100 * 128/255 + 255 * 127/255


def test_palette_images_take_their_palette_colours_and_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([*RED, *BLUE, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    img.save(tmp_path / "palette.png")
    assert pixels_of(tmp_path / "palette.png", 3, 1, 3)[0].tolist() == [RED, BLUE, [0, 255, 0]]
    img.save(tmp_path / "see-through.png", transparency=1)  # blue is the transparent colour
    assert pixels_of(tmp_path / "see-through.png", 3, 1, 3)[0].tolist() == [RED, WHITE, [0, 255, 0]]


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 300]], np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored with 16 bits
    assert pixels_of(path, 1, 1, 4)[0, :, 0].tolist() == [0, 100, 255, 1]
    assert pixels_of(path, 3, 1, 4)[0, 1].tolist() == [100, 100, 100]  # grey repeated


HIGH_BIT = [  # (mode, the values stored, as 8-bit values)
    ("I", [-5, 0, 100, 200, 255], [0, 0, 100, 200, 255]),  # all within 0-255: kept as they are
    ("I", [0, 65407, 100000], [0, 255, 255]),  # 0-65535 scaled (65407/257 = 254.502), over: 255
    ("I;16", [0, 128, 256], [0, 0, 1]),  # 256 is over 255, so all are scaled
    ("I;16B", [0, 25700, 65535], [0, 100, 255]),  # big-endian 16-bit
    ("F", [-1.0, 0.4, 100.6, 255.0], [0, 0, 101, 255]),
    ("F", [0.0, 257.0, 70000.0], [0, 1, 255]),
]
STORED_AS = {"I": "<i4", "I;16": "<u2", "I;16B": ">u2", "F": "<f4"}


@pytest.mark.parametrize(("mode", "stored", "expected"), HIGH_BIT)
def test_16_and_32_bit_greyscale_of_every_mode_is_scaled_to_8_bits(
    tmp_path: Path, mode: str, stored: list[float], expected: list[int]
) -> None:
    """Values within 0-255 are kept; otherwise 0-65535 is scaled to 0-255; the rest is clipped."""
    data = np.array(stored, STORED_AS[mode]).tobytes()
    path = tmp_path / "grey.tif"
    Image.frombytes(mode, (len(stored), 1), data).save(path)
    assert Image.open(path).mode == mode
    assert pixels_of(path, 1, 1, len(stored))[0, :, 0].tolist() == expected


def test_a_transparent_colour_of_a_grey_or_rgb_png_is_composited_on_white(tmp_path: Path) -> None:
    rgb = Image.fromarray(np.array([[RED, BLUE]], np.uint8))
    rgb.save(tmp_path / "rgb.png", transparency=tuple(BLUE))
    assert pixels_of(tmp_path / "rgb.png", 3, 1, 2)[0].tolist() == [RED, WHITE]
    grey = Image.fromarray(np.array([[0, 100]], np.uint8))
    grey.save(tmp_path / "grey.png", transparency=0)
    assert pixels_of(tmp_path / "grey.png", 1, 1, 2)[0, :, 0].tolist() == [255, 100]


def test_palette_with_alpha_and_premultiplied_grey_tiffs_are_composited_on_white(
    tmp_path: Path,
) -> None:
    pa = Image.new("PA", (2, 1))
    pa.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    pa.putdata([(0, 255), (1, 0)])  # opaque red, transparent blue
    pa.save(tmp_path / "pa.tif")
    assert Image.open(tmp_path / "pa.tif").mode == "PA"
    assert pixels_of(tmp_path / "pa.tif", 3, 1, 2)[0].tolist() == [RED, WHITE]
    # Grey with associated (premultiplied) alpha: Pillow writes LA with unassociated alpha
    # (ExtraSamples 2), so the tag is set to 1 in the file; Pillow reads that as mode "La".
    la = Image.fromarray(np.array([[[100, 128], [0, 0]]], np.uint8), "LA")
    la.save(tmp_path / "la.tif")
    tag = b"\x52\x01\x03\x00\x01\x00\x00\x00"  # ExtraSamples, SHORT, one value
    data = (tmp_path / "la.tif").read_bytes()
    assert data.count(tag + b"\x02\x00") == 1
    (tmp_path / "la.tif").write_bytes(data.replace(tag + b"\x02\x00", tag + b"\x01\x00"))
    assert Image.open(tmp_path / "la.tif").mode == "La"
    grey = pixels_of(tmp_path / "la.tif", 1, 1, 2)[0, :, 0].astype(int)
    assert np.abs(grey - [227, 255]).max() <= 1  # 100 + 255 * (1 - 128/255); clear is white


def test_images_are_stretched_with_the_bilinear_filter(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "two.png")
    # output pixel x samples the input at (x + 0.5) / 2 - 0.5: -0.25 (the edge), 0.25, 0.75, 1.25
    assert pixels_of(tmp_path / "two.png", 1, 1, 4)[0, :, 0].tolist() == [0, 64, 191, 255]
    assert pixels_of(tmp_path / "two.png", 1, 3, 2)[:, :, 0].tolist() == [[0, 255]] * 3


def test_what_load_image_says_for_each_kind_of_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageOps

    from exptorch.images import is_greyscale

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(good)
    with pytest.raises(ExptError) as two:
        load_image(good, channels=2, height=2, width=2)
    assert str(two.value) == "Images can be read with 1 or 3 channels, not 2."
    with pytest.raises(ExptError) as folder:
        load_image(tmp_path, channels=1, height=2, width=2)
    assert str(folder.value) == f"{tmp_path} is a folder, not an image file."
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert (is_greyscale(good), is_greyscale(tmp_path / "bad.png")) == (True, False)

    def hostile(img: Any) -> Any:  # a decoder failing in a way Pillow does not wrap
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setattr(ImageOps, "exif_transpose", hostile)
    with pytest.raises(ExptError) as odd:
        load_image(good, channels=1, height=2, width=2)
    assert str(odd.value) == f"{good} could not be decoded (IndexError: index 7 is out of bounds)."


def test_a_warning_while_decoding_does_not_refuse_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only Pillow's decompression-bomb warning refuses an image; others (corrupt EXIF data,
    odd metadata) are Pillow telling what it worked around."""
    import warnings

    from PIL import ImageOps

    upright = ImageOps.exif_transpose

    def warns(img: Any) -> Any:
        warnings.warn("Corrupt EXIF data", UserWarning, stacklevel=1)
        return upright(img)

    monkeypatch.setattr(ImageOps, "exif_transpose", warns)
    Image.fromarray(np.full((2, 2), 9, np.uint8)).save(tmp_path / "odd.png")
    with pytest.warns(UserWarning, match="Corrupt EXIF"):
        assert pixels_of(tmp_path / "odd.png", 1, 2, 2).tolist() == [[[9], [9]], [[9], [9]]]


# --- --resume takes the flags given with it ----------------------------------------------------


def test_lr_momentum_and_weight_decay_given_with_resume_take_effect(tmp_path: Path) -> None:
    """README: flags given with --resume override the run's own settings."""
    plugins = make_plugins()
    run = run_expt(
        plugins, tmp_path / "runs", lr=0.01, momentum=0.0, weight_decay=0.0, limit_train_batches=2,
        echo=quiet,
    )  # fmt: skip
    first = load_checkpoint(plugins, latest_checkpoint(run, plugins)).optimizer_state
    assert first["param_groups"][0]["momentum"] == 0.0
    resume_expt(plugins, run, epochs=2, lr=0.05, momentum=0.9, weight_decay=0.001, echo=quiet)
    second = load_checkpoint(plugins, latest_checkpoint(run, plugins))
    assert second.epoch == 2
    group = second.optimizer_state["param_groups"][0]
    assert group["initial_lr"] == 0.05 and group["lr"] == pytest.approx(0.05)
    assert group["momentum"] == 0.9 and group["weight_decay"] == 0.001
    assert all("momentum_buffer" in s for s in second.optimizer_state["state"].values())
    recorded = read_json(run / "config.json")["config"]
    assert (recorded["lr"], recorded["momentum"], recorded["weight_decay"]) == (0.05, 0.9, 0.001)


def test_the_fp16_gradient_scalers_state_is_restored_on_resume(tmp_path: Path) -> None:
    """The scale is learned over many steps; a resumed fp16 run must go on from it. A scale of 3
    is no power of two, so it can only be reached from the checkpoint."""
    plugins = make_plugins()
    run = run_expt(plugins, tmp_path / "runs", precision="fp16", limit_train_batches=2, echo=quiet)
    path = latest_checkpoint(run, plugins)
    payload = torch.load(path, weights_only=True)
    assert payload["extra"]["grad_scaler"]["scale"] >= 1024
    payload["extra"]["grad_scaler"]["scale"] = 3.0
    torch.save(payload, path)
    resume_expt(plugins, run, epochs=2, echo=quiet)
    scale = load_checkpoint(plugins, latest_checkpoint(run, plugins)).extra["grad_scaler"]["scale"]
    assert math.log2(scale / 3).is_integer(), scale  # 3 * 2**k: grown or backed off from 3


# --- checkpoints are loaded safely ---------------------------------------------------------------


def test_a_state_dict_checkpoint_with_a_pickled_payload_is_refused_unrun(tmp_path: Path) -> None:
    """state_dict checkpoints load with weights_only=True: a payload is refused, never run."""
    plugins = make_plugins()
    run = run_expt(plugins, tmp_path / "runs", limit_train_batches=1, echo=quiet)
    path = latest_checkpoint(run, plugins)
    marker = tmp_path / "code-ran"
    payload = torch.load(path, weights_only=True)
    payload["meta"]["note"] = WritesMarker(marker)
    torch.save(payload, path)
    assert not marker.exists()
    with pytest.raises(ExptError, match="holds pickled Python objects that exptorch does not load"):
        load_checkpoint(plugins, path)
    assert not marker.exists()
    with pytest.raises(ExptError):
        resume_expt(plugins, run, epochs=2, echo=quiet)
    assert not marker.exists()


@pytest.mark.parametrize("part", ["weights", "state"])
def test_the_safetensors_sidecar_names_a_file_whose_size_changed(tmp_path: Path, part: str) -> None:
    plugins = make_plugins()
    run = run_expt(
        plugins, tmp_path / "runs", limit_train_batches=1, checkpoint_format="safetensors",
        echo=quiet,
    )  # fmt: skip
    path = latest_checkpoint(run, plugins)
    changed = path if part == "weights" else path.with_name(path.name + ".state")
    assert changed.is_file(), sorted(p.name for p in path.parent.iterdir())
    size = changed.stat().st_size
    with open(changed, "ab") as fh:
        fh.write(b"\0" * 8)
    with pytest.raises(ExptError) as info:
        load_checkpoint(plugins, path)
    assert f"{changed.name} has {size + 8} bytes where the sidecar says {size}" in str(info.value)


# --- signals: real processes, real exit statuses -----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("times", [1, 2])
def test_ctrl_c_during_training_exits_130(tmp_path: Path, times: int) -> None:
    """README: the first Ctrl-C stops after the step and exits 130 with a checkpoint; a second
    one stops at once, also 130. (SIGTERM's 143, once and twice: test_resume, test_reliability.)"""
    run = tmp_path / "runs" / "c"
    env = {**os.environ, "EXPT_DATA_DIR": str(tmp_path / "none"), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [*EXPT, "run", "--dataset", "fashion-mnist-sample", "--device", "cpu", "--batch-size",
         "16", "--epochs", "3", "--log-every", "1", "--name", "c"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and any("train_loss" in r for r in read_metrics(metrics))):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.02)
        for _ in range(times):
            child.send_signal(signal.SIGINT)
        _out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    state = read_json(run / "state.json")
    assert state["state"] == "interrupted" and state["stop_reason"] == "interrupted by SIGINT"
    if times == 1:
        assert "continue with:" in err and "--resume" in err
        assert list((run / "checkpoints").glob("epoch-001-step-*"))


def test_predict_json_names_every_field(tmp_path: Path) -> None:
    """``expt predict --json`` is for machines: its field names are an interface."""
    from exptorch.predict import predict_files

    plugins = make_plugins()
    run = run_expt(plugins, tmp_path / "runs", limit_train_batches=1, echo=quiet)
    checkpoint = latest_checkpoint(run, plugins)
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(image)
    missing = tmp_path / "missing.png"
    data = predict_files(plugins, checkpoint, [image, missing], top=2, device="cpu").to_dict()
    assert data["checkpoint"] == str(checkpoint)
    assert data["input"] == {"channels": 1, "height": 28, "width": 28}
    assert data["errors"] == [{"file": str(missing), "error": f"{missing} does not exist."}]
    (prediction,) = data["predictions"]
    assert set(prediction) == {"file", "class", "probability", "top"}
    assert prediction["file"] == str(image)
    best = prediction["top"][0]
    assert (prediction["class"], prediction["probability"]) == (best["class"], best["probability"])
    assert [set(t) for t in prediction["top"]] == [{"class", "probability"}] * 2
    assert all(t["probability"] == round(t["probability"], 6) for t in prediction["top"])


def test_onecycle_rises_from_a_tenth_to_the_full_rate_over_the_first_quarter() -> None:
    """README's --schedule onecycle: up linearly from 0.1 over 25% of the steps, then a cosine
    down to 0.001 (mutmut: the ramp's slope survived every run-level test)."""
    from exptorch_plugins import schedules

    factor = schedules.onecycle(total_steps=800)
    assert [factor(s) for s in (0, 100, 200)] == pytest.approx([0.1, 0.55, 1.0])
    assert factor(500) == pytest.approx(0.001 + 0.999 * 0.5)  # half-way down the cosine
    assert factor(800) == pytest.approx(0.001)


def test_a_resumed_run_ignores_saved_state_of_a_callback_it_no_longer_has() -> None:
    """Callback state is restored by name; state of a callback the resumed run does not use
    (an option turned off with --resume) is left alone instead of failing the resume."""
    from exptorch.events import Callback, Events

    class Counter(Callback):
        def __init__(self) -> None:
            self.count = 0

        def state_dict(self) -> dict[str, int]:
            return {"count": self.count}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.count = state["count"]

    counter = Counter()
    events = Events([("counter", counter)])
    events.load_state_dict({"counter": {"count": 7}, "gone": {"count": 3}})
    assert counter.count == 7


def test_an_event_reaches_only_the_callbacks_that_implement_it_in_order() -> None:
    """A callback overrides only the methods it needs, subclass of Callback or not; only
    state that is not None is saved."""
    from exptorch.events import EVENTS, Callback, Events

    calls: list[tuple[str, int]] = []

    class Counter(Callback):
        def on_step_end(self, run: Any, step: int, loss: float) -> None:
            calls.append(("counter", step))

        def state_dict(self) -> dict[str, int]:
            return {"steps": len(calls)}

    class Plain:  # duck-typed: no Callback base, so none of its defaults
        def on_step_end(self, run: Any, step: int, loss: float) -> None:
            calls.append(("plain", step))

        def state_dict(self) -> None:
            return None

    events = Events([("counter", Counter()), ("plain", Plain()), ("quiet", Callback())])
    assert len(events.step_end) == 2 and events.before_optimizer_step == ()
    for event in EVENTS:
        if event != "on_step_end":
            events.fire(event, None, epoch=1, step=1, metrics={}, state="finished")
    events.fire("on_step_end", None, step=3, loss=0.5)
    assert calls == [("counter", 3), ("plain", 3)]
    assert events.state_dict() == {"counter": {"steps": 2}}


def test_a_config_file_takes_the_option_names_as_keys_with_their_types(tmp_path: Path) -> None:
    """README "Running": ``batch-size`` or ``batch_size``; a list option takes one name or a
    list; the options without a default (seed, the batch limits) are integers; a choice is kept.
    """
    from exptorch.config import resolve_config

    (tmp_path / "exp.toml").write_text(
        "batch-size = 32\nweight_decay = 0.5\nlimit-train-batches = 3\nlimit_eval_batches = 2\n"
        'seed = 7\nlogger = "tensorboard"\ntransform = ["crop-flip", "mixup"]\nkeep = "best"\n'
        'checkpoint-every = "off"\n'
    )
    config = resolve_config({}, config_file=tmp_path / "exp.toml")
    assert (config.batch_size, config.weight_decay) == (32, 0.5)
    assert (config.limit_train_batches, config.limit_eval_batches, config.seed) == (3, 2, 7)
    assert config.logger == ["tensorboard"]
    assert config.transform == ["crop-flip", "mixup"]
    assert (config.keep, config.checkpoint_every) == ("best", "off")


def test_settings_are_layered_defaults_or_saved_run_then_recipe_file_and_flags(
    tmp_path: Path,
) -> None:
    """README "Running": a saved run's settings (``--resume``) replace the defaults, plugin
    options included; a recipe counts only when given (a flag's default is no choice), under
    the config file and the flags; a plugin's option is read from both, with its choices."""
    from exptorch import ExptError, Option
    from exptorch.config import RunConfig, config_fields, read_recipe, resolve_config

    declared = [
        Option("demo_mode", default="a", choices=("a", "b")),
        Option("demo_size", default=1),
    ]
    saved = dict(RunConfig(lr=0.5).to_dict(), options={"demo_size": 3}, gone_in_this_version=1)
    resumed = resolve_config({}, base=saved, plugin_options=declared)
    assert (resumed.lr, resumed.options) == (0.5, {"demo_mode": "a", "demo_size": 3})

    fast = read_recipe("fast")
    assert resolve_config({"recipe": "fast"}, explicit=["recipe"]).schedule == fast["schedule"]
    assert resolve_config({"recipe": "fast"}).schedule == RunConfig().schedule  # not given
    (tmp_path / "exp.toml").write_text('recipe = "fast"\ndemo-mode = "b"\n')
    from_file = resolve_config(
        {"demo_size": 5, "demo_mode": "a"}, explicit=["demo_size"],
        config_file=tmp_path / "exp.toml", plugin_options=declared,
    )  # fmt: skip
    assert from_file.schedule == fast["schedule"]
    assert from_file.options == {"demo_mode": "b", "demo_size": 5}

    (tmp_path / "exp.toml").write_text('demo-mode = "c"\n')
    with pytest.raises(ExptError) as caught:
        resolve_config({}, config_file=tmp_path / "exp.toml", plugin_options=declared)
    assert str(caught.value) == "Config key 'demo_mode' must be one of a, b, not 'c'."
    (tmp_path / "exp.toml").write_text("bogus = 1\n")
    with pytest.raises(ExptError) as caught:
        resolve_config({}, config_file=tmp_path / "exp.toml", plugin_options=declared)
    known = ", ".join(sorted([*(f.name for f in config_fields()), "demo_mode", "demo_size"]))
    assert str(caught.value) == (
        f"Unknown key 'bogus' in config file {tmp_path / 'exp.toml'}; known keys: {known}."
    )


def test_a_saved_configuration_loads_without_the_keys_this_version_does_not_know() -> None:
    from exptorch.config import RunConfig

    saved = {**RunConfig(epochs=3, logger=["tensorboard"]).to_dict(), "retired_option": 1}
    assert RunConfig.from_dict(saved) == RunConfig(epochs=3, logger=["tensorboard"])
