"""A run folder on a disk that fills up or refuses writes: each file's write says, in one
sentence, what it could not write and what to do, and state.json is still recorded when there
is no room for a new copy of it."""

from __future__ import annotations

import errno
import io
import re
import time
from pathlib import Path
from typing import Any

import pytest

from exptorch import ExptError
from exptorch.program import expt_command
from exptorch.rundir import RunDir


def full(*_: Any, **__: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


def run_dir(tmp_path: Path) -> RunDir:
    run = RunDir.create(tmp_path, "r")
    run.unlock()
    return run


def hint(run: RunDir) -> str:
    return f"then continue with: {expt_command()} run --resume {run.path}"


def test_a_full_disk_while_logging_names_the_file_and_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_dir(tmp_path)

    class Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    run._metrics = Full()
    expected = (
        f"Cannot write {run.metrics_path}: No space left on device; free some space, {hint(run)}."
    )
    with pytest.raises(ExptError) as refused:
        run.log_metrics({"step": 1})
    assert str(refused.value) == expected
    with pytest.raises(ExptError) as refused:
        run.sync()
    assert str(refused.value) == expected


def test_a_full_disk_while_writing_the_config_or_truncating_says_try_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_dir(tmp_path)
    run.metrics_path.write_text('{"step": 1}\n{"step": 2}\n')
    monkeypatch.setattr("exptorch.rundir.atomic_path", full)
    with pytest.raises(ExptError) as refused:
        run.truncate_metrics(1)
    assert str(refused.value) == (
        f"Cannot rewrite {run.metrics_path}: No space left on device; free some space, and try "
        "again."
    )
    monkeypatch.setattr("exptorch.rundir.write_json", full)
    with pytest.raises(ExptError) as refused:
        run.write_config({"lr": 0.1})
    assert str(refused.value) == (
        f"Cannot write {run.path / 'config.json'}: No space left on device; free some space, "
        "and try again."
    )


def test_on_a_full_disk_state_json_is_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_dir(tmp_path)
    monkeypatch.setattr("exptorch.rundir.write_json", full)
    run.set_state("failed", error="boom")
    state = run.read_state()
    assert (state["state"], state["error"], state["epoch"]) == ("failed", "boom", 0)

    def refused(*_: Any) -> Any:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("exptorch.rundir.write_json", refused)  # not a full disk: no fallback
    with pytest.raises(ExptError) as raised:
        run.set_state("finished")
    assert str(raised.value) == (
        f"Cannot write {run.path / 'state.json'}: Permission denied; choose a --runs-dir you "
        "can write to."
    )
    assert run.read_state()["state"] == "failed"
    monkeypatch.setattr("exptorch.rundir.write_json", full)
    monkeypatch.setattr("exptorch.rundir._rewrite_in_place", lambda *_: False)
    with pytest.raises(ExptError) as raised:
        run.set_state("finished")
    assert str(raised.value) == (
        f"Cannot write {run.path / 'state.json'}: No space left on device; free some space, "
        f"{hint(run)}."
    )


def test_each_state_records_when_it_was_written(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    before = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run.set_state("finished")
    updated = run.read_state()["updated"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", updated)
    assert before <= updated <= time.strftime("%Y-%m-%dT%H:%M:%S%z")


def test_truncating_drops_later_records_and_a_torn_last_line(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    assert run.truncate_metrics(5) == 0  # no metrics.jsonl yet: nothing to do
    run.metrics_path.unlink()
    assert run.truncate_metrics(5) == 0
    run.metrics_path.write_text('{"step": 1}\n{"epoch": 1}\n{"step": 2}\n{"step": 3, "x"')
    assert run.truncate_metrics(2) == 0  # the torn line is no record, but it goes
    assert run.metrics_path.read_text() == '{"step": 1}\n{"epoch": 1}\n{"step": 2}\n'
    stamp = run.metrics_path.stat().st_mtime_ns
    assert run.truncate_metrics(2) == 0
    assert run.metrics_path.stat().st_mtime_ns == stamp  # whole already: not rewritten
    assert run.truncate_metrics(0) == 2  # a record without a step counts as step 0
    assert run.metrics_path.read_text() == '{"epoch": 1}\n'
    run.metrics_path.write_text('{"step": 1}\n{"step": 2}')  # whole records, no last newline
    assert run.truncate_metrics(2) == 0
    assert run.metrics_path.read_text() == '{"step": 1}\n{"step": 2}\n'  # the next starts anew
