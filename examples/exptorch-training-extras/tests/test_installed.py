"""The installed package, through its real entry point and a real ``expt`` process.

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

DIST = "exptorch-training-extras"

try:
    metadata.version(DIST)
except metadata.PackageNotFoundError:
    pytest.skip(f"{DIST} is not installed", allow_module_level=True)


def expt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exptorch", *args], cwd=cwd, capture_output=True, text=True
    )


def test_expt_plugins_lists_every_registration(tmp_path: Path) -> None:
    listed = expt("plugins", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout)["plugins"] if r["name"] == "training_extras")
    assert row["distribution"] == DIST
    assert row["registered"] == {
        "optimizer": ["lion"],
        "transform": ["blend"],
        "metric": ["balanced-accuracy"],
        "callback": ["clip", "ema", "grad-log"],
    }
    shown = expt("plugins", "show", "ema", cwd=tmp_path)
    assert "callback ema:" in shown.stdout and "--ema-decay" in shown.stdout


def test_a_real_run_with_every_extra(tmp_path: Path) -> None:
    result = expt(
        "run", "--dataset", "fashion-mnist-sample", "--epochs", "1", "--limit-train-batches", "10",
        "--optimizer", "lion", "--lr", "0.001", "--transform", "blend", "--ema-decay", "0.9",
        "--clip-norm", "1", "--grad-log-every", "5", "--metric", "balanced-accuracy",
        "--name", "extras", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "runs/extras/metrics.jsonl").open()]
    assert [r["step"] for r in records if "grad_norm" in r] == [5, 10]
    assert "test_balanced_accuracy" in records[-1]
