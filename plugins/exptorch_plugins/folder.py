"""Dataset plugin ``folder``: your own images, one sub-folder per class (torchvision ImageFolder).

::

    ants-bees/train/ants/0013035.jpg       --folder-train ants-bees/train
    ants-bees/train/bees/1092977343.jpg
    ants-bees/val/ants/...                 --folder-test ants-bees/val (optional)

Class names are the sub-folder names, sorted. Without ``--folder-test``, a seeded
``--folder-test-fraction`` of each class is held out for testing (the same split
every time for the same ``--folder-split-seed``). Every image is decoded once with
:func:`exptorch.load_image` (any Pillow mode; transparency over white), resized to
``--folder-image-size`` pixels square, and kept as ``uint8``; mean and standard
deviation come from the training images. Images are greyscale (1 channel) when
every training image is stored as greyscale, RGB otherwise, unless
``--folder-channels`` says.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch import (
    IMAGE_EXTENSIONS,
    ExptError,
    Option,
    Splits,
    hookimpl,
    is_greyscale,
    is_image_file,
    load_image,
)

if TYPE_CHECKING:
    import torch


def find_images(root: Path) -> dict[str, list[Path]]:
    """Image files per class sub-folder of ``root``, both sorted by name."""
    if not root.is_dir():
        raise ExptError(f"The folder dataset's folder {root} does not exist.")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ExptError(f"{root} has no class sub-folders; put each class's images in its own.")
    found = {}
    for folder in classes:
        files = sorted(
            p for p in folder.rglob("*") if is_image_file(p) and not p.name.startswith(".")
        )
        if not files:
            raise ExptError(
                f"Class folder {folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})."
            )
        found[folder.name] = files
    return found


def decode(files: list[Path], channels: int, size: int) -> torch.Tensor:
    """Decode ``files`` into one ``uint8`` tensor ``(N, channels, size, size)``, in parallel."""
    import torch

    def one(path: Path) -> torch.Tensor:
        return load_image(path, channels=channels, height=size, width=size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(one, files))
    return (
        torch.stack(images) if images else torch.empty(0, channels, size, size, dtype=torch.uint8)
    )


def load(
    data_dir: Path | None = None,
    download: bool = False,
    folder_train: str | None = None,
    folder_test: str | None = None,
    folder_image_size: int = 32,
    folder_test_fraction: float = 0.2,
    folder_split_seed: int = 0,
    folder_channels: str = "auto",
    **_: Any,
) -> Splits:
    import torch

    if not folder_train:
        raise ExptError(
            "The folder dataset needs --folder-train PATH: a folder with one sub-folder of "
            "images per class."
        )
    if folder_image_size < 1:
        raise ExptError(f"--folder-image-size must be at least 1, not {folder_image_size}.")
    train_files = find_images(Path(folder_train))
    classes = list(train_files)
    pairs = [(path, label) for label, name in enumerate(classes) for path in train_files[name]]

    if folder_test:
        test_files = find_images(Path(folder_test))
        unknown = sorted(set(test_files) - set(classes))
        if unknown:
            raise ExptError(
                f"Test folder {folder_test} has classes the training folder lacks: "
                f"{', '.join(unknown)}."
            )
        train_pairs = pairs
        test_pairs = [(p, classes.index(name)) for name, files in test_files.items() for p in files]
    else:
        if not 0 < folder_test_fraction < 1:
            raise ExptError(
                f"--folder-test-fraction must be between 0 and 1, not {folder_test_fraction}."
            )
        generator = torch.Generator().manual_seed(folder_split_seed)
        train_pairs, test_pairs = [], []
        for label, name in enumerate(classes):  # hold out the same fraction of every class
            files = train_files[name]
            order = torch.randperm(len(files), generator=generator).tolist()
            n_test = round(len(files) * folder_test_fraction) if len(files) > 1 else 0
            n_test = min(max(n_test, 1 if len(files) > 1 else 0), len(files) - 1)
            test_pairs += [(files[i], label) for i in sorted(order[:n_test])]
            train_pairs += [(files[i], label) for i in sorted(order[n_test:])]

    if folder_channels == "auto":
        channels = 1 if all(is_greyscale(p) for p, _ in train_pairs) else 3
    else:
        channels = int(folder_channels)
    train_images = decode([p for p, _ in train_pairs], channels, folder_image_size)
    test_images = decode([p for p, _ in test_pairs], channels, folder_image_size)
    scaled = train_images.float().div_(255)
    mean = scaled.mean(dim=(0, 2, 3)).tolist()
    std = scaled.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    splits = Splits(
        train_images=train_images,
        train_labels=torch.tensor([label for _, label in train_pairs], dtype=torch.int64),
        test_images=test_images,
        test_labels=torch.tensor([label for _, label in test_pairs], dtype=torch.int64),
        classes=classes,
        mean=[round(m, 4) for m in mean],
        std=[round(s, 4) for s in std],
    )
    splits.validate("folder")  # one class, or no image left to test on, is refused here
    return splits


@hookimpl
def register_datasets(register: Any) -> None:
    register(
        "folder",
        load,
        description="your images, one sub-folder per class (ImageFolder layout), resized square",
        options=[
            Option("folder_train", help="Folder with one sub-folder of images per class."),
            Option(
                "folder_test",
                help="Separate test folder, same class sub-folders. [default: hold out "
                "--folder-test-fraction of the training folder]",
            ),
            Option("folder_image_size", 32, "Resize every image to N x N pixels.", type=int),
            Option(
                "folder_test_fraction", 0.2, "Share of each class held out for testing.", type=float
            ),
            Option("folder_split_seed", 0, "Seed of the held-out split.", type=int),
            Option(
                "folder_channels",
                "auto",
                "1 (greyscale) or 3 (RGB); auto: 1 when every training image is greyscale.",
                choices=("auto", "1", "3"),
            ),
        ],
    )
