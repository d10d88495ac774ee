"""exptorch's own step-level features, written as callbacks on the public events.

The loop knows none of them: the progress bar, the training-loss log and the
stop on a non-finite loss are :class:`~exptorch.Callback` objects like any
plugin's, created for every run before the plugins' callbacks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from exptorch.errors import ExptError
from exptorch.events import Callback

if TYPE_CHECKING:
    from exptorch.types import RunContext

log = logging.getLogger("exptorch")


class TrainLossLog(Callback):
    """Logs ``train_loss``, the mean over the last ``--log-every`` steps.

    The partial window left at an epoch's end goes into that epoch's record, so a
    short epoch still has a training-loss point. Under DDP the window is averaged
    over all processes.
    """

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.window_loss = 0.0
        self.window_steps = 0

    def on_step_end(self, run: RunContext, step: int, loss: float) -> None:
        self.window_loss += loss
        self.window_steps += 1
        if step % self.log_every == 0:
            run.log({"train_loss": self._take(run)})

    def on_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        if self.window_steps:
            metrics["train_loss"] = self._take(run)

    def _take(self, run: RunContext) -> float:
        from exptorch.distributed import all_reduce_sum

        total, steps = all_reduce_sum([self.window_loss, self.window_steps], run.device)
        self.window_loss, self.window_steps = 0.0, 0
        return float(total / max(steps, 1))

    def state_dict(self) -> dict[str, Any]:
        return {"window_loss": self.window_loss, "window_steps": self.window_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window_loss = float(state.get("window_loss", 0.0))
        self.window_steps = int(state.get("window_steps", 0))


class NonFiniteStop(Callback):
    """Stops the run when the training loss, the test loss or a weight is not finite.

    The epoch whose evaluation found it is not checkpointed, so the last
    checkpoint (and the best one) are always made of finite weights.
    """

    def __init__(self) -> None:
        self.completed = 0

    def on_run_start(self, run: RunContext) -> None:
        self.completed = run.start_epoch - 1

    def on_step_end(self, run: RunContext, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            self._stop(f"The training loss became {loss} at epoch {run.epoch}, step {step}")

    def on_evaluate_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        import torch

        if not math.isfinite(metrics.get("test_loss", 0.0)):
            self._stop(f"The test loss became {metrics['test_loss']} after epoch {epoch}")
        model = run.eval_model if run.eval_model is not None else run.model
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            self._stop(f"The model's weights stopped being finite in epoch {epoch}")

    def on_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.completed = epoch

    def _stop(self, what: str) -> None:
        last = f"; the last good checkpoint is epoch {self.completed}" if self.completed else ""
        raise ExptError(f"{what}, so the run stopped{last}; lower --lr and start again.")


class StepDebugLog(Callback):
    """With ``-vv``: one debug line per step (loss, learning rate, batch time)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def on_step_end(self, run: RunContext, step: int, loss: float) -> None:
        now = time.perf_counter()
        log.debug(
            "epoch %d step %d: loss %.4f, lr %.4g, %.1f ms",
            run.epoch, step, loss, run.lr, 1000 * (now - self.last),
        )  # fmt: skip
        self.last = now


class ProgressBar(Callback):
    """A tqdm bar per epoch with the latest loss and the epoch's images per second."""

    def __init__(self, enabled: bool | None, steps_per_epoch: int, batch_size: int) -> None:
        self.enabled = enabled
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.bar: Any = None

    def on_epoch_start(self, run: RunContext, epoch: int) -> None:
        from tqdm import tqdm

        done = run.step - (epoch - 1) * self.steps_per_epoch
        self.bar = tqdm(
            total=self.steps_per_epoch, initial=max(done, 0),
            desc=f"epoch {epoch}/{run.config.epochs}",
            unit="batch", leave=False, dynamic_ncols=True,
            disable=None if self.enabled is None else not self.enabled,
        )  # fmt: skip
        self.started, self.first = time.perf_counter(), self.bar.n

    def on_step_end(self, run: RunContext, step: int, loss: float) -> None:
        bar = self.bar
        bar.update(1)
        if not bar.disable and step % 10 == 0:
            rate = (
                (bar.n - self.first)
                * self.batch_size
                / max(time.perf_counter() - self.started, 1e-9)
            )
            bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:,.0f}")

    def on_evaluate_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.close()

    def on_run_end(self, run: RunContext, state: str, metrics: Mapping[str, float]) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["NonFiniteStop", "ProgressBar", "StepDebugLog", "TrainLossLog"]
