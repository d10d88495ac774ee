"""Setting a run up: every plugin resolved by name, then device, data, model, optimizer,
the training parts, callbacks and, last, the run folder.

Everything that can refuse the user's settings runs before the run folder is
written, so a mistake leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch import __version__
from exptorch.config import RunConfig
from exptorch.errors import ExptError
from exptorch.events import Callback, Events, Metric
from exptorch.plugins import Plugins, Registration
from exptorch.secrets import redact

if TYPE_CHECKING:
    import torch

    from exptorch.distributed import World
    from exptorch.resume import ResumePoint
    from exptorch.rundir import RunDir
    from exptorch.types import RunContext

DATA_DIR_ENV = "EXPT_DATA_DIR"
#: Metric keys the loop itself writes; a metric plugin may not take them.
CORE_KEYS = ("test_loss", "epoch_train_loss", "train_loss", "lr", "images_per_second", "epoch_time")


def default_data_dir() -> Path:
    """``$EXPT_DATA_DIR``, or the per-user cache folder (``~/.cache/exptorch/data`` on Linux)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("exptorch")) / "data"


def parse_device(spec: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; ``"cpu"`` -> ``("cpu", None)``."""
    name, _, index = spec.partition(":")
    if not index:
        return name, None
    if not index.isdigit():
        raise ExptError(f"Device {spec!r} has a bad index; use a form like cuda:0.")
    return name, int(index)


def make_device(plugins: Plugins, spec: str) -> torch.device:
    name, index = parse_device(spec)
    device: torch.device = plugins.get("device", name).factory(index)
    return device


def plugin_kwargs(reg: Registration, config: RunConfig) -> dict[str, Any]:
    """The resolved values of the options ``reg``'s plugin declared."""
    return {opt.name: config.options.get(opt.name, opt.default) for opt in reg.options}


def metric_key(name: str) -> str:
    """The key a metric plugin's value is recorded under: ``macro-f1`` -> ``test_macro_f1``."""
    return "test_" + name.replace("-", "_")


@dataclasses.dataclass
class Parts:
    """Every registration a run uses, looked up by name before anything else happens."""

    model: Registration
    dataset: Registration
    device: Registration
    loggers: list[Registration]
    checkpoint_format: Registration
    optimizer: Registration
    schedule: Registration
    loss: Registration
    transforms: list[Registration]
    metrics: list[Registration]
    callbacks: list[Registration]

    def used(self) -> list[Registration]:
        single = (self.model, self.dataset, self.device, self.checkpoint_format, self.optimizer)
        return [
            *single, self.schedule, self.loss, *self.loggers, *self.transforms,
            *self.metrics, *self.callbacks,
        ]  # fmt: skip


def transform_names(config: RunConfig) -> list[str]:
    """``--transform`` in order, with ``crop-flip`` first when ``--augment`` asks for it."""
    names = list(config.transform)
    if config.augment and "crop-flip" not in names:
        names.insert(0, "crop-flip")
    return names


def resolve_parts(config: RunConfig, plugins: Plugins) -> Parts:
    """Look every named plugin up, and refuse options that belong to none of them."""
    metric_names = list(dict.fromkeys(["accuracy", *config.metric]))
    parts = Parts(
        model=plugins.get("model", config.model),
        dataset=plugins.get("dataset", config.dataset),
        device=plugins.get("device", parse_device(config.device)[0]),
        loggers=[plugins.get("logger", name) for name in config.logger],
        checkpoint_format=plugins.get("checkpoint format", config.checkpoint_format),
        optimizer=plugins.get("optimizer", config.optimizer),
        schedule=plugins.get("schedule", config.schedule),
        loss=plugins.get("loss", config.loss),
        transforms=[plugins.get("transform", name) for name in transform_names(config)],
        metrics=[plugins.get("metric", name) for name in metric_names],
        callbacks=[plugins.get("callback", name) for name in plugins.names("callback")],
    )
    for reg in parts.metrics:
        if metric_key(reg.name) in CORE_KEYS:
            raise ExptError(
                f"metric {reg.name!r} of plugin {reg.plugin!r} would be recorded as "
                f"{metric_key(reg.name)}, which exptorch itself writes; rename the metric."
            )
    check_options_used(config, plugins, parts.used())
    return parts


def check_options_used(config: RunConfig, plugins: Plugins, used: Sequence[Registration]) -> None:
    """An option set away from its default must belong to a plugin this run uses."""
    in_use = {(reg.kind, reg.name) for reg in used}
    declared: dict[str, list[Registration]] = {}  # one option may be shared by registrations
    for reg, opt in plugins.options():
        declared.setdefault(opt.name, []).append(reg)
    for name, regs in declared.items():
        first = next(o for o in regs[0].options if o.name == name)
        value = config.options.get(name, first.default)
        if value == first.default or any((reg.kind, reg.name) in in_use for reg in regs):
            continue
        reg = regs[0]
        others = f" (or {len(regs) - 1} more)" if len(regs) > 1 else ""
        raise ExptError(
            f"{first.flag} belongs to {reg.kind} {reg.name!r}{others}, which this run does not "
            f"use; choose it (--{reg.kind.replace(' ', '-')} {reg.name}) or drop {first.flag}."
        )


def resolve_monitor(config: RunConfig, metrics: dict[str, Metric]) -> tuple[str, str]:
    """The key and direction (``max``/``min``) of ``--monitor``."""
    name = config.monitor
    if name in ("loss", "test_loss"):
        key, higher = "test_loss", False
    else:
        key = name if name in metrics else metric_key(name)
        if key not in metrics:
            available = ", ".join(["loss", *(k[len("test_") :] for k in metrics)])
            raise ExptError(
                f"--monitor {name!r} is not a metric this run records; available: {available} "
                "(add others with --metric)."
            )
        higher = metrics[key].higher_is_better
    mode = config.monitor_mode if config.monitor_mode != "auto" else ("max" if higher else "min")
    return key, mode


def versions() -> dict[str, str]:
    import torch
    import torchvision

    return {
        "exptorch": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


#: The attribute a model factory sets to say that channels-last pays on a CPU for it:
#: ``--channels-last auto`` then turns it on there (on CUDA it is on for every model).
CHANNELS_LAST_ON_CPU = "channels_last_on_cpu"


def resolve_speed(
    config: RunConfig, device: torch.device, model: Registration | None = None
) -> RunConfig:
    """Turn ``auto`` precision and memory format into this device's choice (recorded in config).

    Channels-last is on for CUDA; on a CPU only for a model whose factory declares that it
    pays (:data:`CHANNELS_LAST_ON_CPU`): measured per model, since on a CPU it can be slower,
    and torch's channels-last CPU kernels have crashed on narrow 1x1 strided convolutions.
    """
    import torch

    precision = config.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    elif device.type == "cpu" and precision in ("bf16", "fp16"):
        warn_emulated_precision(precision)
    channels_last = config.channels_last
    if channels_last == "auto":
        pays_on_cpu = model is not None and getattr(model.factory, CHANNELS_LAST_ON_CPU, False)
        channels_last = (
            "on" if device.type == "cuda" or (device.type == "cpu" and pays_on_cpu) else "off"
        )
    return dataclasses.replace(config, precision=precision, channels_last=channels_last)


def cpu_features() -> set[str]:
    """The x86 feature flags of this CPU (``/proc/cpuinfo``); empty where that is unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


#: The instructions that make bf16 and fp16 fast on an x86 CPU.
NATIVE_LOW_PRECISION = {
    "bf16": ("avx512_bf16", "amx_bf16"),
    "fp16": ("avx512_fp16", "amx_fp16"),
}


def warn_emulated_precision(precision: str, features: set[str] | None = None) -> bool:
    """Warn once when ``precision`` was asked for on a CPU that only emulates it."""
    import logging

    features = cpu_features() if features is None else features
    if "avx2" not in features and "avx512f" not in features:
        return False  # not an x86 CPU we can judge
    native = NATIVE_LOW_PRECISION[precision]
    if any(flag in features for flag in native):
        return False
    names = " or ".join(flag.upper().replace("_", "-") for flag in native)
    logging.getLogger("exptorch").warning(
        "--precision %s: this CPU has no %s instructions, so %s is emulated and typically "
        "several times slower than fp32 (13x measured on an AVX2-only EPYC); use --precision "
        "fp32 (the default on CPU).", precision, names, precision,
    )  # fmt: skip
    return True


def build_optimizer(
    reg: Registration, config: RunConfig, model: torch.nn.Module
) -> torch.optim.Optimizer:
    """The optimizer plugin's optimizer; ``--momentum`` only for a factory that takes it."""
    kwargs: dict[str, Any] = dict(lr=config.lr, weight_decay=config.weight_decay)
    params = inspect.signature(reg.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "momentum" in params or takes_any:
        kwargs["momentum"] = config.momentum
    elif config.momentum:
        raise ExptError(f"--momentum does not apply to optimizer {reg.name!r}; drop it.")
    optimizer: torch.optim.Optimizer = reg.factory(model, **kwargs, **plugin_kwargs(reg, config))
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


def restore_optimizer(optimizer: Any, state: dict[str, Any], config: RunConfig) -> None:
    """Load a checkpoint's optimizer state; ``--lr``, ``--momentum``, ``--weight-decay`` win.

    ``optimizer`` was just built from ``config``, so its groups' weight decay is what the flags
    ask for (``--weight-decay`` where it applies, 0 for a plugin's no-decay group); the
    checkpoint's values would keep a run started without weight decay from ever getting it.
    """
    decays = [group.get("weight_decay") for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, decay in zip(optimizer.param_groups, decays, strict=True):
        group["initial_lr"] = group["lr"] = config.lr
        if "momentum" in group:
            group["momentum"] = config.momentum
        if decay is not None:
            group["weight_decay"] = decay


def build_schedule(
    reg: Registration, config: RunConfig, steps_per_epoch: int
) -> Callable[[int], float]:
    """The learning-rate factor at each step: the schedule times the ``--warmup`` ramp."""
    total = config.epochs * steps_per_epoch
    schedule: Callable[[int], float] = reg.factory(
        total_steps=total, steps_per_epoch=steps_per_epoch, **plugin_kwargs(reg, config)
    )
    if config.warmup >= 1:
        raise ExptError(f"--warmup is a fraction of all steps below 1, not {config.warmup}.")
    warm = int(config.warmup * total)
    if not warm:
        return schedule
    return lambda step: schedule(step) * min(1.0, (step + 1) / warm)


def build_callbacks(
    parts: Parts, plugins: Plugins, run: RunContext, core: Sequence[tuple[str, Callback]]
) -> Events:
    """exptorch's own callbacks, then every registered callback the options switch on."""
    chosen = list(core)
    for reg in parts.callbacks:
        callback = reg.factory(run, **plugin_kwargs(reg, run.config))
        if callback is not None:
            chosen.append((reg.name, callback))
    return Events(chosen)


def used_options(config: RunConfig, used: Sequence[Registration]) -> RunConfig:
    """``config`` with the options of the plugins this run uses only (what gets recorded)."""
    names = {opt.name for reg in used for opt in reg.options}
    kept = {k: v for k, v in config.options.items() if k in names}
    return dataclasses.replace(config, options=kept)


def open_run_dir(
    config: RunConfig,
    plugins: Plugins,
    parts: Parts,
    world: World,
    resume: ResumePoint | None,
    record: dict[str, Any],
) -> RunDir:
    """Create (or, resuming, reopen) the run folder and record the settings in config.json."""
    from exptorch.rundir import FollowerRunDir, RunDir, remove_stale_staging

    path = Path(config.runs_dir) / str(config.name)
    if not world.is_main:  # only rank 0 writes files
        return FollowerRunDir(path)
    used = sorted({reg.plugin for reg in parts.used()})
    if resume is None:
        return RunDir.create(
            Path(config.runs_dir), str(config.name),
            {
                "config": redact(config.to_dict()),
                **record,
                "plugins": {p: dataclasses.asdict(plugins.source(p)) for p in used},
                "command": redact(sys.argv),
            },
            pid=os.getpid(), started=time.time(),
        )  # fmt: skip
    run_dir = resume.folder or RunDir.open(resume.run_dir)
    run_dir.lock()
    remove_stale_staging(run_dir.checkpoints)
    dropped = run_dir.truncate_metrics(resume.checkpoint.step)
    saved = run_dir.read_config()
    saved["config"] = redact(config.to_dict())
    saved.setdefault("resumed", []).append(
        {"from": None if resume.fresh else resume.path.name, "device": record["device"],
         "command": redact(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "dropped_metrics": dropped}
    )  # fmt: skip
    run_dir.write_config(saved)
    run_dir.set_state("running", epoch=resume.checkpoint.epoch, pid=os.getpid())
    return run_dir


def choose_seed(config: RunConfig) -> int:
    return config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)


__all__ = [
    "CORE_KEYS",
    "Parts",
    "build_callbacks",
    "build_optimizer",
    "build_schedule",
    "check_options_used",
    "choose_seed",
    "default_data_dir",
    "make_device",
    "metric_key",
    "open_run_dir",
    "parse_device",
    "plugin_kwargs",
    "resolve_monitor",
    "resolve_parts",
    "resolve_speed",
    "restore_optimizer",
    "transform_names",
    "used_options",
    "versions",
    "warn_emulated_precision",
]
