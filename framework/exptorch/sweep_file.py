"""The sweep file of ``expt sweep run``: a base run's settings plus a ``[sweep]`` table.

::

    epochs = 5                         # any key a --config file takes, recipes included
    dataset = "fashion-mnist-sample"

    [sweep]
    metric = "test_accuracy"           # any metric the runs write
    direction = "maximize"
    trials = 16                        # and/or timeout = "30m"
    sampler = "tpe"                    # grid | random | tpe
    pruner = "median"                  # none | median | hyperband
    seed = 0

    [sweep.parameters]
    lr = { log-uniform = [0.001, 0.1] }
    momentum = { choice = [0.0, 0.9] }
    batch-size = { int = [32, 256], step = 32 }

Everything is checked here, before a sweep starts: the keys, the spaces, and that the
base run and every end of every range resolve to a valid run configuration (through
:func:`exptorch.config.resolve_config`, the same path as ``expt run --config``).
Nothing here imports torch or optuna, except :meth:`Parameter.suggest`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.config import RunConfig, config_fields, read_config_file, resolve_config
from exptorch.errors import ExptError
from exptorch.rundir import finite_number

if TYPE_CHECKING:
    import optuna

    from exptorch.plugins import Plugins

#: Keys of the ``[sweep]`` table.
SWEEP_KEYS = (
    "metric", "direction", "trials", "timeout", "sampler", "pruner", "seed",
    "pruner-startup-trials", "pruner-warmup-epochs", "parameters",
)  # fmt: skip
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "hyperband")
DIRECTIONS = ("maximize", "minimize")
#: The kinds of parameter space; ``step`` may go with ``uniform`` and ``int``.
SPACES = ("choice", "uniform", "log-uniform", "int")
#: Metrics every run writes after each epoch, and which way is better.
RUN_METRICS = {
    "test_accuracy": "maximize",
    "test_loss": "minimize",
    "epoch_train_loss": "minimize",
    "images_per_second": "maximize",
    "epoch_time": "minimize",
}
#: Run options the sweep sets itself, so a sweep file may neither set nor sweep them.
SWEEP_OWNED = {
    "name": "the sweep names its trials trial-0000, trial-0001, ...",
    "runs_dir": "trials go into --runs-dir/NAME of `expt sweep run`",
    "nproc_per_node": "a trial runs in one process; use --workers for parallel trials",
}
#: Budget keys: they may change between runs of the same sweep (to extend it).
BUDGET_KEYS = ("trials", "timeout")

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$"
)


@dataclass(frozen=True)
class Parameter:
    """One swept option and its space."""

    key: str  # as written in the file, e.g. "batch-size" (Optuna's parameter name)
    name: str  # the option's name, e.g. "batch_size"
    kind: str  # one of SPACES
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The canonical form written to the sweep folder and compared on a rerun."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        spec: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.step is not None:
            spec["step"] = self.step
        return spec

    def edge_values(self) -> list[Any]:
        """The values whose validity stands for the whole space: each choice, or both ends."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def grid_values(self) -> list[Any] | None:
        """Every value, in order, when the space is finite; ``None`` when it is not."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            assert isinstance(self.low, int) and isinstance(self.high, int)
            return list(range(self.low, self.high + 1, int(self.step or 1)))
        if self.kind == "uniform" and self.step is not None:
            assert self.low is not None and self.high is not None
            count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
            return [round(self.low + i * self.step, 12) for i in range(count)]
        return None

    def suggest(self, trial: optuna.trial.Trial) -> Any:
        """Ask Optuna's trial for this parameter's value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            assert isinstance(self.low, int) and isinstance(self.high, int)
            return trial.suggest_int(self.key, self.low, self.high, step=int(self.step or 1))
        assert self.low is not None and self.high is not None
        return trial.suggest_float(
            self.key,
            float(self.low),
            float(self.high),
            log=self.kind == "log-uniform",
            step=None if self.step is None else float(self.step),
        )


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file, read and checked."""

    path: Path
    #: The base run's settings, snake_case keys, as the file gives them (no ``sweep``).
    base: dict[str, Any]
    parameters: tuple[Parameter, ...]
    metric: str = "test_accuracy"
    direction: str = "maximize"
    trials: int | None = None
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "none"
    seed: int | None = None
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0
    grid: list[dict[str, Any]] | None = field(default=None, compare=False)

    def canonical(self) -> dict[str, Any]:
        """What identifies the sweep: everything but the budget, in a stable form."""
        return {
            "base": dict(sorted(self.base.items())),
            "metric": self.metric,
            "direction": self.direction,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "seed": self.seed,
            "pruner_startup_trials": self.pruner_startup_trials,
            "pruner_warmup_epochs": self.pruner_warmup_epochs,
            "parameters": {p.key: p.describe() for p in self.parameters},
        }

    @property
    def digest(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def budget_text(self) -> str:
        parts = []
        if self.trials is not None:
            parts.append(f"{self.trials} trials")
        if self.timeout is not None:
            parts.append(f"{format_duration(self.timeout)}")
        return " or ".join(parts)


def metric_names(plugins: Plugins) -> list[str]:
    """The metrics a run writes after each epoch: the built-in ones and ``test_<metric plugin>``."""
    extra = {f"test_{name.replace('-', '_')}" for name in plugins.registry.get("metric", {})}
    return [*RUN_METRICS, *sorted(extra - set(RUN_METRICS))]  # accuracy's plugin: listed once


def parse_duration(value: Any) -> float:
    """``90`` (seconds), ``"45s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match or not any(match.groups()):
            raise ValueError
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g}h"
    if seconds >= 60:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m" + (f"{rest:02d}s" if rest else "")
    return f"{seconds:.1f}s"


def read_sweep(path: Path, plugins: Plugins) -> SweepSpec:
    """Read and check a sweep file; every mistake is one :class:`ExptError` sentence."""
    data = read_config_file(path)
    table = data.pop("sweep", None)
    if not isinstance(table, dict):
        raise ExptError(
            f"Sweep file {path} has no [sweep] table; add one with metric, trials and "
            "[sweep.parameters] (see the README's sweep section)."
        )
    unknown = sorted(set(table) - set(SWEEP_KEYS))
    if unknown:
        raise ExptError(
            f"Unknown key {unknown[0]!r} in the [sweep] table of {path}; "
            f"known keys: {', '.join(SWEEP_KEYS)}."
        )
    for key, reason in SWEEP_OWNED.items():
        if key in data:
            raise ExptError(f"Sweep file {path} sets {key.replace('_', '-')!r}, but {reason}.")

    options = _option_names(plugins)
    parameters = _read_parameters(path, table.get("parameters"), options, data)
    metrics = metric_names(plugins)
    metric = table.get("metric", "test_accuracy")
    if metric not in metrics:
        raise ExptError(
            f"Metric {metric!r} of {path} is not one a run writes; use one of: "
            f"{', '.join(metrics)}."
        )
    direction = table.get("direction", RUN_METRICS.get(metric))
    if direction is None:
        raise ExptError(f"Say whether {metric} should be maximized or minimized: add direction.")
    if direction not in DIRECTIONS:
        raise ExptError(f"direction must be maximize or minimize, not {direction!r}.")
    sampler = _one_of(table, "sampler", SAMPLERS, "tpe")
    pruner = _one_of(table, "pruner", PRUNERS, "none")
    seed = _integer(table, "seed", None, minimum=0)
    startup = _integer(table, "pruner-startup-trials", 5, minimum=0)
    warmup = _integer(table, "pruner-warmup-epochs", 0, minimum=0)
    trials = _integer(table, "trials", None, minimum=1)
    timeout = None
    if "timeout" in table:
        try:
            timeout = parse_duration(table["timeout"])
        except ValueError:
            raise ExptError(
                f'timeout must be a positive duration such as 90 (seconds), "45m" or '
                f'"2h", not {table["timeout"]!r}.'
            ) from None

    grid = None
    if sampler == "grid":
        grid = _grid(parameters)
        if trials is None and timeout is None:
            trials = len(grid)
        if trials is not None and trials > len(grid):
            raise ExptError(
                f"trials = {trials} is more than the grid's {len(grid)} points; "
                f"lower trials or leave it out to run the whole grid."
            )
    if trials is None and timeout is None:
        raise ExptError(f'Give the sweep a budget: trials = N and/or timeout = "30m" in {path}.')

    spec = SweepSpec(
        path=path, base=data, parameters=parameters, metric=metric, direction=direction,
        trials=trials, timeout=timeout, sampler=sampler, pruner=pruner, seed=seed,
        pruner_startup_trials=startup, pruner_warmup_epochs=warmup, grid=grid,
    )  # fmt: skip
    check_configs(spec, plugins)
    return spec


def check_configs(spec: SweepSpec, plugins: Plugins) -> None:
    """Resolve the base run, and the base run with each end of each range, as ``expt run`` would."""
    base = resolve_trial(spec, plugins, {})
    plugins.get("model", base.model)  # each raises one sentence when the name is unknown
    plugins.get("dataset", base.dataset)
    for logger in base.logger:
        plugins.get("logger", logger)
    plugins.get("checkpoint format", base.checkpoint_format)
    for param in spec.parameters:
        for value in param.edge_values():
            try:
                config = resolve_trial(spec, plugins, {param.key: value})
            except ExptError as exc:
                raise ExptError(
                    f"Sweep parameter {param.key} = {value!r} is not a valid setting: {exc}"
                ) from None
            if param.name == "model":
                plugins.get("model", config.model)
            elif param.name == "dataset":
                plugins.get("dataset", config.dataset)


def resolve_trial(
    spec: SweepSpec,
    plugins: Plugins,
    params: Mapping[str, Any],
    *,
    flags: Mapping[str, Any] | None = None,
) -> RunConfig:
    """The run configuration of one trial: base settings, then its parameter values, then flags.

    The values go through :func:`exptorch.config.resolve_config` exactly as a
    ``--config`` file's keys do (types, choices, ranges, recipes, plugin options).
    """
    by_key = {p.key: p.name for p in spec.parameters}
    values = {**spec.base, **{by_key.get(k, k.replace("-", "_")): v for k, v in params.items()}}
    flags = dict(flags or {})
    return resolve_values(values, plugins, spec.path, flags=flags)


def resolve_values(
    values: Mapping[str, Any],
    plugins: Plugins,
    source: Path,
    *,
    flags: Mapping[str, Any] | None = None,
) -> RunConfig:
    """``resolve_config`` for settings held in memory, as if they were a config file's.

    They are written to a temporary TOML file, so every rule of config files
    applies unchanged; messages name ``source`` instead of the temporary file.
    """
    text = "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in values.items())
    fd, tmp = tempfile.mkstemp(prefix="expt-sweep-", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return resolve_config(
            dict(flags or {}),
            explicit=list(flags or {}),
            config_file=Path(tmp),
            plugin_options=[opt for _, opt in plugins.options()],
        )
    except ExptError as exc:
        raise ExptError(str(exc).replace(tmp, str(source))) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# -- helpers ---------------------------------------------------------------------------------


def _option_names(plugins: Plugins) -> set[str]:
    return {f.name for f in config_fields()} | {opt.name for _, opt in plugins.options()}


def _read_parameters(
    path: Path, table: Any, options: set[str], base: Mapping[str, Any]
) -> tuple[Parameter, ...]:
    if not isinstance(table, dict) or not table:
        raise ExptError(
            f"Sweep file {path} has no [sweep.parameters]; add at least one, such as "
            "lr = { log-uniform = [0.001, 0.1] }."
        )
    params = []
    for key, space in table.items():
        name = key.replace("-", "_")
        if name in SWEEP_OWNED:
            raise ExptError(f"{key} cannot be swept: {SWEEP_OWNED[name]}.")
        if name not in options:
            raise ExptError(
                f"Sweep parameter {key!r} is not a run option; see `expt run --help` and "
                "`expt plugins show NAME` for the options that can be swept."
            )
        if name in base:
            raise ExptError(
                f"{key} is both a base setting and a swept parameter in {path}; remove one."
            )
        params.append(_read_space(key, name, space))
    return tuple(params)


def _read_space(key: str, name: str, space: Any) -> Parameter:
    kinds = [k for k in SPACES if isinstance(space, dict) and k in space]
    if len(kinds) != 1:
        raise ExptError(
            f"Sweep parameter {key} needs exactly one of {', '.join(SPACES)}, such as "
            f"{key} = {{ choice = [1, 2] }}."
        )
    kind = kinds[0]
    assert isinstance(space, dict)
    extra = sorted(set(space) - {kind, "step"})
    if extra or ("step" in space and kind not in ("uniform", "int")):
        bad = extra[0] if extra else "step"
        raise ExptError(f"Sweep parameter {key} has an unknown or misplaced key {bad!r}.")
    value = space[kind]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ExptError(f"Sweep parameter {key}: choice needs at least one value.")
        for item in value:
            if isinstance(item, (list, dict)) or item is None:
                raise ExptError(
                    f"Sweep parameter {key}: choice values must be strings, numbers or "
                    f"booleans, not {item!r}."
                )
        if len({json.dumps(v) for v in value}) != len(value):
            raise ExptError(f"Sweep parameter {key}: choice lists a value twice.")
        return Parameter(key, name, kind, choices=tuple(value))
    if not isinstance(value, list) or len(value) != 2 or not all(finite_number(v) for v in value):
        raise ExptError(f"Sweep parameter {key}: {kind} needs [low, high], two numbers.")
    low, high = value
    if kind == "int" and not all(isinstance(v, int) for v in value):
        raise ExptError(f"Sweep parameter {key}: int needs two integers, not {value}.")
    if not low < high:
        raise ExptError(
            f"Sweep parameter {key}: the range [{low}, {high}] is empty or reversed; "
            "give [low, high] with low < high."
        )
    if kind == "log-uniform" and low <= 0:
        raise ExptError(f"Sweep parameter {key}: log-uniform needs a positive low end, not {low}.")
    step = space.get("step")
    if step is not None:
        if not finite_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise ExptError(f"Sweep parameter {key}: step must be a positive number, not {step!r}.")
        if step > high - low:
            raise ExptError(f"Sweep parameter {key}: step {step} is wider than the range.")
    if kind == "int":
        return Parameter(key, name, kind, int(low), int(high), step)
    return Parameter(key, name, kind, float(low), float(high), step)


def _one_of(table: Mapping[str, Any], key: str, allowed: Sequence[str], default: str) -> str:
    value = table.get(key, default)
    if value not in allowed:
        raise ExptError(f"{key} must be one of {', '.join(allowed)}, not {value!r}.")
    return str(value)


def _integer(table: Mapping[str, Any], key: str, default: Any, *, minimum: int) -> Any:
    value = table.get(key, default)
    if value is default:
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ExptError(f"{key} must be an integer of at least {minimum}, not {value!r}.")
    return value


def _grid(parameters: Iterable[Parameter]) -> list[dict[str, Any]]:
    """Every point of the grid, the first parameter varying slowest (like itertools.product)."""
    import itertools

    axes = []
    for p in parameters:
        values = p.grid_values()
        if values is None:
            raise ExptError(
                f"The grid sampler needs a finite set of values, but {p.key} is a "
                f"{p.kind} range; use choice, int, or uniform with a step."
            )
        axes.append([(p.key, v) for v in values])
    return [dict(point) for point in itertools.product(*axes)]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise ExptError(f"Setting value {value!r} cannot be used in a sweep; use a plain value.")
