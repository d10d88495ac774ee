"""Ctrl-C and SIGTERM: stop after the current step, write a resumable checkpoint, say so."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


__all__ = ["RunInterrupted", "StopSignals", "interrupted"]
