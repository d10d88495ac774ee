"""The training loop behind ``expt run``.

It reads top to bottom like the tutorial's loop: resolve the plugins, load the
data, build the model, then for each epoch train, log, evaluate and checkpoint.
Everything a plugin contributes is reached through a factory it registered.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch import __version__
from exptorch.checkpoint import (
    checkpoint_files,
    checkpoint_name,
    formats,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from exptorch.config import RunConfig
from exptorch.data import Batches
from exptorch.distributed import current_world
from exptorch.errors import ExptError
from exptorch.plugins import Plugins, Registration
from exptorch.rundir import FollowerRunDir, RunDir, pid_alive, remove_stale_staging
from exptorch.secrets import redact
from exptorch.types import Checkpoint, DatasetInfo, Logger, RunContext

if TYPE_CHECKING:
    import torch

log = logging.getLogger("exptorch")

DATA_DIR_ENV = "EXPT_DATA_DIR"


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


def plugin_kwargs(reg: Registration, config: RunConfig) -> dict[str, Any]:
    """The resolved values of the options ``reg``'s plugin declared."""
    return {opt.name: config.options.get(opt.name, opt.default) for opt in reg.options}


def make_device(plugins: Plugins, spec: str) -> torch.device:
    name, index = parse_device(spec)
    device: torch.device = plugins.get("device", name).factory(index)
    return device


@dataclasses.dataclass
class ResumePoint:
    """Where ``expt run --resume`` continues: a run folder and its newest checkpoint, loaded."""

    run_dir: Path
    path: Path
    checkpoint: Checkpoint

    @property
    def position(self) -> dict[str, Any] | None:
        """Where inside an epoch an interrupted run stopped (``None``: at an epoch's end)."""
        position: dict[str, Any] | None = self.checkpoint.extra.get("position")
        return position

    @property
    def next_epoch(self) -> int:
        return int(self.position["epoch"]) if self.position else self.checkpoint.epoch + 1


#: Settings a resumed run keeps: changing them would not continue the same training.
FIXED_ON_RESUME = ("model", "dataset", "batch_size", "seed", "optimizer")


def find_resume_point(plugins: Plugins, target: Path, *, trust: bool = False) -> ResumePoint:
    """The run folder and checkpoint that ``--resume TARGET`` names, with the checkpoint loaded.

    ``TARGET`` is a run folder (its newest checkpoint is used) or the newest
    checkpoint file in a run folder's ``checkpoints/``.
    """
    if target.is_dir():
        run_path = target.parent if target.name == "checkpoints" else target
    elif target.is_file():
        run_path = target.parent.parent
        if target.parent.name != "checkpoints":
            raise ExptError(
                f"{target} is not in a run folder's checkpoints/ folder; --resume continues a "
                "run folder, so pass the run folder or one of its checkpoints."
            )
    else:
        raise ExptError(f"Nothing to resume at {target}: it does not exist.")
    run_dir = RunDir.open(run_path)
    suffixes = [fmt.suffix for fmt in formats(plugins).values()]
    files = checkpoint_files(run_dir.checkpoints, suffixes)
    if not files:
        raise ExptError(f"{run_path} holds no checkpoint to resume from.")
    path = files[-1] if target.is_dir() else target
    if path.resolve() != files[-1].resolve():
        raise ExptError(
            f"{path.name} is not the newest checkpoint of {run_path} ({files[-1].name} is); "
            "resuming from it would rewrite the run's later epochs, so resume from the newest."
        )
    state = run_dir.read_state()
    pid = state.get("pid")
    if state.get("state") == "running" and pid != os.getpid() and pid_alive(pid):
        raise ExptError(f"{run_path} is still being trained by process {state['pid']}.")
    checkpoint = load_checkpoint(plugins, path, trust=trust)
    return ResumePoint(run_dir=run_path, path=path, checkpoint=checkpoint)


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run after a step; a resumable checkpoint was written."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step.

    A second signal interrupts at once (``KeyboardInterrupt``). Handlers are only
    installed in the main thread and are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        sys.stderr.write(
            f"\n{signal.Signals(signum).name}: stopping after this step and writing a "
            "checkpoint (send it again to stop at once)\n"
        )

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def make_optimizer(config: RunConfig, params: Any) -> torch.optim.Optimizer:
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ExptError(f"Unknown optimizer {config.optimizer!r}; available: sgd, adamw.")


def resolve_speed(config: RunConfig, device: torch.device) -> RunConfig:
    """Turn ``auto`` precision and memory format into this device's choice (recorded in config)."""
    import torch

    precision = config.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    channels_last = config.channels_last
    if channels_last == "auto":
        channels_last = "off" if device.type == "mps" else "on"
    return dataclasses.replace(config, precision=precision, channels_last=channels_last)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning rate at ``step`` of ``total``, as a fraction of ``--lr``.

    ``cosine`` anneals from 1 to 0; ``onecycle`` warms up linearly from 0.1 over the
    first 25% of steps, then anneals with a cosine to 0.001. A pure function of the
    step, so a resumed run continues the schedule exactly.
    """
    import math

    progress = min(step / max(total, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        warmup = 0.25
        if progress < warmup:
            return 0.1 + 0.9 * progress / warmup
        rest = (progress - warmup) / (1 - warmup)
        return 0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * rest))
    return 1.0


def versions() -> dict[str, str]:
    import torch
    import torchvision

    return {
        "exptorch": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


def check_resume(config: RunConfig, resume: ResumePoint, regs: Sequence[Registration]) -> None:
    """Refuse settings that would make ``--resume`` something other than the same run, continued."""
    saved = resume.checkpoint.config
    options = saved.get("options") or {}
    for key in FIXED_ON_RESUME:
        if key in saved and getattr(config, key) != saved[key]:
            raise ExptError(
                f"--resume continues {resume.run_dir} as it was set up; --{key.replace('_', '-')} "
                f"cannot change (it was {saved[key]!r}); start a new run for that."
            )
    if config.name not in (None, resume.run_dir.name):
        raise ExptError(f"--resume continues {resume.run_dir}; it cannot take another --name.")
    for reg in regs:
        for opt in reg.options:
            was = options.get(opt.name, opt.default)
            if not opt.initial_weights and config.options.get(opt.name, opt.default) != was:
                raise ExptError(
                    f"--resume continues {resume.run_dir} as it was set up; {opt.flag} cannot "
                    f"change (it was {was!r})."
                )
    if resume.next_epoch > config.epochs:
        done = resume.checkpoint.epoch
        raise ExptError(
            f"{resume.run_dir} has already trained {done} epoch(s) and --epochs is the total; "
            f"pass --epochs greater than {done} to train more."
        )


def restore_rng(extra: Mapping[str, Any], device: torch.device) -> None:
    """Put back the random number generators' state a checkpoint recorded."""
    import torch

    if "torch_rng_state" in extra:
        torch.set_rng_state(extra["torch_rng_state"].cpu())
    if device.type == "cuda" and "cuda_rng_state" in extra:
        torch.cuda.set_rng_state(extra["cuda_rng_state"].cpu(), device)


def interrupted(
    signum: int, run_dir: Path, path: Path, epoch: int, step: int, echo: Callable[[str], None]
) -> RunInterrupted:
    """Say where the run stopped and how to continue it; return the exception to raise."""
    name = signal.Signals(signum).name
    echo(f"{name}: stopped at epoch {epoch}, step {step}; checkpoint {path}")
    echo(f"continue with: expt run --resume {run_dir}")
    return RunInterrupted(
        f"Interrupted by {name} at epoch {epoch}, step {step}; "
        f"continue with: expt run --resume {run_dir}",
        signum,
    )


class GuardedLogger(Logger):
    """Wraps a plugin's logger: the first exception is reported and the logger switched off."""

    def __init__(self, name: str, inner: Logger) -> None:
        self.name = name
        self.inner = inner
        self.failed: str | None = None

    def _call(self, method: str, *args: Any) -> None:
        if self.failed is not None:
            return
        try:
            getattr(self.inner, method)(*args)
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning(
                "logger %r failed in %s (%s) and is switched off; the run continues "
                "and metrics.jsonl keeps every metric",
                self.name,
                method,
                self.failed,
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._call("log_metrics", metrics, step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        self._call("log_hparams", hparams, metrics)

    def log_images(self, tag: str, images: Any, captions: Any, step: int) -> None:
        self._call("log_images", tag, images, captions, step)

    def log_graph(self, model: Any, example_input: Any) -> None:
        self._call("log_graph", model, example_input)

    def flush(self) -> None:
        self._call("flush")

    def finish(self, state: str) -> None:
        self._call("finish", state)


def evaluate(
    model: torch.nn.Module, batches: Batches, autocast: Callable[[], Any] | None = None
) -> dict[str, float]:
    """Test loss (mean cross-entropy) and accuracy (fraction correct) over ``batches``.

    Under DDP each rank evaluates its share and the sums are added up across ranks.
    """
    import contextlib

    import torch
    import torch.nn.functional as F

    from exptorch.distributed import all_reduce_sum

    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in batches:
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(images)
            total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == labels).sum().item())
            seen += len(labels)
    total_loss, n_correct, n_seen = all_reduce_sum([total_loss, correct, seen], batches.device)
    return {"test_loss": total_loss / max(n_seen, 1), "test_accuracy": n_correct / max(n_seen, 1)}


def prediction_samples(
    model: torch.nn.Module, batches: Batches, classes: Sequence[str], n: int = 16
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first ``n`` test images as the model sees them and in ``[0, 1]`` for display,
    with captions ``"pred: CLASS\ntrue: CLASS"``."""
    import torch

    images, labels = next(iter(batches))
    images, labels = images[:n], labels[:n]
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    shown = (images * batches.std + batches.mean).clamp(0, 1).float().cpu()
    captions = [
        f"pred: {classes[p]}\ntrue: {classes[t]}"
        for p, t in zip(predicted.tolist(), labels.tolist(), strict=True)
    ]
    return images, shown, captions


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
    resumable checkpoint and raises :class:`RunInterrupted`.
    """
    # --- resolve every plugin by name before touching the disk: a typo costs nothing ---
    model_reg = plugins.get("model", config.model)
    dataset_reg = plugins.get("dataset", config.dataset)
    plugins.get("device", parse_device(config.device)[0])
    logger_regs = [plugins.get("logger", name) for name in config.logger]
    fmt = plugins.get("checkpoint format", config.checkpoint_format).factory()
    suffixes = [f.suffix for f in formats(plugins).values()]
    if resume is not None:
        check_resume(config, resume, (model_reg, dataset_reg))
        runs_dir, name = resume.run_dir.parent, resume.run_dir.name
        config = dataclasses.replace(config, runs_dir=str(runs_dir), name=name)
    else:
        runs_dir = Path(config.runs_dir)
        name = config.name or f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if current_world().is_main:
            RunDir.check_new(runs_dir, name)

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from exptorch import distributed

    world = current_world()
    device = make_device(plugins, config.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    if world.distributed:
        if config.batch_size % world.world_size:
            raise ExptError(
                f"--batch-size {config.batch_size} is the global batch and must divide evenly "
                f"among {world.world_size} processes."
            )
        distributed.init(world, device)
        name, seed = distributed.broadcast_objects([name, seed])  # rank 0's choice for all
    config = resolve_speed(dataclasses.replace(config, seed=seed, name=name), device)
    torch.manual_seed(seed)
    channels_last = config.channels_last == "on"

    # --- data: decoded once into uint8 tensors, normalised per batch on the device ---
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    splits = dataset_reg.factory(
        data_dir=data_dir, download=config.download, **plugin_kwargs(dataset_reg, config)
    )
    info: DatasetInfo = splits.info
    shared: dict[str, Any] = dict(
        device=device, mean=info.mean, std=info.std, channels_last=channels_last,
        data_on_device=config.data_on_device, rank=world.rank, world_size=world.world_size,
    )  # fmt: skip
    train_batches = Batches(
        splits.train_images, splits.train_labels, batch_size=config.batch_size // world.world_size,
        shuffle=True, seed=seed, limit=config.limit_train_batches, augment=config.augment,
        **shared,
    )  # fmt: skip
    test_batches = Batches(
        splits.test_images, splits.test_labels, batch_size=max(config.batch_size, 256),
        shuffle=False, limit=config.limit_eval_batches, **shared,
    )  # fmt: skip

    # --- model and optimizer (a resumed run's from its checkpoint) ---
    model_options = plugin_kwargs(model_reg, config)
    if resume is None:
        model = model_reg.factory(info, **model_options).to(device)
    else:
        initial = {o.name: o.default for o in model_reg.options if o.initial_weights}
        model = model_reg.factory(info, **{**model_options, **initial})
        model.load_state_dict(resume.checkpoint.model_state)
        model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # ``net`` is what the loop calls (maybe DDP-wrapped and compiled); ``model`` keeps the
    # plain module, so checkpoints hold plain parameter names that load anywhere.
    net: Any = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    low_precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    autocast = functools.partial(
        torch.autocast, device.type, dtype=low_precision, enabled=low_precision is not None
    )
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    if scaler is not None and resume is not None and "grad_scaler" in resume.checkpoint.extra:
        scaler.load_state_dict(resume.checkpoint.extra["grad_scaler"])
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    if resume is not None and resume.checkpoint.optimizer_state is not None:
        optimizer.load_state_dict(resume.checkpoint.optimizer_state)
        for group in optimizer.param_groups:  # flags given with --resume win
            for key in ("lr", "momentum", "weight_decay"):
                if key in group:
                    group[key] = getattr(config, key)

    # --- the run folder: created only now, so a mistake above leaves nothing behind ---
    used = {reg.plugin for reg in (model_reg, dataset_reg, *logger_regs)}
    run_versions = versions()
    run_dir: RunDir
    if not world.is_main:  # only rank 0 writes files, logs and prints
        run_dir = FollowerRunDir(runs_dir / name)
        logger_regs, echo = [], lambda _: None
    elif resume is None:
        run_dir = RunDir.create(runs_dir, name)
        run_dir.write_config(
            {
                "config": redact(config.to_dict()),
                "versions": run_versions,
                "plugins": {p: dataclasses.asdict(plugins.source(p)) for p in sorted(used)},
                "dataset": info.to_dict(),
                "device": str(device),
                "command": redact(sys.argv),
            }
        )
        run_dir.set_state("running", epoch=0, pid=os.getpid(), started=time.time())
    else:
        run_dir = RunDir.open(resume.run_dir)
        remove_stale_staging(run_dir.checkpoints)
        dropped = run_dir.truncate_metrics(resume.checkpoint.step)
        saved = run_dir.read_config()
        saved["config"] = redact(config.to_dict())
        saved.setdefault("resumed", []).append(
            {"from": resume.path.name, "device": str(device), "command": redact(sys.argv),
             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dropped_metrics": dropped}
        )  # fmt: skip
        run_dir.write_config(saved)
        run_dir.set_state("running", epoch=resume.checkpoint.epoch, pid=os.getpid())
    run = RunContext(
        run_dir=run_dir.path, config=config, info=info, model=model,
        start_epoch=resume.next_epoch if resume else 1, resumed=resume is not None,
    )  # fmt: skip
    loggers = [
        GuardedLogger(reg.name, reg.factory(run, **plugin_kwargs(reg, config)))
        for reg in logger_regs
    ]
    meta = {
        "model": config.model,
        "model_options": model_options,
        "dataset": config.dataset,
        "info": info.to_dict(),
        "versions": run_versions,
    }

    def log_metrics(record: dict[str, Any]) -> None:
        run_dir.log_metrics(record)
        scalars = {k: v for k, v in record.items() if k not in ("step", "epoch")}
        for logger in loggers:
            logger.log_metrics(scalars, record["step"])

    def write_checkpoint(completed: int, position: dict[str, Any] | None = None) -> Path:
        """Save everything needed to continue exactly from here, atomically."""
        extra: dict[str, Any] = {"torch_rng_state": torch.get_rng_state()}
        if device.type == "cuda":
            extra["cuda_rng_state"] = torch.cuda.get_rng_state(device)
        if position is not None:
            extra["position"] = position
        if scaler is not None:
            extra["grad_scaler"] = scaler.state_dict()
        checkpoint = Checkpoint(
            model_state=model.state_dict(),
            optimizer_state=optimizer.state_dict(),
            epoch=completed,
            step=step,
            config=redact(config.to_dict()),
            meta=meta,
            extra=extra,
            module=model,
        )
        within = position["epoch"] if position else completed
        filename = checkpoint_name(within, fmt.suffix, step if position else None)
        return save_checkpoint(fmt, checkpoint, run_dir.checkpoints / filename)

    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = f", {n_params - trainable:,} frozen" if trainable != n_params else ""
    echo(
        f"run {run_dir.path}: {config.model} ({n_params:,} parameters{frozen}) on "
        f"{config.dataset} ({len(splits.train_labels):,} train / {len(splits.test_labels):,} "
        f"test images), device {device}, seed {seed}"
    )
    if resume is not None:
        where = f"epoch {resume.next_epoch}" + (
            f", batch {resume.position['batch'] + 1}" if resume.position else ""
        )
        echo(f"resuming from {resume.path.name} at {where} of {config.epochs}")
    if world.is_main:
        plugins.notify("run_start", run=run)
    if loggers:  # the model graph, once
        example = prediction_samples(model, test_batches, info.classes, n=1)[0]
        for logger in loggers:
            logger.log_graph(model, example)
    state, metrics, epoch = "failed", {}, 0
    step = resume.checkpoint.step if resume else 0
    completed = resume.checkpoint.epoch if resume else 0
    position = resume.position if resume else None
    run_state = run_dir.read_state()
    best_accuracy = float(run_state.get("best_test_accuracy", -1.0))
    best_path = run_dir.checkpoints / run_state["best_checkpoint"] if run_state.get(
        "best_checkpoint") else None  # fmt: skip
    if resume is not None:  # the random state the original run had at this point
        restore_rng(resume.checkpoint.extra, device)
    started = time.perf_counter()
    signals = StopSignals().install()
    total_steps = config.epochs * len(train_batches)

    def stop_signal() -> bool:
        """Whether to stop now: this process got a signal, or (under DDP) rank 0 did."""
        if world.distributed:
            return distributed.broadcast_flag(signals.received is not None, device)
        return signals.received is not None

    try:
        for epoch in range(run.start_epoch, config.epochs + 1):
            # --- train one epoch (a resumed one from where it stopped) ---
            model.train()
            batch = int(position["batch"]) if position else 0
            train_batches.set_epoch(epoch, start=batch)
            epoch_start = time.perf_counter()
            window_loss, window_steps, epoch_loss, seen = 0.0, 0, 0.0, 0
            if position:
                window_loss, window_steps = position["window_loss"], position["window_steps"]
                epoch_loss, seen = position["epoch_loss"], position["seen"]
                position = None
            bar = tqdm(
                train_batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                leave=False, disable=None if progress is None else not progress,
                dynamic_ncols=True, initial=batch,
            )  # fmt: skip
            for images, labels in bar:
                if config.schedule != "constant":
                    factor = lr_factor(config.schedule, step, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = config.lr * factor
                with autocast():
                    loss = F.cross_entropy(
                        net(images), labels, label_smoothing=config.label_smoothing
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:  # fp16: scale the loss so small gradients survive, skip inf steps
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                step += 1
                batch += 1
                loss_value = loss.item()
                window_loss += loss_value
                window_steps += 1
                epoch_loss += loss_value * len(labels)
                seen += len(labels)
                if not torch.isfinite(loss):
                    last = f"; the last good checkpoint is epoch {completed}" if completed else ""
                    raise ExptError(
                        f"The training loss became {loss_value} at epoch {epoch}, step {step}, "
                        f"so the run stopped{last}; lower --lr and start again."
                    )
                # --- log the training loss every --log-every steps ---
                if step % config.log_every == 0:
                    total = distributed.all_reduce_sum([window_loss, window_steps], device)
                    log_metrics({"step": step, "epoch": epoch, "train_loss": total[0] / total[1]})
                    window_loss, window_steps = 0.0, 0
                # --- progress bar: the latest loss and the epoch's throughput so far ---
                if not bar.disable and step % 10 == 0:
                    rate = seen / max(time.perf_counter() - epoch_start, 1e-9)
                    bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{rate:,.0f}")
                # --- Ctrl-C or SIGTERM: stop after this step, resumably (rank 0 decides) ---
                if stop_signal():
                    bar.close()
                    path = run_dir.checkpoints / "(rank 0 writes it)"
                    if world.is_main:
                        path = write_checkpoint(
                            completed,
                            {"epoch": epoch, "batch": batch, "window_loss": window_loss,
                             "window_steps": window_steps, "epoch_loss": epoch_loss,
                             "seen": seen},
                        )  # fmt: skip
                        prune_checkpoints(
                            run_dir.checkpoints, suffixes, config.keep, path, best_path
                        )
                        run_dir.set_state("running", checkpoint=path.name)
                    signum = signals.received or signal.SIGTERM
                    raise interrupted(signum, run_dir.path, path, epoch, step, echo)
            bar.close()
            train_time = time.perf_counter() - epoch_start

            # --- evaluate on the test split (each rank a share, summed) ---
            metrics = evaluate(net, test_batches, autocast=autocast)
            loss_sum, seen_all = distributed.all_reduce_sum([epoch_loss, seen], device)
            metrics.update(
                epoch_train_loss=loss_sum / max(seen_all, 1),
                lr=optimizer.param_groups[0]["lr"],
                images_per_second=seen_all / max(train_time, 1e-9),
                epoch_time=time.perf_counter() - epoch_start,
            )
            log_metrics({"step": step, "epoch": epoch, **metrics})
            if loggers:  # a grid of test images with predicted and true labels
                _, shown, captions = prediction_samples(model, test_batches, info.classes)
                for logger in loggers:
                    logger.log_images("test_predictions", shown, captions, step)

            # --- checkpoint, atomically, then drop what --keep does not keep ---
            path = write_checkpoint(epoch) if world.is_main else run_dir.checkpoints
            completed = epoch
            if metrics["test_accuracy"] > best_accuracy:
                best_accuracy, best_path = metrics["test_accuracy"], path
            if world.is_main:
                prune_checkpoints(run_dir.checkpoints, suffixes, config.keep, path, best_path)
            run_dir.sync()
            for logger in loggers:
                logger.flush()
            run_dir.set_state(
                "running", epoch=epoch, checkpoint=path.name,
                best_checkpoint=best_path.name if best_path else None,
                best_test_accuracy=best_accuracy,
            )  # fmt: skip
            echo(
                f"epoch {epoch}/{config.epochs}  train_loss {metrics['epoch_train_loss']:.4f}  "
                f"test_loss {metrics['test_loss']:.4f}  "
                f"test_accuracy {100 * metrics['test_accuracy']:.2f}%  "
                f"{metrics['epoch_time']:.1f}s ({metrics['images_per_second']:,.0f} img/s)"
            )
            if world.is_main:
                plugins.notify("epoch_end", run=run, epoch=epoch, metrics=dict(metrics))
            if distributed.broadcast_flag(bool(run.stop_reason), device) and not run.stop_reason:
                run.stop_reason = "rank 0 stopped the run"
            if run.stop_reason:
                echo(f"stopping after epoch {epoch}: {run.stop_reason}")
                break
            if stop_signal() and epoch < config.epochs:
                signum = signals.received or signal.SIGTERM
                raise interrupted(signum, run_dir.path, path, epoch, step, echo)
        state = "stopped" if run.stop_reason else "finished"
    except (KeyboardInterrupt, RunInterrupted):
        state = "interrupted"
        raise
    finally:
        signals.restore()
        elapsed = time.perf_counter() - started
        run_dir.close()
        hparams = redact({k: v for k, v in config.to_dict().items() if v is not None})
        for logger in loggers:
            if metrics:
                logger.log_hparams(hparams, metrics)
            logger.finish(state)
        run_dir.set_state(state, epoch=completed, elapsed=elapsed, stop_reason=run.stop_reason)
        if world.is_main:
            plugins.notify("run_end", run=run, state=state, metrics=dict(metrics))
        distributed.shutdown(clean=state in ("finished", "stopped"))
    echo(f"{state} in {elapsed:.1f}s; run folder {run_dir.path}")
    return run_dir.path
