"""Dataset plugins ``fashion-mnist`` (the four standard IDX files) and ``fashion-mnist-sample``.

The sample is a real, class-balanced subset of Fashion-MNIST (MIT licence,
Zalando Research) bundled with exptorch, so the main job runs offline.
"""

from __future__ import annotations

import gzip
import importlib.resources
import logging
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch import ExptError, Splits, hookimpl

if TYPE_CHECKING:
    import torch

log = logging.getLogger("exptorch.fashion_mnist")

MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train_images": ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
}
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MEAN = (0.2860,)
STD = (0.3530,)


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (gzipped or not) into a uint8 tensor."""
    import torch

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an IDX file of unsigned bytes")
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        body = raw[4 + 4 * ndim :]
        count = 1
        for dim in shape:
            count *= dim
        if len(body) != count:
            raise ValueError(f"expected {count} bytes of data, found {len(body)}")
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise ExptError(f"{path} is not a readable IDX file ({exc}).") from None
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fetch(folder: Path, missing: list[str]) -> None:
    from exptorch_plugins._download import DownloadFailed, download, missing_data_error

    for stem, md5 in (FILES[key] for key in missing):
        try:
            download(MIRROR + stem + ".gz", folder / f"{stem}.gz", md5=md5)
        except DownloadFailed as exc:
            raise missing_data_error(
                "Fashion-MNIST",
                folder,
                f"could not be downloaded ({exc})",
                "put the four *-ubyte(.gz) files there (Debian's dataset-fashion-mnist "
                "package has them), use --data-dir, or --dataset fashion-mnist-sample.",
            ) from None


def read_folder(folder: Path, download: bool = False, name: str = "fashion-mnist") -> Splits:
    """Read the four Fashion-MNIST IDX files from ``folder`` (dataset ``name``)."""
    import torch

    missing = [key for key, (stem, _) in FILES.items() if _find(folder, stem) is None]
    if missing:
        if not download:
            names = ", ".join(FILES[k][0] for k in missing)
            raise ExptError(f"Fashion-MNIST files are missing from {folder}: {names}.")
        _fetch(folder, missing)
    arrays = {key: read_idx(_find(folder, stem)) for key, (stem, _) in FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ExptError(f"The Fashion-MNIST {split} files in {folder} do not match each other.")
    splits = Splits(
        train_images=arrays["train_images"].unsqueeze(1),
        train_labels=arrays["train_labels"].to(torch.int64),
        test_images=arrays["test_images"].unsqueeze(1),
        test_labels=arrays["test_labels"].to(torch.int64),
        classes=CLASSES,
        mean=MEAN,
        std=STD,
    )
    splits.validate(name)  # an IDX label byte can be anything up to 255
    return splits


def load(data_dir: Path, download: bool = True, **_: Any) -> Splits:
    """Fashion-MNIST from ``data_dir/fashion-mnist`` or ``data_dir``; downloads if missing."""
    for folder in (data_dir / "fashion-mnist", data_dir):
        if all(_find(folder, stem) for stem, _ in FILES.values()):
            return read_folder(folder)
    return read_folder(data_dir / "fashion-mnist", download=download)


def load_sample(**_: Any) -> Splits:
    """The bundled sample: 6,000 training and 1,000 test images, balanced across the classes."""
    resource = importlib.resources.files("exptorch_plugins") / "data" / "fashion-mnist-sample"
    with importlib.resources.as_file(resource) as folder:
        return read_folder(Path(folder), name="fashion-mnist-sample")


@hookimpl
def register_datasets(register: Any) -> None:
    register("fashion-mnist", load, description="Fashion-MNIST, 28x28 grey, 10 classes (30 MB)")
    register(
        "fashion-mnist-sample",
        load_sample,
        description="6,000/1,000-image Fashion-MNIST subset bundled with exptorch (offline)",
    )
