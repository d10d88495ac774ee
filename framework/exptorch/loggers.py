"""Loggers as the loop sees them: each plugin's logger guarded so one failure never stops a run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from exptorch.types import Logger

log = logging.getLogger("exptorch")


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


__all__ = ["GuardedLogger"]
