"""The training loop behind ``expt run``.

It reads top to bottom like the tutorial's loop: resolve the plugins, load the
data, build the model, then for each epoch train, log, evaluate and checkpoint.
Everything a plugin contributes is reached through a factory it registered.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch import __version__
from exptorch.checkpoint import save_checkpoint
from exptorch.config import RunConfig
from exptorch.data import Batches
from exptorch.errors import ExptError
from exptorch.plugins import Plugins, Registration
from exptorch.rundir import RunDir
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


def make_optimizer(config: RunConfig, params: Any) -> torch.optim.Optimizer:
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ExptError(f"Unknown optimizer {config.optimizer!r}; available: sgd, adamw.")


def versions() -> dict[str, str]:
    import torch
    import torchvision

    return {
        "exptorch": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


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


def evaluate(model: torch.nn.Module, batches: Batches) -> dict[str, float]:
    """Test loss (mean cross-entropy) and accuracy (fraction correct) over ``batches``."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in batches:
            logits = model(images)
            total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == labels).sum().item())
            seen += len(labels)
    return {"test_loss": total_loss / max(seen, 1), "test_accuracy": correct / max(seen, 1)}


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
) -> Path:
    """Train and test one model as ``config`` says; return the run folder.

    :param progress: show a progress bar (``None``: only when stderr is a terminal).
    """
    # --- resolve every plugin by name before touching the disk: a typo costs nothing ---
    model_reg = plugins.get("model", config.model)
    dataset_reg = plugins.get("dataset", config.dataset)
    plugins.get("device", parse_device(config.device)[0])
    logger_regs = [plugins.get("logger", name) for name in config.logger]
    fmt = plugins.get("checkpoint format", config.checkpoint_format).factory()
    runs_dir = Path(config.runs_dir)
    name = config.name or f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    RunDir.check_new(runs_dir, name)

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    device = make_device(plugins, config.device)
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    config = dataclasses.replace(config, seed=seed, name=name)
    torch.manual_seed(seed)

    # --- data: decoded once into uint8 tensors, normalised per batch on the device ---
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    splits = dataset_reg.factory(
        data_dir=data_dir, download=config.download, **plugin_kwargs(dataset_reg, config)
    )
    info: DatasetInfo = splits.info
    train_batches = Batches(
        splits.train_images, splits.train_labels, batch_size=config.batch_size, device=device,
        mean=info.mean, std=info.std, shuffle=True, seed=seed, limit=config.limit_train_batches,
    )  # fmt: skip
    test_batches = Batches(
        splits.test_images, splits.test_labels, batch_size=max(config.batch_size, 256),
        device=device, mean=info.mean, std=info.std, shuffle=False,
        limit=config.limit_eval_batches,
    )  # fmt: skip

    # --- model and optimizer ---
    model_options = plugin_kwargs(model_reg, config)
    model = model_reg.factory(info, **model_options).to(device)
    optimizer = make_optimizer(config, model.parameters())

    # --- the run folder: created only now, so a mistake above leaves nothing behind ---
    run_dir = RunDir.create(runs_dir, name)
    used = {reg.plugin for reg in (model_reg, dataset_reg, *logger_regs)}
    run_dir.write_config(
        {
            "config": redact(config.to_dict()),
            "versions": versions(),
            "plugins": {p: dataclasses.asdict(plugins.source(p)) for p in sorted(used)},
            "dataset": info.to_dict(),
            "device": str(device),
            "command": redact(sys.argv),
        }
    )
    run_dir.set_state("running", epoch=0, pid=os.getpid(), started=time.time())
    run = RunContext(run_dir=run_dir.path, config=config, info=info, model=model)
    loggers = [
        GuardedLogger(reg.name, reg.factory(run, **plugin_kwargs(reg, config)))
        for reg in logger_regs
    ]
    meta = {
        "model": config.model,
        "model_options": model_options,
        "dataset": config.dataset,
        "info": info.to_dict(),
        "versions": versions(),
    }

    def log_metrics(record: dict[str, Any]) -> None:
        run_dir.log_metrics(record)
        scalars = {k: v for k, v in record.items() if k not in ("step", "epoch")}
        for logger in loggers:
            logger.log_metrics(scalars, record["step"])

    n_params = sum(p.numel() for p in model.parameters())
    echo(
        f"run {run_dir.path}: {config.model} ({n_params:,} parameters) on {config.dataset} "
        f"({len(splits.train_labels):,} train / {len(splits.test_labels):,} test images), "
        f"device {device}, seed {seed}"
    )
    plugins.notify("run_start", run=run)
    if loggers:  # the model graph, once
        example = prediction_samples(model, test_batches, info.classes, n=1)[0]
        for logger in loggers:
            logger.log_graph(model, example)
    state, metrics, step, epoch = "failed", {}, 0, 0
    started = time.perf_counter()
    try:
        for epoch in range(1, config.epochs + 1):
            # --- train one epoch ---
            model.train()
            train_batches.set_epoch(epoch)
            epoch_start = time.perf_counter()
            window_loss, window_steps, epoch_loss, seen = 0.0, 0, 0.0, 0
            bar = tqdm(
                train_batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                leave=False, disable=None if progress is None else not progress,
                dynamic_ncols=True,
            )  # fmt: skip
            for images, labels in bar:
                loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_value = loss.item()
                window_loss += loss_value
                window_steps += 1
                epoch_loss += loss_value * len(labels)
                seen += len(labels)
                if not torch.isfinite(loss):
                    raise ExptError(
                        f"The training loss became {loss_value} at step {step}; lower --lr. "
                        "The checkpoints of earlier epochs are kept."
                    )
                # --- log the training loss every --log-every steps ---
                if step % config.log_every == 0:
                    log_metrics(
                        {"step": step, "epoch": epoch, "train_loss": window_loss / window_steps}
                    )
                    window_loss, window_steps = 0.0, 0
                # --- progress bar: the latest loss and the epoch's throughput so far ---
                if not bar.disable and step % 10 == 0:
                    rate = seen / max(time.perf_counter() - epoch_start, 1e-9)
                    bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{rate:,.0f}", refresh=False)
            bar.close()
            train_time = time.perf_counter() - epoch_start

            # --- evaluate on the test split ---
            metrics = evaluate(model, test_batches)
            metrics.update(
                epoch_train_loss=epoch_loss / max(seen, 1),
                lr=optimizer.param_groups[0]["lr"],
                images_per_second=seen / max(train_time, 1e-9),
                epoch_time=time.perf_counter() - epoch_start,
            )
            log_metrics({"step": step, "epoch": epoch, **metrics})
            if loggers:  # a grid of test images with predicted and true labels
                _, shown, captions = prediction_samples(model, test_batches, info.classes)
                for logger in loggers:
                    logger.log_images("test_predictions", shown, captions, step)

            # --- checkpoint, atomically ---
            checkpoint = Checkpoint(
                model_state=model.state_dict(),
                optimizer_state=optimizer.state_dict(),
                epoch=epoch,
                step=step,
                config=redact(config.to_dict()),
                meta=meta,
                extra={"torch_rng_state": torch.get_rng_state()},
            )
            save_checkpoint(fmt, checkpoint, run_dir.checkpoints / f"epoch-{epoch:03d}{fmt.suffix}")
            run_dir.sync()
            for logger in loggers:
                logger.flush()
            run_dir.set_state("running", epoch=epoch)
            echo(
                f"epoch {epoch}/{config.epochs}  train_loss {metrics['epoch_train_loss']:.4f}  "
                f"test_loss {metrics['test_loss']:.4f}  "
                f"test_accuracy {100 * metrics['test_accuracy']:.2f}%  "
                f"{metrics['epoch_time']:.1f}s ({metrics['images_per_second']:,.0f} img/s)"
            )
            plugins.notify("epoch_end", run=run, epoch=epoch, metrics=dict(metrics))
            if run.stop_reason:
                echo(f"stopping after epoch {epoch}: {run.stop_reason}")
                break
        state = "stopped" if run.stop_reason else "finished"
    except KeyboardInterrupt:
        state = "interrupted"
        raise
    finally:
        elapsed = time.perf_counter() - started
        run_dir.close()
        hparams = redact({k: v for k, v in config.to_dict().items() if v is not None})
        for logger in loggers:
            if metrics:
                logger.log_hparams(hparams, metrics)
            logger.finish(state)
        completed = epoch if state in ("finished", "stopped") else max(epoch - 1, 0)
        run_dir.set_state(state, epoch=completed, elapsed=elapsed, stop_reason=run.stop_reason)
        plugins.notify("run_end", run=run, state=state, metrics=dict(metrics))
    echo(f"{state} in {elapsed:.1f}s; run folder {run_dir.path}")
    return run_dir.path
