"""What ``expt runs`` shows: runs read back from their folders, and nothing else.

Each run folder holds ``config.json``, ``metrics.jsonl`` and ``state.json`` (see
:mod:`exptorch.rundir`); these functions read them without importing torch.
``expt runs list`` reads ``config.json`` and ``state.json`` only (``state.json``
holds the epochs done, the best accuracy and the final metrics), so listing a
thousand runs costs two small files each, however long they trained; ``show``,
``compare`` and ``plot`` stream ``metrics.jsonl`` one line at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exptorch.errors import ExptError
from exptorch.rundir import (
    FINAL_KEYS,
    RunDir,
    dumps,
    final_metrics,
    finite_number,
    iter_metrics,
    pid_alive,
    read_json,
)

#: What ``state`` can be: the five that ``state.json`` records, ``crashed`` (it says
#: running, but its process is gone), and ``unknown`` (no readable ``state.json``).
STATES = ("running", "finished", "stopped", "interrupted", "failed", "crashed", "unknown")
#: Metrics shown by ``expt runs compare``, and whether higher is better.
COMPARED = {"test_accuracy": True, "test_loss": False, "epoch_train_loss": False}


@dataclass
class Run:
    """One run folder, as ``expt runs`` sees it."""

    name: str
    path: Path
    state: str
    model: str | None
    dataset: str | None
    epochs_done: int
    epochs: int | None
    best_accuracy: float | None
    final: dict[str, float]
    config: dict[str, Any] = field(repr=False)
    state_info: dict[str, Any] = field(repr=False)
    _epochs: list[dict[str, Any]] | None = field(default=None, repr=False)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record of ``metrics.jsonl``, streamed (nothing when it cannot be read)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():  # never open a FIFO or a folder by that name
            return
        try:
            yield from iter_metrics(path)
        except (OSError, UnicodeDecodeError):
            return

    @property
    def epoch_records(self) -> list[dict[str, Any]]:
        """One record per completed epoch (the ones with test metrics), read once."""
        if self._epochs is None:
            self._epochs = [r for r in self.records() if "test_accuracy" in r]
        return self._epochs

    def with_metrics(self) -> Run:
        """This run with its epochs read from ``metrics.jsonl``, and the best and final
        metrics taken from them where ``state.json`` lacks them (a run of an older exptorch)."""
        records = self.epoch_records
        if not isinstance(self.state_info.get("epoch"), int):
            self.epochs_done = len(records)
        if self.best_accuracy is None:
            self.best_accuracy = _best([r.get("test_accuracy") for r in records])
        if not self.final and records:
            self.final = _numbers(final_metrics(records[-1]))
        return self

    def summary(self) -> dict[str, Any]:
        """The row ``expt runs list --json`` prints."""
        return {
            "name": self.name,
            "path": str(self.path),
            "model": self.model,
            "dataset": self.dataset,
            "epochs_done": self.epochs_done,
            "epochs": self.epochs,
            "best_accuracy": self.best_accuracy,
            "final": self.final,
            "state": self.state,
        }

    def details(self) -> dict[str, Any]:
        """What ``expt runs show --json`` prints: the summary, config, state and epochs."""
        return {
            **self.summary(),
            "state_info": self.state_info,
            "config": self.config,
            "epochs_metrics": self.epoch_records,
        }


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).is_file() for name in ("config.json", "state.json", "metrics.jsonl")
    )


def read_run(path: Path) -> Run:
    """Read one run folder's ``config.json`` and ``state.json`` (never ``metrics.jsonl``);
    missing or torn files give empty values, never an error."""
    config_file = read_json(path / "config.json")
    state_info = read_json(path / "state.json")
    config = config_file.get("config")
    config = config if isinstance(config, dict) else {}
    state = str(state_info.get("state") or "unknown")
    if state == "running" and not _still_running(path, state_info):
        state = "crashed"
    done = state_info.get("epoch")
    final = state_info.get("final")
    return Run(
        name=path.name,
        path=path,
        state=state,
        model=config.get("model"),
        dataset=config.get("dataset"),
        epochs_done=done if isinstance(done, int) and not isinstance(done, bool) else 0,
        epochs=config.get("epochs"),
        best_accuracy=_best([state_info.get("best_test_accuracy")]),
        final=_numbers(final) if isinstance(final, dict) else {},
        config=config_file,
        state_info=state_info,
    )


def _still_running(path: Path, state_info: dict[str, Any]) -> bool:
    """Whether a process holds the run folder's lock (or, for a folder of an older exptorch
    without a lock file, whether the process state.json names exists)."""
    locked = RunDir.is_locked(path)
    return locked if locked is not None else pid_alive(state_info.get("pid"))


def _best(accuracies: Sequence[Any]) -> float | None:
    """The highest real accuracy (the loop records -1 before its first epoch), or ``None``."""
    real = [float(a) for a in accuracies if finite_number(a) and a >= 0]
    return max(real) if real else None


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(values[k]) for k in FINAL_KEYS if finite_number(values.get(k))}


def list_runs(runs_dir: Path) -> list[Run]:
    """Every run folder directly inside ``runs_dir``, oldest first."""
    if not runs_dir.is_dir():
        raise ExptError(
            f"{runs_dir} does not exist; pass the folder that holds runs with --runs-dir."
        )
    # Hidden folders are runs being created (see RunDir.create), not runs.
    folders = [
        p for p in sorted(runs_dir.iterdir()) if not p.name.startswith(".") and is_run_folder(p)
    ]
    # A link to a run folder in the same place is that run under a second name: list it once.
    real = {p.resolve() for p in folders if not p.is_symlink()}
    folders = [p for p in folders if not (p.is_symlink() and p.resolve() in real)]
    runs = [read_run(p) for p in folders]
    return sorted(runs, key=lambda r: (r.state_info.get("started") or 0, r.name))


def find_run(runs_dir: Path, name: str) -> Run:
    """The run called ``name`` in ``runs_dir``, or at the path ``name``."""
    for candidate in (runs_dir / name, Path(name)):
        if is_run_folder(candidate):
            return read_run(candidate).with_metrics()
    raise ExptError(f"No run {name!r} in {runs_dir}; see `expt runs list --runs-dir {runs_dir}`.")


def flat_config(run: Run) -> dict[str, Any]:
    """The run's config with plugin options as ``options.NAME`` keys, unset ones left out."""
    config = dict(run.config.get("config", {}))
    options = config.pop("options", None) or {}
    config.update({f"options.{k}": v for k, v in options.items() if v is not None})
    return config


def compare(runs: Sequence[Run]) -> dict[str, Any]:
    """Side by side: the config keys that differ, then epochs, best and final metrics."""
    configs = [flat_config(r) for r in runs]
    keys = sorted({k for c in configs for k in c})
    ignored = {"name", "runs_dir"}
    differing = {
        k: [c.get(k) for c in configs]
        for k in keys
        if k not in ignored and len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1
    }
    rows: dict[str, list[Any]] = {
        "state": [r.state for r in runs],
        "model": [r.model for r in runs],
        "dataset": [r.dataset for r in runs],
        **{f"config.{k}": v for k, v in differing.items() if k not in ("model", "dataset")},
        "epochs": [r.epochs_done for r in runs],
        "best_test_accuracy": [r.best_accuracy for r in runs],
        **{f"final_{k}": [r.final.get(k) for r in runs] for k in COMPARED},
    }
    return {"runs": [r.name for r in runs], "rows": rows}


# -- text tables ------------------------------------------------------------------------------


def fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if "accuracy" in key:
            return f"{100 * value:.2f}%"
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines)


def list_table(runs: Sequence[Run]) -> str:
    header = ("name", "model", "dataset", "epochs", "best acc", "state")
    rows = [
        (
            r.name,
            fmt(r.model),
            fmt(r.dataset),
            f"{r.epochs_done}/{fmt(r.epochs)}",
            fmt(r.best_accuracy, "accuracy"),
            r.state,
        )
        for r in runs
    ]
    return table(header, rows)


def show_text(run: Run) -> str:
    config = flat_config(run)
    lines = [
        f"run {run.name} ({run.path})",
        f"state: {run.state}" + _state_note(run),
        "",
        "config:",
        *(f"  {k}: {fmt(v)}" for k, v in config.items() if v not in (None, [], {})),
        "",
    ]
    records = run.epoch_records
    if records:
        # every other test metric the run recorded (--metric top5: test_top5), in record order
        extra = list(dict.fromkeys(
            k for r in records for k in r
            if k.startswith("test_") and k not in ("test_loss", "test_accuracy")
        ))  # fmt: skip
        header = ("epoch", "step", "train_loss", "test_loss", "test_accuracy", *extra, "time",
                  "img/s")  # fmt: skip
        rows = [
            (
                fmt(r.get("epoch")),
                fmt(r.get("step")),
                fmt(r.get("epoch_train_loss")),
                fmt(r.get("test_loss")),
                fmt(r.get("test_accuracy"), "accuracy"),
                *(fmt(r.get(k)) for k in extra),
                f"{r['epoch_time']:.1f}s" if "epoch_time" in r else "-",
                f"{r['images_per_second']:,.0f}" if "images_per_second" in r else "-",
            )
            for r in records
        ]
        lines.append(table(header, rows))
    else:
        lines.append("no completed epoch")
    return "\n".join(lines)


def _state_note(run: Run) -> str:
    info = run.state_info
    if run.state == "crashed":
        return f" (state.json says running, but process {info.get('pid')} is gone)"
    if info.get("stop_reason"):
        return f" ({info['stop_reason']})"
    return ""


def compare_text(comparison: dict[str, Any]) -> str:
    header = ("", *comparison["runs"])
    rows = [(key, *(fmt(v, key) for v in values)) for key, values in comparison["rows"].items()]
    return table(header, rows)


def to_json(data: Any) -> str:
    """What ``--json`` prints: every value comes from a run's JSON files or is a string."""
    return dumps(data, indent=2)


# -- the picture ---------------------------------------------------------------------------------

PLOT_HINT = "expt runs plot needs matplotlib; install it with: pip install matplotlib"


def plot(runs: Sequence[Run], output: Path) -> Path:
    """Loss (per step) and test accuracy (per epoch) of several runs, in one PNG/SVG/PDF."""
    try:
        import matplotlib
    except ImportError:
        raise ExptError(PLOT_HINT + ".") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        train = [(r["step"], r["train_loss"]) for r in run.records() if "train_loss" in r]
        tests = run.epoch_records
        if train:
            loss_ax.plot(
                [step for step, _ in train], [loss for _, loss in train],
                color=colour, label=f"{run.name} train",
                marker="." if len(train) > 1 else "o",  # a single point is visible too
            )  # fmt: skip
        if tests:
            loss_ax.plot(
                [r["step"] for r in tests], [r["test_loss"] for r in tests],
                color=colour, linestyle="--", marker="o", label=f"{run.name} test",
            )  # fmt: skip
            acc_ax.plot(
                [r["epoch"] for r in tests], [100 * r["test_accuracy"] for r in tests],
                color=colour, marker="o", label=run.name,
            )  # fmt: skip
    loss_ax.set(title="loss", xlabel="training step", ylabel="cross-entropy")
    acc_ax.set(title="test accuracy", xlabel="epoch", ylabel="%")
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output
