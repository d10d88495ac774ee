"""Rebuild the bundled Fashion-MNIST sample from the official IDX files.

Usage (Debian ships the official files in dataset-fashion-mnist)::

    apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb /tmp/fm
    python scripts/make_fashion_mnist_sample.py /tmp/fm/usr/share/datasets/fashion-mnist

It keeps the first 600 training and first 100 test images of each class, in
their original order, and writes gzipped IDX files with a fixed timestamp so the
output is byte-for-byte reproducible. Fashion-MNIST is MIT-licensed (Zalando SE).
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 100
OUT = Path(__file__).resolve().parent.parent / "plugins/exptorch_plugins/data/fashion-mnist-sample"


def read(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(shape)


def write(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def pick(labels: np.ndarray, per_class: int) -> np.ndarray:
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    return np.sort(keep)


def main(source: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for split, prefix, per_class in (
        ("train", "train", TRAIN_PER_CLASS),
        ("test", "t10k", TEST_PER_CLASS),
    ):
        images = read(next(source.glob(f"{prefix}-images-idx3-ubyte*")))
        labels = read(next(source.glob(f"{prefix}-labels-idx1-ubyte*")))
        keep = pick(labels, per_class)
        write(OUT / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        write(OUT / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
        print(f"{split}: {len(keep)} images")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
