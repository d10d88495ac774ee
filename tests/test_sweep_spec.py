"""A sweep file as exptorch keeps it: the canonical form that identifies a sweep (written to its
folder and compared on a rerun), and the distribution each parameter asks Optuna for."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sweep import write_sweep

from exptorch.errors import ExptError
from exptorch.sweep_file import read_sweep, resolve_values

optuna = pytest.importorskip("optuna")
from optuna.distributions import (  # noqa: E402 - only once optuna is known to be there
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

BASE = 'dataset = "fashion-mnist-sample"\nbatch-size = 32\n'
SPACE = """\
lr = { log-uniform = [0.001, 0.1] }
momentum = { choice = [0.0, 0.9] }
epochs = { int = [1, 5], step = 2 }
weight-decay = { uniform = [0.0, 0.1], step = 0.05 }
label-smoothing = { uniform = [0.0, 0.2] }
"""


def spec(tmp_path: Path, plugins, sweep: str = 'trials = 3\nsampler = "tpe"\nseed = 4\n'
         'pruner = "median"\npruner-warmup-epochs = 1') -> object:  # fmt: skip
    return read_sweep(write_sweep(tmp_path, sweep, params=SPACE, base=BASE), plugins)


def test_the_canonical_form_holds_everything_but_the_budget(tmp_path: Path, plugins) -> None:
    made = spec(tmp_path, plugins)
    assert made.canonical() == {
        "base": {"batch_size": 32, "dataset": "fashion-mnist-sample"},
        "metric": "test_accuracy", "direction": "maximize", "sampler": "tpe",
        "pruner": "median", "seed": 4, "pruner_startup_trials": 5, "pruner_warmup_epochs": 1,
        "parameters": {
            "lr": {"log-uniform": [0.001, 0.1]}, "momentum": {"choice": [0.0, 0.9]},
            "epochs": {"int": [1, 5], "step": 2},
            "weight-decay": {"uniform": [0.0, 0.1], "step": 0.05},
            "label-smoothing": {"uniform": [0.0, 0.2]},
        },
    }  # fmt: skip
    longer = spec(tmp_path, plugins, 'trials = 30\ntimeout = "2h"\nsampler = "tpe"\nseed = 4\n'
                  'pruner = "median"\npruner-warmup-epochs = 1')  # fmt: skip
    assert longer.digest == made.digest  # the budget may change between commands
    other = spec(tmp_path, plugins, 'trials = 3\nsampler = "tpe"\nseed = 5\npruner = "median"\n'
                 "pruner-warmup-epochs = 1")  # fmt: skip
    assert other.digest != made.digest


def test_each_parameter_asks_optuna_for_its_own_distribution(tmp_path: Path, plugins) -> None:
    made = spec(tmp_path, plugins)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = {p.key: p.suggest(trial) for p in made.parameters}
    assert trial.distributions == {
        "lr": FloatDistribution(0.001, 0.1, log=True),
        "momentum": CategoricalDistribution((0.0, 0.9)),
        "epochs": IntDistribution(1, 5, step=2),
        "weight-decay": FloatDistribution(0.0, 0.1, step=0.05),
        "label-smoothing": FloatDistribution(0.0, 0.2),
    }
    assert values["epochs"] in (1, 3, 5) and isinstance(values["epochs"], int)
    assert values["momentum"] in (0.0, 0.9) and 0.001 <= values["lr"] <= 0.1


def test_an_int_range_without_a_step_takes_every_integer(tmp_path: Path, plugins) -> None:
    made = read_sweep(
        write_sweep(tmp_path, "trials = 1", params="epochs = { int = [2, 4] }", base=BASE), plugins
    )
    trial = optuna.create_study().ask()
    [param] = made.parameters
    param.suggest(trial)
    assert trial.distributions == {"epochs": IntDistribution(2, 4, step=1)}
    assert made.canonical()["parameters"] == {"epochs": {"int": [2, 4]}}


def test_settings_held_in_memory_are_checked_as_a_config_file_naming_the_sweep_file(
    tmp_path: Path, plugins
) -> None:
    source = tmp_path / "sweep.toml"
    values = {"lr": 0.05, "wandb_notes": "caf\u00e9 \u2615"}  # written as UTF-8 whatever the locale
    config = resolve_values(values, plugins, source, flags={"epochs": 2})
    assert (config.lr, config.epochs, config.options["wandb_notes"]) == (
        0.05,
        2,
        "caf\u00e9 \u2615",
    )
    with pytest.raises(ExptError) as refused:
        resolve_values({"bogus": 1}, plugins, source)
    assert str(refused.value).startswith(f"Unknown key 'bogus' in config file {source}; known ")
