"""``expt predict`` on real PNG and JPEG files of many modes, with bad files mixed in."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from image_folders import COLOURS, colour_run, picture
from PIL import Image

from exptorch import ExptError
from exptorch.checkpoint import (
    build_model,
    latest_checkpoint,
    load_checkpoint,
    load_trained,
    save_checkpoint,
)
from exptorch.data import Batches
from exptorch.predict import predict_files
from exptorch.types import DatasetInfo


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return colour_run(tmp_path_factory)


@pytest.fixture(scope="module")
def checkpoint(run: Path) -> Path:
    path = run / "checkpoints" / "epoch-012.safetensors"
    assert path.is_file()
    return path


def write_images(folder: Path) -> dict[str, str]:
    """Images in many modes and sizes, named after the class each one shows."""
    folder.mkdir()
    red, green, blue = (picture(COLOURS[c], (64, 48), seed=7) for c in ("red", "green", "blue"))
    rgba = red.convert("RGBA")
    alpha = np.full((48, 64), 255, np.uint8)
    alpha[:4] = 0  # a transparent strip (shown as white) does not change the verdict
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "red-rgba.png")
    green.quantize(16).save(folder / "green-palette.png")
    red.convert("CMYK").save(folder / "red-cmyk.jpg")
    blue.resize((300, 200)).save(folder / "blue-large.jpeg", quality=90)
    blue.convert("RGBA").convert("LA").save(folder / "grey-la.png")
    blue.convert("L").convert("I;16").save(folder / "grey-16bit.png")
    blue.save(folder / "blue.bmp")
    return {
        "red-rgba.png": "red", "green-palette.png": "green", "red-cmyk.jpg": "red",
        "blue-large.jpeg": "blue", "blue.bmp": "blue",
        "grey-la.png": None, "grey-16bit.png": None,
    }  # fmt: skip


def write_bad_files(folder: Path) -> list[Path]:
    good = (folder / "red-rgba.png").read_bytes()
    truncated = folder / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    jpeg = (folder / "blue-large.jpeg").read_bytes()
    cut_jpeg = folder / "cut.jpeg"
    cut_jpeg.write_bytes(jpeg[:300])
    text = folder / "notes.jpg"
    text.write_text("this is not a picture")
    return [truncated, cut_jpeg, text]


def test_predict_many_modes_with_bad_files_in_a_real_process(
    expt, checkpoint: Path, tmp_path: Path
) -> None:
    expected = write_images(tmp_path / "images")
    bad = write_bad_files(tmp_path / "images")
    missing = tmp_path / "missing.png"
    result = expt("predict", "--checkpoint", str(checkpoint), "images", str(missing), "--top", "2")
    assert result.returncode == 1  # some files failed
    lines = result.stdout.splitlines()
    verdicts = {
        Path(line.split(":")[0]).name: line.split(": ")[1].split(" (")[0]
        for line in lines
        if not line.startswith(" ")
    }
    assert set(verdicts) == set(expected)
    for name, colour in expected.items():
        if colour is not None:
            assert verdicts[name] == colour, (name, result.stdout)
    assert sum(line.startswith("    ") for line in lines) == len(expected)  # --top 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4 and "Traceback" not in result.stderr
    for path in [*bad, missing]:
        assert any(path.name in line for line in errors), (path, errors)


def test_predict_json_top_k(plugins, checkpoint: Path, tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    files = [tmp_path / "images" / "red-cmyk.jpg", tmp_path / "images" / "blue.bmp"]
    result = predict_files(plugins, checkpoint, files, top=5, device="cpu")
    data = json.loads(json.dumps(result.to_dict()))  # what --json prints
    assert data["errors"] == [] and data["input"] == {"channels": 3, "height": 16, "width": 16}
    first, second = data["predictions"]
    assert first["class"] == "red" and second["class"] == "blue"
    assert first["top"][0]["class"] == "red" and len(first["top"]) == 3  # only 3 classes
    probabilities = [t["probability"] for t in first["top"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


def test_predict_normalises_exactly_as_training(plugins, run: Path, checkpoint: Path) -> None:
    """A training image through predict == the same image as the training batches saw it."""
    from exptorch_plugins import folder

    ckpt = load_checkpoint(plugins, checkpoint)
    options = ckpt.config["options"]
    splits = folder.load(**{k: v for k, v in options.items() if k.startswith("folder_")})
    image_file = sorted((Path(options["folder_train"]) / "green").iterdir())[0]
    index = 12  # the classes are sorted: blue, green, red; training order is file order
    info = DatasetInfo.from_dict(ckpt.meta["info"])
    model = build_model(plugins, ckpt)
    batches = Batches(
        splits.train_images[index : index + 1], splits.train_labels[index : index + 1],
        batch_size=1, device=torch.device("cpu"), mean=info.mean, std=info.std, shuffle=False,
    )  # fmt: skip
    images, labels = next(iter(batches))
    assert labels.item() == 1
    with torch.no_grad():
        expected = torch.softmax(model(images), dim=1)[0]
    result = predict_files(plugins, checkpoint, [image_file], top=3, device="cpu")
    got = dict(result.predictions[0].top)
    for i, name in enumerate(info.classes):
        assert got[name] == pytest.approx(float(expected[i]), abs=1e-6)


def test_full_checkpoint_needs_trust_and_then_predicts(plugins, checkpoint: Path, tmp_path) -> None:
    ckpt = load_checkpoint(plugins, checkpoint)
    ckpt.module = build_model(plugins, ckpt)
    full = plugins.get("checkpoint format", "full").factory()
    path = save_checkpoint(full, ckpt, tmp_path / "model.full.pt")
    write_images(tmp_path / "images")
    with pytest.raises(ExptError, match="--trust-checkpoint"):
        predict_files(plugins, path, [tmp_path / "images" / "blue.bmp"])
    result = predict_files(plugins, path, [tmp_path / "images" / "blue.bmp"], trust=True)
    assert result.predictions[0].top[0][0] == "blue"


def test_a_run_folder_and_an_empty_folder(plugins, run: Path, tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    (tmp_path / "empty").mkdir()
    assert latest_checkpoint(run, plugins).name == "epoch-012.safetensors"
    result = predict_files(plugins, run, [tmp_path / "images" / "blue.bmp", tmp_path / "empty"])
    assert [p.top[0][0] for p in result.predictions] == ["blue"]
    assert len(result.predictions[0].top) == 1  # the most probable class only, unless asked
    assert result.failures == [
        (str(tmp_path / "empty"), f"{tmp_path / 'empty'} holds no image files.")
    ]
    with pytest.raises(ExptError, match="--top must be at least 1"):
        predict_files(plugins, run, [tmp_path / "images"], top=0)


def test_the_printed_lines_give_each_class_as_a_percentage_to_one_decimal() -> None:
    from exptorch.predict import Prediction, Predictions

    result = Predictions(
        "run", [Prediction("a.png", [("cat", 0.875), ("dog", 0.1), ("owl", 0.025)])]
    )
    assert result.format() == "a.png: cat (87.5%)\n    dog (10.0%)\n    owl (2.5%)"


def tampered_copy(checkpoint: Path, folder: Path, change) -> Path:
    """The checkpoint's three files in ``folder``, its sidecar's ``meta.info`` edited by
    ``change`` (the sidecar is plain JSON: anyone can write anything into it)."""
    folder.mkdir()
    for source in checkpoint.parent.glob(checkpoint.name + "*"):
        shutil.copy(source, folder / source.name)
    sidecar = folder / (checkpoint.name + ".json")
    data = json.loads(sidecar.read_text())
    change(data["meta"]["info"])
    sidecar.write_text(json.dumps(data))
    return folder / checkpoint.name


BAD_INFO = {
    "std-zero": (
        lambda info: info.update(std=[0.0, 0.0, 0.0]),
        "std [0.0, 0.0, 0.0] has a value that is not above 0",
    ),
    "std-nan": (lambda info: info.update(std=[0.2, float("nan"), 0.2]), "std holds nan"),
    "escapes": (
        lambda info: info.update(classes=["blue", "\x1b[2J\x1b[Hgreen", "red"]),
        "class name '\\x1b[2J\\x1b[Hgreen' holds control characters",
    ),
    "huge": (
        lambda info: info.update(height=4000, width=4000),
        "height is 4000, not a whole number from 1 to 1024",
    ),
    "missing": (lambda info: info.pop("mean"), "its dataset info lacks mean"),
    "channels": (
        lambda info: info.update(channels="three"),
        "channels is 'three', not a whole number from 1 to 4",
    ),
    "classes": (lambda info: info.update(classes=[]), "it has 0 classes"),
}


def test_a_model_name_that_is_not_a_string_is_bad_metadata(
    plugins, checkpoint: Path, tmp_path: Path
) -> None:
    path = tampered_copy(checkpoint, tmp_path / "tampered", lambda info: None)
    sidecar = path.with_name(path.name + ".json")
    data = json.loads(sidecar.read_text())
    data["meta"]["model"] = 5
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ExptError) as info:
        load_trained(plugins, path, device="cpu")
    reason = "its model name is 5, not a string"
    assert str(info.value) == f"Checkpoint {path} has bad metadata: {reason}."


@pytest.mark.parametrize("case", list(BAD_INFO))
def test_bad_checkpoint_metadata_is_one_sentence(
    expt, checkpoint: Path, tmp_path: Path, case: str
) -> None:
    change, reason = BAD_INFO[case]
    path = tampered_copy(checkpoint, tmp_path / "tampered", change)
    picture(COLOURS["red"], (16, 16), seed=1).save(tmp_path / "red.png")
    commands = [("predict", "red.png")] + ([("eval",)] if case == "std-zero" else [])
    for command, *rest in commands:
        result = expt(command, "--checkpoint", str(path), "--device", "cpu", *rest)
        assert result.returncode == 1, result.stdout
        assert "\x1b" not in result.stdout + result.stderr  # never printed raw
        assert result.stdout == "" and "Traceback" not in result.stderr
        message = result.stderr.strip()
        assert message.startswith(f"Error: Checkpoint {path} has bad metadata: {reason}"), message
        assert "\n" not in message


def write_png_bomb(path: Path, side: int = 20000) -> None:
    """A real, valid 1-bit PNG of ``side`` x ``side`` pixels, all black: tiny on disk,
    ``side**2`` pixels (400 million) once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_and_a_fifo_are_refused_and_the_rest_predicted(
    checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    picture(COLOURS["red"], (20, 20), seed=3).save(folder / "red.png")
    write_png_bomb(folder / "bomb.png")
    picture(COLOURS["blue"], (20, 20), seed=4).save(folder / "zz-blue.png")
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)  # nothing ever writes to it: opening it for reading would wait forever
    result = subprocess.run(
        [sys.executable, "-m", "exptorch", "predict", "--checkpoint", str(checkpoint),
         "--device", "cpu", str(folder), str(fifo)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    verdicts = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert verdicts[str(folder / "red.png")].startswith("red")
    assert verdicts[str(folder / "zz-blue.png")].startswith("blue")
    assert result.stderr.splitlines() == [
        f"error: {folder / 'bomb.png'} is too large to decode safely (over 89,478,485 pixels, "
        "Pillow's limit against decompression bombs); shrink it first.",
        f"error: {fifo} is not a regular file (a FIFO, socket or device), so it is not read.",
    ]


def test_a_checkpoint_with_nan_weights_is_refused_by_predict_and_eval(
    expt, plugins, checkpoint: Path, tmp_path: Path
) -> None:
    """A diverged run's weights predict 'Bag (nan%)': refused in one sentence instead."""
    from exptorch.checkpoint import formats

    diverged = load_checkpoint(plugins, checkpoint)
    name = next(k for k, v in diverged.model_state.items() if v.is_floating_point())
    diverged.model_state[name][0] = float("nan")
    (tmp_path / "nan").mkdir()
    path = save_checkpoint(
        formats(plugins)["safetensors"], diverged, tmp_path / "nan" / "epoch-012.safetensors"
    )
    picture(COLOURS["red"], (16, 16), seed=1).save(tmp_path / "red.png")
    for command, *rest in [("predict", "red.png"), ("eval",)]:
        result = expt(command, "--checkpoint", str(path), "--device", "cpu", *rest)
        assert result.returncode == 1 and result.stdout == "", result.stdout
        assert result.stderr.strip() == (
            f"Error: Checkpoint {path} holds weights that are not finite ({name} has nan or "
            "inf): the run diverged; use an earlier checkpoint or train again with a lower --lr."
        )
