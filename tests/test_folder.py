"""The ``folder`` dataset plugin on real image files: classes, split, sizes, modes, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from image_folders import make_class_folders
from PIL import Image

from exptorch import ExptError
from exptorch_plugins import folder


def test_class_folders_become_classes_and_a_seeded_split(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "train", per_class=10)
    (root / ".hidden").mkdir()
    (root / "red" / "notes.txt").write_text("not an image")
    splits = folder.load(folder_train=str(root), folder_image_size=12, folder_test_fraction=0.3)
    assert list(splits.classes) == ["blue", "green", "red"]
    assert splits.train_images.shape == (21, 3, 12, 12) and splits.test_images.shape[0] == 9
    assert splits.train_images.dtype == torch.uint8
    assert torch.bincount(splits.test_labels).tolist() == [3, 3, 3]  # the same share per class
    # Each class's images really are its colour (channel order R, G, B).
    red = splits.train_images[splits.train_labels == 2].float().mean(dim=(0, 2, 3))
    assert red[0] > 150 and red[1] < 100 and red[2] < 100
    # mean and std: the training images' per channel, on the 0-1 scale, to 4 places
    pixels = splits.train_images.float() / 255
    assert splits.mean == [round(v, 4) for v in pixels.mean(dim=(0, 2, 3)).tolist()]
    assert splits.std == [round(v, 4) for v in pixels.std(dim=(0, 2, 3)).tolist()]
    again = folder.load(folder_train=str(root), folder_image_size=12, folder_test_fraction=0.3)
    assert torch.equal(again.test_images, splits.test_images)
    other = folder.load(
        folder_train=str(root), folder_image_size=12, folder_test_fraction=0.3, folder_split_seed=1
    )
    assert not torch.equal(other.test_images, splits.test_images)


def test_separate_test_folder_and_greyscale(tmp_path: Path) -> None:
    train = make_class_folders(tmp_path / "train", per_class=4, grey=True)
    test = make_class_folders(tmp_path / "val", per_class=2, grey=True)
    splits = folder.load(folder_train=str(train), folder_test=str(test), folder_image_size=8)
    assert splits.train_images.shape == (12, 1, 8, 8) and splits.test_images.shape == (6, 1, 8, 8)
    assert splits.info.channels == 1
    rgb = folder.load(
        folder_train=str(train), folder_test=str(test), folder_image_size=8, folder_channels="3"
    )
    assert rgb.train_images.shape[1] == 3


def test_any_pillow_mode_is_read(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "train", per_class=2)
    base = Image.open(next((root / "red").glob("*.png"))).convert("RGB")
    base.convert("RGBA").save(root / "red" / "rgba.png")
    base.convert("P").save(root / "red" / "palette.png")
    base.convert("CMYK").save(root / "red" / "cmyk.jpg")
    base.convert("L").convert("I;16").save(root / "red" / "sixteen.png")
    splits = folder.load(folder_train=str(root), folder_image_size=6, folder_test_fraction=0.25)
    assert len(splits.train_labels) + len(splits.test_labels) == 10


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        (None, {}, "needs --folder-train PATH"),
        ("empty", {"folder_train": "{root}"}, "has no class sub-folders"),
        ("missing", {"folder_train": "{root}/nope"}, "does not exist"),
        ("no-images", {"folder_train": "{root}"}, "holds no image files"),
        ("bad-image", {"folder_train": "{root}"}, "broken.png is truncated or damaged"),
        ("text-image", {"folder_train": "{root}"}, "fake.jpg is not an image file"),
        ("extra-class", {"folder_train": "{root}/train", "folder_test": "{root}/val"}, "lacks"),
        ("ok", {"folder_train": "{root}", "folder_test_fraction": 1.5}, "between 0 and 1"),
        ("one-class", {"folder_train": "{root}"}, "has 1 class, and a classifier needs at least 2"),
        ("one-each", {"folder_train": "{root}"}, "its test split is empty"),
    ],
)
def test_mistakes_are_one_sentence(tmp_path: Path, setup, kwargs, message) -> None:
    root = tmp_path / "data"
    root.mkdir()
    if setup in ("no-images",):
        (root / "cat").mkdir()
        (root / "cat" / "readme.txt").write_text("x")
    if setup in ("bad-image", "text-image", "ok"):
        make_class_folders(root, per_class=2)
    if setup == "bad-image":
        data = (root / "red" / "001.png").read_bytes()
        (root / "red" / "broken.png").write_bytes(data[: len(data) // 2])
    if setup == "text-image":
        (root / "red" / "fake.jpg").write_text("hello")
    if setup == "one-class":
        make_class_folders(root / "all", per_class=4)
        root = root / "all" / "red"  # a folder whose only sub-folder is one class
        (root / "only").mkdir()
        for image in list(root.glob("0*")):
            image.rename(root / "only" / image.name)
    if setup == "one-each":
        make_class_folders(root, per_class=1)  # nothing can be held out for testing
    if setup == "extra-class":
        make_class_folders(root / "train", per_class=1)
        make_class_folders(root / "val", per_class=2)
        (root / "val" / "purple").mkdir()
        next((root / "val" / "red").iterdir()).rename(root / "val" / "purple" / "x.jpg")
    resolved = {k: v.format(root=root) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ExptError, match=message) as info:
        folder.load(**resolved)
    assert "\n" not in str(info.value)


def test_each_class_holds_out_its_share_but_keeps_one_image_each_side(tmp_path: Path) -> None:
    """``--folder-test-fraction`` of each class, rounded, yet at least one test image and at
    least one training image per class that has two; hidden files are not images."""
    root = make_class_folders(tmp_path / "train", per_class=10)  # blue, green, red
    for name, keep in (("green", 3), ("red", 2)):
        for image in sorted((root / name).iterdir())[keep:]:
            image.unlink()
    hidden = root / "red" / ".thumbnail.png"
    hidden.write_bytes(next((root / "red").glob("*.png")).read_bytes())

    def held_out(fraction: float) -> list[int]:
        splits = folder.load(
            folder_train=str(root), folder_image_size=8, folder_test_fraction=fraction
        )
        assert len(splits.train_labels) + len(splits.test_labels) == 15
        return torch.bincount(splits.test_labels, minlength=3).tolist()

    assert held_out(0.2) == [2, 1, 1]  # 2 of 10; 0.6 -> 1 of 3; 0.4 -> at least 1 of 2
    assert held_out(0.9) == [9, 2, 1]  # each class keeps one image to train on


def test_the_image_size_and_test_fraction_limits(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "train", per_class=4)
    smallest = folder.load(folder_train=str(root), folder_image_size=1)
    assert smallest.train_images.shape[1:] == (3, 1, 1)
    with pytest.raises(ExptError) as caught:
        folder.load(folder_train=str(root), folder_image_size=0)
    assert str(caught.value) == "--folder-image-size must be at least 1, not 0."
    for fraction in (0.0, 1.0):
        with pytest.raises(ExptError) as caught:
            folder.load(folder_train=str(root), folder_test_fraction=fraction)
        expected = f"--folder-test-fraction must be between 0 and 1, not {fraction}."
        assert str(caught.value) == expected
