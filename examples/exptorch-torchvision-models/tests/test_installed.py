"""The installed package, through real entry points and a real ``expt`` process.

Skipped unless the distribution is installed (``pip install .``), as in exptorch's
``tox -e plugin``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

DIST = "exptorch-torchvision-models"

try:
    VERSION = metadata.version(DIST)
except metadata.PackageNotFoundError:
    pytest.skip(f"{DIST} is not installed", allow_module_level=True)


def expt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exptorch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_expt_plugins_lists_the_models(tmp_path: Path) -> None:
    result = expt("plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    (row,) = [r for r in info["plugins"] if r["name"] == "torchvision_models"]
    assert (row["distribution"], row["version"]) == (DIST, VERSION)
    assert "tv-resnet18" in row["registered"]["model"]
    assert not [p for p in info["problems"] if p["plugin"] == "torchvision_models"]
    assert "--tv-small-input" in expt("run", "--help", cwd=tmp_path).stdout


def test_expt_run_end_to_end(tmp_path: Path) -> None:
    result = expt(
        "run", "--model", "tv-resnet18", "--tv-small-input", "--dataset", "fashion-mnist-sample",
        "--epochs", "1", "--batch-size", "16", "--limit-train-batches", "2",
        "--limit-eval-batches", "1",
        "--device", "cpu", "--seed", "0", "--name", "e2e",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The parameter count of ResNet-18 with a 1-channel stem and 10 classes.
    assert "tv-resnet18 (11,175,370 parameters)" in result.stdout
    run = tmp_path / "runs" / "e2e"
    config = json.loads((run / "config.json").read_text())
    assert config["plugins"]["torchvision_models"] == {"distribution": DIST, "version": VERSION}
    assert (run / "checkpoints" / "epoch-001.pt").is_file()
