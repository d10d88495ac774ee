"""The dataset plugins, read through the registry from real files."""

from __future__ import annotations

import gzip
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_cifar10
from exptorch import ExptError
from exptorch_plugins import fashion_mnist


def test_cifar10_reads_the_standard_pickle_format(plugins, cifar10_dir: Path, caplog) -> None:
    load = plugins.get("dataset", "cifar10").factory
    with caplog.at_level(logging.WARNING, logger="exptorch"):
        splits = load(data_dir=cifar10_dir, download=False)
    assert splits.train_images.shape == (100, 3, 32, 32)
    assert splits.train_images.dtype == torch.uint8
    assert splits.train_labels.dtype == torch.int64 and splits.train_labels.shape == (100,)
    assert splits.test_images.shape == (40, 3, 32, 32)
    assert splits.info.classes[0] == "airplane" and splits.info.num_classes == 10
    assert "not the official CIFAR-10" in caplog.text


def test_cifar10_channel_layout_matches_the_format(plugins, tmp_path: Path) -> None:
    import pickle

    import numpy as np

    root = write_cifar10(tmp_path, train_per_batch=2, test=2, batches=1)
    row = np.zeros(3072, dtype=np.uint8)
    row[:1024], row[1024:2048], row[2048:] = 10, 20, 30  # red, green, blue planes
    entry = {"data": np.stack([row, row]), "labels": [3, 4]}
    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as fh:
        pickle.dump(entry, fh)
    splits = plugins.get("dataset", "cifar10").factory(data_dir=root, download=False)
    assert splits.train_images[0, :, 5, 7].tolist() == [10, 20, 30]
    assert splits.train_labels.tolist() == [3, 4]


def test_cifar10_missing_offline_is_one_clear_sentence(plugins, tmp_path: Path) -> None:
    load = plugins.get("dataset", "cifar10").factory
    with pytest.raises(ExptError) as info:
        load(data_dir=tmp_path / "empty", download=True)
    message = str(info.value)
    assert "could not be downloaded" in message and "cifar-10-python.tar.gz" in message
    assert "fashion-mnist-sample" in message
    assert not list((tmp_path / "empty").glob("*.part*"))  # nothing half-written stays behind


def test_cifar10_no_download_flag(plugins, tmp_path: Path) -> None:
    with pytest.raises(ExptError, match="--no-download"):
        plugins.get("dataset", "cifar10").factory(data_dir=tmp_path, download=False)


def test_cifar10_corrupt_batch_names_the_file(plugins, cifar10_dir: Path) -> None:
    (cifar10_dir / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(ExptError, match="data_batch_2 is not a CIFAR-10 batch file"):
        plugins.get("dataset", "cifar10").factory(data_dir=cifar10_dir, download=False)


class CreatesFile:
    """A pickled object that, when unpickled by plain ``pickle.load``, creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("victim", ["data_batch_1", "test_batch", "batches.meta"])
def test_cifar10_malicious_pickle_runs_no_code(expt, tmp_path: Path, victim: str) -> None:
    root = write_cifar10(tmp_path / "data", train_per_batch=4, test=4, batches=1)
    marker = tmp_path / "pwned"
    target = root / "cifar-10-batches-py" / victim
    with open(target, "wb") as fh:
        pickle.dump({"data": CreatesFile(marker), "label_names": CreatesFile(marker)}, fh)
    result = expt(
        "run", "--dataset", "cifar10", "--data-dir", str(root), "--epochs", "1",
        "--device", "cpu", "--no-download",
    )  # fmt: skip
    assert not marker.exists()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {target} is not a CIFAR-10 file: it asks to load posix.system")
    assert "refuses to read it" in last


def test_cifar10_reads_every_pickle_protocol_and_bytes_keys(plugins, tmp_path: Path) -> None:
    """What the restricted unpickler admits covers the format as written by any Python/numpy."""
    root = write_cifar10(tmp_path, train_per_batch=3, test=3, batches=2)
    folder = root / "cifar-10-batches-py"
    rows = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for protocol, name in ((2, "data_batch_1"), (5, "data_batch_2")):
        entry = {b"data": rows, b"labels": [1, 2], b"batch_label": b"bytes everywhere"}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=protocol)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"k{i}".encode() for i in range(10)]}, fh, protocol=4)
    splits = plugins.get("dataset", "cifar10").factory(data_dir=root, download=False)
    assert splits.train_labels.tolist() == [1, 2, 1, 2]
    assert torch.equal(splits.train_images[2], torch.from_numpy(rows[0].reshape(3, 32, 32)))
    assert splits.classes[9] == "k9"


def test_cifar10_pixels_of_another_dtype_are_refused_not_cast(plugins, tmp_path: Path) -> None:
    root = write_cifar10(tmp_path, train_per_batch=2, test=2, batches=1)
    entry = {"data": np.full((2, 3072), 300, dtype=np.int16), "labels": [0, 1]}
    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as fh:
        pickle.dump(entry, fh)
    with pytest.raises(ExptError, match=r"data_batch_1 holds int16 pixel data where CIFAR-10 has"):
        plugins.get("dataset", "cifar10").factory(data_dir=root, download=False)


def test_fashion_mnist_sample_is_real_and_balanced(plugins) -> None:
    splits = plugins.get("dataset", "fashion-mnist-sample").factory()
    assert splits.train_images.shape == (6000, 1, 28, 28)
    assert splits.test_images.shape == (1000, 1, 28, 28)
    assert torch.bincount(splits.train_labels).tolist() == [600] * 10
    assert torch.bincount(splits.test_labels).tolist() == [100] * 10
    assert splits.info.classes[9] == "Ankle boot"
    # Real photographs of clothes: varied pixels, not a synthetic pattern.
    assert splits.train_images.float().std() > 50


def test_fashion_mnist_reads_plain_and_gzipped_idx(plugins, tmp_path: Path) -> None:
    sample = Path(fashion_mnist.__file__).parent / "data" / "fashion-mnist-sample"
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for path in sample.glob("*.gz"):
        if path.name.startswith("train"):
            (folder / path.stem).write_bytes(gzip.decompress(path.read_bytes()))  # plain
        else:
            shutil.copy(path, folder / path.name)  # gzipped
    splits = plugins.get("dataset", "fashion-mnist").factory(data_dir=tmp_path, download=False)
    assert splits.train_images.shape == (6000, 1, 28, 28)
    assert splits.test_labels.shape == (1000,)


def test_fashion_mnist_truncated_file_names_it(plugins, tmp_path: Path) -> None:
    sample = Path(fashion_mnist.__file__).parent / "data" / "fashion-mnist-sample"
    for path in sample.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    target = tmp_path / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes())[:5000]))
    with pytest.raises(ExptError, match=r"t10k-images-idx3-ubyte\.gz is not a readable IDX file"):
        plugins.get("dataset", "fashion-mnist").factory(data_dir=tmp_path, download=False)


def test_fashion_mnist_missing_offline(plugins, tmp_path: Path) -> None:
    with pytest.raises(ExptError, match=r"Fashion-MNIST is not in .* could not be downloaded"):
        plugins.get("dataset", "fashion-mnist").factory(data_dir=tmp_path, download=True)
