"""``expt sweep show`` and ``expt sweep plot``: a sweep's leaderboard and figures.

Both read the sweep's Optuna study (the storage named in the sweep folder's
``sweep.json``, or ``--storage``) and, where they are on this machine, the trials'
run folders (epochs, training time, seed).
"""

from __future__ import annotations

import math
import shlex
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.config import config_fields
from exptorch.errors import ExptError, first_line
from exptorch.rundir import atomic_path, read_json
from exptorch.runs import fmt, table
from exptorch.sweep import (
    RECORD,
    RUN_ATTR,
    SPEC_ATTR,
    check_name,
    default_url,
    hide_password,
    is_stale,
    open_storage,
    run_metrics,
)

if TYPE_CHECKING:
    import optuna

    from exptorch.plugins import Plugins

#: Leaderboard order: the trials with a final value first.
_ORDER = {"complete": 0, "pruned": 1, "running": 2, "interrupted": 3, "waiting": 4, "failed": 5}


def load_study(
    name: str, runs_dir: Path, storage: str | None
) -> tuple[optuna.Study, dict[str, Any], Path]:
    """The sweep's study, its canonical sweep file, and its folder on this machine."""
    import optuna

    check_name(name)
    folder = runs_dir / name
    record = read_json(folder / RECORD) if (folder / RECORD).is_file() else None
    if storage is None:
        if record is None:
            raise ExptError(
                f"No sweep {name} in {runs_dir}; pass the folder that holds it with --runs-dir "
                "(or its database with --storage)."
            )
        if not record.get("default_storage"):
            raise ExptError(
                f"Sweep {name} keeps its trials in {record.get('storage')}; pass that URL "
                "(with its password) with --storage."
            )
    url = storage or default_url(folder)
    rdb = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        raise ExptError(f"Storage {hide_password(url)} holds no sweep {name}.") from None
    canonical = (record or {}).get("sweep") or study.user_attrs.get(SPEC_ATTR) or {}
    return study, canonical, folder


def trial_state(trial: optuna.trial.FrozenTrial, now: float) -> str:
    """complete, pruned, failed, waiting, running, or interrupted (running, its process gone)."""
    state = trial.state.name.lower()
    if state == "fail":
        return "failed"
    if state == "running" and is_stale(trial, now):
        return "interrupted"
    return state


def leaderboard(
    study: optuna.Study,
    canonical: Mapping[str, Any],
    folder: Path,
    plugins: Plugins | None = None,
) -> dict[str, Any]:
    """What ``expt sweep show --json`` prints: every trial, best first, and the best's command."""
    now = time.time()
    maximize = study.direction.name == "MAXIMIZE"
    rows = []
    for trial in study.get_trials(deepcopy=False):
        run_name = str(trial.user_attrs.get(RUN_ATTR) or "")
        run_path = folder / run_name if run_name else None
        local = run_path is not None and run_path.is_dir()
        records = run_metrics(run_path) if local and run_path else []
        epochs = [r for r in records if "test_accuracy" in r]
        state_info = read_json(run_path / "state.json") if local and run_path else {}
        seconds = sum(float(r.get("epoch_time", 0.0)) for r in epochs) if epochs else None
        if seconds is None and trial.datetime_start is not None:
            end = trial.datetime_complete.timestamp() if trial.datetime_complete else now
            seconds = end - trial.datetime_start.timestamp()
        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        rows.append(
            {
                "trial": trial.number,
                "state": trial_state(trial, now),
                "value": value,
                "params": dict(trial.params),
                "epochs": state_info.get("epoch", max(trial.intermediate_values, default=0)),
                "seconds": seconds,
                "run": run_name or None,
                "run_path": str(run_path) if local else None,
                "error": trial.user_attrs.get("expt:error"),
            }
        )

    def key(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row["value"]
        score = value if isinstance(value, (int, float)) and math.isfinite(value) else None
        order = -score if score is not None and maximize else score
        return (_ORDER.get(row["state"], 9), order if order is not None else math.inf, row["trial"])

    rows.sort(key=key)
    best = next((r for r in rows if r["state"] == "complete"), None)
    if best is not None:
        seed = None
        if best["run_path"]:
            seed = read_json(Path(best["run_path"]) / "config.json").get("config", {}).get("seed")
        best = {**best, "command": run_command(canonical.get("base", {}), best["params"], seed,
                                               plugins)}  # fmt: skip
    return {
        "name": study.study_name,
        "metric": canonical.get("metric"),
        "direction": study.direction.name.lower(),
        "trials": rows,
        "best": best,
    }


def run_command(
    base: Mapping[str, Any],
    params: Mapping[str, Any],
    seed: int | None,
    plugins: Plugins | None = None,
) -> str:
    """The ``expt run`` command that trains a trial again: base settings, parameters, seed."""
    values = {**base, **{k.replace("-", "_"): v for k, v in params.items()}}
    if seed is not None and values.get("seed") is None:
        values["seed"] = seed
    core = {f.name: f for f in config_fields()}
    options = {opt.name: opt for _, opt in plugins.options()} if plugins is not None else {}
    words = ["expt", "run"]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if name in core and core[name].metadata.get("flag"):
            on, _, off = str(core[name].metadata["flag"]).partition("/")
            words.append(on if value else off)
            continue
        if name in options:
            flag = options[name].flag
            if options[name].is_flag:
                words.append(flag if value else options[name].off_flag)
                continue
        for item in value if isinstance(value, list) else [value]:
            words += [flag, repr(item) if isinstance(item, float) else str(item)]
    return " ".join(shlex.quote(w) for w in words)


def show_text(board: Mapping[str, Any]) -> str:
    metric = board["metric"] or "value"
    names = sorted({k for row in board["trials"] for k in row["params"]})
    header = ("trial", *names, metric, "state", "epochs", "time")
    rows = [
        (
            str(row["trial"]),
            *(fmt(row["params"].get(n)) for n in names),
            fmt(row["value"], metric),
            row["state"],
            str(row["epochs"]),
            "-" if row["seconds"] is None else f"{row['seconds']:.1f}s",
        )
        for row in board["trials"]
    ]
    lines = [f"sweep {board['name']}: {board['direction']} {metric}, {len(rows)} trials", ""]
    lines.append(table(header, rows) if rows else "no trials yet")
    best = board["best"]
    if best is not None:
        lines += [
            "",
            f"best: trial {best['trial']} ({best['run']}), {metric} {fmt(best['value'], metric)}",
            f"  {best['command']}",
        ]
    return "\n".join(lines)


#: The figures ``expt sweep plot`` writes, by file name.
FIGURES = (
    ("optimization-history.png", "plot_optimization_history"),
    ("param-importances.png", "plot_param_importances"),
    ("parallel-coordinate.png", "plot_parallel_coordinate"),
)


def plot_sweep(
    study: optuna.Study, output: Path, metric: str | None = None
) -> tuple[list[Path], list[str]]:
    """Write the figures as PNG files into ``output``; return them and the ones skipped, why."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ExptError("expt sweep plot needs matplotlib: pip install 'exptorch[plot]'.") from None
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as figures

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ExptError(f"Sweep {study.study_name} has no complete trial to plot yet.")
    output.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for filename, function in FIGURES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = getattr(figures, function)(study, target_name=metric or "Objective Value")
            except (ValueError, RuntimeError) as exc:
                skipped.append(f"{filename}: {first_line(exc)}")
                continue
        figure = axes.figure  # each of the three returns one Axes
        figure.set_size_inches(9, 5.5)
        path = output / filename
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written, skipped
