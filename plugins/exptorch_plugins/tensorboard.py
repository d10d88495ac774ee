"""Logger plugin ``tensorboard``: event files in the run's folder, tags named like the metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exptorch import Logger, RunContext, hookimpl


class TensorBoardLogger(Logger):
    def __init__(self, run: RunContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.run_dir))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, state: str) -> None:
        self.writer.close()


@hookimpl
def register_loggers(register: Any) -> None:
    register(
        "tensorboard",
        TensorBoardLogger,
        description="TensorBoard event files in the run folder (tensorboard --logdir runs)",
    )
