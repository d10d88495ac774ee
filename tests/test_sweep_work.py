"""A sweep worker in-process: the lines it prints for each trial, what it records on each trial
in the storage, when it stops, which trial it takes over, and how a trial's end is told."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from test_sweep import write_sweep

from exptorch import ExptError, hookimpl
from exptorch.sweep import (
    BEAT_ATTR,
    ERROR_ATTR,
    HOST,
    OWNER_ATTR,
    RUN_ATTR,
    SESSION_PREFIX,
    Heartbeat,
    Session,
    _tell,
    claim_next,
    open_sweep,
    work,
)
from exptorch.sweep_file import read_sweep

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402 - only once optuna is known to be there

SPACE = "lr = { log-uniform = [0.001, 0.1] }\nmomentum = { choice = [0.0, 0.9] }"


def sweep_of(tmp_path: Path, plugins, budget: str = "trials = 2") -> Any:
    path = write_sweep(tmp_path, f'{budget}\nsampler = "random"\nseed = 0', params=SPACE)
    return open_sweep(read_sweep(path, plugins), name="w", runs_dir=tmp_path, storage=None,
                      epochs=1)  # fmt: skip


def test_a_worker_runs_trials_to_the_budget_saying_what_each_was_and_did(
    tmp_path: Path, plugins
) -> None:
    sweep = sweep_of(tmp_path, plugins)
    said: list[str] = []
    session = Session()
    results = work(sweep, plugins, worker=3, session=session, device="cpu", echo=said.append)
    trials = sweep.study.trials
    assert [(r.number, r.state, r.run) for r in results] == [
        (0, "complete", "trial-0000"), (1, "complete", "trial-0001")
    ]  # fmt: skip
    assert [r.value for r in results] == [t.value for t in trials]
    for trial in trials:
        p = trial.params
        assert f"trial {trial.number} started (trial-{trial.number:04d}): lr={p['lr']:.4g}  " \
               f"momentum={p['momentum']:.4g}" in said  # fmt: skip
        assert f"trial {trial.number} complete: test_accuracy {trial.value:.4g}" in said
        assert trial.user_attrs[OWNER_ATTR] == {"host": HOST, "pid": os.getpid(), "worker": 3}
        assert trial.user_attrs[RUN_ATTR] == f"trial-{trial.number:04d}"
        assert isinstance(trial.user_attrs[BEAT_ATTR], float)
    assert said[0].startswith("trial 0 started") and said[1].startswith("[trial 0] run ")
    assert said[-1] == f"trial 1 complete: test_accuracy {trials[1].value:.4g}"
    start, end = sweep.study.user_attrs[SESSION_PREFIX + session.id]
    assert start == session.start <= end <= time.time()
    assert end >= trials[-1].datetime_complete.timestamp() - 1e-3  # touched after the last
    config = (tmp_path / "w" / "trial-0000" / "config.json").read_text()
    assert '"device": "cpu"' in config
    assert claim_next(sweep) is None  # the budget is spent


class Refuses:
    @hookimpl
    def run_start(self, run: Any) -> None:
        raise ExptError("The data server is down.")


def test_three_failed_trials_in_a_row_stop_the_worker_in_one_sentence(
    tmp_path: Path, make_plugins
) -> None:
    plugins = make_plugins(("refuses", Refuses()))
    sweep = sweep_of(tmp_path, plugins, "trials = 5")
    said: list[str] = []
    with pytest.raises(ExptError) as stopped:
        work(sweep, plugins, device="cpu", echo=said.append)
    assert str(stopped.value) == (
        "3 trials in a row failed (the last: The data server is down.); this worker stopped. "
        "Fix the cause and run the same command again to continue the sweep."
    )
    trials = sweep.study.trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert all(t.user_attrs[ERROR_ATTR] == "The data server is down." for t in trials)
    assert [line for line in said if " failed" in line] == [
        f"trial {n} failed: The data server is down." for n in range(3)
    ]


def test_a_running_trial_whose_process_is_gone_is_taken_over_as_it_was(
    tmp_path: Path, plugins
) -> None:
    sweep = sweep_of(tmp_path, plugins)
    first = claim_next(sweep, worker=1)
    assert (first.number, first.run_name, first.resumed) == (0, "trial-0000", False)
    assert claim_next(sweep, worker=2).number == 1  # the first is alive: a new one
    owner = {"host": "elsewhere", "pid": 1, "worker": 0}
    sweep.storage.set_trial_user_attr(first.trial_id, OWNER_ATTR, owner)
    sweep.storage.set_trial_user_attr(first.trial_id, BEAT_ATTR, time.time() - 1000)
    before = time.time()
    again = claim_next(sweep, worker=5)
    assert (again.trial_id, again.number, again.run_name, again.resumed) == (
        first.trial_id, 0, "trial-0000", True
    )  # fmt: skip
    assert again.params == first.params
    attrs = sweep.study.trials[0].user_attrs
    assert attrs[OWNER_ATTR] == {"host": HOST, "pid": os.getpid(), "worker": 5}
    assert attrs[BEAT_ATTR] >= before
    assert claim_next(sweep) is None  # two counted, both alive


def test_a_grid_sweep_takes_each_point_once_then_stops(tmp_path: Path, plugins) -> None:
    path = write_sweep(tmp_path, 'sampler = "grid"',
                       params="momentum = { choice = [0.0, 0.5, 0.9] }")  # fmt: skip
    sweep = open_sweep(read_sweep(path, plugins), name="g", runs_dir=tmp_path, storage=None,
                       epochs=1)  # fmt: skip
    claims = [claim_next(sweep) for _ in range(3)]
    assert [c.params for c in claims] == [{"momentum": m} for m in (0.0, 0.5, 0.9)]
    assert claim_next(sweep) is None


def test_a_trial_is_told_pruned_complete_or_failed_with_its_last_value(
    tmp_path: Path, plugins
) -> None:
    sweep = sweep_of(tmp_path, plugins, "trials = 3")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "test_accuracy": 0.25}\n{"step": 2, "train_loss": 1.0}\n'
        '{"step": 3, "test_accuracy": 0.5}\n'
    )
    trials = [optuna.trial.Trial(sweep.study, claim_next(sweep).trial_id) for _ in range(3)]
    pruned = _tell(sweep, trials[0], 0, run, pruned_at=2)
    assert (pruned.state, pruned.value, pruned.run, pruned.message) == (
        "pruned", 0.5, "run", "at epoch 2"
    )  # fmt: skip
    done = _tell(sweep, trials[1], 1, run, None)
    assert (done.state, done.value, done.run) == ("complete", 0.5, "run")
    failed = _tell(sweep, trials[2], 2, tmp_path / "no-records", None)
    assert (failed.state, failed.value, failed.message) == (
        "failed", None, "no finite test_accuracy"
    )  # fmt: skip
    states = [t.state for t in sweep.study.trials]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    assert sweep.study.trials[1].value == 0.5
    assert sweep.study.trials[2].user_attrs[ERROR_ATTR] == "the run wrote no finite test_accuracy"


def test_a_running_trial_beats_while_it_trains(
    tmp_path: Path, plugins, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exptorch.sweep.HEARTBEAT_SECONDS", 0.02)
    sweep = sweep_of(tmp_path, plugins)
    claim = claim_next(sweep)
    first = sweep.study.trials[0].user_attrs[BEAT_ATTR]
    with Heartbeat(sweep, claim.trial_id) as beat:
        time.sleep(0.2)
    assert not beat.thread.is_alive()
    assert sweep.study.trials[0].user_attrs[BEAT_ATTR] > first
