"""The run folder's files one call at a time: creating it whole, its lock, its state, its
metrics, and the refusals before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exptorch import ExptError
from exptorch.rundir import (
    RunDir,
    dumps,
    iter_metrics,
    read_json,
    remove_stale_staging,
    write_json,
)


def test_a_new_run_folder_is_whole_with_its_first_state(tmp_path: Path) -> None:
    runs = tmp_path / "deep" / "runs"  # made with its parents
    run = RunDir.create(runs, "r", {"lr": 0.1}, best_metric="test_accuracy")
    assert run.path == runs / "r"
    assert sorted(p.name for p in run.path.iterdir()) == [
        ".lock", "checkpoints", "config.json", "metrics.jsonl", "state.json"
    ]  # fmt: skip
    state = run.read_state()
    assert (state["state"], state["epoch"], state["best_metric"]) == ("running", 0, "test_accuracy")
    assert run.read_config() == {"lr": 0.1}
    assert (run.path / ".lock").read_text() == f"{os.getpid()}\n"
    assert RunDir.is_locked(run.path) is True
    assert [p.name for p in runs.iterdir()] == ["r"]  # no staging folder left
    run.unlock()
    assert RunDir.is_locked(run.path) is False
    started = RunDir.create(runs, "e", epoch=3)
    assert started.read_state()["epoch"] == 3  # the caller's fields win
    started.unlock()


def test_a_name_that_exists_even_as_a_dangling_link_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for name in ("taken", "link"):
        with pytest.raises(ExptError) as refused:
            RunDir.create(tmp_path, name)
        assert str(refused.value) == (
            f"Run {tmp_path / name} already exists; choose another --name (or continue it with "
            "--resume)."
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "taken"]


def test_a_runs_dir_under_a_file_is_refused_in_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExptError) as refused:
        RunDir.check_new(tmp_path / "file" / "runs", "r")
    assert str(refused.value) == (
        f"--runs-dir {tmp_path / 'file' / 'runs'} cannot hold run folders: {tmp_path / 'file'} "
        "is a file, not a folder; choose another --runs-dir."
    )
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(ExptError, match="is a file, not a folder"):
        RunDir.check_new(tmp_path / "dangling" / "runs", "r")
    RunDir.check_new(tmp_path / "a" / "b", "r")  # folders to be made are fine


def test_opening_a_folder_without_checkpoints_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExptError) as refused:
        RunDir.open(tmp_path)
    assert str(refused.value) == f"{tmp_path} is not a run folder (it has no checkpoints/ folder)."


def test_a_folder_another_process_trains_names_that_process(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")
    code = (
        "import sys; from pathlib import Path; from exptorch.rundir import RunDir\n"
        "try:\n    RunDir(Path(sys.argv[1])).lock()\nexcept Exception as e:\n    print(e)"
    )
    said = subprocess.run([sys.executable, "-c", code, str(run.path)], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert said == (
        f"{run.path} is being trained by another process (process {os.getpid()}); wait for it "
        "to end, or stop it, before continuing this run."
    )
    run.unlock()
    (run.path / ".lock").write_text("12345678901234\nold\n")
    run.lock()  # a stale pid file is overwritten whole
    assert (run.path / ".lock").read_text() == f"{os.getpid()}\n"
    run.lock()  # taken already: nothing changes
    run.unlock()


def test_state_keeps_the_best_accuracy_of_the_records_and_of_earlier_processes(
    tmp_path: Path,
) -> None:
    run = RunDir.create(tmp_path, "r")
    run.set_state("running", best_test_accuracy=0.9)  # an earlier process's best
    run.log_metrics({"step": 1, "epoch": 1, "test_accuracy": 0.5, "test_loss": 1.0})
    run.set_state("running", epoch=1)
    state = run.read_state()
    assert state["best_test_accuracy"] == 0.9
    assert state["final"] == {"test_accuracy": 0.5, "test_loss": 1.0}
    run.log_metrics({"step": 2, "epoch": 2, "test_accuracy": 0.95})
    run.log_metrics({"step": 3, "epoch": 3, "test_accuracy": 0.7})
    run.set_state("finished")
    assert run.read_state()["best_test_accuracy"] == 0.95
    assert run.read_state()["final"] == {"test_accuracy": 0.7}
    run.close()
    assert [r["step"] for r in iter_metrics(run.metrics_path)] == [1, 2, 3]
    run.unlock()


def test_after_truncating_the_records_are_the_whole_history(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")
    run.set_state("running", best_test_accuracy=0.99)  # from records that are dropped below
    for step, accuracy in ((1, 0.4), (2, 0.6), (3, 0.99)):
        run.log_metrics({"step": step, "test_accuracy": accuracy})
    run.close()
    resumed = RunDir.open(run.path)
    assert resumed.truncate_metrics(2) == 1
    resumed.set_state("running")
    assert resumed.read_state()["best_test_accuracy"] == 0.6
    resumed.close()
    run.unlock()


def test_a_torn_or_foreign_line_is_skipped_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "tor\n[1, 2]\n{"step": 3}\n')
    assert list(iter_metrics(path)) == [{"step": 1}, {"step": 3}]


def test_json_is_strict_and_keeps_the_order_it_was_given(tmp_path: Path) -> None:
    write_json(tmp_path / "s.json", {"b": float("nan"), "a": [1.0, float("inf")]})
    assert (
        tmp_path / "s.json"
    ).read_text() == '{\n  "b": null,\n  "a": [\n    1.0,\n    null\n  ]\n}\n'
    assert dumps({"x": float("-inf")}) == '{"x": null}'
    assert read_json(tmp_path / "missing.json") == {}


def test_what_a_killed_process_left_half_written_is_removed(tmp_path: Path) -> None:
    (tmp_path / ".epoch-001.pt.tmp-123").mkdir()
    (tmp_path / ".epoch-001.pt.tmp-123" / "part").write_bytes(b"x")
    (tmp_path / ".state.json.tmp-456").write_text("{")
    (tmp_path / "epoch-001.pt").write_bytes(b"kept")
    (tmp_path / ".hidden").write_text("kept")
    remove_stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "epoch-001.pt"]
    remove_stale_staging(tmp_path)  # nothing left to remove


def test_the_config_file_is_read_back_as_written(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r", {"name": "r", "options": {"x": 1}})
    assert json.loads((run.path / "config.json").read_text()) == run.read_config()
    assert run.read_config() == {"name": "r", "options": {"x": 1}}
    run.unlock()
