"""Dataset plugin ``cifar10``: the standard ``cifar-10-batches-py`` folder, fetched if missing."""

from __future__ import annotations

import importlib
import logging
import pickle
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch import ExptError, Splits, hookimpl

if TYPE_CHECKING:
    import torch

log = logging.getLogger("exptorch.cifar10")

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
}
TEST_FILES = {"test_batch": "40351d587109b95175f43aff81a1287e"}
META_FILE = ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888")
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

#: Everything a CIFAR-10 pickle may name besides dicts, lists, strings, bytes and numbers:
#: numpy arrays (under numpy 1's and numpy 2's module names, pickle protocols 2 to 5) and
#: the codec Python 3 uses for bytes in protocol 2. Unpickling anything else could run code.
SAFE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})  # fmt: skip


class UnsafePickle(ExptError):
    """A dataset file that names something other than what the CIFAR-10 format holds."""


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only :data:`SAFE_GLOBALS` and refuses every other global.

    ``pickle.load`` calls whatever a file names (``os.system`` included); this one
    raises :class:`UnsafePickle` naming the file before anything from it is called.
    """

    def __init__(self, fh: Any, path: Path) -> None:
        super().__init__(fh, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise UnsafePickle(
                f"{self.path} is not a CIFAR-10 file: it asks to load {module}.{name}, which "
                "the format never holds, so exptorch refuses to read it (unpickling it could "
                "run code); delete it and let exptorch download CIFAR-10 again."
            )
        # numpy 2 moved numpy.core to numpy._core; either name loads on either numpy.
        for where in dict.fromkeys((module.replace("numpy.core.", "numpy._core."), module)):
            try:
                return getattr(importlib.import_module(where), name)
            except (ImportError, AttributeError):
                continue
        return super().find_class(module, name)


def read_pickle(path: Path) -> Any:
    """A CIFAR-10 file's contents, unpickled with :class:`DataUnpickler`."""
    with open(path, "rb") as fh:
        return DataUnpickler(fh, path).load()


def _entry(path: Path) -> dict[str, Any]:
    """A CIFAR-10 file's dict, with bytes keys (Python 2's str, or encoding="bytes") as str."""
    entry = read_pickle(path)
    if not isinstance(entry, dict):
        raise ValueError(f"it holds a {type(entry).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    import torch

    try:
        entry = _entry(path)
        data = entry["data"]
        labels = np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
            raise ExptError(
                f"{path} holds {kind} pixel data where CIFAR-10 has uint8; exptorch does not "
                "cast pixels, so rewrite the file with uint8 data."
            )
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise ValueError(f"its labels are {labels.dtype} of shape {labels.shape}, not integers")
        images = data.reshape(-1, 3, 32, 32)
    except ExptError:
        raise
    except Exception as exc:
        raise ExptError(
            f"{path} is not a CIFAR-10 batch file ({type(exc).__name__}: {exc})."
        ) from None
    if len(labels) != len(images):
        raise ExptError(f"{path} has {len(images)} images but {len(labels)} labels.")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _fetch(root: Path) -> None:
    from exptorch_plugins._download import DownloadFailed, download, missing_data_error

    archive = root / "cifar-10-python.tar.gz"
    try:
        download(URL, archive, md5=ARCHIVE_MD5)
    except DownloadFailed as exc:
        raise missing_data_error(
            "CIFAR-10",
            root,
            f"could not be downloaded ({exc})",
            f"download {URL} where there is a network, extract it into {root} "
            f"so that {root / FOLDER} exists, or use --data-dir, or "
            "--dataset fashion-mnist-sample to try exptorch offline.",
        ) from None
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                # refuses members that would land outside root, links out of it, devices
                tar.extractall(root, filter="data")
            else:  # pragma: no cover - Python < 3.10.12
                tar.extractall(root)
    except tarfile.TarError as exc:
        raise ExptError(
            f"The CIFAR-10 archive from {URL} could not be extracted safely ({exc}); it is "
            f"left at {archive} to inspect: delete it to download it again."
        ) from None
    archive.unlink()


def load(data_dir: Path, download: bool = True, **_: Any) -> Splits:
    """Read CIFAR-10 from ``data_dir/cifar-10-batches-py``, downloading it first if missing."""
    import torch

    from exptorch_plugins._download import md5sum

    folder = data_dir / FOLDER
    if not folder.is_dir():
        if not download:
            raise ExptError(
                f"CIFAR-10 is not in {data_dir} (no {FOLDER} folder) and --no-download was given."
            )
        _fetch(data_dir)
    train_files = [name for name in TRAIN_FILES if (folder / name).is_file()]
    if not train_files or not (folder / "test_batch").is_file():
        raise ExptError(
            f"{folder} lacks data_batch_N or test_batch files; delete the folder to "
            "download CIFAR-10 again, or point --data-dir elsewhere."
        )
    expected = {**TRAIN_FILES, **TEST_FILES}
    differ = [n for n in [*train_files, "test_batch"] if md5sum(folder / n) != expected[n]]
    if differ or len(train_files) < len(TRAIN_FILES):
        log.warning(
            "%s is not the official CIFAR-10 (%s); reading it anyway",
            folder,
            "checksums differ: " + ", ".join(differ) if differ else "a subset of the batches",
        )
    parts = [_read_batch(folder / name) for name in train_files]
    test_images, test_labels = _read_batch(folder / "test_batch")
    classes: tuple[str, ...] = CLASSES
    meta = folder / META_FILE[0]
    if meta.is_file():
        try:
            names = _entry(meta)["label_names"]
            classes = tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)
        except UnsafePickle:
            raise
        except Exception:
            log.warning("%s is unreadable; using the standard class names", meta)
    splits = Splits(
        train_images=torch.cat([p[0] for p in parts]),
        train_labels=torch.cat([p[1] for p in parts]),
        test_images=test_images,
        test_labels=test_labels,
        classes=classes,
        mean=MEAN,
        std=STD,
    )
    splits.validate("cifar10")  # labels in range, 2+ printable class names, no empty split
    return splits


@hookimpl
def register_datasets(register: Any) -> None:
    register("cifar10", load, description="CIFAR-10, 32x32 colour, 10 classes (downloads 163 MB)")
