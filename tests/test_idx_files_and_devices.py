"""Fashion-MNIST's IDX files as the plugin reads them, and the cpu device's one rule: each
refusal in its whole sentence."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import pytest
import torch

from exptorch import ExptError
from exptorch_plugins import devices, fashion_mnist
from exptorch_plugins.fashion_mnist import read_folder, read_idx

SAMPLE = Path(fashion_mnist.__file__).parent / "data" / "fashion-mnist-sample"


def idx(path: Path, header: bytes, body: bytes) -> Path:
    path.write_bytes(header + body)
    return path


def test_an_idx_file_is_read_into_its_shape(tmp_path: Path) -> None:
    header = struct.pack(">HBBII", 0, 0x08, 2, 2, 3)
    got = read_idx(idx(tmp_path / "a-ubyte", header, bytes(range(6))))
    assert got.dtype == torch.uint8 and got.tolist() == [[0, 1, 2], [3, 4, 5]]
    (tmp_path / "b-ubyte.gz").write_bytes(gzip.compress(header + bytes(range(6))))
    assert torch.equal(read_idx(tmp_path / "b-ubyte.gz"), got)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (struct.pack(">HBBI", 1, 0x08, 1, 3), "not an IDX file of unsigned bytes"),
        (struct.pack(">HBBI", 0, 0x0D, 1, 3), "not an IDX file of unsigned bytes"),
        (struct.pack(">HBBI", 0, 0x08, 1, 4), "expected 4 bytes of data, found 3"),
    ],
)
def test_a_file_that_is_not_idx_bytes_is_one_sentence(
    tmp_path: Path, header: bytes, reason: str
) -> None:
    path = idx(tmp_path / "x-ubyte", header, b"abc")
    with pytest.raises(ExptError) as refused:
        read_idx(path)
    assert str(refused.value) == f"{path} is not a readable IDX file ({reason})."


def test_missing_files_are_named_without_downloading(tmp_path: Path) -> None:
    shutil.copy(SAMPLE / "train-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(ExptError) as refused:
        read_folder(tmp_path)  # no download unless asked
    assert str(refused.value) == (
        f"Fashion-MNIST files are missing from {tmp_path}: train-images-idx3-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte."
    )


def test_labels_and_images_of_different_counts_do_not_match(tmp_path: Path) -> None:
    for path in SAMPLE.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    labels = gzip.decompress((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    fewer = struct.pack(">HBBI", 0, 0x08, 1, 5999) + labels[8:-1]
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(fewer))
    with pytest.raises(ExptError) as refused:
        read_folder(tmp_path)
    assert str(refused.value) == (
        f"The Fashion-MNIST train files in {tmp_path} do not match each other."
    )


def test_the_sample_is_named_as_its_own_dataset_when_it_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    named: list[str] = []
    monkeypatch.setattr("exptorch.types.Splits.validate", lambda self, name: named.append(name))
    splits = fashion_mnist.load_sample()
    assert named == ["fashion-mnist-sample"] and len(splits.train_labels) == 6000


def test_the_cpu_device_takes_no_index() -> None:
    assert devices.cpu() == devices.cpu(0) == torch.device("cpu")
    with pytest.raises(ExptError) as refused:
        devices.cpu(1)
    assert str(refused.value) == "The cpu device takes no index; use --device cpu."
