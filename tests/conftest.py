"""Shared fixtures: isolated plugin managers, tiny real datasets, and a real ``expt`` runner."""

from __future__ import annotations

import contextlib
import http.server
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exptorch.plugins import NO_AUTOLOAD_ENV, Plugins, load_plugins

EXPT = [sys.executable, "-m", "exptorch"]


@pytest.fixture
def make_plugins() -> Callable[..., Plugins]:
    """Build an isolated plugin manager: exptorch's built-ins plus the given test plugins."""

    def make(*extra: tuple[str, object], environ: dict[str, str] | None = None) -> Plugins:
        env = {NO_AUTOLOAD_ENV: "1", **(environ or {})}
        return load_plugins(extra=extra, environ=env)

    return make


@pytest.fixture
def plugins(make_plugins: Callable[..., Plugins]) -> Plugins:
    return make_plugins()


def write_cifar10(root: Path, train_per_batch: int = 20, test: int = 40, batches: int = 5) -> Path:
    """Write a small dataset in the exact ``cifar-10-batches-py`` pickle format.

    Each class gets a distinct mean colour plus noise, so a model can learn it.
    """
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int, label: str) -> dict:
        labels = rng.integers(0, 10, n)
        base = (labels[:, None] * 25).astype(np.int16)
        data = np.clip(base + rng.integers(0, 30, (n, 3072)), 0, 255).astype(np.uint8)
        return {
            "batch_label": label,
            "labels": labels.tolist(),
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(n)],
        }

    for i in range(1, batches + 1):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump(batch(train_per_batch, f"training batch {i} of 5"), fh, protocol=2)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch(test, "testing batch 1 of 1"), fh, protocol=2)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072}, fh)
    return root


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "data")


@pytest.fixture
def expt(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real ``expt`` CLI in a subprocess, in ``tmp_path``, offline-safe."""

    def run(*args: str, env: dict[str, str] | None = None, check: bool = False):
        full_env = {
            **os.environ,
            "EXPT_DATA_DIR": str(tmp_path / "no-data-here"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        result = subprocess.run(
            [*EXPT, *args], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=600
        )
        if check and result.returncode != 0:
            raise AssertionError(f"expt {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


@contextlib.contextmanager
def http_server(
    monkeypatch: pytest.MonkeyPatch, do_get: Callable[[http.server.BaseHTTPRequestHandler], None]
) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 whose GET handler is ``do_get``; yields its base URL.
    Proxy variables are cleared so that urllib connects to it directly."""
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    handler = type(
        "Handler",
        (http.server.BaseHTTPRequestHandler,),
        {"do_GET": do_get, "log_message": lambda self, *args: None},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def file_server(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> Iterator[str]:
    """:func:`http_server` serving ``files`` (by URL path, ``/name``) whole, with their
    Content-Length; any other path is a 404."""

    def do_get(handler: http.server.BaseHTTPRequestHandler) -> None:
        body = files.get(handler.path)
        handler.send_response(404 if body is None else 200)
        handler.send_header("Content-Length", str(len(body or b"")))
        handler.end_headers()
        handler.wfile.write(body or b"")

    with http_server(monkeypatch, do_get) as base:
        yield base


class WritesMarker:
    """Unpickling this opens (so creates) the marker file: code from the file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def normalised(images: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``(x / 255 - mean) / std`` per channel, written out here rather than borrowed."""
    import torch

    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (images.float() / 255 - m) / s
