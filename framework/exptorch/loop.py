"""The training loop: epochs of train steps, an evaluation, the epoch's record and checkpoint.

:class:`Trainer` holds what :mod:`exptorch.train` set up and runs it in named
phases (:meth:`~Trainer.train_epoch`, :meth:`~Trainer.train_step`,
:meth:`~Trainer.evaluate_epoch`, :meth:`~Trainer.end_epoch`,
:meth:`~Trainer.save_checkpoint`). It fires the events of
:class:`~exptorch.Callback`; everything else that reacts to training is a
callback or a plugin hook.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.checkpoint import checkpoint_name, prune_checkpoints, save_checkpoint
from exptorch.errors import ExptError, describe, first_line
from exptorch.events import Events, Metric
from exptorch.interrupts import RunInterrupted, StopSignals, interrupted
from exptorch.loggers import GuardedLogger
from exptorch.secrets import redact
from exptorch.types import Checkpoint, CheckpointFormat, RunContext

if TYPE_CHECKING:
    import torch

    from exptorch.data import Batches
    from exptorch.distributed import World
    from exptorch.plugins import Plugins
    from exptorch.rundir import RunDir

log = logging.getLogger("exptorch")

Transform = Callable[[Any, Any, Any], tuple[Any, Any]]


def evaluate(
    model: torch.nn.Module,
    batches: Batches,
    autocast: Callable[[], Any] | None = None,
    metrics: Mapping[str, Metric] | None = None,
) -> dict[str, float]:
    """Test loss (mean cross-entropy) and each of ``metrics`` (by key) over ``batches``.

    The model runs in eval mode. Under DDP each rank evaluates its share and the
    sums are added up across ranks.
    """
    import torch
    import torch.nn.functional as F

    from exptorch.distributed import all_reduce_sum, all_reduce_tensor

    metrics = metrics or {}
    for metric in metrics.values():
        metric.reset(batches.device)
    model.eval()
    total_loss, seen = 0.0, 0
    with torch.no_grad():
        for images, labels in batches:
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(images)
            logits = logits.float()
            total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
            seen += len(labels)
            for metric in metrics.values():
                metric.update(logits, labels)
    total_loss, n_seen = all_reduce_sum([total_loss, seen], batches.device)
    result = {"test_loss": total_loss / max(n_seen, 1)}
    for key, metric in metrics.items():
        result[key] = metric.compute(all_reduce_tensor(metric.sums(), batches.device))
    return result


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


def batch_generator(seed: int, epoch: int, batch: int, rank: int = 0) -> torch.Generator:
    """The generator a batch transform draws from: one per (seed, epoch, batch, rank)."""
    import torch

    mixed = ((seed * 1_000_003 + epoch) * 1_000_033 + batch) * 131 + rank
    return torch.Generator().manual_seed(mixed % (2**63))


@dataclasses.dataclass
class Trainer:
    """One run, set up and ready to train (see :func:`exptorch.train.setup`)."""

    run: RunContext
    run_dir: RunDir
    plugins: Plugins
    world: World
    net: Any
    optimizer: Any
    scaler: Any
    autocast: Callable[[], Any]
    loss_fn: Callable[[Any, Any], Any]
    lr_factor: Callable[[int], float]
    transforms: list[Transform]
    metrics: dict[str, Metric]
    events: Events
    loggers: list[GuardedLogger]
    train_batches: Batches
    test_batches: Batches
    fmt: CheckpointFormat
    suffixes: list[str]
    meta: dict[str, Any]
    echo: Callable[[str], None]
    #: Where inside an epoch a resumed run continues (``None``: at an epoch's start).
    position: dict[str, Any] | None = None
    completed: int = 0
    best_value: float | None = None
    best_path: Path | None = None
    signals: StopSignals = dataclasses.field(default_factory=StopSignals)
    epoch_loss: float = 0.0
    seen: int = 0
    last_path: Path = Path()
    last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    #: When the last checkpoint was written (``time.monotonic()``), for ``--checkpoint-every``.
    last_saved: float = 0.0
    #: ``--checkpoint-every`` as (seconds, steps), parsed once when training starts.
    every: tuple[float | None, int | None] = (None, None)

    @property
    def config(self) -> Any:
        return self.run.config

    # --- the loop ---------------------------------------------------------------------------

    def fit(self) -> str:
        """Train epoch after epoch; return ``finished`` or ``stopped`` (raise when interrupted)."""
        self.signals.install()
        if self.stop_signal():  # a signal came while the run folder was being written
            raise self.interrupted(self.run.start_epoch, None)
        self.signals.training = True
        from exptorch.config import parse_every

        self.every = parse_every(self.config.checkpoint_every)
        self.last_saved = time.monotonic()
        if self.world.is_main:
            self.plugins.notify("run_start", run=self.run)
        self.events.fire("on_run_start", self.run)
        self.log_graph()
        for epoch in range(self.run.start_epoch, self.config.epochs + 1):
            self.train_epoch(epoch)
            metrics = self.evaluate_epoch(epoch)
            self.end_epoch(epoch, metrics)
            if self.run.stop_reason:
                self.echo(f"stopping after epoch {epoch}: {self.run.stop_reason}")
                return "stopped"
            if self.stop_signal() and epoch < self.config.epochs:
                raise self.interrupted(epoch, self.last_path)
        return "finished"

    def train_epoch(self, epoch: int) -> None:
        """One pass over the training split (a resumed epoch from where it stopped)."""
        run = self.run
        run.epoch = epoch
        run.model.train()
        batch = int(self.position["batch"]) if self.position else 0
        self.epoch_loss = float(self.position["epoch_loss"]) if self.position else 0.0
        self.seen = int(self.position["seen"]) if self.position else 0
        self.position = None
        self.train_batches.set_epoch(epoch, start=batch)
        self.events.fire("on_epoch_start", run, epoch=epoch)
        self.epoch_start = time.perf_counter()
        for images, labels in self.train_batches:
            targets: Any = labels
            if self.transforms:
                images, targets = self.transform(images, labels, epoch, batch)
            loss = self.train_step(images, targets)
            batch += 1
            self.epoch_loss += loss * len(labels)
            self.seen += len(labels)
            if run._pending:
                self.flush_logged()
            if self.stop_signal():
                self.interrupt(epoch, batch)
            elif self.checkpoint_due(batch):
                self.save_position(epoch, batch)
        self.train_time = time.perf_counter() - self.epoch_start

    def transform(self, images: Any, labels: Any, epoch: int, batch: int) -> tuple[Any, Any]:
        generator = batch_generator(self.config.seed, epoch, batch, self.world.rank)
        targets = labels
        for transform in self.transforms:
            images, targets = transform(images, targets, generator)
        return images, targets

    def train_step(self, images: Any, targets: Any) -> float:
        """One optimizer step; returns the batch's training loss."""
        run, optimizer, scaler = self.run, self.optimizer, self.scaler
        factor = self.lr_factor(run.step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        with self.autocast():
            loss = self.loss_fn(self.net(images), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            for listener in self.events.before_optimizer_step:
                listener(run, step=run.step + 1)
            optimizer.step()
        else:  # fp16: scale the loss so small gradients survive, skip inf steps
            scaler.scale(loss).backward()
            if self.events.before_optimizer_step:
                scaler.unscale_(optimizer)
                for listener in self.events.before_optimizer_step:
                    listener(run, step=run.step + 1)
            scaler.step(optimizer)
            scaler.update()
        run.step += 1
        value: float = loss.item()
        for listener in self.events.step_end:
            listener(run, step=run.step, loss=value)
        return value

    def evaluate_epoch(self, epoch: int) -> dict[str, float]:
        """Test the (evaluation) model and complete the epoch's metrics."""
        from exptorch.distributed import all_reduce_sum

        run = self.run
        model = run.eval_model if run.eval_model is not None else self.net
        metrics = evaluate(model, self.test_batches, self.autocast, self.metrics)
        loss_sum, seen_all = all_reduce_sum([self.epoch_loss, self.seen], run.device)
        metrics.update(
            epoch_train_loss=loss_sum / max(seen_all, 1),
            lr=run.lr,
            images_per_second=seen_all / max(self.train_time, 1e-9),
            epoch_time=time.perf_counter() - self.epoch_start,
        )
        self.events.fire("on_evaluate_end", run, epoch=epoch, metrics=metrics)
        return metrics

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Let listeners complete the metrics, then record them and checkpoint the epoch."""
        from exptorch import distributed

        run = self.run
        self.events.fire("on_epoch_end", run, epoch=epoch, metrics=metrics)
        if self.world.is_main:
            self.plugins.notify("epoch_end", run=run, epoch=epoch, metrics=metrics)
        self.flush_logged()
        self.log_record({"step": run.step, "epoch": epoch, **metrics})
        self.log_predictions()
        self.checkpoint_epoch(epoch, metrics)
        self.echo(
            f"epoch {epoch}/{self.config.epochs}  train_loss {metrics['epoch_train_loss']:.4f}  "
            f"test_loss {metrics['test_loss']:.4f}  "
            f"test_accuracy {100 * metrics['test_accuracy']:.2f}%  "
            f"{metrics['epoch_time']:.1f}s ({metrics['images_per_second']:,.0f} img/s)"
        )
        self.last_metrics = metrics
        if distributed.broadcast_flag(bool(run.stop_reason), run.device) and not run.stop_reason:
            run.stop_reason = "rank 0 stopped the run"

    # --- records and checkpoints ------------------------------------------------------------

    def log_record(self, record: dict[str, Any]) -> None:
        self.run_dir.log_metrics(record)
        scalars = {k: v for k, v in record.items() if k not in ("step", "epoch")}
        for logger in self.loggers:
            logger.log_metrics(scalars, record["step"])

    def flush_logged(self) -> None:
        """Write what callbacks passed to ``run.log`` since the last flush."""
        for metrics in self.run.take_pending():
            self.log_record({"step": self.run.step, "epoch": self.run.epoch, **metrics})

    def log_graph(self) -> None:
        if self.loggers:
            assert self.run.info is not None
            classes = self.run.info.classes
            example = prediction_samples(self.run.model, self.test_batches, classes, n=1)[0]
            for logger in self.loggers:
                logger.log_graph(self.run.model, example)

    def log_predictions(self) -> None:
        """A grid of test images captioned with the predicted and true class, for loggers."""
        if self.loggers:
            model = self.run.eval_model if self.run.eval_model is not None else self.run.model
            assert self.run.info is not None
            _, shown, captions = prediction_samples(model, self.test_batches, self.run.info.classes)
            for logger in self.loggers:
                logger.log_images("test_predictions", shown, captions, self.run.step)

    def checkpoint_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Save the epoch's checkpoint, track the best by ``--monitor``, prune, record state."""
        run = self.run
        path = self.save_checkpoint(epoch) if self.world.is_main else self.run_dir.checkpoints
        self.completed, self.last_path = epoch, path
        value = float(metrics[run.monitor])
        if self.best_value is None or (
            value > self.best_value if run.monitor_mode == "max" else value < self.best_value
        ):
            self.best_value, self.best_path = value, path
        if self.world.is_main:
            prune_checkpoints(
                self.run_dir.checkpoints, self.suffixes, self.config.keep, path, self.best_path
            )
        self.run_dir.sync()
        for logger in self.loggers:
            logger.flush()
        best: dict[str, Any] = {"best_checkpoint": self.best_path.name if self.best_path else None}
        best.update(best_metric=run.monitor, best_value=self.best_value)
        if run.monitor == "test_accuracy":
            best["best_test_accuracy"] = self.best_value
        self.run_dir.set_state("running", epoch=epoch, checkpoint=path.name, **best)
        self.last_saved = time.monotonic()

    def checkpoint_due(self, batch: int) -> bool:
        """Whether ``--checkpoint-every`` asks for a checkpoint after this step of the epoch."""
        if batch >= len(self.train_batches):  # the epoch's own checkpoint comes next
            return False
        seconds, steps = self.every
        if steps is not None:
            return self.run.step % steps == 0
        return seconds is not None and time.monotonic() - self.last_saved >= seconds

    def save_position(self, epoch: int, batch: int) -> Path:
        """Checkpoint the position inside the epoch (as an interrupt does), prune, record it."""
        path = self.run_dir.checkpoints / "(rank 0 writes it)"
        if self.world.is_main:
            position = {
                "epoch": epoch,
                "batch": batch,
                "epoch_loss": self.epoch_loss,
                "seen": self.seen,
            }
            path = self.save_checkpoint(self.completed, position)
            prune_checkpoints(
                self.run_dir.checkpoints, self.suffixes, self.config.keep, path, self.best_path
            )
            self.run_dir.set_state("running", checkpoint=path.name)
            log.info("checkpoint %s written inside epoch %d", path.name, epoch)
        self.last_saved = time.monotonic()
        return path

    def save_checkpoint(self, completed: int, position: dict[str, Any] | None = None) -> Path:
        """Save everything needed to continue exactly from here, atomically."""
        import torch

        run = self.run
        extra: dict[str, Any] = {"torch_rng_state": torch.get_rng_state()}
        if run.device.type == "cuda":
            extra["cuda_rng_state"] = torch.cuda.get_rng_state(run.device)
        if position is not None:
            extra["position"] = position
        if self.scaler is not None:
            extra["grad_scaler"] = self.scaler.state_dict()
        callbacks = self.events.state_dict()
        if callbacks:
            extra["callbacks"] = callbacks
        evaluated = self.eval_weights()
        if evaluated is not None:
            extra["eval_model_state"] = evaluated
        checkpoint = Checkpoint(
            model_state=run.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            epoch=completed,
            step=run.step,
            config=redact(self.config.to_dict()),
            meta=self.meta,
            extra=extra,
            module=run.model,
        )
        within = position["epoch"] if position else completed
        filename = checkpoint_name(within, self.fmt.suffix, run.step if position else None)
        path = self.run_dir.checkpoints / filename
        try:
            return save_checkpoint(self.fmt, checkpoint, path)
        except OSError as exc:
            from exptorch.program import expt_command
            from exptorch.rundir import disk_error

            hint = f"then continue with: {expt_command()} run --resume {self.run_dir.path}"
            raise disk_error(exc, f"write checkpoint {path}", hint) from None

    def eval_weights(self) -> dict[str, Any] | None:
        """The evaluation model's weights, when a callback set one shaped like the model."""
        eval_model = self.run.eval_model
        if eval_model is None or eval_model is self.run.model:
            return None
        state: dict[str, Any] = eval_model.state_dict()
        return state if state.keys() == self.run.model.state_dict().keys() else None

    # --- signals ----------------------------------------------------------------------------

    def stop_signal(self) -> bool:
        """Whether to stop now: this process got a signal, or (under DDP) rank 0 did."""
        from exptorch import distributed

        if self.world.distributed:
            return distributed.broadcast_flag(self.signals.received is not None, self.run.device)
        return self.signals.received is not None

    def interrupt(self, epoch: int, batch: int) -> None:
        """Write a checkpoint of the position inside the epoch and raise :class:`RunInterrupted`."""
        path = self.save_position(epoch, batch)
        raise self.interrupted(epoch, path)

    def interrupted(self, epoch: int, path: Path | None) -> Exception:
        signum = self.signals.received or signal.SIGTERM
        return interrupted(signum, self.run_dir.path, path, epoch, self.run.step, self.echo)

    # --- the end ----------------------------------------------------------------------------

    def teardown(self, state: str, elapsed: float, error: BaseException | None = None) -> None:
        """Close loggers and the run folder and record how the run ended, whatever happened.

        With ``error`` in flight (the run failed or was interrupted), a failure here
        (a full disk refusing ``state.json``) is a warning: the original error is what
        the user sees, and ``state.json`` is as truthful as the disk allows.
        """
        from exptorch import distributed

        run = self.run
        self.signals.restore()
        metrics = self.last_metrics
        try:
            self.events.fire("on_run_end", run, state=state, metrics=dict(metrics))
        except Exception as exc:  # the run is over; its state must still be recorded
            log.warning("a callback failed in on_run_end: %s", describe(exc))
        with self.unless_failing(error, "close metrics.jsonl"):
            self.run_dir.close()
        hparams = redact({k: v for k, v in self.config.to_dict().items() if v is not None})
        for logger in self.loggers:
            if metrics:
                logger.log_hparams(hparams, metrics)
            logger.finish(state)
        self.record_end(state, error, epoch=self.completed, elapsed=elapsed)
        if self.world.is_main:
            with self.unless_failing(error, "tell plugins the run ended"):
                self.plugins.notify("run_end", run=run, state=state, metrics=dict(metrics))
        distributed.shutdown(clean=state in ("finished", "stopped"))

    def abandon(self, error: BaseException) -> None:
        """Set-up failed after the run folder was written: record why, give the folder back."""
        self.signals.restore()
        if getattr(self, "run_dir", None) is None:  # the folder was never written
            return
        with self.unless_failing(error, "close metrics.jsonl"):
            self.run_dir.close()
        for logger in self.loggers:
            logger.finish("failed")
        state = (
            "interrupted" if isinstance(error, (KeyboardInterrupt, RunInterrupted)) else "failed"
        )
        self.record_end(state, error)  # the epoch stays the one the folder was opened at

    def record_end(self, state: str, error: BaseException | None, **fields: Any) -> None:
        """Write the final state, with why it failed or stopped, and release the folder's lock."""
        run = self.run
        if state == "interrupted" and not run.stop_reason:
            signum = getattr(error, "signum", None) or self.signals.received or signal.SIGINT
            run.stop_reason = f"interrupted by {signal.Signals(signum).name}"
        reason = None
        if state == "failed" and error is not None:
            reason = str(error) if isinstance(error, ExptError) else describe(error)
        try:
            with self.unless_failing(error, f"record state {state!r} in state.json"):
                self.run_dir.set_state(state, stop_reason=run.stop_reason, error=reason, **fields)
        finally:
            self.run_dir.unlock()

    @contextlib.contextmanager
    def unless_failing(self, error: BaseException | None, what: str) -> Iterator[None]:
        """Run the body; if it raises while ``error`` is in flight, warn instead of hiding it."""
        try:
            yield
        except Exception as exc:
            if error is None:
                raise
            log.warning("could not %s: %s", what, first_line(exc))


__all__ = ["Trainer", "batch_generator", "evaluate", "prediction_samples"]
