"""The dataset plugins, read through the registry from real files."""

from __future__ import annotations

import gzip
import http.server
import logging
import pickle
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import file_server, http_server, write_cifar10
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


def test_cifar10_warns_exactly_when_it_is_not_the_official_set(
    plugins, cifar10_dir: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exptorch_plugins import cifar10
    from exptorch_plugins._download import md5sum

    folder = cifar10_dir / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    load = plugins.get("dataset", "cifar10").factory
    caplog.set_level(logging.WARNING, logger="exptorch")
    load(data_dir=cifar10_dir, download=False)
    assert caplog.messages == [
        f"{folder} is not the official CIFAR-10 (checksums differ: {', '.join(names)}); "
        "reading it anyway"
    ]
    own = {name: md5sum(folder / name) for name in names}  # as if these were the official files
    monkeypatch.setattr(cifar10, "TRAIN_FILES", {name: own[name] for name in names[:5]})
    monkeypatch.setattr(cifar10, "TEST_FILES", {"test_batch": own["test_batch"]})
    caplog.clear()
    load(data_dir=cifar10_dir, download=False)
    assert caplog.messages == []
    (folder / "data_batch_5").unlink()
    load(data_dir=cifar10_dir, download=False)
    assert caplog.messages == [
        f"{folder} is not the official CIFAR-10 (a subset of the batches); reading it anyway"
    ]
    caplog.clear()
    (folder / "batches.meta").write_bytes(b"not a pickle")
    assert load(data_dir=cifar10_dir, download=False).classes == cifar10.CLASSES
    assert caplog.messages[-1] == (
        f"{folder / 'batches.meta'} is unreadable; using the standard class names"
    )


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
    assert message.endswith("or --dataset fashion-mnist-sample to try exptorch offline.")
    assert not list((tmp_path / "empty").glob("*.part*"))  # nothing half-written stays behind


def serve_cifar10(monkeypatch: pytest.MonkeyPatch, archive: Path, checksum_matches: bool) -> None:
    """The CIFAR-10 download reads ``archive`` (a file:// URL); its expected checksum is the
    archive's own, or the real CIFAR-10 archive's (which differs)."""
    import hashlib

    from exptorch_plugins import cifar10

    monkeypatch.setattr(cifar10, "URL", archive.as_uri())
    if checksum_matches:
        monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())


def test_cifar10_download_is_checked_then_extracted(plugins, tmp_path: Path, monkeypatch) -> None:
    import tarfile

    write_cifar10(tmp_path / "source")
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", "cifar-10-batches-py")
    load = plugins.get("dataset", "cifar10").factory
    serve_cifar10(monkeypatch, archive, checksum_matches=False)
    with pytest.raises(ExptError, match="arrived with a wrong checksum; try again"):
        load(data_dir=tmp_path / "data", download=True)
    assert not list((tmp_path / "data").iterdir())  # nothing half-written stays behind

    serve_cifar10(monkeypatch, archive, checksum_matches=True)
    splits = load(data_dir=tmp_path / "data", download=True)
    assert len(splits.train_labels) == 100 and len(splits.test_labels) == 40
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cifar-10-batches-py"]


def test_a_failed_download_says_why(tmp_path: Path) -> None:
    from exptorch_plugins._download import DownloadFailed, download

    url = (tmp_path / "gone.tar.gz").as_uri()
    with pytest.raises(DownloadFailed) as info:
        download(url, tmp_path / "data" / "gone.tar.gz")
    gone = tmp_path / "gone.tar.gz"
    reason = f"[Errno 2] No such file or directory: '{gone}'"
    assert str(info.value) == f"{url} could not be downloaded: {reason}"
    assert not list((tmp_path / "data").iterdir())


def test_a_download_names_exptorch_and_gives_up_on_a_silent_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over real HTTP on 127.0.0.1: the request says who asks (some servers refuse Python's
    default agent); a file cut short by the server is refused, not kept (before, only a
    checksum caught it, later); a server that accepts the connection but never answers fails
    the download after the timeout instead of hanging it. No partial file is left."""
    import socket

    from exptorch_plugins import _download

    agents = []

    def do_get(self: http.server.BaseHTTPRequestHandler) -> None:
        agents.append(self.headers.get("User-Agent"))
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * (10 if self.path == "/cut.bin" else 1000))
        self.close_connection = True

    with http_server(monkeypatch, do_get) as base:
        url = f"{base}/a.bin"
        assert _download.download(url, tmp_path / "a.bin").read_bytes() == b"x" * 1000
        cut = f"{base}/cut.bin"
        with pytest.raises(_download.DownloadFailed) as short:
            _download.download(cut, tmp_path / "cut.bin")
        assert str(short.value) == f"{cut} arrived incomplete (10 of 1000 bytes); try again"
    assert agents == ["exptorch", "exptorch"]

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setattr(_download, "TIMEOUT_SECONDS", 0.5)
    outcome: list[BaseException] = []

    def fetch() -> None:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/b.bin"
        try:
            _download.download(url, tmp_path / "b.bin")
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(20)
    silent.close()
    assert not worker.is_alive(), "the download hung on a server that never answers"
    assert isinstance(outcome[0], _download.DownloadFailed), outcome
    assert str(outcome[0]).endswith("could not be downloaded: timed out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_server_that_does_not_announce_the_size_is_read_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Content-Length (an HTTP/1.0 reply that ends when the connection closes): the whole
    body is the file, and there is no announced size to fall short of."""
    from exptorch_plugins import _download

    def do_get(self: http.server.BaseHTTPRequestHandler) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"y" * 70_000)
        self.close_connection = True

    with http_server(monkeypatch, do_get) as base:
        path = _download.download(f"{base}/e.bin", tmp_path / "e.bin", md5=None)
    assert path.read_bytes() == b"y" * 70_000


def test_a_connection_reset_in_the_middle_of_a_download_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server sends the headers and a few bytes, then resets the connection: the error
    raised while reading the body (an OSError without a ``reason``) says what happened."""
    import errno
    import os
    import socket
    import time

    from exptorch_plugins import _download

    def do_get(self: http.server.BaseHTTPRequestHandler) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 10)
        time.sleep(0.3)  # the client is reading the body by now
        linger = struct.pack("ii", 1, 0)  # close with a reset, not an orderly end
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.connection.close()  # now, before the server's own orderly shutdown
        self.close_connection = True

    with http_server(monkeypatch, do_get) as base:
        url = f"{base}/d.bin"
        with pytest.raises(_download.DownloadFailed) as failed:
            _download.download(url, tmp_path / "data" / "d.bin")
    reason = f"[Errno {errno.ECONNRESET}] {os.strerror(errno.ECONNRESET)}"
    assert str(failed.value) == f"{url} could not be downloaded: {reason}"
    assert not list((tmp_path / "data").iterdir())


def test_ctrl_c_before_the_first_byte_stays_a_ctrl_c(tmp_path: Path, monkeypatch) -> None:
    """Interrupted while connecting, before any partial file exists: the KeyboardInterrupt
    reaches the caller as it is (exptorch turns it into exit 130), not a cleanup error."""
    import urllib.request

    from exptorch_plugins import _download

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _download.download("http://127.0.0.1:9/c.bin", tmp_path / "data" / "c.bin")
    assert not list((tmp_path / "data").iterdir())


def test_cifar10_archive_members_outside_its_folder_are_refused(
    plugins, tmp_path: Path, monkeypatch
) -> None:
    import io
    import tarfile

    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("../escaped.txt")
        member.size = 5
        tar.addfile(member, io.BytesIO(b"owned"))
    serve_cifar10(monkeypatch, archive, checksum_matches=True)
    (tmp_path / "data").mkdir()
    with pytest.raises(ExptError, match="could not be extracted safely") as info:
        plugins.get("dataset", "cifar10").factory(data_dir=tmp_path / "data", download=True)
    assert not (tmp_path / "escaped.txt").exists()
    kept = tmp_path / "data" / "cifar-10-python.tar.gz"
    assert str(info.value).endswith(
        f"it is left at {kept} to inspect: delete it to download it again."
    )
    assert kept.read_bytes() == archive.read_bytes()


def test_cifar10_no_download_flag(plugins, tmp_path: Path) -> None:
    with pytest.raises(ExptError, match="--no-download"):
        plugins.get("dataset", "cifar10").factory(data_dir=tmp_path, download=False)


def test_cifar10_corrupt_batch_names_the_file(plugins, cifar10_dir: Path) -> None:
    path = cifar10_dir / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(b"not a pickle")
    with pytest.raises(ExptError) as info:
        plugins.get("dataset", "cifar10").factory(data_dir=cifar10_dir, download=False)
    assert str(info.value) == (
        f"{path} is not a CIFAR-10 batch file (UnpicklingError: invalid load key, 'n'.)."
    )


BAD_BATCHES = {  # what a batch file holds, and what exptorch says about it
    "a list": ([1, 2], "is not a CIFAR-10 batch file (ValueError: it holds a list, not a dict)."),
    "pixels in a list": (
        {"data": [[0] * 3072] * 2, "labels": [0, 1]},
        "holds list pixel data where CIFAR-10 has uint8; exptorch does not cast pixels, so "
        "rewrite the file with uint8 data.",
    ),
    "labels in rows": (
        {"data": np.zeros((2, 3072), np.uint8), "labels": [[0], [1]]},
        "is not a CIFAR-10 batch file (ValueError: its labels are int64 of shape (2, 1), not "
        "integers).",
    ),
    "float labels": (
        {"data": np.zeros((2, 3072), np.uint8), "labels": [0.0, 1.0]},
        "is not a CIFAR-10 batch file (ValueError: its labels are float64 of shape (2,), not "
        "integers).",
    ),
    "a label short": (
        {"data": np.zeros((2, 3072), np.uint8), "labels": [0]},
        "has 2 images but 1 labels.",
    ),
}


@pytest.mark.parametrize("kind", BAD_BATCHES)
def test_cifar10_batches_that_break_the_format_are_one_sentence_each(
    plugins, tmp_path: Path, kind: str
) -> None:
    content, sentence = BAD_BATCHES[kind]
    root = write_cifar10(tmp_path, train_per_batch=2, test=2, batches=1)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "wb") as fh:
        pickle.dump(content, fh)
    with pytest.raises(ExptError) as info:
        plugins.get("dataset", "cifar10").factory(data_dir=root, download=False)
    assert str(info.value) == f"{path} {sentence}"


def test_cifar10_without_a_test_batch_says_which_files_it_needs(plugins, cifar10_dir) -> None:
    folder = cifar10_dir / "cifar-10-batches-py"
    (folder / "test_batch").unlink()
    with pytest.raises(ExptError) as info:
        plugins.get("dataset", "cifar10").factory(data_dir=cifar10_dir, download=False)
    assert str(info.value) == (
        f"{folder} lacks data_batch_N or test_batch files; delete the folder to download "
        "CIFAR-10 again, or point --data-dir elsewhere."
    )


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's ``str`` (BINSTRING), as the real CIFAR-10 files were written
    by cPickle: Python 3 can only read those with an 8-bit ``encoding``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_str2(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str2


def test_cifar10_reads_batches_pickled_by_python_2_as_the_real_archive_holds(
    plugins, tmp_path: Path
) -> None:
    root = write_cifar10(tmp_path, train_per_batch=2, test=2, batches=1)
    folder = root / "cifar-10-batches-py"
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)  # bytes > 127
    with open(folder / "data_batch_1", "wb") as fh:
        Python2Pickler(fh, protocol=2).dump({b"data": rows, b"fine_labels": [3, 4]})
    assert b"_codecs" not in (folder / "data_batch_1").read_bytes()  # really Python 2's str
    splits = plugins.get("dataset", "cifar10").factory(data_dir=root, download=False)
    assert splits.train_labels.tolist() == [3, 4]  # CIFAR-100's key for the labels works too
    assert torch.equal(splits.train_images[1], torch.from_numpy(rows[1].reshape(3, 32, 32)))


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
    assert last == (
        f"Error: {target} is not a CIFAR-10 file: it asks to load posix.system, which the "
        "format never holds, so exptorch refuses to read it (unpickling it could run code); "
        "delete it and let exptorch download CIFAR-10 again."
    )


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


def idx_labels(labels: list[int]) -> bytes:
    """An IDX file of unsigned-byte labels, as Fashion-MNIST's ``*-labels-idx1-ubyte``."""
    return struct.pack(">HBBI", 0, 0x08, 1, len(labels)) + bytes(labels)


def fashion_mnist_copy(folder: Path) -> Path:
    """The bundled sample's four IDX files (gzipped) in ``folder``, as --dataset fashion-mnist."""
    sample = Path(fashion_mnist.__file__).parent / "data" / "fashion-mnist-sample"
    folder.mkdir(parents=True)
    for path in sample.glob("*.gz"):
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_fashion_mnist_label_out_of_range_is_refused_at_load(expt, tmp_path: Path, split) -> None:
    folder = fashion_mnist_copy(tmp_path / "data" / "fashion-mnist")
    name = f"{split}-labels-idx1-ubyte.gz"
    labels = list(gzip.decompress((folder / name).read_bytes())[8:])
    labels[5] = 200  # an IDX byte holds up to 255; there are 10 classes
    (folder / name).write_bytes(gzip.compress(idx_labels(labels)))
    result = expt(
        "run", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--epochs",
        "1", "--device", "cpu", "--no-download",
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    which = "train" if split == "train" else "test"
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: Dataset 'fashion-mnist' cannot be used: 1 of its {which} labels are outside "
        "0..9 for its 10 classes (the first is 200)."
    )
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


@pytest.mark.parametrize(("victim", "label"), [("data_batch_1", 99), ("test_batch", -1)])
def test_cifar10_label_out_of_range_is_refused(plugins, tmp_path: Path, victim, label) -> None:
    root = write_cifar10(tmp_path, train_per_batch=4, test=4, batches=1)
    entry = {"data": np.zeros((4, 3072), dtype=np.uint8), "labels": [0, 1, label, 2]}
    with open(root / "cifar-10-batches-py" / victim, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)
    which = "train" if victim.startswith("data") else "test"
    with pytest.raises(ExptError) as info:
        plugins.get("dataset", "cifar10").factory(data_dir=root, download=False)
    assert str(info.value) == (
        f"Dataset 'cifar10' cannot be used: 1 of its {which} labels are outside 0..9 for its "
        f"10 classes (the first is {label})."
    )


def test_cifar10_class_names_with_escapes_are_refused(plugins, tmp_path: Path) -> None:
    root = write_cifar10(tmp_path, train_per_batch=2, test=2, batches=1)
    names = [f"c{i}" for i in range(9)] + ["\x1b[2Jgone"]  # clears the screen when printed
    with open(root / "cifar-10-batches-py" / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names}, fh)
    with pytest.raises(ExptError) as info:
        plugins.get("dataset", "cifar10").factory(data_dir=root, download=False)
    assert "\x1b" not in str(info.value)
    assert str(info.value) == (
        "Dataset 'cifar10' cannot be used: class name '\\x1b[2Jgone' holds control characters."
    )


def test_splits_validate_refuses_what_training_cannot_use() -> None:
    from exptorch import Splits

    def splits(**changes):
        values = dict(
            train_images=torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
            train_labels=torch.tensor([0, 1, 0, 1]),
            test_images=torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
            test_labels=torch.tensor([1, 0]),
            classes=["a", "b"], mean=[0.5], std=[0.25],
        )  # fmt: skip
        values.update(changes)
        return Splits(**values)

    splits().validate("ok")
    cases = {
        "its train images are torch.float32, not torch.uint8 (pixels are not cast)": dict(
            train_images=torch.zeros(4, 1, 8, 8)
        ),
        "it has 1 class, and a classifier needs at least 2": dict(
            classes=["a"],
            train_labels=torch.zeros(4, dtype=torch.int64),
            test_labels=torch.zeros(2, dtype=torch.int64),
        ),
        "its test split is empty": dict(
            test_images=torch.zeros(0, 1, 8, 8, dtype=torch.uint8),
            test_labels=torch.zeros(0, dtype=torch.int64),
        ),
        "its test labels are torch.float32, not torch.int64": dict(
            test_labels=torch.tensor([1.0, 0.0])
        ),
        "it has 4 train images but labels of shape (3,)": dict(
            train_labels=torch.tensor([0, 1, 0])
        ),
        "class name 'a' appears twice": dict(classes=["a", "a"]),
        "its train images are (1, 8, 8) and its test images (1, 9, 9)": dict(
            test_images=torch.zeros(2, 1, 9, 9, dtype=torch.uint8)
        ),
        "std [0.0] has a value that is not above 0": dict(std=[0.0]),
        "mean holds nan, which is not a finite number": dict(mean=[float("nan")]),
        "height is 2000, not a whole number from 1 to 1024": dict(
            train_images=torch.zeros(1, 1, 2000, 8, dtype=torch.uint8),
            train_labels=torch.tensor([0]),
            test_images=torch.zeros(1, 1, 2000, 8, dtype=torch.uint8),
            test_labels=torch.tensor([1]),
        ),
    }
    for problem, changes in cases.items():
        with pytest.raises(ExptError) as info:
            splits(**changes).validate("x")
        assert str(info.value) == f"Dataset 'x' cannot be used: {problem}."


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


def test_fashion_mnist_images_that_are_not_one_picture_each_are_refused(
    plugins, tmp_path: Path
) -> None:
    """Test images stored as 1000 rows of 784 pixels (a 2-D IDX file), with the 1000 labels
    that belong to them: the counts agree, the shapes do not."""
    fashion_mnist_copy(tmp_path / "fashion-mnist")
    target = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    pixels = gzip.decompress(target.read_bytes())[16:]  # after the 3-D header
    flat = struct.pack(">HBBII", 0, 0x08, 2, 1000, 28 * 28) + pixels
    target.write_bytes(gzip.compress(flat))
    with pytest.raises(ExptError) as caught:
        plugins.get("dataset", "fashion-mnist").factory(data_dir=tmp_path, download=False)
    folder = tmp_path / "fashion-mnist"
    assert str(caught.value) == f"The Fashion-MNIST test files in {folder} do not match each other."


def test_fashion_mnist_missing_offline(plugins, tmp_path: Path) -> None:
    with pytest.raises(
        ExptError, match=r"Fashion-MNIST is not in .* could not be downloaded"
    ) as info:
        plugins.get("dataset", "fashion-mnist").factory(data_dir=tmp_path, download=True)
    assert str(info.value).endswith(
        "put the four *-ubyte(.gz) files there (Debian's dataset-fashion-mnist package has them), "
        "use --data-dir, or --dataset fashion-mnist-sample."
    )


def test_fashion_mnist_is_downloaded_into_its_folder_and_checked(
    plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over real HTTP on 127.0.0.1, serving the bundled sample's four .gz files: with their
    checksums they land in DATA_DIR/fashion-mnist and load; a wrong checksum is refused."""
    import hashlib

    sample = Path(fashion_mnist.__file__).parent / "data" / "fashion-mnist-sample"
    served = {f"/{path.name}": path.read_bytes() for path in sample.glob("*.gz")}
    checksums = {
        key: (stem, hashlib.md5(served[f"/{stem}.gz"]).hexdigest())
        for key, (stem, _) in fashion_mnist.FILES.items()
    }
    load = plugins.get("dataset", "fashion-mnist").factory
    with file_server(monkeypatch, served) as base:
        monkeypatch.setattr(fashion_mnist, "MIRROR", base + "/")
        wrong = {**checksums, "test_labels": ("t10k-labels-idx1-ubyte", "0" * 32)}
        monkeypatch.setattr(fashion_mnist, "FILES", wrong)
        with pytest.raises(
            ExptError, match=r"t10k-labels-idx1-ubyte\.gz arrived with a wrong checksum"
        ):
            load(data_dir=tmp_path / "bad", download=True)
        monkeypatch.setattr(fashion_mnist, "FILES", checksums)
        splits = load(data_dir=tmp_path / "data", download=True)
    assert splits.train_images.shape == (6000, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "data" / "fashion-mnist").iterdir()) == sorted(
        name.lstrip("/") for name in served
    )
    assert load(data_dir=tmp_path / "data", download=False).test_labels.shape == (1000,)
