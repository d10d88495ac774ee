"""`expt runs` on real run folders: finished, interrupted, failed and crashed runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from exptorch import ExptError, hookimpl
from exptorch.config import RunConfig
from exptorch.plugins import NO_AUTOLOAD_ENV, load_plugins
from exptorch.rundir import read_metrics
from exptorch.train import run_experiment


class Ending:
    """Ends the run called ``interrupted`` with Ctrl-C and ``failed`` with an error."""

    @hookimpl
    def epoch_end(self, run: Any, epoch: int) -> None:
        if run.config.name == "interrupted":
            raise KeyboardInterrupt
        if run.config.name == "failed":
            raise ExptError("the disk is full")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    plugins = load_plugins(extra=[("ending", Ending())], environ={NO_AUTOLOAD_ENV: "1"})

    def run(name: str, **overrides: Any) -> None:
        values: dict[str, Any] = dict(
            dataset="fashion-mnist-sample", device="cpu", epochs=2, seed=0, runs_dir=str(root),
            name=name, limit_train_batches=3, limit_eval_batches=1, log_every=1,
        )  # fmt: skip
        values.update(overrides)
        run_experiment(RunConfig(**values), plugins, echo=lambda _: None)

    run("base")
    run("faster", lr=0.05, momentum=0.9, options={"sgd_nesterov": True})
    with pytest.raises(KeyboardInterrupt):
        run("interrupted", epochs=3)
    with pytest.raises(ExptError):
        run("failed")
    # A process killed outright leaves state.json saying "running" with its pid.
    crashed = root / "crashed"
    crashed.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (crashed / name).write_bytes((root / "base" / name).read_bytes())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state = json.loads((root / "base" / "state.json").read_text())
    state.update(state="running", epoch=1, pid=gone.pid)
    (crashed / "state.json").write_text(json.dumps(state))
    (root / "not-a-run").mkdir()
    return root


def test_list(expt, runs_dir: Path) -> None:
    rows = json.loads(
        expt("runs", "list", "--runs-dir", str(runs_dir), "--json", check=True).stdout
    )
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"base", "faster", "interrupted", "failed", "crashed"}
    assert {n: Path(r["path"]) for n, r in by_name.items()} == {n: runs_dir / n for n in by_name}
    assert {n: r["state"] for n, r in by_name.items()} == {
        "base": "finished",
        "faster": "finished",
        "interrupted": "interrupted",
        "failed": "failed",
        "crashed": "crashed",
    }
    recorded = {n: json.loads((runs_dir / n / "state.json").read_text())["epoch"] for n in by_name}
    assert {n: (r["epochs_done"], r["epochs"]) for n, r in by_name.items()} == {
        "base": (2, 2),
        "faster": (2, 2),
        "interrupted": (recorded["interrupted"], 3),
        "failed": (recorded["failed"], 2),
        "crashed": (1, 2),
    }
    base = by_name["base"]
    assert (base["model"], base["dataset"]) == ("quicknet", "fashion-mnist-sample")
    assert 0 <= base["best_accuracy"] <= 1

    text = expt("runs", "list", "--runs-dir", str(runs_dir), check=True).stdout
    lines = text.splitlines()
    assert lines[0].split() == ["name", "model", "dataset", "epochs", "best", "acc", "state"]
    crashed_line = next(line for line in lines if line.startswith("crashed"))
    assert crashed_line.split()[-1] == "crashed" and " 1/2 " in crashed_line
    assert f"{100 * base['best_accuracy']:.2f}%" in next(x for x in lines if x.startswith("base"))


def test_show(expt, runs_dir: Path) -> None:
    out = json.loads(
        expt("runs", "show", "base", "--runs-dir", str(runs_dir), "--json", check=True).stdout
    )
    assert out["config"]["config"]["lr"] == 0.01
    assert [r["epoch"] for r in out["epochs_metrics"]] == [1, 2]
    assert out["state_info"]["state"] == "finished"
    text = expt("runs", "show", "crashed", "--runs-dir", str(runs_dir), check=True).stdout
    assert "state: crashed" in text and "process" in text
    assert "epoch  step  train_loss" in text


def test_show_prints_every_epoch_record_and_each_option_that_was_set(expt, runs_dir: Path) -> None:
    text = expt("runs", "show", "faster", "--runs-dir", str(runs_dir), check=True).stdout
    lines = text.splitlines()
    config = json.loads((runs_dir / "faster" / "config.json").read_text())["config"]
    # set: listed; unset (None): left out, whatever the option
    assert config["options"]["sgd_nesterov"] is True
    options = [line for line in lines if line.startswith("  options.")]
    assert (
        options == [f"  options.{k}: {v}" for k, v in config["options"].items() if v is not None]
        and "  options.sgd_nesterov: True" in options
    )

    start = next(i for i, line in enumerate(lines) if line.startswith("epoch"))
    assert lines[start].split() == [
        "epoch", "step", "train_loss", "test_loss", "test_accuracy", "time", "img/s",
    ]  # fmt: skip
    records = [r for r in read_metrics(runs_dir / "faster" / "metrics.jsonl") if "test_loss" in r]
    assert [line.split() for line in lines[start + 1 :]] == [
        [
            str(r["epoch"]), str(r["step"]), f"{r['epoch_train_loss']:.4g}",
            f"{r['test_loss']:.4g}", f"{100 * r['test_accuracy']:.2f}%",
            f"{r['epoch_time']:.1f}s", f"{r['images_per_second']:,.0f}",
        ]
        for r in records
    ]  # fmt: skip


def test_compare(expt, runs_dir: Path) -> None:
    args = ("runs", "compare", "base", "faster", "interrupted", "--runs-dir", str(runs_dir))
    out = json.loads(expt(*args, "--json", check=True).stdout)
    assert out["runs"] == ["base", "faster", "interrupted"]
    rows = out["rows"]
    assert rows["config.lr"] == [0.01, 0.05, 0.01]
    assert rows["config.momentum"] == [0.0, 0.9, 0.0]
    assert rows["state"] == ["finished", "finished", "interrupted"]
    assert "config.seed" not in rows  # only what differs
    text = expt(*args, check=True).stdout
    assert text.splitlines()[0].split() == ["base", "faster", "interrupted"]
    assert any(line.startswith("config.lr") for line in text.splitlines())


def test_unknown_run_is_one_sentence(expt, runs_dir: Path) -> None:
    result = expt("runs", "show", "nope", "--runs-dir", str(runs_dir))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: No run 'nope' in {runs_dir}; see `expt runs list --runs-dir {runs_dir}`."
    )


def test_plot(expt, runs_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = expt(
        "runs", "plot", "base", "faster", "--runs-dir", str(runs_dir), "--output", "curves.png",
        check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "wrote curves.png"
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_state_json_holds_everything_list_shows(expt, runs_dir: Path) -> None:
    rows = json.loads(
        expt("runs", "list", "--runs-dir", str(runs_dir), "--json", check=True).stdout
    )
    base = next(row for row in rows if row["name"] == "base")
    epochs = [r for r in read_metrics(runs_dir / "base" / "metrics.jsonl") if "test_accuracy" in r]
    assert base["best_accuracy"] == max(r["test_accuracy"] for r in epochs)
    assert base["final"] == {
        key: epochs[-1][key] for key in ("test_accuracy", "test_loss", "epoch_train_loss")
    }
    assert base["epochs_done"] == len(epochs) == 2


def test_list_never_opens_metrics_jsonl(runs_dir: Path, tmp_path: Path) -> None:
    """A FIFO as metrics.jsonl: opening it would wait for a writer forever."""
    runs = tmp_path / "runs"
    big = runs / "big"
    big.mkdir(parents=True)
    for name in ("config.json", "state.json"):
        shutil.copy(runs_dir / "base" / name, big / name)
    os.mkfifo(big / "metrics.jsonl")
    result = subprocess.run(
        [sys.executable, "-m", "exptorch", "runs", "list", "--runs-dir", str(runs), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    expected = json.loads(subprocess.run(
        [sys.executable, "-m", "exptorch", "runs", "list", "--runs-dir", str(runs_dir), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout)  # fmt: skip
    base = next(r for r in expected if r["name"] == "base")
    assert {k: v for k, v in row.items() if k not in ("name", "path")} == {
        k: v for k, v in base.items() if k not in ("name", "path")
    }


def test_show_streams_a_large_metrics_file(runs_dir: Path, tmp_path: Path) -> None:
    from exptorch.runs import find_run, show_text

    big = tmp_path / "big"
    shutil.copytree(runs_dir / "base", big)
    epochs = [r for r in read_metrics(big / "metrics.jsonl") if "test_accuracy" in r]
    with open(big / "metrics.jsonl", "w") as fh:  # 200,000 training records, then the epochs
        for step in range(200_000):
            fh.write(json.dumps({"step": step, "epoch": 1, "train_loss": 1.0 / (step + 1)}) + "\n")
        fh.writelines(json.dumps(r) + "\n" for r in epochs)
    tracemalloc.start()
    try:
        run = find_run(tmp_path, "big")
        text = show_text(run)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.epoch_records == epochs and "no completed epoch" not in text
    assert peak < 5_000_000  # a list of every record would take far more than the file's 10 MB


def test_plot_of_a_one_epoch_run_draws_its_train_loss_point(tmp_path: Path, monkeypatch) -> None:
    """One train_loss record (the epoch's partial window) is a visible marker, not an
    invisible one-point line."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from exptorch.runs import find_run, plot
    from exptorch.testing import make_plugins, run_expt

    run = run_expt(
        make_plugins(), tmp_path / "runs", echo=lambda _: None, name="one", log_every=100
    )
    assert len([r for r in read_metrics(run / "metrics.jsonl") if "train_loss" in r]) == 1
    figures: list = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot([find_run(tmp_path / "runs", "one")], tmp_path / "one.png")
    (train,) = [line for line in figures[0].axes[0].get_lines() if line.get_label() == "one train"]
    assert len(train.get_xdata()) == 1 and train.get_marker() not in (None, "None", "", " ")
    assert (tmp_path / "one.png").read_bytes().startswith(b"\x89PNG")


def test_a_run_whose_state_was_never_written_is_unknown(tmp_path: Path) -> None:
    """A folder whose state.json is missing, torn or says nothing reads as ``unknown``."""
    from exptorch.runs import read_run

    # with the epochs done: none when no epoch can be read
    for i, (text, done) in enumerate(((None, 0), ('{"epoch": 1', 0), ('{"epoch": 1}', 1))):
        folder = tmp_path / f"run-{i}"
        folder.mkdir()
        if text is not None:
            (folder / "state.json").write_text(text)
        run = read_run(folder)
        assert (run.state, run.epochs_done) == ("unknown", done), text


def edited_copy(runs_dir: Path, into: Path, name: str, state: dict[str, Any] | None = None,
                keep: Any = None, config: Any = None) -> Path:  # fmt: skip
    """A copy of ``base`` whose state.json is ``state``, whose metrics.jsonl keeps the records
    ``keep`` returns, and whose config ``config`` edits."""
    folder = into / name
    shutil.copytree(runs_dir / "base", folder)
    if state is not None:
        (folder / "state.json").write_text(json.dumps(state))
    if keep is not None:
        records = [keep(r) for r in read_metrics(folder / "metrics.jsonl")]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records if r))
    if config is not None:
        saved = json.loads((folder / "config.json").read_text())
        config(saved["config"])
        (folder / "config.json").write_text(json.dumps(saved))
    return folder


def test_compare_rows_are_state_model_dataset_what_differs_then_results(
    expt, runs_dir: Path, tmp_path: Path
) -> None:
    """Rows in order: state, model, dataset, the config keys that differ (never the run's
    name or runs folder, nor model and dataset twice), epochs, best accuracy, final metrics;
    the text shows accuracies as percentages and the rest as numbers."""
    # a run folder copied from another machine, given by its path
    other = edited_copy(runs_dir, tmp_path / "elsewhere", "copied", config=lambda c: c.update(
        name="copied", runs_dir="/elsewhere", model="vgg16", dataset="cifar10", lr=0.1,
    ))  # fmt: skip
    args = ("runs", "compare", "base", str(other), "--runs-dir", str(runs_dir))
    out = json.loads(expt(*args, "--json", check=True).stdout)
    base = json.loads((runs_dir / "base" / "state.json").read_text())
    assert out["runs"] == ["base", "copied"]
    assert out["rows"] == {
        "state": ["finished", "finished"],
        "model": ["quicknet", "vgg16"],
        "dataset": ["fashion-mnist-sample", "cifar10"],
        "config.lr": [0.01, 0.1],
        "epochs": [2, 2],
        "best_test_accuracy": [base["best_test_accuracy"]] * 2,
        **{f"final_{k}": [base["final"][k]] * 2 for k in
           ("test_accuracy", "test_loss", "epoch_train_loss")},
    }  # fmt: skip

    lines = [line.split() for line in expt(*args, check=True).stdout.splitlines()]
    best = f"{100 * base['best_test_accuracy']:.2f}%"
    loss = f"{base['final']['test_loss']:.4g}"
    assert lines[0] == ["base", "copied"]
    assert lines[1:] == [
        ["state", "finished", "finished"],
        ["model", "quicknet", "vgg16"],
        ["dataset", "fashion-mnist-sample", "cifar10"],
        ["config.lr", "0.01", "0.1"],
        ["epochs", "2", "2"],
        ["best_test_accuracy", best, best],
        ["final_test_accuracy", *[f"{100 * base['final']['test_accuracy']:.2f}%"] * 2],
        ["final_test_loss", loss, loss],
        ["final_epoch_train_loss", *[f"{base['final']['epoch_train_loss']:.4g}"] * 2],
    ]


def test_list_table_rows_hold_each_runs_model_dataset_epochs_accuracy_and_state(
    expt, runs_dir: Path, tmp_path: Path
) -> None:
    other = edited_copy(runs_dir, tmp_path / "runs", "copied", config=lambda c: c.update(
        model="vgg16", dataset="cifar10", epochs=5,
    ))  # fmt: skip
    base = json.loads((other / "state.json").read_text())
    text = expt("runs", "list", "--runs-dir", str(other.parent), check=True).stdout
    assert [line.split() for line in text.splitlines()] == [
        ["name", "model", "dataset", "epochs", "best", "acc", "state"],
        ["copied", "vgg16", "cifar10", "2/5", f"{100 * base['best_test_accuracy']:.2f}%",
         "finished"],
    ]  # fmt: skip


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures ``expt runs plot`` draws, kept open for the test to read."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)
    return figures


def test_plot_draws_each_run_in_one_colour_with_its_losses_and_accuracies(
    runs_dir: Path, tmp_path: Path, drawn: list[Any]
) -> None:
    """Left, loss by step: each run's train loss (a line with small markers) and test loss
    (dashed, round markers); right, test accuracy in % by epoch. A run's three lines share
    one colour, and the next run gets the next colour of the cycle."""
    from matplotlib.colors import to_hex
    from matplotlib.font_manager import FontProperties

    from exptorch.runs import find_run, plot

    runs = [find_run(runs_dir, name) for name in ("base", "faster")]
    output = plot(runs, tmp_path / "curves.png")
    assert output == tmp_path / "curves.png"
    png = output.read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert png.startswith(b"\x89PNG") and (width, height) == (1440, 540)  # 12 x 4.5 in, 120 dpi
    (figure,) = drawn
    loss_ax, acc_ax = figure.axes
    assert loss_ax.get_position().x1 < acc_ax.get_position().x0  # side by side
    assert (loss_ax.get_title(), loss_ax.get_xlabel(), loss_ax.get_ylabel()) == (
        "loss", "training step", "cross-entropy",
    )  # fmt: skip
    assert (acc_ax.get_title(), acc_ax.get_xlabel(), acc_ax.get_ylabel()) == (
        "test accuracy", "epoch", "%",
    )  # fmt: skip
    assert all(float(tick).is_integer() for tick in acc_ax.get_xticks())  # whole epochs
    small = FontProperties(size="small").get_size_in_points()
    for ax in (loss_ax, acc_ax):
        assert {grid.get_alpha() for grid in ax.xaxis.get_gridlines()} == {0.3}
        assert {text.get_fontsize() for text in ax.get_legend().get_texts()} == {small}
    losses = {line.get_label(): line for line in loss_ax.get_lines()}
    accuracies = {line.get_label(): line for line in acc_ax.get_lines()}
    assert set(losses) == {"base train", "base test", "faster train", "faster test"}
    assert set(accuracies) == {"base", "faster"}
    for index, run in enumerate(runs):
        train = [r for r in run.records() if "train_loss" in r]
        epochs = run.epoch_records
        line, test, accuracy = losses[f"{run.name} train"], losses[f"{run.name} test"], \
            accuracies[run.name]  # fmt: skip
        assert len(train) > 2 and line.get_marker() == "." and line.get_linestyle() == "-"
        assert list(line.get_xdata()) == [r["step"] for r in train]
        assert list(line.get_ydata()) == [r["train_loss"] for r in train]
        assert (test.get_linestyle(), test.get_marker()) == ("--", "o")
        assert list(test.get_xdata()) == [r["step"] for r in epochs]
        assert list(test.get_ydata()) == [r["test_loss"] for r in epochs]
        assert accuracy.get_marker() == "o" and accuracy.get_linestyle() == "-"
        assert list(accuracy.get_xdata()) == [r["epoch"] for r in epochs]
        assert list(accuracy.get_ydata()) == [100 * r["test_accuracy"] for r in epochs]
        colours = {to_hex(x.get_color()) for x in (line, test, accuracy)}
        assert colours == {to_hex(f"C{index}")}


def test_plot_marks_a_two_point_train_loss_as_a_line_and_one_point_as_a_dot(
    tmp_path: Path, drawn: list[Any]
) -> None:
    from exptorch.runs import find_run, plot
    from exptorch.testing import make_plugins, run_expt

    plugins = make_plugins()
    for name, epochs in (("one", 1), ("two", 2)):  # one partial-window record per epoch
        run_expt(plugins, tmp_path / "runs", echo=lambda _: None, name=name, epochs=epochs,
                 log_every=100)  # fmt: skip
    output = tmp_path / "figures" / "new" / "p.png"  # folders made as needed
    plot([find_run(tmp_path / "runs", n) for n in ("one", "two")], output)
    assert output.read_bytes().startswith(b"\x89PNG")
    trains = {
        line.get_label(): line for line in drawn[0].axes[0].get_lines()
        if line.get_label().endswith("train")
    }  # fmt: skip
    assert [len(trains[n].get_xdata()) for n in ("one train", "two train")] == [1, 2]
    assert (trains["one train"].get_marker(), trains["two train"].get_marker()) == ("o", ".")


def test_plot_without_matplotlib_says_how_to_install_it(
    runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exptorch.runs import find_run, plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ExptError) as error:
        plot([find_run(runs_dir, "base")], tmp_path / "p.png")
    assert str(error.value) == (
        "expt runs plot needs matplotlib; install it with: pip install matplotlib."
    )
    assert not (tmp_path / "p.png").exists()


def test_a_running_run_is_told_by_its_lock_and_an_older_one_by_its_pid(
    runs_dir: Path, tmp_path: Path
) -> None:
    """state.json says running, and this process is alive. With a lock file, what counts is
    whether the lock is held: free, the run crashed. Without one (an older exptorch's
    folder), the pid decides, and one no process here can have is a crashed run."""
    from exptorch.rundir import LOCK_NAME
    from exptorch.runs import read_run

    base = json.loads((runs_dir / "base" / "state.json").read_text())

    def running_folder(name: str, lock: bool, pid: int = os.getpid()) -> Path:
        folder = edited_copy(runs_dir, tmp_path, name,
                             state={**base, "state": "running", "pid": pid})  # fmt: skip
        (folder / LOCK_NAME).unlink(missing_ok=True)
        if lock:
            (folder / LOCK_NAME).touch()
        return folder

    assert read_run(running_folder("free-lock", lock=True)).state == "crashed"
    assert read_run(running_folder("no-lock", lock=False)).state == "running"
    assert read_run(running_folder("huge-pid", lock=False, pid=2**40)).state == "crashed"


def test_a_runs_colour_is_its_place_in_the_plot_whatever_lines_the_others_have(
    runs_dir: Path, tmp_path: Path, drawn: list[Any]
) -> None:
    """A run stopped in its first epoch has train losses only; one of an exptorch that logged
    no train losses has test results only. Either way the n-th run is drawn in colour Cn."""
    from matplotlib.colors import to_hex

    from exptorch.runs import find_run, plot

    edited_copy(runs_dir, tmp_path / "runs", "first-epoch", keep=lambda r: "train_loss" in r and r)
    edited_copy(
        runs_dir, tmp_path / "runs", "tests-only", keep=lambda r: "test_accuracy" in r and r
    )
    for order in (("tests-only", "first-epoch"), ("first-epoch", "tests-only")):
        drawn.clear()
        plot([find_run(tmp_path / "runs", name) for name in order], tmp_path / "p.png")
        (figure,) = drawn
        colours = {
            line.get_label(): to_hex(line.get_color())
            for ax in figure.axes for line in ax.get_lines()
        }  # fmt: skip
        assert colours == {
            "first-epoch train": to_hex(f"C{order.index('first-epoch')}"),
            "tests-only test": to_hex(f"C{order.index('tests-only')}"),
            "tests-only": to_hex(f"C{order.index('tests-only')}"),
        }


def test_show_text_reads_as_documented(runs_dir: Path, tmp_path: Path) -> None:
    """The header and state line, the config that was set, then a row per epoch: extra test
    metrics get a column, and what an older run did not record shows as "-"."""
    from exptorch.runs import find_run, fmt, show_text

    def older(record: dict[str, Any]) -> dict[str, Any]:
        if "test_accuracy" in record:
            record.pop("epoch_time")
            record.pop("images_per_second")
            record["test_top5"] = 0.75
        return record

    folder = edited_copy(runs_dir, tmp_path, "older", keep=older)
    run = find_run(tmp_path, "older")
    config = json.loads((folder / "config.json").read_text())["config"]
    epochs = [r for r in read_metrics(folder / "metrics.jsonl") if "test_accuracy" in r]
    shown = [f"  {k}: {fmt(v)}" for k, v in config.items() if k != "options" and v is not None
             and v != []]  # fmt: skip
    lines = show_text(run).splitlines()
    assert lines[:4] == [f"run older ({folder})", "state: finished", "", "config:"]
    assert lines[4 : 4 + len(shown)] == shown and lines[4 + len(shown)] == ""
    table = [line.split() for line in lines[5 + len(shown) :]]
    assert table == [
        ["epoch", "step", "train_loss", "test_loss", "test_accuracy", "test_top5", "time", "img/s"],
        *[
            [str(r["epoch"]), str(r["step"]), f"{r['epoch_train_loss']:.4g}",
             f"{r['test_loss']:.4g}", f"{100 * r['test_accuracy']:.2f}%", "0.75", "-", "-"]
            for r in epochs
        ],
    ]  # fmt: skip


def test_show_text_says_why_a_run_stopped_crashed_or_has_no_epoch(
    runs_dir: Path, tmp_path: Path
) -> None:
    from exptorch.runs import find_run, show_text

    base = json.loads((runs_dir / "base" / "state.json").read_text())
    edited_copy(
        runs_dir,
        tmp_path,
        "stopped",
        state={**base, "state": "stopped", "stop_reason": "no improvement in 3 epochs"},
    )
    edited_copy(runs_dir, tmp_path, "empty", keep=lambda r: "train_loss" in r and r)
    crashed = find_run(runs_dir, "crashed")
    pid = json.loads((runs_dir / "crashed" / "state.json").read_text())["pid"]
    assert show_text(crashed).splitlines()[1] == (
        f"state: crashed (state.json says running, but process {pid} is gone)"
    )
    stopped = show_text(find_run(tmp_path, "stopped")).splitlines()
    assert stopped[1] == "state: stopped (no improvement in 3 epochs)"
    assert show_text(find_run(tmp_path, "empty")).splitlines()[-1] == "no completed epoch"


def test_a_run_of_an_older_exptorch_takes_its_results_from_metrics_jsonl(
    runs_dir: Path, tmp_path: Path
) -> None:
    """state.json with only the state (no epoch, best or final), config.json without
    plugin options: what show and compare print comes from the epochs' records."""
    from exptorch.runs import compare, find_run, show_text

    edited_copy(runs_dir, tmp_path, "old", state={"state": "finished"},
                config=lambda config: config.pop("options"))  # fmt: skip
    run = find_run(tmp_path, "old")
    epochs = [r for r in read_metrics(tmp_path / "old" / "metrics.jsonl") if "test_accuracy" in r]
    assert run.epochs_done == 2
    assert run.best_accuracy == max(r["test_accuracy"] for r in epochs)
    assert run.final == {k: epochs[-1][k] for k in ("test_accuracy", "test_loss",
                                                    "epoch_train_loss")}  # fmt: skip
    assert "no completed epoch" not in show_text(run)
    assert compare([run, run])["rows"]["epochs"] == [2, 2]
    # where state.json says how far the run got, that wins over the records
    crashed = find_run(runs_dir, "crashed")
    assert (crashed.epochs_done, len(crashed.epoch_records)) == (1, 2)


def test_fmt_writes_lists_and_mappings_as_json() -> None:
    from exptorch.runs import fmt

    assert fmt(["top5", "macro-f1"]) == '["top5", "macro-f1"]'
    assert fmt({"sgd_nesterov": True}) == '{"sgd_nesterov": true}'
    assert (fmt(None), fmt(0.123456), fmt(0.5, "test_accuracy"), fmt(3)) == (
        "-",
        "0.1235",
        "50.00%",
        "3",
    )


def test_list_skips_hidden_folders_and_links_to_a_listed_run(
    runs_dir: Path, tmp_path: Path
) -> None:
    from exptorch.runs import list_runs

    root, other = tmp_path / "runs", tmp_path / "elsewhere"
    state = json.loads((runs_dir / "base" / "state.json").read_text())
    edited_copy(runs_dir, root, "base", state={**state, "started": 2e9})
    edited_copy(runs_dir, root, ".base-being-created")
    edited_copy(runs_dir, other, "kept", state={**state, "started": 1e9})
    (root / "alias").symlink_to(root / "base")  # the same run under a second name
    (root / "linked").symlink_to(other / "kept")  # a run kept elsewhere, listed here
    assert [run.name for run in list_runs(root)] == ["linked", "base"]  # oldest first
    with pytest.raises(ExptError) as info:
        list_runs(tmp_path / "missing")
    assert str(info.value) == (
        f"{tmp_path / 'missing'} does not exist; pass the folder that holds runs with --runs-dir."
    )


def test_json_output_is_indented_by_two_spaces() -> None:
    from exptorch.runs import to_json

    assert to_json({"final": {"test_accuracy": 0.5}}) == (
        '{\n  "final": {\n    "test_accuracy": 0.5\n  }\n}'
    )


@pytest.mark.parametrize("kept", ["config.json", "state.json", "metrics.jsonl", None])
def test_any_one_of_a_runs_files_makes_a_run_folder(tmp_path: Path, kept: str | None) -> None:
    from exptorch.runs import is_run_folder

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a run's file")
    if kept:
        (folder / kept).write_text("{}")  # a run cut short leaves some of its files
    assert is_run_folder(folder) == (kept is not None)


def test_best_accuracy_counts_zero_but_not_the_placeholder_before_the_first_epoch() -> None:
    from exptorch.runs import _best

    assert _best([-1, 0.0]) == 0.0  # a run that learnt nothing still has a best accuracy
    assert _best([-1, float("nan"), 0.25, 0.5, 0.375]) == 0.5
    assert _best([-1]) is None
