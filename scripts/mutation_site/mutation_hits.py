"""pytest plugin for mutmut's test-collection run (see sitecustomize.py next to it): before
mutmut files the functions a test called, add those the test's subprocesses called."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest


def _hits_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"exptorch-mutation-hits-{os.getpid()}"
    path.mkdir(exist_ok=True)
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: Any) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        hits = _hits_dir()
        shutil.rmtree(hits)
        hits.mkdir()
        os.environ["EXPTORCH_MUTATION_HITS"] = str(hits)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: Any, nextitem: Any) -> None:
    hits = os.environ.get("EXPTORCH_MUTATION_HITS")
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not hits:
        return
    from mutmut.state import state

    for path in Path(hits).glob("*.txt"):
        state()._stats.update(path.read_text().split())
