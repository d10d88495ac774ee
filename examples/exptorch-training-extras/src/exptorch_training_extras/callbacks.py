"""Callbacks on exptorch's step events: gradient clipping, an EMA of the weights, grad norms."""

from __future__ import annotations

import copy
from typing import Any

import torch
from exptorch import Callback, RunContext


def grad_norm(model: torch.nn.Module) -> float:
    grads = [p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


class ClipGradients(Callback):
    """Scale the gradients down so their global norm is at most ``max_norm``."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def on_before_optimizer_step(self, run: RunContext, step: int) -> None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), self.max_norm)


class EMA(Callback):
    """An exponential moving average of the weights, which evaluation and "best" use.

    Its weights are saved in every checkpoint and come back with ``--resume``.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.average = copy.deepcopy(model).eval().requires_grad_(False)

    def on_run_start(self, run: RunContext) -> None:
        run.eval_model = self.average

    def on_step_end(self, run: RunContext, step: int, loss: float) -> None:
        with torch.no_grad():
            for a, p in zip(self.average.parameters(), run.model.parameters(), strict=True):
                a.lerp_(p, 1 - self.decay)
            for buffer, source in zip(self.average.buffers(), run.model.buffers(), strict=True):
                buffer.copy_(source)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state["average"])


class GradNormLog(Callback):
    """Record ``grad_norm``, the gradients' global norm, every ``every`` steps."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_before_optimizer_step(self, run: RunContext, step: int) -> None:
        if step % self.every == 0:
            run.log({"grad_norm": grad_norm(run.model)})
