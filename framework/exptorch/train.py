"""``expt run``: set a run up, fit it, tear it down.

:func:`run_experiment` is the whole story in three phases. :func:`setup` resolves
every plugin by name (a typo costs nothing), then builds the device, data,
model, optimizer, schedule, loss, transforms, metrics and callbacks, and only
then writes the run folder. :class:`~exptorch.loop.Trainer` trains epoch after
epoch, firing the events callbacks listen to, and
:meth:`~exptorch.loop.Trainer.teardown` records how the run ended, however it ended.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch import assemble
from exptorch.assemble import (
    Parts,
    default_data_dir,
    make_device,
    parse_device,
    plugin_kwargs,
    resolve_speed,
    versions,
)
from exptorch.checkpoint import formats
from exptorch.config import RunConfig
from exptorch.core_callbacks import NonFiniteStop, ProgressBar, StepDebugLog, TrainLossLog
from exptorch.distributed import World, current_world
from exptorch.errors import ExptError
from exptorch.interrupts import RunInterrupted, StopSignals
from exptorch.loggers import GuardedLogger
from exptorch.loop import Trainer, evaluate, prediction_samples
from exptorch.plugins import Plugins
from exptorch.resume import ResumePoint, check_resume, find_resume_point, restore_rng
from exptorch.types import RunContext

log = logging.getLogger("exptorch")

if TYPE_CHECKING:
    import torch

    from exptorch.data import Batches
    from exptorch.types import Splits


def run_experiment(
    config: RunConfig,
    plugins: Plugins,
    *,
    echo: Callable[[str], None] = print,
    progress: bool | None = None,
    resume: ResumePoint | None = None,
) -> Path:
    """Train and test one model as ``config`` says; return the run folder.

    :param progress: show a progress bar (``None``: only when stderr is a terminal).
    :param resume: continue this run folder from its checkpoint (see
        :func:`find_resume_point`) instead of starting a new one; ``config.epochs``
        is the total.

    A first SIGINT or SIGTERM stops the run after the current step, writes a
    resumable checkpoint and raises :class:`RunInterrupted`; one that comes while the
    run is set up lets the set-up finish and raises it before anything is written.
    """
    signals = StopSignals().install()  # a Ctrl-C while setting up stops before training
    try:
        trainer = setup(
            config, plugins, echo=echo, progress=progress, resume=resume, signals=signals
        )
    except BaseException:
        signals.restore()
        if resume is not None:
            resume.release()
        raise
    state, started = "failed", time.perf_counter()
    error: BaseException | None = None
    try:
        state = trainer.fit()
    except (KeyboardInterrupt, RunInterrupted) as exc:
        state, error = "interrupted", exc
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        elapsed = time.perf_counter() - started
        trainer.teardown(state, elapsed, error)
    echo(f"{state} in {elapsed:.1f}s; run folder {trainer.run_dir.path}")
    return trainer.run_dir.path


def setup(
    config: RunConfig,
    plugins: Plugins,
    *,
    echo: Callable[[str], None] = print,
    progress: bool | None = None,
    resume: ResumePoint | None = None,
    signals: StopSignals | None = None,
) -> Trainer:
    """Everything a run needs, built in order; the run folder is written last.

    :param signals: already installed by the caller, so that a signal during set-up (importing
        torch's compiler, a download) is only recorded; the run then stops before its folder is
        written.
    """
    parts = assemble.resolve_parts(config, plugins)
    config = name_the_run(config, parts, resume)
    world = current_world()
    config, device = place(config, plugins, world, parts)
    splits = parts.dataset.factory(
        data_dir=Path(config.data_dir) if config.data_dir else default_data_dir(),
        download=config.download, **plugin_kwargs(parts.dataset, config),
    )  # fmt: skip
    splits.validate(config.dataset)
    train_batches, test_batches = make_batches(config, splits, device, world)
    model, net, autocast, scaler = build_model(config, parts, splits, device, world, resume)
    optimizer = assemble.build_optimizer(parts.optimizer, config, model)
    if resume is not None and resume.checkpoint.optimizer_state is not None:
        assemble.restore_optimizer(optimizer, resume.checkpoint.optimizer_state, config)
    metrics = {
        assemble.metric_key(reg.name): reg.factory(splits.info, **plugin_kwargs(reg, config))
        for reg in parts.metrics
    }
    config = assemble.used_options(config, parts.used())
    run = RunContext(
        run_dir=Path(config.runs_dir) / str(config.name), config=config, info=splits.info,
        model=model, optimizer=optimizer, device=device,
        start_epoch=resume.next_epoch if resume else 1, resumed=resume is not None,
        step=resume.checkpoint.step if resume else 0,
    )  # fmt: skip
    run.monitor, run.monitor_mode = assemble.resolve_monitor(config, metrics)
    core = [
        ("progress", ProgressBar(progress, len(train_batches), train_batches.batch_size)),
        ("train-loss", TrainLossLog(config.log_every)),
        ("non-finite-stop", NonFiniteStop()),
    ]
    if log.isEnabledFor(logging.DEBUG):
        core.append(("step-debug", StepDebugLog()))
    events = assemble.build_callbacks(parts, plugins, run, core)
    loss_options = plugin_kwargs(parts.loss, config)
    transforms = [
        reg.factory(splits.info, **plugin_kwargs(reg, config)) for reg in parts.transforms
    ]
    trainer = Trainer(
        run=run, run_dir=None, plugins=plugins, world=world, net=net,  # type: ignore[arg-type]
        optimizer=optimizer, scaler=scaler, autocast=autocast,
        loss_fn=parts.loss.factory(label_smoothing=config.label_smoothing, **loss_options),
        lr_factor=assemble.build_schedule(parts.schedule, config, len(train_batches)),
        transforms=transforms, metrics=metrics, events=events, loggers=[],
        train_batches=train_batches, test_batches=test_batches,
        fmt=parts.checkpoint_format.factory(),
        suffixes=[f.suffix for f in formats(plugins).values()], meta={}, echo=echo,
        signals=signals or StopSignals(),
    )  # fmt: skip
    trainer.signals.install()  # from here on, a signal is recorded in the run folder
    if trainer.stop_signal():  # it came while setting up: nothing is written
        signum = trainer.signals.received or signal.SIGINT  # under DDP, rank 0 may be alone
        name = signal.Signals(signum).name
        raise RunInterrupted(
            f"Interrupted by {name} before the run started; nothing was written.", signum
        )
    try:
        open_run(trainer, parts, splits, resume)
    except BaseException as exc:
        trainer.abandon(exc)
        raise
    return trainer


def name_the_run(config: RunConfig, parts: Parts, resume: ResumePoint | None) -> RunConfig:
    """The run's folder and name: the resumed one's, or a new one that must not exist yet."""
    from exptorch.rundir import RunDir

    if resume is not None:
        check_resume(config, resume, (parts.model, parts.dataset))
        return dataclasses.replace(
            config, runs_dir=str(resume.run_dir.parent), name=resume.run_dir.name
        )
    name = config.name or f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if current_world().is_main:
        RunDir.check_new(Path(config.runs_dir), name)
    return dataclasses.replace(config, name=name)


def place(
    config: RunConfig, plugins: Plugins, world: World, parts: Parts | None = None
) -> tuple[RunConfig, torch.device]:
    """The device, the seed (shared by every DDP process), and the speed settings for both."""
    import torch

    from exptorch import distributed

    device = make_device(plugins, config.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    seed, name = assemble.choose_seed(config), config.name
    if world.distributed:
        if config.batch_size % world.world_size:
            raise ExptError(
                f"--batch-size {config.batch_size} is the global batch and must divide evenly "
                f"among {world.world_size} processes."
            )
        distributed.init(world, device)
        name, seed = distributed.broadcast_objects([name, seed])  # rank 0's choice for all
    torch.manual_seed(seed)
    config = dataclasses.replace(config, seed=seed, name=name)
    return resolve_speed(config, device, parts.model if parts else None), device


def make_batches(
    config: RunConfig, splits: Splits, device: torch.device, world: World
) -> tuple[Batches, Batches]:
    """Training and test batches, normalised on the device; each DDP rank takes its share."""
    from exptorch.data import Batches

    info = splits.info
    shared: dict[str, Any] = dict(
        device=device, mean=info.mean, std=info.std, channels_last=config.channels_last == "on",
        data_on_device=config.data_on_device, rank=world.rank, world_size=world.world_size,
    )  # fmt: skip
    train = Batches(
        splits.train_images, splits.train_labels, batch_size=config.batch_size // world.world_size,
        shuffle=True, seed=int(config.seed or 0), limit=config.limit_train_batches, **shared,
    )  # fmt: skip
    test = Batches(
        splits.test_images, splits.test_labels, batch_size=max(config.batch_size, 256),
        shuffle=False, limit=config.limit_eval_batches, **shared,
    )  # fmt: skip
    return train, test


def build_model(
    config: RunConfig,
    parts: Parts,
    splits: Splits,
    device: torch.device,
    world: World,
    resume: ResumePoint | None,
) -> tuple[Any, Any, Callable[[], Any], Any]:
    """The model (a resumed run's weights loaded), what the loop calls, autocast and scaler.

    ``net`` is what the loop calls (maybe DDP-wrapped and compiled); ``model`` keeps
    the plain module, so checkpoints hold plain parameter names that load anywhere.
    """
    import torch

    options = plugin_kwargs(parts.model, config)
    if resume is None or resume.fresh:
        model = parts.model.factory(splits.info, **options).to(device)
    else:
        initial = {o.name: o.default for o in parts.model.options if o.initial_weights}
        model = parts.model.factory(splits.info, **{**options, **initial})
        model.load_state_dict(resume.checkpoint.model_state)
        model = model.to(device)
    if config.channels_last == "on":
        model = model.to(memory_format=torch.channels_last)
    net: Any = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    autocast = functools.partial(torch.autocast, device.type, dtype=low, enabled=low is not None)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    if scaler is not None and resume is not None and "grad_scaler" in resume.checkpoint.extra:
        scaler.load_state_dict(resume.checkpoint.extra["grad_scaler"])
    return model, net, autocast, scaler


def open_run(trainer: Trainer, parts: Parts, splits: Splits, resume: ResumePoint | None) -> None:
    """Write the run folder, start the loggers, and put a resumed run back where it was."""
    run, config, world = trainer.run, trainer.run.config, trainer.world
    info = splits.info
    record = {"versions": versions(), "dataset": info.to_dict(), "device": str(run.device)}
    trainer.run_dir = assemble.open_run_dir(config, trainer.plugins, parts, world, resume, record)
    if world.is_main:  # one at a time: if one cannot start, those started are finished
        for reg in parts.loggers:
            logger = reg.factory(run, **plugin_kwargs(reg, config))
            trainer.loggers.append(GuardedLogger(reg.name, logger))
    else:
        trainer.echo = lambda _: None
    trainer.meta = {
        "model": config.model, "model_options": plugin_kwargs(parts.model, config),
        "dataset": config.dataset, "info": info.to_dict(), "versions": record["versions"],
    }  # fmt: skip
    state = trainer.run_dir.read_state()
    if state.get("best_checkpoint") and state.get("best_metric", "test_accuracy") == run.monitor:
        trainer.best_path = trainer.run_dir.checkpoints / state["best_checkpoint"]
        trainer.best_value = state.get("best_value", state.get("best_test_accuracy"))
    announce(trainer, parts, splits, resume)
    if resume is not None:
        trainer.completed, trainer.position = resume.checkpoint.epoch, resume.position
        trainer.events.load_state_dict(resume.checkpoint.extra.get("callbacks", {}))
        restore_rng(resume.checkpoint.extra, run.device)


def announce(trainer: Trainer, parts: Parts, splits: Splits, resume: ResumePoint | None) -> None:
    """The run's first line: where it writes, what it trains on what, and the seed."""
    run, config = trainer.run, trainer.run.config
    params = list(run.model.parameters())
    n_params = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = f", {n_params - trainable:,} frozen" if trainable != n_params else ""
    trainer.echo(
        f"run {trainer.run_dir.path}: {config.model} ({n_params:,} parameters{frozen}) on "
        f"{config.dataset} ({len(splits.train_labels):,} train / {len(splits.test_labels):,} "
        f"test images), device {run.device}, seed {config.seed}"
    )
    describe_setup(trainer, parts, splits)
    if resume is None:
        return
    if resume.fresh:
        trainer.echo(
            f"starting {trainer.run_dir.path} again from epoch 1 with its recorded settings and "
            f"seed (it was stopped before its first checkpoint); {config.epochs} epochs in all"
        )
        return
    where = f"the start of epoch {resume.next_epoch}"
    if resume.position:
        done, total = int(resume.position["batch"]), len(trainer.train_batches)
        where = (
            f"epoch {resume.next_epoch}, batch {done + 1} of {total}"
            if done < total
            else f"the end of epoch {resume.next_epoch} (all {total} of its batches are done)"
        )
    trainer.echo(f"resuming from {resume.path.name} at {where}; {config.epochs} epochs in all")


def describe_setup(trainer: Trainer, parts: Parts, splits: Splits) -> None:
    """What was resolved, for ``-v``: device and speed settings, plugins, data sizes."""
    if not log.isEnabledFor(logging.INFO):
        return
    config, plugins = trainer.config, trainer.plugins
    log.info(
        "device %s, precision %s, channels-last %s, compile %s, data on device %s",
        trainer.run.device, config.precision, config.channels_last,
        "on" if config.compile else "off", config.data_on_device,
    )  # fmt: skip
    used = ", ".join(
        f"{reg.kind} {reg.name} ({reg.plugin}, {plugins.source(reg.plugin).distribution})"
        for reg in parts.used()
        if reg.kind != "callback" or reg.name in trainer.events.callbacks
    )
    log.info("plugins used: %s", used)
    train, test = trainer.train_batches, trainer.test_batches
    log.info(
        "data: %s train images in %d batches of %d per epoch, %s test images in %d batches; "
        "checkpoints at each epoch's end and every %s inside one",
        f"{len(splits.train_labels):,}", len(train), train.batch_size,
        f"{len(splits.test_labels):,}", len(test), config.checkpoint_every,
    )  # fmt: skip


__all__ = [
    "GuardedLogger",
    "ResumePoint",
    "RunInterrupted",
    "StopSignals",
    "default_data_dir",
    "evaluate",
    "find_resume_point",
    "make_device",
    "parse_device",
    "prediction_samples",
    "run_experiment",
    "setup",
]
