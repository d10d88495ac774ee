"""``expt sweep``: the sweep file's checks, trials as run folders, pruning, the exact budget
across processes (SQLite and a real PostgreSQL server), resume after Ctrl-C and kill, show
and plot. Trials are tiny real runs on the bundled Fashion-MNIST sample."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXPT
from exptorch.errors import ExptError
from exptorch.rundir import read_metrics
from exptorch.sweep import (
    PRUNED_REASON,
    Sweep,
    claim_next,
    hide_password,
    open_sweep,
    trial_config,
    with_driver,
)
from exptorch.sweep_file import read_sweep

optuna = pytest.importorskip("optuna")

TINY = """\
dataset = "fashion-mnist-sample"
epochs = 1
limit-train-batches = 2
limit-eval-batches = 1
batch-size = 32
"""


def write_sweep(
    folder: Path,
    sweep: str = 'trials = 2\nsampler = "random"\nseed = 0',
    params: str = "lr = { log-uniform = [0.001, 0.1] }",
    base: str = TINY,
    name: str = "sweep.toml",
) -> Path:
    path = folder / name
    path.write_text(f"{base}\n[sweep]\n{sweep}\n\n[sweep.parameters]\n{params}\n")
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "EXPT_DISABLE_PLUGIN_AUTOLOAD": "1"}


def expt_sweep(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*EXPT, "sweep", *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"expt sweep {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
    return result


def show_json(cwd: Path, name: str, *args: str) -> dict:
    return json.loads(expt_sweep(cwd, "show", name, "--json", *args).stdout)


# -- the sweep file: one sentence for each mistake, before anything is written --------------


@pytest.mark.parametrize(
    ("sweep", "params", "base", "message"),
    [
        (
            "trials = 2\nsamples = 3",
            "lr = { uniform = [0.01, 0.1] }",
            TINY,
            "Unknown key 'samples' in the [sweep] table",
        ),
        (
            "trials = 2",
            "lr = { uniform = [0.01, 0.1] }",
            TINY + "colour = 3\n",
            "Unknown key 'colour' in config file",
        ),
        (
            "trials = 2",
            "learning-rate = { uniform = [0.01, 0.1] }",
            TINY,
            "Sweep parameter 'learning-rate' is not a run option",
        ),
        ("trials = 2", "lr = { uniform = [0.1, 0.01] }", TINY, "is empty or reversed"),
        ("trials = 2", "lr = { uniform = [0.1, 0.1] }", TINY, "is empty or reversed"),
        ("trials = 2", "momentum = { choice = [] }", TINY, "choice needs at least one value"),
        ("trials = 2", "lr = { log-uniform = [0.0, 0.1] }", TINY, "positive low end"),
        ("trials = 2", "lr = { uniform = [0.0, 0.1] }", TINY, "--lr must be positive"),
        (
            "trials = 2",
            'momentum = { choice = [0.9, "big"] }',
            TINY,
            "Sweep parameter momentum = 'big' is not a valid setting",
        ),
        ("trials = 2", "log-every = { int = [1.5, 3] }", TINY, "int needs two integers"),
        ("trials = 2", "lr = { uniform = [0.01, 0.1], step = 0.2 }", TINY, "wider than the range"),
        ("trials = 2", "lr = { uniform = [0.01, 0.1], log = true }", TINY, "unknown or misplaced"),
        ("trials = 2", "lr = [0.01, 0.1]", TINY, "needs exactly one of choice"),
        ("trials = 2", "name = { choice = ['a', 'b'] }", TINY, "name cannot be swept"),
        (
            "trials = 2",
            "lr = { uniform = [0.01, 0.1] }",
            TINY + "lr = 0.1\n",
            "lr is both a base setting and a swept parameter",
        ),
        (
            "trials = 2",
            "lr = { uniform = [0.01, 0.1] }",
            TINY + 'runs-dir = "x"\n',
            "sets 'runs-dir'",
        ),
        (
            'trials = 2\ndirection = "up"',
            "lr = { uniform = [0.01, 0.1] }",
            TINY,
            "direction must be maximize or minimize, not 'up'",
        ),
        (
            'trials = 2\nsampler = "cmaes"',
            "lr = { uniform = [0.01, 0.1] }",
            TINY,
            "sampler must be one of grid, random, tpe, not 'cmaes'",
        ),
        (
            'trials = 2\npruner = "sha"',
            "lr = { uniform = [0.01, 0.1] }",
            TINY,
            "pruner must be one of none, median, hyperband",
        ),
        (
            'trials = 2\nmetric = "val_accuracy"',
            "lr = { uniform = [0.01, 0.1] }",
            TINY,
            "Metric 'val_accuracy' of",
        ),
        (
            "trials = 0",
            "lr = { uniform = [0.01, 0.1] }",
            TINY,
            "trials must be an integer of at least 1",
        ),
        (
            'timeout = "soon"',
            "lr = { uniform = [0.01, 0.1] }",
            TINY,
            "timeout must be a positive duration",
        ),
        ('sampler = "tpe"', "lr = { uniform = [0.01, 0.1] }", TINY, "Give the sweep a budget"),
        (
            'sampler = "grid"',
            "lr = { uniform = [0.01, 0.1] }",
            TINY,
            "The grid sampler needs a finite set of values",
        ),
        (
            'sampler = "grid"\ntrials = 5',
            "momentum = { choice = [0.0, 0.9] }",
            TINY,
            "more than the grid's 2 points",
        ),
        (
            "trials = 2",
            "lr = { uniform = [0.01, 0.1] }",
            TINY.replace("fashion-mnist-sample", "mnist"),
            "Unknown dataset 'mnist'",
        ),
    ],
)
def test_sweep_file_mistakes_are_one_sentence(
    tmp_path: Path, plugins, sweep: str, params: str, base: str, message: str
) -> None:
    path = write_sweep(tmp_path, sweep, params, base)
    with pytest.raises(ExptError) as info:
        read_sweep(path, plugins)
    text = str(info.value)
    assert message in text
    assert "\n" not in text and str(tmp_path / "expt-sweep-") not in text


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"uniform": [0, 1], "choice": [1]},
         " needs exactly one of choice, uniform, log-uniform, int, such as "
         "lr = { choice = [1, 2] }."),
        ({"choice": [1, 2], "step": 1}, " has an unknown or misplaced key 'step'."),
        ({"uniform": [0, 1], "steps": 1}, " has an unknown or misplaced key 'steps'."),
        ({"choice": [1, None]},
         ": choice values must be strings, numbers or booleans, not None."),
        ({"choice": [1, [2]]}, ": choice values must be strings, numbers or booleans, not [2]."),
        ({"choice": [1, 1]}, ": choice lists a value twice."),
        ({"uniform": [0, 1, 2]}, ": uniform needs [low, high], two numbers."),
        ({"uniform": "0, 1"}, ": uniform needs [low, high], two numbers."),
        ({"uniform": [0, "1"]}, ": uniform needs [low, high], two numbers."),
        ({"uniform": [1, 1]},
         ": the range [1, 1] is empty or reversed; give [low, high] with low < high."),
        ({"uniform": [0, 1], "step": 0}, ": step must be a positive number, not 0."),
        ({"int": [0, 4], "step": 0.5}, ": step must be a positive number, not 0.5."),
        ({"uniform": [0, 1], "step": 1.5}, ": step 1.5 is wider than the range."),
        ({"uniform": [1, 2], "step": 1.5}, ": step 1.5 is wider than the range."),
    ],
)  # fmt: skip
def test_a_sweep_parameters_space_mistake_is_one_whole_sentence(space: dict, message: str) -> None:
    from exptorch.sweep_file import _read_space

    with pytest.raises(ExptError) as caught:
        _read_space("lr", "lr", space)
    assert str(caught.value) == "Sweep parameter lr" + message


def test_a_step_as_wide_as_the_range_is_accepted() -> None:
    from exptorch.sweep_file import _read_space

    assert _read_space("lr", "lr", {"uniform": [0, 1], "step": 1}).step == 1
    assert _read_space("lr", "lr", {"uniform": [-2, -1], "step": 0.5}).step == 0.5
    assert _read_space("e", "epochs", {"int": [1, 3], "step": 2}).high == 3


@pytest.mark.parametrize(
    ("value", "toml"),
    [
        (True, "true"), (False, "false"), (3, "3"), (0.5, "0.5"), (float("nan"), "nan"),
        (float("inf"), "inf"), (float("-inf"), "-inf"), ("café", '"café"'),
        (["a", 1, [False]], '["a", 1, [false]]'),
        ({"k": [True], "j": 2}, '{"k" = [true], "j" = 2}'),
    ],
)  # fmt: skip
def test_settings_are_written_back_as_toml_values(value: object, toml: str) -> None:
    from exptorch.sweep_file import _toml_value

    assert _toml_value(value) == toml


def test_a_setting_toml_cannot_hold_is_refused_in_one_sentence() -> None:
    from exptorch.sweep_file import _toml_value

    with pytest.raises(ExptError) as caught:
        _toml_value(None)
    assert str(caught.value) == "Setting value None cannot be used in a sweep; use a plain value."


def test_sweep_file_spaces_and_defaults(tmp_path: Path, plugins) -> None:
    path = write_sweep(
        tmp_path,
        'sampler = "grid"\nmetric = "test_loss"',
        "batch-size = { int = [32, 96], step = 32 }\nmomentum = { choice = [0.0, 0.9] }",
        base=TINY.replace("batch-size = 32\n", 'recipe = "fast"\n'),
    )
    spec = read_sweep(path, plugins)
    assert spec.direction == "minimize"  # test_loss: lower is better
    assert spec.trials == 6  # the whole grid, the first parameter varying slowest
    assert spec.grid is not None and spec.grid[:3] == [
        {"batch-size": 32, "momentum": 0.0},
        {"batch-size": 32, "momentum": 0.9},
        {"batch-size": 64, "momentum": 0.0},
    ]
    # the base keeps the recipe under the file's own keys, as `expt run --config` does
    assert spec.base["recipe"] == "fast"


def test_sweep_table_defaults_and_the_lowest_values_it_takes(tmp_path: Path, plugins) -> None:
    spec = read_sweep(write_sweep(tmp_path, "trials = 2"), plugins)
    assert (spec.sampler, spec.pruner, spec.seed) == ("tpe", "none", None)
    assert (spec.pruner_startup_trials, spec.pruner_warmup_epochs) == (5, 0)
    table = 'trials = 2\nseed = 0\npruner = "median"\npruner-startup-trials = 0\n'
    spec = read_sweep(write_sweep(tmp_path, table + "pruner-warmup-epochs = 2"), plugins)
    assert (spec.pruner, spec.seed, spec.pruner_startup_trials) == ("median", 0, 0)
    assert spec.pruner_warmup_epochs == 2


def test_sweep_table_mistakes_are_whole_sentences(tmp_path: Path, plugins) -> None:
    def refusal(path: Path) -> str:
        with pytest.raises(ExptError) as caught:
            read_sweep(path, plugins)
        return str(caught.value)

    (tmp_path / "plain.toml").write_text(TINY)
    assert refusal(tmp_path / "plain.toml") == (
        f"Sweep file {tmp_path / 'plain.toml'} has no [sweep] table; add one with metric, trials "
        "and [sweep.parameters] (see the README's sweep section)."
    )
    path = write_sweep(tmp_path, "trials = 2\nbogus = 1")
    assert refusal(path) == (
        f"Unknown key 'bogus' in the [sweep] table of {path}; known keys: metric, direction, "
        "trials, timeout, sampler, pruner, seed, pruner-startup-trials, pruner-warmup-epochs, "
        "parameters."
    )
    path = write_sweep(tmp_path, 'trials = 2\nmetric = "f1"')
    assert refusal(path) == (
        f"Metric 'f1' of {path} is not one a run writes; use one of: test_accuracy, test_loss, "
        "epoch_train_loss, images_per_second, epoch_time, test_macro_f1, test_top5."
    )  # the accuracy metric plugin's key is the run's own: once
    path = write_sweep(tmp_path, 'trials = 2\nmetric = "test_macro_f1"')
    assert refusal(path) == (
        "Say whether test_macro_f1 should be maximized or minimized: add direction."
    )


def test_a_grid_over_an_int_range_without_a_step_takes_every_integer(
    tmp_path: Path, plugins
) -> None:
    spec = read_sweep(
        write_sweep(tmp_path, 'sampler = "grid"', "log-every = { int = [1, 3] }"), plugins
    )
    assert spec.trials == 3
    assert spec.grid == [{"log-every": n} for n in (1, 2, 3)]


def test_metric_plugins_add_their_test_metric(tmp_path: Path, make_plugins) -> None:
    from exptorch import hookimpl

    class BalancedAccuracy:
        @hookimpl
        def register_metrics(self, register):
            register("balanced-accuracy", object)

    sweep = 'trials = 1\nmetric = "test_balanced_accuracy"\ndirection = "maximize"'
    path = write_sweep(tmp_path, sweep)
    with pytest.raises(ExptError, match=r"'test_balanced_accuracy' .* is not one a run writes"):
        read_sweep(path, make_plugins())
    sweep_read = read_sweep(path, make_plugins(("balanced", BalancedAccuracy())))
    assert (sweep_read.metric, sweep_read.direction) == ("test_balanced_accuracy", "maximize")


def test_cli_refuses_a_bad_sweep_file_before_any_trial(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "trials = 2", "lr = { uniform = [0.1, 0.01] }")
    result = expt_sweep(tmp_path, "run", str(path), "--name", "s", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "empty or reversed" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://u:pw@127.0.0.1/db", "is a mysql URL"),
        ("sqlite://", "in-memory database"),
        ("postgresql://expt:hunter2@127.0.0.1:1/db", "Cannot reach storage"),
    ],
)
def test_bad_or_unreachable_storage_is_refused(
    tmp_path: Path, plugins, storage: str, message: str
) -> None:
    if not _postgres_driver():
        pytest.skip("no PostgreSQL driver: pip install 'exptorch[postgres]'")
    spec = read_sweep(write_sweep(tmp_path), plugins)
    with pytest.raises(ExptError) as info:
        open_sweep(spec, name="s", runs_dir=tmp_path / "runs", storage=storage, epochs=1)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)
    assert not (tmp_path / "runs" / "s").exists()


def test_hide_password() -> None:
    assert hide_password("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"


USAGE = "use postgresql://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:///PATH/TO/FILE.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", f"Storage 'not a url' is not a database URL; {USAGE}."),
        ("mysql://u:pw@h/db", "Storage 'mysql://u:***@h/db' is a mysql URL; `expt sweep` keeps "
         "the trial budget exact with locks it knows for PostgreSQL and SQLite only, so "
         f"{USAGE}."),
        ("sqlite://", f"Storage 'sqlite://' is an in-memory database; {USAGE}."),
        ("sqlite:///:memory:", f"Storage 'sqlite:///:memory:' is an in-memory database; {USAGE}."),
    ],
)  # fmt: skip
def test_a_storage_url_expt_sweep_cannot_use_is_one_whole_sentence(url: str, message: str) -> None:
    from exptorch.sweep import storage_backend

    with pytest.raises(ExptError) as caught:
        storage_backend(url)
    assert str(caught.value) == message


def test_storage_backends_and_the_installed_postgresql_driver() -> None:
    import importlib.util

    from exptorch.sweep import storage_backend

    assert storage_backend("sqlite:///sweeps/s.db") == "sqlite"
    assert storage_backend("postgresql+psycopg://u:pw@h:5/db") == "postgresql"
    plain = "postgresql://u:pw@h:5/db"
    installed = [m for m in ("psycopg", "psycopg2") if importlib.util.find_spec(m) is not None]
    driver = installed[0] if installed else None  # psycopg (3) first
    assert with_driver(plain) == (f"postgresql+{driver}://u:pw@h:5/db" if driver else plain)
    assert with_driver("postgresql+psycopg2://u:pw@h/db") == "postgresql+psycopg2://u:pw@h/db"
    assert with_driver("sqlite:///s.db") == "sqlite:///s.db"


@pytest.mark.parametrize("pruner", ["none", "median", "hyperband"])
def test_the_pruner_takes_the_sweep_files_settings(tmp_path: Path, plugins, pruner: str) -> None:
    import optuna

    from exptorch.sweep import make_pruner

    table = f'trials = 2\npruner = "{pruner}"\npruner-startup-trials = 3\npruner-warmup-epochs = 2'
    made = make_pruner(read_sweep(write_sweep(tmp_path, table), plugins), epochs=7)
    if pruner == "none":
        assert type(made) is optuna.pruners.NopPruner
    elif pruner == "median":
        assert type(made) is optuna.pruners.MedianPruner
        assert (made._n_startup_trials, made._n_warmup_steps) == (3, 2)
    else:
        assert type(made) is optuna.pruners.HyperbandPruner
        assert (made._min_resource, made._max_resource) == (1, 7)
        small = make_pruner(read_sweep(write_sweep(tmp_path, table), plugins), epochs=1)
        assert small._max_resource == 2  # Hyperband needs two rungs at least


# -- trials are run folders; budget, clash, extension ----------------------------------------


def test_sweep_runs_trials_as_run_folders_and_continues_to_a_new_budget(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, 'trials = 2\nsampler = "tpe"\nseed = 1')
    first = expt_sweep(tmp_path, "run", str(path), "--name", "s")
    assert "trial 0 started (trial-0000)" in first.stdout
    folder = tmp_path / "runs" / "s"
    assert sorted(p.name for p in folder.glob("trial-*")) == ["trial-0000", "trial-0001"]
    for trial in folder.glob("trial-*"):
        state = json.loads((trial / "state.json").read_text())
        assert state["state"] == "finished"
        config = json.loads((trial / "config.json").read_text())["config"]
        assert tmp_path / config["runs_dir"] == folder and config["name"] == trial.name
        assert 0.001 <= config["lr"] <= 0.1
    # `expt runs` works on a sweep's trials as on any run
    runs = subprocess.run(
        [*EXPT, "runs", "list", "--runs-dir", str(folder), "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=env(),
    )
    assert {r["name"] for r in json.loads(runs.stdout)} == {"trial-0000", "trial-0001"}

    again = expt_sweep(tmp_path, "run", str(path), "--name", "s")  # budget spent: nothing to do
    assert "started" not in again.stdout
    assert len(list(folder.glob("trial-*"))) == 2

    # Another search under the same name is refused; a larger budget continues the sweep.
    other = write_sweep(
        tmp_path,
        'trials = 2\nsampler = "tpe"\nseed = 1',
        "lr = { log-uniform = [0.001, 0.2] }",
        name="other.toml",
    )
    clash = expt_sweep(tmp_path, "run", str(other), "--name", "s", check=False)
    assert clash.returncode == 1
    assert "was started from another sweep file" in clash.stderr
    assert "parameters differ" in clash.stderr
    path.write_text(path.read_text().replace("trials = 2", "trials = 3"))
    expt_sweep(tmp_path, "run", str(path), "--name", "s")
    board = show_json(tmp_path, "s")
    assert [t["state"] for t in board["trials"]] == ["complete"] * 3
    values = [t["value"] for t in board["trials"]]
    assert values == sorted(values, reverse=True)  # maximize: best first
    for t in board["trials"]:  # a trial's time is its run's training time, epoch by epoch
        records = [
            r for r in read_metrics(folder / t["run"] / "metrics.jsonl") if "test_accuracy" in r
        ]
        assert t["seconds"] == pytest.approx(sum(r["epoch_time"] for r in records))
        assert t["epochs"] == len(records) == 1
    command = board["best"]["command"]
    assert command.startswith("expt run ") and "--dataset fashion-mnist-sample" in command
    assert "--seed " in command
    lines = expt_sweep(tmp_path, "show", "s").stdout.splitlines()
    assert lines[:3] == ["sweep s: maximize test_accuracy, 3 trials", "", lines[2]]
    assert lines[2].split() == ["trial", "lr", "test_accuracy", "state", "epochs", "time"]
    assert [line.split()[:5] for line in lines[3:6]] == [
        [str(t["trial"]), f"{t['params']['lr']:.4g}", f"{100 * t['value']:.2f}%", "complete",
         str(t["epochs"])]
        for t in board["trials"]
    ]  # fmt: skip
    best = board["best"]
    assert lines[6:] == [
        "",
        f"best: trial {best['trial']} ({best['run']}), test_accuracy {100 * best['value']:.2f}%",
        f"  {command}",
    ]


def test_best_command_reproduces_the_best_trial(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        'trials = 1\nsampler = "random"\nseed = 3',
        "momentum = { choice = [0.5] }\nlr = { uniform = [0.01, 0.05] }",
        base=TINY + "augment = true\n",  # an on/off flag is spelled as the flag
    )
    expt_sweep(tmp_path, "run", str(path), "--name", "s")
    best = show_json(tmp_path, "s")["best"]
    args = best["command"].split()[2:]
    assert "--augment" in args and "--momentum" in args
    subprocess.run(
        [*EXPT, "run", *args, "--runs-dir", "again", "--name", "b", "--device", "cpu"],
        cwd=tmp_path,
        env=env(),
        check=True,
        capture_output=True,
    )
    again = [
        json.loads(line) for line in (tmp_path / "again/b/metrics.jsonl").read_text().splitlines()
    ]
    assert again[-1]["test_accuracy"] == pytest.approx(best["value"], abs=1e-6)


def test_pruned_trial_keeps_its_folder_and_shows_as_pruned(tmp_path: Path) -> None:
    # Grid order is the file's: lr 0.01 learns, 1e-7 does not and is pruned after epoch 1,
    # 1000 diverges at once (failed, before any metric was written).
    base = TINY.replace("epochs = 1", "epochs = 2").replace(
        "limit-train-batches = 2", "limit-train-batches = 15"
    )
    path = write_sweep(
        tmp_path,
        'sampler = "grid"\npruner = "median"\npruner-startup-trials = 1',
        "lr = { choice = [0.01, 1e-7, 1000.0] }",
        base=base + "momentum = 0.9\nseed = 0\n",
    )
    out = expt_sweep(tmp_path, "run", str(path), "--name", "p").stdout
    assert "trial 0 complete: test_accuracy " in out
    assert "trial 1 pruned at epoch 1: test_accuracy " in out
    assert "trial 2 failed: " in out
    board = show_json(tmp_path, "p")
    states = {t["trial"]: (t["state"], t["epochs"], t["params"]["lr"]) for t in board["trials"]}
    assert states == {0: ("complete", 2, 0.01), 1: ("pruned", 1, 1e-7), 2: ("failed", 0, 1000.0)}
    assert "loss became nan" in board["trials"][2]["error"]  # and no metric was ever written
    state = json.loads((tmp_path / "runs/p/trial-0001/state.json").read_text())
    assert state["state"] == "stopped" and "pruned by the sweep" in state["stop_reason"]
    assert "pruned" in expt_sweep(tmp_path, "show", "p").stdout


def test_trial_config_groups_wandb_runs_by_sweep(tmp_path: Path, plugins) -> None:
    path = write_sweep(tmp_path, base=TINY + 'logger = ["wandb"]\n')
    sweep = open_sweep(
        read_sweep(path, plugins), name="grouped", runs_dir=tmp_path, storage=None, epochs=1
    )
    config = trial_config(sweep, plugins, {"lr": 0.02}, "trial-0000", device="cpu")
    assert config.options["wandb_group"] == "grouped"
    assert config.lr == 0.02 and config.name == "trial-0000" and config.device == "cpu"


# -- the budget is spent exactly once, however many processes pull trials -----------------------

CLAIMER = r"""
import sys
import time
from pathlib import Path
from exptorch.plugins import load_plugins
from exptorch.sweep import claim_next, open_sweep
from exptorch.sweep_file import read_sweep

plugins = load_plugins(environ={"EXPT_DISABLE_PLUGIN_AUTOLOAD": "1"})
spec = read_sweep(Path(sys.argv[1]), plugins)
sweep = open_sweep(spec, name="race", runs_dir=Path(sys.argv[2]), storage=sys.argv[3] or None,
                   epochs=1)
claimed = []
time.sleep(max(0.0, float(sys.argv[5]) - time.time()))  # all processes ask at the same moment
while (claim := claim_next(sweep, worker=int(sys.argv[4]))) is not None:
    claimed.append(claim.number)
    sweep.study.tell(claim.number, float(claim.number))
print("CLAIMED", claimed)
"""


def race(tmp_path: Path, plugins, storage: str | None, processes: int = 6, trials: int = 5):
    """Processes that all start claiming at one moment, with fewer trials than processes."""
    path = write_sweep(tmp_path, f'trials = {trials}\nsampler = "random"\nseed = 0')
    runs = tmp_path / "runs"
    # the sweep exists before the race starts, as after `expt sweep run` created it
    open_sweep(read_sweep(path, plugins), name="race", runs_dir=runs, storage=storage, epochs=1)
    start = time.time() + 8  # after every process has imported optuna and opened the study
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLAIMER,
                str(path),
                str(runs),
                storage or "",
                str(i),
                str(start),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        for i in range(processes)
    ]
    claimed = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        claimed += json.loads(out.split("CLAIMED", 1)[1].strip())
    return claimed


def test_budget_is_exact_across_processes_on_sqlite(tmp_path: Path, plugins) -> None:
    claimed = race(tmp_path, plugins, storage=None)
    assert sorted(claimed) == list(range(5))
    study = optuna.load_study(study_name="race", storage=f"sqlite:///{tmp_path}/runs/race/sweep.db")
    assert len(study.trials) == 5


# -- a real PostgreSQL server, started for these tests ------------------------------------------


def _postgres_driver() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("psycopg", "psycopg2"))


def _postgres_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 in a temporary folder, with a password; stopped after."""
    bin_dir = _postgres_bin()
    missing = None
    if bin_dir is None:
        missing = (
            "the PostgreSQL server (initdb, pg_ctl) is not installed: apt-get install postgresql"
        )
    else:
        if not _postgres_driver():
            missing = "no PostgreSQL driver is installed: pip install 'exptorch[postgres]'"
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the PostgreSQL tests, but {missing}")
        pytest.skip(missing)
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="expt-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as `postgres`
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    (root / "pw").write_text("s3cret\n")
    if as_user:
        os.chown(root / "pw", user.pw_uid, user.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "expt",
            "--pwfile",
            str(root / "pw"),
            "--auth",
            "scram-sha-256",
        ],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=60"
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://expt:s3cret@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_budget_is_exact_across_processes_on_postgresql(
    tmp_path: Path, plugins, postgres_url: str
) -> None:
    claimed = race(tmp_path, plugins, storage=postgres_url)
    assert sorted(claimed) == list(range(5))
    assert len(optuna.load_study(study_name="race", storage=postgres_url).trials) == 5


OPENER = r"""
import sys
import time
from exptorch.sweep import open_storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all processes open at one moment
open_storage(sys.argv[1])
print("OPENED")
"""


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_processes_opening_a_new_storage_at_one_moment_all_succeed(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    # Optuna creates its tables on first use: workers started together on a fresh database
    # (two machines, one `expt sweep run` each) must not collide creating them.
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    if backend == "postgresql":
        import sqlalchemy

        server = request.getfixturevalue("postgres_url")
        name = f"fresh_{time.time_ns()}"
        engine = sqlalchemy.create_engine(with_driver(server), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        url = server.rsplit("/", 1)[0] + f"/{name}"
    start = time.time() + 6  # after every process has imported optuna
    procs = [
        subprocess.Popen([sys.executable, "-c", OPENER, url, str(start)], env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]  # fmt: skip
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "OPENED" in out, err
    assert optuna.get_all_study_names(url) == []  # the tables exist, and hold no study


def test_two_expt_processes_share_one_postgresql_sweep(tmp_path: Path, postgres_url: str) -> None:
    path = write_sweep(tmp_path, 'trials = 4\nsampler = "tpe"\nseed = 0')
    shown = postgres_url.replace("s3cret", "***")
    procs = [
        subprocess.Popen(
            [
                *EXPT,
                "sweep",
                "run",
                str(path),
                "--name",
                "shared",
                "--runs-dir",
                f"machine{i}",
                "--storage",
                postgres_url,
            ],
            cwd=tmp_path,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
        assert "s3cret" not in out + err
    folders = sorted(p.name for p in tmp_path.glob("machine*/shared/trial-*"))
    assert folders == ["trial-0000", "trial-0001", "trial-0002", "trial-0003"]
    for i in range(2):
        record = json.loads((tmp_path / f"machine{i}/shared/sweep.json").read_text())
        assert record["storage"] == shown  # the password never reaches the disk
    board = show_json(tmp_path, "shared", "--runs-dir", "machine0", "--storage", postgres_url)
    assert sorted(t["trial"] for t in board["trials"]) == [0, 1, 2, 3]
    assert {t["state"] for t in board["trials"]} == {"complete"}
    # machine0 has the folders of its own trials only; the others ran elsewhere
    mine = {p.name for p in (tmp_path / "machine0" / "shared").glob("trial-*")}
    assert {t["run"]: t["run_path"] for t in board["trials"]} == {
        t["run"]: f"machine0/shared/{t['run']}" if t["run"] in mine else None
        for t in board["trials"]
    }
    assert 0 < len(mine) < 4
    # without the URL, the sweep folder says where its trials are (and not the password)
    refused = expt_sweep(tmp_path, "show", "shared", "--runs-dir", "machine0", check=False)
    assert refused.returncode == 1 and shown in refused.stderr and "s3cret" not in refused.stderr


# -- Ctrl-C and kill: finished trials are kept, interrupted ones resume from their checkpoint ----


def _wait_for(paths: list[Path], proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the trials never reached their first checkpoint"
        time.sleep(0.02)


LONG = TINY.replace("epochs = 1", "epochs = 3").replace(
    "limit-train-batches = 2", "limit-train-batches = 25"
)


def test_killed_sweep_resumes_its_trial_from_the_checkpoint(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, 'trials = 2\nsampler = "random"\nseed = 0', base=LONG)
    args = [*EXPT, "sweep", "run", str(path), "--name", "k"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, text=True)
    trial = tmp_path / "runs/k/trial-0000"
    _wait_for([trial / "checkpoints/epoch-001.pt"], proc)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the storage still says RUNNING
    proc.communicate()
    newest = sorted((trial / "checkpoints").iterdir())[-1].name
    assert newest != "epoch-003.pt"

    again = expt_sweep(tmp_path, "run", str(path), "--name", "k")
    assert "trial 0 resumed (trial-0000)" in again.stdout
    assert f"resuming from {newest}" in again.stdout
    epochs = [
        json.loads(line)["epoch"]
        for line in (trial / "metrics.jsonl").read_text().splitlines()
        if "test_accuracy" in line
    ]
    assert epochs == [1, 2, 3]  # each epoch once: resumed, not started again
    assert json.loads((trial / "config.json").read_text())["resumed"]
    board = show_json(tmp_path, "k")
    assert sorted((t["trial"], t["state"]) for t in board["trials"]) == [
        (0, "complete"),
        (1, "complete"),
    ]
    assert sorted(p.name for p in (tmp_path / "runs/k").glob("trial-*")) == [
        "trial-0000",
        "trial-0001",
    ]


def test_ctrl_c_stops_every_worker_resumably(tmp_path: Path) -> None:
    # ten epochs: under load the first worker must not finish before the second has one
    longer = LONG.replace("epochs = 3", "epochs = 10")
    path = write_sweep(tmp_path, 'trials = 2\nsampler = "random"\nseed = 0', base=longer)
    args = [*EXPT, "sweep", "run", str(path), "--name", "c", "--workers", "2"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    folder = tmp_path / "runs/c"
    _wait_for([folder / f"trial-000{i}/checkpoints/epoch-001.pt" for i in range(2)], proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert f"Continue it with: expt sweep run {shlex.quote(str(path))} --name c --workers 2" in err
    for i in range(2):
        state = json.loads((folder / f"trial-000{i}/state.json").read_text())
        assert state["state"] == "interrupted", state
    assert show_json(tmp_path, "c")["trials"][0]["state"] == "interrupted"

    again = expt_sweep(tmp_path, "run", str(path), "--name", "c")
    assert again.stdout.count("resumed (trial-000") == 2
    board = show_json(tmp_path, "c")
    assert [t["state"] for t in board["trials"]] == ["complete", "complete"]


# -- plot ------------------------------------------------------------------------------------------


def test_plot_writes_three_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = write_sweep(
        tmp_path,
        'trials = 3\nsampler = "random"\nseed = 0',
        "lr = { log-uniform = [0.001, 0.1] }\nmomentum = { choice = [0.0, 0.9] }",
    )
    expt_sweep(tmp_path, "run", str(path), "--name", "s")
    out = expt_sweep(tmp_path, "plot", "s", "--output", "plots").stdout.split()
    names = sorted(Path(p).name for p in out)
    assert names == ["optimization-history.png", "parallel-coordinate.png", "param-importances.png"]
    for name in names:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- timeout and a trial whose process died after its run ended ---------------------------------


def test_timeout_is_the_sweeps_wall_time_over_its_commands(tmp_path: Path, plugins) -> None:
    from exptorch.sweep import SESSION_PREFIX, Session, elapsed

    path = write_sweep(tmp_path, 'timeout = "10m"\nsampler = "random"')
    sweep = open_sweep(
        read_sweep(path, plugins), name="t", runs_dir=tmp_path, storage=None, epochs=1
    )
    now = time.time()
    # two earlier commands that overlapped for 100 s: 400 s of the sweep's 600 s are spent
    sweep.study.set_user_attr(SESSION_PREFIX + "a", [now - 1000, now - 700])
    sweep.study.set_user_attr(SESSION_PREFIX + "b", [now - 800, now - 600])
    assert elapsed(sweep.study) == pytest.approx(400)
    assert claim_next(sweep, session=Session()) is not None
    sweep.study.set_user_attr(SESSION_PREFIX + "c", [now - 550, now - 300])
    assert elapsed(sweep.study) > 600
    assert claim_next(sweep, session=Session()) is None  # the time is spent: no new trial


def killed_before_the_tell(tmp_path: Path, plugins, monkeypatch) -> Sweep:
    """A one-trial sweep whose process was killed after its run ended but before it told
    Optuna, and whose owner's pid is gone: the next ``work`` resumes that trial."""
    from exptorch.sweep import HOST, OWNER_ATTR, work

    path = write_sweep(tmp_path, 'trials = 1\nsampler = "random"\nseed = 0')
    sweep = open_sweep(
        read_sweep(path, plugins), name="d", runs_dir=tmp_path, storage=None, epochs=1
    )
    real_tell = sweep.study.tell

    def die(*args, **kwargs):  # the process is killed between the run's end and the tell
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep.study, "tell", die)
    with pytest.raises(KeyboardInterrupt):
        work(sweep, plugins, device="cpu", echo=lambda _: None)
    monkeypatch.setattr(sweep.study, "tell", real_tell)
    dead = subprocess.Popen(["true"])
    dead.wait()
    sweep.storage.set_trial_user_attr(
        sweep.trial_id(0), OWNER_ATTR, {"host": HOST, "pid": dead.pid}
    )
    return sweep


def test_trial_whose_run_ended_before_its_process_died_is_told_not_trained_again(
    tmp_path: Path, plugins, monkeypatch
) -> None:
    from exptorch.sweep import work

    sweep = killed_before_the_tell(tmp_path, plugins, monkeypatch)
    metrics = (tmp_path / "d/trial-0000/metrics.jsonl").read_text()

    lines: list[str] = []
    results = work(sweep, plugins, device="cpu", echo=lines.append)
    assert [(r.number, r.state) for r in results] == [(0, "complete")]
    assert not any("epoch 1/1" in line for line in lines)  # told from its folder, no training
    assert (tmp_path / "d/trial-0000/metrics.jsonl").read_text() == metrics
    last = json.loads(metrics.splitlines()[-1])
    assert sweep.study.best_value == pytest.approx(last["test_accuracy"])


@pytest.mark.parametrize(
    ("reason", "told"),
    [
        (f"{PRUNED_REASON} (median pruner)", ("pruned", "at epoch 1")),
        ("stopped by a user's callback", ("complete", "")),  # ended: not trained on
    ],
)
def test_trial_stopped_before_its_process_died_is_told_pruned_or_complete_not_trained_on(
    tmp_path: Path, plugins, monkeypatch, reason: str, told: tuple[str, str]
) -> None:
    from exptorch.sweep import work

    sweep = killed_before_the_tell(tmp_path, plugins, monkeypatch)
    state_file = tmp_path / "d/trial-0000/state.json"
    state = json.loads(state_file.read_text())
    # as a callback leaves a run it stopped (the 1-epoch run itself finished)
    state.update(state="stopped", stop_reason=reason, epoch=1)
    state_file.write_text(json.dumps(state))

    lines: list[str] = []
    results = work(sweep, plugins, device="cpu", echo=lines.append)
    assert [(r.number, r.state, r.message) for r in results] == [(0, *told)]
    assert not any("epoch 1/1" in line for line in lines)  # told from its folder
    assert sweep.study.trials[0].state.name == told[0].upper()


def test_a_grid_over_a_stepped_uniform_range_takes_each_step_up_to_the_end(
    tmp_path: Path, plugins
) -> None:
    # (0.7 - 0.1) / 0.2 is 2.9999999999999996 in floating point: the end is still a point
    params = "momentum = { uniform = [0.1, 0.7], step = 0.2 }"
    spec = read_sweep(write_sweep(tmp_path, 'sampler = "grid"', params), plugins)
    assert spec.grid == [{"momentum": m} for m in (0.1, 0.3, 0.5, 0.7)]
    params = "momentum = { uniform = [0.0, 0.9], step = 0.3 }"
    spec = read_sweep(write_sweep(tmp_path, 'sampler = "grid"', params), plugins)
    assert spec.grid == [{"momentum": m} for m in (0.0, 0.3, 0.6, 0.9)]  # 0.3, not 0.3000...04


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [('"1h30m15s"', 5415.0), ('"2h"', 7200.0), ('"45m"', 2700.0), ('"1s"', 1.0), ("90", 90.0)],
)
def test_timeout_spellings(tmp_path: Path, plugins, timeout: str, seconds: float) -> None:
    path = write_sweep(tmp_path, f'timeout = {timeout}\nsampler = "random"')
    assert read_sweep(path, plugins).timeout == seconds


@pytest.mark.parametrize("timeout", ['"0s"', "0", "-5", '"1d"', "true", "inf"])
def test_a_timeout_that_is_not_a_positive_duration_is_refused(
    tmp_path: Path, plugins, timeout: str
) -> None:
    path = write_sweep(tmp_path, f'timeout = {timeout}\nsampler = "random"')
    with pytest.raises(ExptError, match="timeout must be a positive duration"):
        read_sweep(path, plugins)


class Workers:
    """``subprocess.Popen`` for ``launch_workers``: records each worker's command and
    environment, exits with the given codes, and can send this process a signal while the
    launcher waits (as a Ctrl-C in the terminal would)."""

    def __init__(self, codes: list[int], signum: int | None = None) -> None:
        self.codes, self.signum = codes, signum
        self.started: list[tuple[list[str], dict[str, str]]] = []
        self.forwarded: list[tuple[int, int]] = []

    def __call__(self, cmd: list[str], env: dict[str, str], start_new_session: bool) -> Worker:
        assert start_new_session  # a Ctrl-C reaches the launcher only, which passes it on
        self.started.append((cmd, env))
        return Worker(self, len(self.started) - 1)


class Worker:
    """One of ``Workers``' processes, as ``launch_workers`` sees it."""

    def __init__(self, workers: Workers, index: int) -> None:
        self.workers, self.index = workers, index

    def poll(self) -> int | None:
        return None

    def send_signal(self, signum: int) -> None:
        self.workers.forwarded.append((self.index, signum))

    def wait(self) -> int:
        if self.workers.signum is not None and self.index == 0:
            os.kill(os.getpid(), self.workers.signum)
        return self.workers.codes[self.index]


def launch(monkeypatch, workers: Workers, count: int, cpus: set[int] | None, machine: int | None):
    from exptorch.sweep import Session, launch_workers

    if cpus is None:
        monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # not on macOS
    else:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus)
    monkeypatch.setattr(os, "cpu_count", lambda: machine)
    monkeypatch.setattr(subprocess, "Popen", workers)
    devices = ["cuda:0", None, "cuda:2"][:count]
    return launch_workers(["sweep", "run", "s.toml"], workers=count, url="sqlite:///x.db",
                          session=Session(id="abc", start=1.5), devices=devices)  # fmt: skip


def test_workers_split_the_cpus_this_process_may_use_and_get_their_devices(monkeypatch) -> None:
    from exptorch.sweep import STORAGE_ENV

    workers = Workers([0, 1, 2])
    assert launch(monkeypatch, workers, 3, cpus={0, 1, 2, 3}, machine=64) == 1  # the first failure
    tail = ["--threads", "1", "--session", "abc:1.5"]  # 4 CPUs of the 64 are this process's
    assert [cmd[3:] for cmd, _ in workers.started] == [
        ["sweep", "run", "s.toml", "--worker", "0", *tail, "--device", "cuda:0"],
        ["sweep", "run", "s.toml", "--worker", "1", *tail],
        ["sweep", "run", "s.toml", "--worker", "2", *tail, "--device", "cuda:2"],
    ]
    assert all(env[STORAGE_ENV] == "sqlite:///x.db" for _, env in workers.started)


@pytest.mark.parametrize(
    ("count", "cpus", "machine", "threads"),
    [(2, {0, 1, 2, 3, 4, 5, 6, 7}, 64, "4"), (3, None, 6, "2"), (1, None, None, "1")],
)
def test_worker_threads_without_an_affinity_come_from_the_cpu_count(
    monkeypatch, count: int, cpus: set[int] | None, machine: int | None, threads: str
) -> None:
    workers = Workers([0] * count)
    assert launch(monkeypatch, workers, count, cpus, machine) == 0
    assert {cmd[cmd.index("--threads") + 1] for cmd, _ in workers.started} == {threads}


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_launcher_reaches_every_worker_once(
    monkeypatch, signum: int, code: int
) -> None:
    workers = Workers([0, 0], signum=signum)
    previous = signal.getsignal(signum)
    assert launch(monkeypatch, workers, 2, {0, 1}, 2) == code
    assert workers.forwarded == [(0, signum), (1, signum)]
    assert signal.getsignal(signum) == previous  # the launcher's handler is gone again


def test_a_folder_that_is_not_a_sweeps_is_refused_unless_it_holds_only_a_new_database(
    tmp_path: Path, plugins
) -> None:
    spec = read_sweep(write_sweep(tmp_path), plugins)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes\n")
    with pytest.raises(ExptError, match=r"mine exists and is not a sweep folder; choose another"):
        open_sweep(spec, name="mine", runs_dir=tmp_path, storage=None, epochs=1)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    (tmp_path / "new").mkdir()  # another process is creating this sweep's database
    (tmp_path / "new" / "sweep.db-journal").write_bytes(b"")
    open_sweep(spec, name="new", runs_dir=tmp_path, storage=None, epochs=1)


def test_a_trial_never_writes_into_a_folder_that_is_already_there(tmp_path: Path, plugins) -> None:
    from exptorch.sweep import RUN_ATTR, free_name, work

    path = write_sweep(tmp_path, 'trials = 1\nsampler = "random"\nseed = 0')
    sweep = open_sweep(read_sweep(path, plugins), name="k", runs_dir=tmp_path, storage=None,
                       epochs=1)  # fmt: skip
    (tmp_path / "k" / "trial-0000").mkdir()
    (tmp_path / "k" / "trial-0000" / "keep.txt").write_text("mine")
    [result] = work(sweep, plugins, device="cpu", echo=lambda _: None)
    assert result.state == "complete"
    assert sweep.study.trials[0].user_attrs[RUN_ATTR] == "trial-0000-2"
    assert (tmp_path / "k/trial-0000-2/metrics.jsonl").is_file()
    assert [p.name for p in (tmp_path / "k" / "trial-0000").iterdir()] == ["keep.txt"]
    assert free_name(tmp_path / "k", "trial-0000") == "trial-0000-3"
    assert free_name(tmp_path / "k", "trial-0001") == "trial-0001"


def test_a_workers_session_is_the_launchers_id_and_start_time() -> None:
    from exptorch.sweep import Session, parse_session

    session = Session(id="abc", start=1700000000.25)
    assert parse_session(f"{session.id}:{session.start!r}") == session


def test_another_sweep_file_is_refused_naming_each_setting_that_differs_or_one_side_lacks(
    tmp_path: Path, plugins
) -> None:
    """A folder's sweep.json from an older exptorch may lack a setting this one records (or
    have one it dropped): the refusal names those too, not only values that changed."""
    from exptorch.sweep import _check_same_file

    spec = read_sweep(write_sweep(tmp_path), plugins)
    _check_same_file({"digest": spec.digest}, spec, tmp_path / "s")  # the same file: accepted
    same_settings = {"digest": "another exptorch's", "sweep": spec.canonical(), "sweep_file": "a"}
    with pytest.raises(ExptError) as info:  # a digest of another kind: nothing to name
        _check_same_file(same_settings, spec, tmp_path / "s")
    assert "sweep file (a); use another --name" in str(info.value)
    older = {k: v for k, v in spec.canonical().items() if k != "pruner_warmup_epochs"}
    record = {"digest": "older", "sweep": {**older, "retired": 1}, "sweep_file": "old.toml"}
    with pytest.raises(ExptError) as info:
        _check_same_file(record, spec, tmp_path / "s")
    assert str(info.value) == (
        f"Sweep s in {tmp_path} was started from another sweep file (old.toml) (its "
        "pruner_warmup_epochs, retired differ); use another --name, or the same file (only "
        "trials and timeout may change)."
    )


def test_the_pruners_epoch_budget_is_the_most_epochs_a_trial_can_train(
    tmp_path: Path, plugins
) -> None:
    """Hyperband's ``max_resource``: the largest value of a swept ``epochs``, else the base's."""
    from exptorch.sweep import max_epochs
    from exptorch.sweep_file import resolve_trial

    params = "epochs = { choice = [2, 6, 4] }"
    swept = read_sweep(
        write_sweep(tmp_path, params=params, base=TINY.replace("epochs = 1\n", ""), name="a.toml"),
        plugins,
    )
    plain = read_sweep(write_sweep(tmp_path, base=TINY.replace("epochs = 1", "epochs = 3")),
                       plugins)  # fmt: skip
    base = resolve_trial(plain, plugins, {})
    assert (max_epochs(swept, base), max_epochs(plain, base)) == (6, 3)


def test_with_cuda_each_worker_gets_its_own_gpu(monkeypatch) -> None:
    """``--device cuda --workers N``: worker i on ``cuda:i``, refused with fewer GPUs than
    workers; one worker, or another device, is passed on as given."""
    import torch

    from exptorch.sweep import worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    assert worker_devices("cuda", 1) == ["cuda"]
    assert worker_devices("cpu", 3) == ["cpu"] * 3
    assert worker_devices(None, 2) == [None, None]
    with pytest.raises(ExptError) as info:
        worker_devices("cuda", 3)
    assert str(info.value) == (
        "--device cuda with --workers 3 gives each worker its own GPU, but 2 are visible; "
        "use at most 2 workers or --device cpu."
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ExptError, match=r"but 0 are visible; use at most 0 workers"):
        worker_devices("cuda", 2)


def test_the_first_and_last_lines_say_what_the_sweep_is_and_what_it_did(
    tmp_path: Path, plugins
) -> None:
    """What ``expt sweep run`` prints when it starts (its budget, sampler, parameters,
    objective, pruner, trials already counted, workers, storage) and when it ends (trials by
    state, its wall time, the best trial, the command that shows the leaderboard)."""
    import types

    from optuna.trial import TrialState
    from test_sweep_report import study_of, trial

    from exptorch.sweep import SESSION_PREFIX, describe_end, describe_start

    spec = read_sweep(
        write_sweep(tmp_path, 'trials = 4\ntimeout = "2h"\nsampler = "random"\nseed = 0\n'
                    'pruner = "median"',
                    "lr = { log-uniform = [0.001, 0.1] }\nmomentum = { choice = [0.0, 0.9] }"),
        plugins,
    )  # fmt: skip
    study = study_of()
    folder = tmp_path / "runs" / "s"
    sweep = types.SimpleNamespace(
        name="s", spec=spec, study=study, folder=folder, shown_url="sqlite:///db"
    )
    assert describe_start(sweep, 1) == (
        "sweep s: 4 trials or 2h of random over lr, momentum "
        "(maximize test_accuracy, pruner median); 1 worker; storage sqlite:///db"
    )
    see = f"see `expt sweep show s --runs-dir {tmp_path / 'runs'}`"
    assert describe_end(sweep) == f"sweep s: no trials in 0.0s; {see}"
    study.add_trial(trial(TrialState.FAIL))
    assert describe_end(sweep) == f"sweep s: 1 failed in 0.0s; {see}"  # no best trial yet
    for frozen in (trial(value=0.81234567), trial(value=0.5), trial(TrialState.PRUNED)):
        study.add_trial(frozen)
    study.set_user_attr(f"{SESSION_PREFIX}a", [100.0, 150.0])  # two commands, overlapping
    study.set_user_attr(f"{SESSION_PREFIX}b", [120.0, 200.0])
    assert describe_start(sweep, 2) == (
        "sweep s: 4 trials or 2h of random over lr, momentum "
        "(maximize test_accuracy, pruner median, 4 already counted); 2 workers; "
        "storage sqlite:///db"
    )
    assert describe_end(sweep) == (
        "sweep s: 2 complete, 1 failed, 1 pruned in 1m40s; best trial 1: test_accuracy 0.8123; "
        + see
    )


def test_durations_read_in_hours_minutes_or_seconds_and_parameters_as_written() -> None:
    """How a sweep's lines show a time (its budget, its wall time) and a trial's parameters:
    floats to 4 significant digits, choices and integers as the sweep file wrote them."""
    from exptorch.sweep import _short
    from exptorch.sweep_file import format_duration

    durations = [59.94, 60, 61, 120, 3599, 3600, 5400]
    assert [format_duration(s) for s in durations] == [
        "59.9s", "1m", "1m01s", "2m", "59m59s", "1h", "1.5h"
    ]  # fmt: skip
    assert [_short(v) for v in (0.0123456, "sgd", 64)] == ["0.01235", "sgd", "64"]


def test_the_command_that_continues_a_sweep_repeats_its_options_quoted() -> None:
    """Printed when a sweep is interrupted, to be pasted as is: the options that name the
    sweep's folder and storage and how it runs, only where they differ from the defaults."""
    from exptorch_plugins.sweep import _command_again

    assert _command_again(Path("s.toml"), "a", Path("runs"), None, 1, None) == (
        "expt sweep run s.toml --name a"
    )
    assert _command_again(
        Path("my sweeps/s.toml"), "a b", Path("/data/runs"), "postgresql://u:***@h/db", 2, "cuda"
    ) == (
        "expt sweep run 'my sweeps/s.toml' --name 'a b' --runs-dir /data/runs "
        "--storage 'postgresql://u:***@h/db' --workers 2 --device cuda"
    )


def test_the_summary_counts_trials_by_the_state_names_show_uses() -> None:
    """What ``expt sweep run`` prints when it ends: counts under ``expt sweep show``'s names."""
    import types

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from exptorch.sweep import summary

    space = {"lr": FloatDistribution(1e-4, 1.0, log=True)}
    study = optuna.create_study(direction="maximize")
    for state, value in [(TrialState.COMPLETE, 0.5), (TrialState.FAIL, None),
                         (TrialState.COMPLETE, 0.7), (TrialState.PRUNED, None)]:  # fmt: skip
        study.add_trial(create_trial(state=state, value=value, params={"lr": 0.01},
                                     distributions=space))  # fmt: skip
    result = summary(types.SimpleNamespace(study=study))
    assert result["counts"] == {"complete": 2, "failed": 1, "pruned": 1}
    assert result["best"] == {"number": 2, "value": 0.7, "params": {"lr": 0.01}}
