"""``expt sweep show`` and ``expt sweep plot`` as specifications (README, "Sweeps").

The studies are Optuna studies built in memory and the run folders are written by hand, so
each test states exactly what the leaderboard, the best trial's command and the figures must
be for a sweep whose every number is known."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exptorch.errors import ExptError
from exptorch.sweep import BEAT_ATTR, HOST, OWNER_ATTR, RECORD, RUN_ATTR, SPEC_ATTR

optuna = pytest.importorskip("optuna")

from optuna.distributions import FloatDistribution  # noqa: E402
from optuna.trial import TrialState, create_trial  # noqa: E402

from exptorch.sweep_report import (  # noqa: E402
    leaderboard,
    load_study,
    plot_sweep,
    run_command,
    show_text,
    trial_state,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = {"lr": FloatDistribution(1e-4, 1.0, log=True)}
ALIVE = {OWNER_ATTR: {"host": HOST, "pid": os.getpid()}}


def trial(
    state: TrialState = TrialState.COMPLETE,
    value: float | None = None,
    lr: float = 0.01,
    **kwargs: Any,
) -> optuna.trial.FrozenTrial:
    return create_trial(state=state, value=value, params={"lr": lr}, distributions=LR, **kwargs)


def study_of(*trials: optuna.trial.FrozenTrial, direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(study_name="s", direction=direction)
    for frozen in trials:
        study.add_trial(frozen)
    return study


def numbers(board: dict[str, Any]) -> list[int]:
    return [row["trial"] for row in board["trials"]]


# -- the leaderboard: order, states, values --------------------------------------------------


def mixed_trials() -> list[optuna.trial.FrozenTrial]:
    running = trial(TrialState.RUNNING, user_attrs={**ALIVE, BEAT_ATTR: time.time()})
    return [
        trial(value=0.5),  # 0
        trial(TrialState.PRUNED, intermediate_values={1: 0.9, 2: 0.8}),  # 1: 0.8 at its last step
        trial(value=0.9),  # 2
        trial(TrialState.FAIL),  # 3
        trial(value=0.5),  # 4: ties with 0, after it
        running,  # 5
        trial(TrialState.RUNNING),  # 6: no owner recorded -> interrupted
        trial(TrialState.PRUNED, intermediate_values={1: 0.6}),  # 7
        trial(TrialState.PRUNED),  # 8: pruned before its first value
    ]


def test_leaderboard_puts_complete_trials_best_first_then_pruned_running_interrupted_failed(
    tmp_path: Path,
) -> None:
    board = leaderboard(study_of(*mixed_trials()), {}, tmp_path)
    assert numbers(board) == [2, 0, 4, 1, 7, 8, 5, 6, 3]
    assert [row["state"] for row in board["trials"]] == [
        *["complete"] * 3, *["pruned"] * 3, "running", "interrupted", "failed"
    ]  # fmt: skip
    assert [row["value"] for row in board["trials"]][:6] == [0.9, 0.5, 0.5, 0.8, 0.6, None]
    assert board["best"]["trial"] == 2
    assert (board["name"], board["direction"]) == ("s", "maximize")
    assert {row["run_path"] for row in board["trials"]} == {None}  # none names a run folder


@pytest.mark.parametrize(("direction", "broken"), [("maximize", math.inf), ("minimize", -math.inf)])
def test_a_trial_with_an_infinite_value_is_ranked_after_the_finite_ones(
    tmp_path: Path, direction: str, broken: float
) -> None:
    """An infinite metric (a loss that overflowed) is no result: it never ranks as the best."""
    study = study_of(trial(value=0.5), trial(value=broken), trial(value=0.25), direction=direction)
    board = leaderboard(study, {}, tmp_path)
    assert numbers(board) == ([0, 2, 1] if direction == "maximize" else [2, 0, 1])
    assert board["best"]["trial"] == numbers(board)[0]


def test_leaderboard_of_a_minimised_metric_puts_the_lowest_value_first(tmp_path: Path) -> None:
    board = leaderboard(study_of(*mixed_trials(), direction="minimize"), {}, tmp_path)
    assert numbers(board) == [0, 4, 2, 7, 1, 8, 5, 6, 3]
    assert board["best"]["trial"] == 0
    assert board["direction"] == "minimize"


def test_no_best_before_a_trial_completes(tmp_path: Path) -> None:
    board = leaderboard(study_of(trial(TrialState.PRUNED)), {"metric": "test_loss"}, tmp_path)
    assert board["best"] is None
    assert board["metric"] == "test_loss"


def test_trial_state_names() -> None:
    now = time.time()
    fresh = {**ALIVE, BEAT_ATTR: now}
    silent = {**ALIVE, BEAT_ATTR: now - 3600}
    study = study_of(
        trial(value=0.1),
        trial(TrialState.FAIL),
        trial(TrialState.PRUNED),
        trial(TrialState.RUNNING, user_attrs=fresh),
        trial(TrialState.RUNNING, user_attrs=silent),
        trial(TrialState.WAITING),
    )
    states = [trial_state(t, now) for t in study.get_trials(deepcopy=False)]
    assert states == ["complete", "failed", "pruned", "running", "interrupted", "waiting"]


def test_a_running_trial_is_stale_after_stale_seconds_of_silence_or_without_its_process() -> None:
    """What lets another worker resume a trial: a beat older than STALE_SECONDS (exactly
    that old is not yet), no owner recorded, or an owner on this host whose process ended."""
    import subprocess

    from exptorch.sweep import STALE_SECONDS, is_stale

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    now = float(int(time.time()))  # whole seconds: `now - beat` is exact

    def running(owner: dict[str, Any] | None, silent_for: float) -> optuna.trial.FrozenTrial:
        attrs = {BEAT_ATTR: now - silent_for, **({OWNER_ATTR: owner} if owner else {})}
        return trial(TrialState.RUNNING, user_attrs=attrs)

    here = ALIVE[OWNER_ATTR]
    assert not is_stale(running(here, STALE_SECONDS), now)
    assert is_stale(running(here, STALE_SECONDS + 0.5), now)
    assert is_stale(running(None, 0), now)
    assert is_stale(running({"host": HOST, "pid": ended.pid}, 0), now)
    assert not is_stale(running({"host": "another-host", "pid": ended.pid}, 0), now)


# -- a row: what comes from the run folder and what from the storage --------------------------


def write_run(folder: Path, records: list[dict[str, Any]], epoch: int, seed: int) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "state.json").write_text(json.dumps({"state": "complete", "epoch": epoch}))
    (folder / "config.json").write_text(json.dumps({"config": {"seed": seed}}))


def test_a_row_takes_epochs_time_and_seed_from_the_trials_run_folder(
    tmp_path: Path, plugins
) -> None:
    records = [
        {"epoch": 1, "test_accuracy": 0.5, "epoch_time": 1.5},
        {"step": 7, "train_loss": 1.0, "epoch_time": 100.0},  # not an epoch record
        {"epoch": 2, "test_accuracy": 0.6, "epoch_time": 2.25},
    ]
    write_run(tmp_path / "trial-0000", records, epoch=2, seed=7)
    study = study_of(trial(value=0.6, lr=0.05, user_attrs={RUN_ATTR: "trial-0000"}))
    canonical = {"base": {"dataset": "fashion-mnist-sample", "epochs": 2, "sgd_nesterov": True}}
    row = leaderboard(study, canonical, tmp_path)["trials"][0]
    assert row["epochs"] == 2
    assert row["seconds"] == pytest.approx(3.75)
    assert row["run"] == "trial-0000"
    assert row["run_path"] == str(tmp_path / "trial-0000")
    assert row["params"] == {"lr": 0.05}
    command = leaderboard(study, canonical, tmp_path, plugins)["best"]["command"]
    assert command == (  # a plugin's switch spelled as its flag
        "expt run --dataset fashion-mnist-sample --epochs 2 --sgd-nesterov --lr 0.05 --seed 7"
    )


def test_a_row_without_its_run_folder_takes_what_the_storage_knows(tmp_path: Path) -> None:
    ran = trial(
        value=0.4,
        intermediate_values={1: 0.3, 3: 0.4},
        user_attrs={RUN_ATTR: "trial-0000", "expt:error": "CUDA out of memory"},
    )
    ran.datetime_start = datetime(2026, 11, 30, 8, 0, 0)
    ran.datetime_complete = ran.datetime_start + timedelta(seconds=42)
    board = leaderboard(study_of(ran), {"base": {"seed": 3}}, tmp_path)  # folder on another host
    row = board["trials"][0]
    assert (row["epochs"], row["seconds"]) == (3, pytest.approx(42))
    assert (row["run"], row["run_path"], row["error"]) == ("trial-0000", None, "CUDA out of memory")
    assert board["best"]["command"] == "expt run --seed 3 --lr 0.01"  # the sweep's own seed kept


def test_a_running_trials_time_counts_up_to_now(tmp_path: Path) -> None:
    running = trial(TrialState.RUNNING)
    running.datetime_start = datetime.now() - timedelta(seconds=30)
    row = leaderboard(study_of(running), {}, tmp_path)["trials"][0]
    assert 29 < row["seconds"] < 120
    assert (row["run"], row["epochs"], row["value"]) == (None, 0, None)


# -- the best trial's command -----------------------------------------------------------------


def test_the_best_command_spells_switches_lists_and_quotes(plugins) -> None:
    base = {"download": False, "compile": True, "transform": ["crop-flip", "mixup"]}
    params = {"weight-decay": 0.0005, "sgd_nesterov": True, "run-name": "my run"}
    assert run_command(base, params, 11, plugins) == (
        "expt run --no-download --compile --transform crop-flip --transform mixup "
        "--weight-decay 0.0005 --sgd-nesterov --run-name 'my run' --seed 11"
    )
    assert run_command({"sgd_nesterov": False}, {}, None, plugins) == "expt run --no-sgd-nesterov"
    assert run_command({"seed": 3}, {}, 11) == "expt run --seed 3"  # the sweep file's seed wins


# -- the text table ---------------------------------------------------------------------------


def test_show_text_is_a_table_then_the_best_trial_and_its_command() -> None:
    rows = [
        {"trial": 2, "params": {"lr": 0.012341, "sched": "cosine"}, "value": 0.9, "state":
         "complete", "epochs": 3, "seconds": 12.34},
        {"trial": 0, "params": {"lr": 0.1}, "value": None, "state": "failed", "epochs": 0,
         "seconds": None},
    ]  # fmt: skip
    best = {"trial": 2, "run": "trial-0002", "value": 0.9, "command": "expt run --lr 0.012341"}
    board = {"name": "s", "metric": "test_accuracy", "direction": "maximize", "trials": rows,
             "best": best}  # fmt: skip
    assert show_text(board).splitlines() == [
        "sweep s: maximize test_accuracy, 2 trials",
        "",
        "trial  lr       sched   test_accuracy  state     epochs  time",
        "2      0.01234  cosine  90.00%         complete  3       12.3s",
        "0      0.1      -       -              failed    0       -",
        "",
        "best: trial 2 (trial-0002), test_accuracy 90.00%",
        "  expt run --lr 0.012341",
    ]


def test_show_text_of_a_sweep_without_trials_or_metric() -> None:
    board = {"name": "e", "metric": None, "direction": "minimize", "trials": [], "best": None}
    assert show_text(board) == "sweep e: minimize value, 0 trials\n\nno trials yet"


# -- where the study comes from ---------------------------------------------------------------


def test_load_study_says_where_to_find_a_sweep_it_cannot_open(tmp_path: Path) -> None:
    with pytest.raises(ExptError, match=r"^No sweep s in .*; pass the folder that holds it"):
        load_study("s", tmp_path, None)
    (tmp_path / "s").mkdir()
    record = {"default_storage": False, "storage": "postgresql://u:***@db/sweeps"}
    (tmp_path / "s" / RECORD).write_text(json.dumps(record))
    with pytest.raises(ExptError, match=r"keeps its trials in postgresql://u:\*\*\*@db/sweeps; "):
        load_study("s", tmp_path, None)
    empty = f"sqlite:///{tmp_path}/empty.db"
    with pytest.raises(ExptError, match=r"^Storage sqlite:///.*empty.db holds no sweep s\.$"):
        load_study("s", tmp_path, empty)


def test_load_study_reads_the_sweep_file_from_the_folder_or_else_the_storage(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    study = optuna.create_study(study_name="s", storage=url)
    study.set_user_attr(SPEC_ATTR, {"metric": "from-storage"})
    loaded, canonical, folder = load_study("s", tmp_path, url)
    assert (loaded.study_name, folder) == ("s", tmp_path / "s")
    assert canonical == {"metric": "from-storage"}
    (tmp_path / "s").mkdir()
    record = {"default_storage": False, "storage": url, "sweep": {"metric": "from-folder"}}
    (tmp_path / "s" / RECORD).write_text(json.dumps(record))
    assert load_study("s", tmp_path, url)[1] == {"metric": "from-folder"}


# -- figures ----------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def test_plot_writes_three_figures_named_after_the_metric(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    from optuna.visualization import matplotlib as figures

    labels: list[str] = []
    real = figures.plot_optimization_history

    def history(study, **kwargs):
        axes = real(study, **kwargs)
        labels.append(axes.get_ylabel())
        return axes

    monkeypatch.setattr(figures, "plot_optimization_history", history)
    import matplotlib.pyplot as plt

    open_before = set(plt.get_fignums())  # other tests may keep theirs open to read them
    study = study_of(trial(value=0.5, lr=0.01), trial(value=0.7, lr=0.1), trial(value=0.6, lr=0.3))
    output = tmp_path / "a" / "plots"
    written, skipped = plot_sweep(study, output, "test_accuracy")
    assert [p.name for p in written] == [
        "optimization-history.png", "param-importances.png", "parallel-coordinate.png"
    ]  # fmt: skip
    assert skipped == []
    for path in written:
        width, height = png_size(path)  # 9 x 5.5 inches at 110 dpi, margins trimmed
        assert 800 < width <= 990 and 450 < height <= 605, (path.name, width, height)
    assert plot_sweep(study, output)[0] == written  # again into the same folder
    assert labels == ["test_accuracy", "Objective Value"]
    assert set(plt.get_fignums()) == open_before  # each figure closed once written


def test_plot_skips_a_figure_optuna_cannot_draw_and_draws_the_rest(
    tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("matplotlib")
    from optuna.visualization import matplotlib as figures

    def refuse(study, **kwargs):  # as Optuna does for a study its evaluator cannot use
        raise ValueError("Cannot evaluate parameter importances with only a single trial.\nmore")

    monkeypatch.setattr(figures, "plot_param_importances", refuse)
    written, skipped = plot_sweep(study_of(trial(value=0.5)), tmp_path)
    assert [p.name for p in written] == ["optimization-history.png", "parallel-coordinate.png"]
    assert skipped == [
        "param-importances.png: Cannot evaluate parameter importances with only a single trial."
    ]


def test_plot_needs_a_complete_trial(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    study = study_of(trial(TrialState.PRUNED, intermediate_values={1: 0.4}), trial(TrialState.FAIL))
    with pytest.raises(ExptError, match=r"^Sweep s has no complete trial to plot yet\.$"):
        plot_sweep(study, tmp_path / "plots")
    assert not (tmp_path / "plots").exists()


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    message = "expt sweep plot needs matplotlib: pip install 'exptorch[plot]'."
    with pytest.raises(ExptError) as caught:
        plot_sweep(study_of(trial(value=0.5)), tmp_path)
    assert str(caught.value) == message
