"""The run folder's files on disk: every JSON file exptorch writes is strict JSON."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from exptorch import ExptError
from exptorch.rundir import RunDir


def strict_load(text: str):
    """``json.loads`` that refuses the ``NaN``/``Infinity`` tokens Python writes by default."""

    def refuse(token: str):
        raise AssertionError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "nan")
    run.write_config({"config": {"label_smoothing": float("nan")}})
    run.log_metrics({"step": 1, "train_loss": float("nan"), "lr": float("inf")})
    run.log_metrics({"step": 2, "test_loss": -float("inf"), "test_accuracy": 0.5})
    run.set_state("running", epoch=1, best_test_accuracy=float("nan"))
    run.close()

    config = strict_load((run.path / "config.json").read_text())
    assert config == {"config": {"label_smoothing": None}}
    lines = run.metrics_path.read_text().splitlines()
    assert [strict_load(line) for line in lines] == [
        {"step": 1, "train_loss": None, "lr": None},
        {"step": 2, "test_loss": None, "test_accuracy": 0.5},
    ]
    assert strict_load((run.path / "state.json").read_text())["best_test_accuracy"] is None


def test_truncating_metrics_rewrites_old_nan_tokens_strictly(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "old")
    # What an earlier exptorch wrote: Python's json.dumps default lets NaN through.
    run.metrics_path.write_text('{"step": 1, "train_loss": NaN}\n{"step": 2, "train_loss": 1}\n')
    assert run.truncate_metrics(1) == 1
    assert strict_load(run.metrics_path.read_text()) == {"step": 1, "train_loss": None}


def test_runs_show_json_is_strict_for_a_run_with_nan_records(expt, tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "old")
    run.write_config({"config": {"model": "quicknet", "epochs": 1}})
    run.metrics_path.write_text(
        '{"step": 3, "epoch": 1, "test_loss": NaN, "test_accuracy": 0.1, "epoch_train_loss": '
        "Infinity}\n"
    )
    run.set_state("finished", epoch=1)
    result = expt("runs", "show", "old", "--json", check=True)
    shown = strict_load(result.stdout)
    assert shown["epochs_metrics"][0]["test_loss"] is None
    assert shown["epochs_metrics"][0]["epoch_train_loss"] is None


def test_state_json_carries_what_runs_list_shows(tmp_path: Path) -> None:
    """The newest epoch's final metrics and the best test accuracy, without the loop's help."""
    run = RunDir.create(tmp_path / "runs", "r")
    run.log_metrics({"step": 1, "epoch": 1, "train_loss": 2.0})
    run.log_metrics({"step": 2, "epoch": 1, "test_accuracy": 0.7, "test_loss": 1.0})
    run.set_state("running", epoch=1)
    run.log_metrics({"step": 4, "epoch": 2, "test_accuracy": 0.6, "test_loss": 0.9,
                     "epoch_train_loss": 1.1})  # fmt: skip
    run.set_state("finished", epoch=2)
    run.close()
    state = strict_load((run.path / "state.json").read_text())
    assert state["final"] == {"test_accuracy": 0.6, "test_loss": 0.9, "epoch_train_loss": 1.1}
    assert state["best_test_accuracy"] == 0.7

    resumed = RunDir.open(run.path)  # a resume from epoch 1 drops epoch 2's records
    resumed.truncate_metrics(2)
    resumed.set_state("running", epoch=1)
    state = strict_load((run.path / "state.json").read_text())
    assert state["final"] == {"test_accuracy": 0.7, "test_loss": 1.0}
    assert state["best_test_accuracy"] == 0.7


def test_a_run_folder_made_by_another_process_meanwhile_is_kept_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs started with one --name at once: both pass the early check, and the second to
    finish assembling its folder finds the first's in place. It must say so in one sentence,
    leave that folder alone and remove its own half."""
    runs = tmp_path / "runs"
    (runs / "same").mkdir(parents=True)
    (runs / "same" / "metrics.jsonl").write_text('{"step": 1}\n')
    monkeypatch.setattr(RunDir, "check_new", staticmethod(lambda runs_dir, name: None))
    with pytest.raises(ExptError) as caught:
        RunDir.create(runs, "same", {"model": "quicknet"})
    assert str(caught.value) == f"Run {runs / 'same'} already exists; choose another --name."
    assert (runs / "same" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert sorted(p.name for p in runs.iterdir()) == ["same"]


def test_a_lock_taken_before_its_holder_wrote_its_pid_is_one_sentence(tmp_path: Path) -> None:
    """The holder empties `.lock` before writing its pid: a second process meanwhile is told
    the folder is busy, without a process number."""
    import fcntl

    from exptorch.rundir import LOCK_NAME

    made = RunDir.create(tmp_path / "runs", "r")
    made.unlock()
    path = made.path
    fd = os.open(path / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        with pytest.raises(ExptError) as busy:
            RunDir(path).lock()
    finally:
        os.close(fd)
    assert str(busy.value) == (
        f"{path} is being trained by another process; wait for it to end, or stop it, "
        "before continuing this run."
    )


def test_a_state_rewritten_in_place_reads_as_write_json_writes_it(tmp_path: Path) -> None:
    """On a full disk state.json is overwritten in its own blocks: the same text as the
    atomic write, the old tail cut off, a new file made if there was none."""
    from exptorch.rundir import _rewrite_in_place, write_json

    data = {"state": "failed", "epoch": 3, "checkpoint": tmp_path / "epoch-003.pt"}
    write_json(tmp_path / "atomic.json", data)
    expected = (tmp_path / "atomic.json").read_text()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"state": "running", "padding": "x" * 1000}))
    assert _rewrite_in_place(state, data) is True and state.read_text() == expected
    assert _rewrite_in_place(tmp_path / "new.json", data) is True
    assert (tmp_path / "new.json").read_text() == expected
    assert _rewrite_in_place(tmp_path / "missing" / "state.json", data) is False


HINT = "then continue with: expt run --resume runs/r"


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.ENOSPC, "; free some space, " + HINT),
        (errno.EDQUOT, "; free some space (the disk quota is reached), " + HINT),
        (errno.EROFS, "; choose a writable --runs-dir"),
        (errno.EACCES, "; choose a --runs-dir you can write to"),
        (errno.EPERM, "; choose a --runs-dir you can write to"),
        (errno.ENAMETOOLONG, "; choose a shorter --name or --runs-dir"),
        (errno.ENOTDIR, "; choose a --runs-dir that is a folder"),
        (errno.EIO, ""),  # nothing a user can do: the reason alone
    ],
)
def test_a_disk_error_is_one_sentence_with_what_to_do(code: int, advice: str) -> None:
    """The resume hint only follows a full disk, where trying again can succeed."""
    from exptorch.rundir import disk_error

    error = disk_error(OSError(code, os.strerror(code)), "write runs/r/state.json", HINT)
    assert str(error) == f"Cannot write runs/r/state.json: {os.strerror(code)}{advice}."


def test_a_disk_error_without_an_errno_or_a_hint_is_still_one_sentence() -> None:
    from exptorch.rundir import disk_error

    full = disk_error(OSError(errno.ENOSPC, "No space left on device"), "save epoch-002.pt")
    assert str(full) == "Cannot save epoch-002.pt: No space left on device; free some space."
    assert str(disk_error(OSError("torn"), "read x")) == "Cannot read x: torn."


def test_pid_alive_is_true_only_for_a_running_process_and_leaves_it_running() -> None:
    """What the stale-run and stale-trial checks read from a ``state.json``'s pid: a process
    that exists (init too), not one that ended, and never a pid of the wrong kind."""
    import subprocess
    import sys

    from exptorch.rundir import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
        with pytest.raises(subprocess.TimeoutExpired):  # asking sends it no signal
            child.wait(timeout=0.5)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)  # ended and reaped
    assert pid_alive(os.getpid()) and pid_alive(1)
    for wrong in (0, -1, 2**40, "4242", None, 1.5):
        assert not pid_alive(wrong), wrong
