"""The run configuration: one typed object, resolved once from defaults, a TOML file and flags.

The fields of :class:`RunConfig` are the single source of the options' names,
defaults and help texts: ``expt run`` builds its flags from them, and a config
file accepts the same names as keys (``batch-size`` or ``batch_size``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from exptorch.errors import ExptError
from exptorch.types import Option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: no "$"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    meta = {"help": help, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Every setting of one ``expt run``."""

    model: str = _opt("quicknet", "Model to train (see `expt plugins`).")
    dataset: str = _opt("cifar10", "Dataset to train and test on.")
    data_dir: str | None = _opt(
        None, "Folder holding the datasets. [default: a per-user cache folder]"
    )
    device: str = _opt("auto", "cpu, cuda, cuda:N, mps, or auto (cuda > mps > cpu).")
    logger: list[str] = _opt([], "Metric logger; repeat for several.", multiple=True)
    epochs: int = _opt(10, "Total number of epochs.", minimum=1)
    batch_size: int = _opt(64, "Images per training step.", minimum=1)
    lr: float = _opt(0.01, "Learning rate.", positive=True)
    optimizer: str = _opt("sgd", "Optimizer (see `expt plugins`): sgd, adamw, adam, ...")
    momentum: float = _opt(0.0, "Momentum, for optimizers that take it (sgd).", minimum=0)
    weight_decay: float = _opt(0.0, "Weight decay.", minimum=0)
    seed: int | None = _opt(None, "Random seed. [default: a random one, recorded]")
    log_every: int = _opt(100, "Log the training loss every N steps.", minimum=1)
    checkpoint_format: str = _opt(
        "state_dict", "How checkpoints are written: state_dict, safetensors or full."
    )
    checkpoint_every: str = _opt(
        "10m",
        "Also checkpoint inside an epoch, to resume from after a crash: every DURATION of "
        "training (30s, 10m, 2h) or every N steps (500); off: at epochs' ends only.",
    )
    keep: str = _opt(
        "all",
        "Checkpoints to keep: every epoch, the newest, or the best test accuracy and the newest.",
        choices=("all", "last", "best"),
    )
    runs_dir: str = _opt("runs", "Folder that holds run folders.")
    name: str | None = _opt(None, "Run folder name. [default: MODEL-DATASET-TIME]")
    limit_train_batches: int | None = _opt(None, "Train on at most N batches per epoch.", minimum=1)
    limit_eval_batches: int | None = _opt(None, "Test on at most N batches.", minimum=1)
    download: bool = _opt(True, "Download a missing dataset.", flag="--download/--no-download")
    # --- speed and recipe (see README "Performance") ---
    recipe: str | None = _opt(
        None, "Named set of defaults under the config file and flags (`expt recipes`)."
    )
    precision: str = _opt(
        "auto",
        "Autocast precision; auto: bf16 on CUDA GPUs that support it, else fp16 on CUDA, "
        "fp32 on CPU and MPS.",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    channels_last: str = _opt(
        "auto", "Channels-last memory format; auto: on for CPU and CUDA.",
        choices=("auto", "on", "off"),
    )  # fmt: skip
    compile: bool = _opt(False, "torch.compile the model.", flag="--compile/--no-compile")
    data_on_device: str = _opt(
        "auto", "Keep the whole dataset in GPU memory; auto: when it fits.",
        choices=("auto", "on", "off"),
    )  # fmt: skip
    augment: bool = _opt(
        False, "Shorthand for --transform crop-flip.", flag="--augment/--no-augment"
    )
    label_smoothing: float = _opt(0.0, "Label smoothing of the loss.", minimum=0)
    schedule: str = _opt(
        "constant", "Learning-rate schedule over all steps: constant, cosine, onecycle, step, ..."
    )
    warmup: float = _opt(
        0.0, "Linear learning-rate warm-up over this fraction of all steps (any schedule).",
        minimum=0,
    )  # fmt: skip
    loss: str = _opt("cross-entropy", "Training loss (see `expt plugins`).")
    transform: list[str] = _opt(
        [], "Batch transform on the device (crop-flip, mixup, cutmix, ...); repeat for several, "
        "applied in order.", multiple=True,
    )  # fmt: skip
    metric: list[str] = _opt(
        [], "Test metric besides accuracy and loss (top5, macro-f1, ...); repeat for several.",
        multiple=True,
    )  # fmt: skip
    monitor: str = _opt(
        "accuracy", "Metric that chooses the best checkpoint (--keep best) and W&B's best value: "
        "accuracy, loss, or a --metric name.",
    )  # fmt: skip
    monitor_mode: str = _opt(
        "auto", "Whether higher or lower --monitor is better; auto: the metric's own direction.",
        choices=("auto", "max", "min"),
    )  # fmt: skip
    nproc_per_node: int = _opt(
        1, "Train with DDP in N processes on this machine (torch.distributed.run).", minimum=1
    )
    #: Options declared by plugins (see :class:`exptorch.Option`), by name.
    options: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_EVERY = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")


def parse_every(text: str) -> tuple[float | None, int | None]:
    """``--checkpoint-every``: ``"10m"`` -> (600.0, None); ``"500"`` -> (None, 500);
    ``"off"`` -> (None, None)."""
    value = str(text).strip().lower()
    if value in ("off", "0", "none", ""):
        return None, None
    match = _EVERY.fullmatch(value)
    if match is None or float(match.group(1)) <= 0:
        raise ExptError(
            f"--checkpoint-every must be a duration (30s, 10m, 2h), a number of steps (500) "
            f"or off, not {text!r}."
        )
    number, unit = match.groups()
    if not unit:
        if "." in number:
            raise ExptError(f"--checkpoint-every {text} steps must be a whole number.")
        return None, int(number)
    return float(number) * {"s": 1, "m": 60, "h": 3600}[unit], None


#: The longest run name: a file name holds 255 bytes, and the run folder is assembled
#: under a hidden name a few characters longer (see :meth:`exptorch.rundir.RunDir.create`).
MAX_NAME = 200


def config_fields() -> list[dataclasses.Field[Any]]:
    """The user-facing fields of :class:`RunConfig`, in declaration order."""
    return [f for f in fields(RunConfig) if not f.metadata.get("internal")]


def _field_type(f: dataclasses.Field[Any]) -> type:
    default = RunConfig()
    value = getattr(default, f.name)
    if f.metadata.get("multiple"):
        return list
    if value is not None:
        return type(value)
    return int if f.name in ("seed", "limit_train_batches", "limit_eval_batches") else str


def _coerce(key: str, value: Any, kind: type, choices: Iterable[str] | None = None) -> Any:
    if value is None:
        return None
    try:
        if kind is list:
            items = [value] if isinstance(value, str) else list(value)
            return [str(v) for v in items]
        if kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind is int and isinstance(value, (bool, float)):
            raise ValueError
        if kind is float and isinstance(value, bool):
            raise ValueError
        converted = kind(value)
    except (TypeError, ValueError):
        raise ExptError(f"Config key {key!r} must be {_kind_name(kind)}, not {value!r}.") from None
    if choices is not None and converted not in choices:
        raise ExptError(f"Config key {key!r} must be one of {', '.join(choices)}, not {value!r}.")
    return converted


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", list: "a list"}.get(
        kind, "a string"
    )


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file into a flat dict with snake_case keys."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ExptError(f"Config file {path} does not exist.") from None
    except OSError as exc:
        raise ExptError(f"Cannot read config file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExptError(f"Config file {path} is not valid TOML: {exc}.") from None
    return {key.replace("-", "_"): value for key, value in data.items()}


def recipe_names() -> list[str]:
    """The recipes bundled with exptorch (``recipes/NAME.toml``)."""
    import importlib.resources

    folder = importlib.resources.files("exptorch") / "recipes"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_recipe(name: str) -> dict[str, Any]:
    """A bundled recipe's settings, as a config file would give them."""
    import importlib.resources

    if name not in recipe_names():
        raise ExptError(f"Unknown recipe {name!r}; available: {', '.join(recipe_names())}.")
    text = (importlib.resources.files("exptorch") / "recipes" / f"{name}.toml").read_text()
    return {key.replace("-", "_"): value for key, value in tomllib.loads(text).items()}


def resolve_config(
    flags: Mapping[str, Any],
    *,
    explicit: Iterable[str] = (),
    config_file: Path | None = None,
    plugin_options: Iterable[Option] = (),
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Merge defaults (or ``base``), then the config file, then the flags the user actually gave.

    :param flags: every option's value as the CLI parsed it (defaults included).
    :param explicit: the names of the options given on the command line.
    :param config_file: an optional TOML file whose keys are option names.
    :param plugin_options: options declared by plugins, accepted in both places.
    :param base: a saved configuration (``RunConfig.to_dict()``) that replaces the
        defaults, as ``expt run --resume`` uses the resumed run's own settings.
    """
    core = {f.name: f for f in config_fields()}
    extras = {opt.name: opt for opt in plugin_options}
    values: dict[str, Any] = {}
    options: dict[str, Any] = {opt.name: opt.default for opt in extras.values()}
    if base is not None:
        values.update({k: v for k, v in base.items() if k in core})
        options.update(base.get("options") or {})

    file_values = read_config_file(config_file) if config_file is not None else {}
    recipe = flags.get("recipe") if "recipe" in explicit else file_values.get("recipe")
    if recipe:
        # A recipe sits under the config file and the flags: both can override it.
        file_values = {**read_recipe(str(recipe)), **file_values}
    for key, value in file_values.items():
        if key in core:
            f = core[key]
            values[key] = _coerce(key, value, _field_type(f), f.metadata.get("choices"))
        elif key in extras:
            opt = extras[key]
            options[key] = _coerce(key, value, bool if opt.is_flag else opt.type, opt.choices)
        else:
            known = ", ".join(sorted([*core, *extras]))
            raise ExptError(
                f"Unknown key {key!r} in config file {config_file}; known keys: {known}."
            )

    for key in explicit:
        if key in core:
            values[key] = flags[key]
        elif key in extras:
            options[key] = flags[key]

    config = RunConfig(**values, options=options)
    validate(config)
    check_plugin_options(config, extras.values())
    return config


def check_plugin_options(config: RunConfig, declared: Iterable[Option]) -> None:
    """Refuse a plugin option's value that is not finite or outside its declared bounds."""
    for opt in declared:
        value = config.options.get(opt.name, opt.default)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ExptError(f"{opt.flag} must be a finite number, not {value}.")
        if opt.minimum is not None and value < opt.minimum:
            raise ExptError(f"{opt.flag} must be at least {opt.minimum}, not {value}.")
        if opt.maximum is not None and value > opt.maximum:
            raise ExptError(f"{opt.flag} must be at most {opt.maximum}, not {value}.")


#: What ``torch.manual_seed`` and numpy's generators both take without complaint.
SEED_RANGE = (0, 2**32 - 1)


def _check_numbers(config: RunConfig) -> None:
    """Refuse ``nan``/``inf`` and values outside what the training loop can use."""
    for f in config_fields():
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ExptError(f"--{f.name.replace('_', '-')} must be a finite number, not {value}.")
    if not 0 <= config.label_smoothing < 1:
        raise ExptError(
            f"--label-smoothing must be at least 0 and below 1, not {config.label_smoothing}."
        )
    low, high = SEED_RANGE
    if config.seed is not None and not low <= config.seed <= high:
        raise ExptError(f"--seed must be between {low} and {high}, not {config.seed}.")


def validate(config: RunConfig) -> None:
    """Check ranges and names that types alone cannot."""
    _check_numbers(config)
    for f in config_fields():
        value = getattr(config, f.name)
        if value is None:
            continue
        minimum = f.metadata.get("minimum")
        if minimum is not None and value < minimum:
            raise ExptError(
                f"--{f.name.replace('_', '-')} must be at least {minimum}, not {value}."
            )
        if f.metadata.get("positive") and value <= 0:
            raise ExptError(f"--{f.name.replace('_', '-')} must be positive, not {value}.")
    if config.batch_size % config.nproc_per_node:
        raise ExptError(
            f"--batch-size {config.batch_size} is the global batch and must divide evenly "
            f"among {config.nproc_per_node} processes."
        )
    if config.name is not None and (
        not _PLAIN_NAME.fullmatch(config.name) or config.name in (".", "..")
    ):
        raise ExptError(
            f"Run name {config.name!r} must be a plain folder name "
            "(letters, digits, '.', '_' and '-', not starting with '.' or '-')."
        )
    if config.name is not None and len(config.name) > MAX_NAME:
        raise ExptError(
            f"Run name is {len(config.name)} characters long; use at most {MAX_NAME} (--name)."
        )
    parse_every(config.checkpoint_every)
