"""Opening a sweep: what its folder records, what its Optuna study holds, and each refusal.

No trial runs here: these are the checks :func:`exptorch.sweep.open_sweep` makes before any
trial, each with its whole sentence, and what it leaves on disk when it refuses.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from test_sweep import write_sweep

from exptorch.errors import ExptError
from exptorch.sweep import DIGEST_ATTR, SPEC_ATTR, open_sweep
from exptorch.sweep_file import read_sweep

optuna = pytest.importorskip("optuna")


def spec(tmp_path: Path, plugins: Any, sweep: str = 'trials = 2\nsampler = "random"\nseed = 0',
         name: str = "sweep.toml") -> Any:  # fmt: skip
    return read_sweep(write_sweep(tmp_path, sweep, name=name), plugins)


def test_a_new_sweep_records_its_file_storage_and_settings(tmp_path: Path, plugins) -> None:
    settings = 'trials = 2\nsampler = "random"\nseed = 0\ndirection = "minimize"\n'
    made = spec(tmp_path, plugins, settings + 'metric = "test_loss"')
    before = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    sweep = open_sweep(made, name="s", runs_dir=tmp_path / "runs", storage=None, epochs=1)
    folder = tmp_path / "runs" / "s"
    url = f"sqlite:///{(folder / 'sweep.db').resolve()}"
    assert (sweep.name, sweep.folder, sweep.url, sweep.shown_url) == ("s", folder, url, url)
    record = json.loads((folder / "sweep.json").read_text())
    assert record == {
        "name": "s", "sweep_file": str(tmp_path / "sweep.toml"), "digest": made.digest,
        "sweep": made.canonical(), "storage": url, "default_storage": True,
        "created": record["created"],
    }  # fmt: skip
    assert before <= record["created"] <= time.strftime("%Y-%m-%dT%H:%M:%S%z")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", record["created"])
    study = sweep.study
    assert study.study_name == "s" and study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs == {DIGEST_ATTR: made.digest, SPEC_ATTR: made.canonical()}
    assert sorted(p.name for p in folder.iterdir()) == ["sweep.db", "sweep.db.lock", "sweep.json"]
    written = (folder / "sweep.json").stat()
    again = open_sweep(made, name="s", runs_dir=tmp_path / "runs", storage=None, epochs=1,
                       create=False)  # fmt: skip
    assert json.loads((folder / "sweep.json").read_text()) == record  # written once
    now = (folder / "sweep.json").stat()
    assert (now.st_ino, now.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert again.study._study_id == study._study_id


def test_a_sweep_in_a_named_storage_records_it_without_its_password(
    tmp_path: Path, plugins
) -> None:
    made = spec(tmp_path, plugins)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    sweep = open_sweep(made, name="n", runs_dir=tmp_path, storage=url, epochs=1)
    assert sweep.url == url
    record = json.loads((tmp_path / "n" / "sweep.json").read_text())
    assert (record["storage"], record["default_storage"]) == (url, False)
    assert [p.name for p in (tmp_path / "n").iterdir()] == ["sweep.json"]  # the db is elsewhere
    with pytest.raises(ExptError) as refused:
        open_sweep(made, name="n", runs_dir=tmp_path, storage=None, epochs=1)
    assert str(refused.value) == (
        f"Sweep n keeps its trials in {url}, not sqlite:///{tmp_path / 'n' / 'sweep.db'}; "
        f"pass --storage {url} (with its password)."
    )
    other = f"sqlite:///{tmp_path / 'other.db'}"
    open_sweep(made, name="d", runs_dir=tmp_path, storage=None, epochs=1)
    with pytest.raises(ExptError) as refused:
        open_sweep(made, name="d", runs_dir=tmp_path, storage=other, epochs=1)
    assert str(refused.value) == (
        f"Sweep d keeps its trials in sqlite:///{tmp_path / 'd' / 'sweep.db'}, not {other}; "
        "leave --storage out."
    )
    assert not (tmp_path / "other.db").exists()


def test_continuing_a_sweep_that_does_not_exist_creates_nothing(tmp_path: Path, plugins) -> None:
    with pytest.raises(ExptError) as refused:
        open_sweep(spec(tmp_path, plugins), name="gone", runs_dir=tmp_path / "runs", storage=None,
                   epochs=1, create=False)  # fmt: skip
    assert str(refused.value) == f"No sweep gone in {tmp_path / 'runs'}."
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["-x", ".hidden", "a/b", "..", "", "sp ace"])
def test_a_sweep_name_must_be_a_plain_folder_name(tmp_path: Path, plugins, name: str) -> None:
    with pytest.raises(ExptError) as refused:
        open_sweep(spec(tmp_path, plugins), name=name, runs_dir=tmp_path, storage=None, epochs=1)
    assert str(refused.value) == (
        f"Sweep name {name!r} must be a plain folder name (letters, digits, '.', '_' and '-', "
        "not starting with '.' or '-')."
    )


def test_a_sweep_that_cannot_open_its_study_leaves_no_folder_behind(
    tmp_path: Path, plugins, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> Any:
        raise ExptError("The study broke.")

    monkeypatch.setattr("exptorch.sweep._open_study", broken)
    with pytest.raises(ExptError, match=r"The study broke\."):
        open_sweep(spec(tmp_path, plugins), name="b", runs_dir=tmp_path, storage=None, epochs=1)
    assert not (tmp_path / "b").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "sweep.db").write_bytes(b"")
    with pytest.raises(ExptError, match=r"The study broke\."):
        open_sweep(spec(tmp_path, plugins), name="kept", runs_dir=tmp_path, storage=None, epochs=1)
    assert (tmp_path / "kept" / "sweep.db").exists()  # it was there before: not this call's


def test_a_study_expt_did_not_make_or_made_from_another_file_is_refused(
    tmp_path: Path, plugins
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(storage=url, study_name="theirs")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    with pytest.raises(ExptError) as refused:
        open_sweep(spec(tmp_path, plugins), name="theirs", runs_dir=tmp_path, storage=url, epochs=1)
    assert str(refused.value) == (
        f"Storage {url} already holds a study 'theirs' that `expt sweep` did not make; use "
        "another --name."
    )
    assert not (tmp_path / "theirs").exists()
    optuna.create_study(storage=url, study_name="empty")  # made, but never used: taken over
    open_sweep(spec(tmp_path, plugins), name="empty", runs_dir=tmp_path, storage=url, epochs=1)
    open_sweep(spec(tmp_path, plugins), name="mine", runs_dir=tmp_path / "a", storage=url, epochs=1)
    changed = spec(tmp_path, plugins, 'trials = 2\nsampler = "tpe"\nseed = 0', name="b.toml")
    with pytest.raises(ExptError) as refused:
        open_sweep(changed, name="mine", runs_dir=tmp_path / "b", storage=url, epochs=1)
    assert str(refused.value) == (
        f"Sweep mine in {url} was started from another sweep file; use another --name, or the "
        "same file (only trials and timeout may change)."
    )
    names = sqlite3.connect(tmp_path / "shared.db").execute("SELECT study_name FROM studies")
    assert sorted(n for (n,) in names) == ["empty", "mine", "theirs"]
