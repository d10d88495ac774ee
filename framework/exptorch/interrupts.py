"""Ctrl-C and SIGTERM: stop after the current step, write a resumable checkpoint, say so."""

from __future__ import annotations

import shlex
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
        self.signum = signum
        self.exit_code = 128 + signum


class StopNow(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: stop at once; the exit status is 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a request to stop: before training starts while the
    run is being set up, then after the current step.

    Only a second signal interrupts at once (``KeyboardInterrupt``): raised in the middle of
    importing torch or of torch's C++ code, it can be swallowed or abort the process. Handlers
    are only installed in the main thread and are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.training = False  # set by the loop: a stop then comes after a step, with a checkpoint
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received is not None:
            raise StopNow(signum)
        self.received = signum
        when = "after this step and writing a checkpoint" if self.training else "before training"
        sys.stderr.write(
            f"\n{signal.Signals(signum).name}: stopping {when} (send it again to stop at once)\n"
        )

    def install(self) -> StopSignals:
        if self._previous:  # already installed
            return self
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def interrupted(
    signum: int,
    run_dir: Path,
    path: Path | None,
    epoch: int,
    step: int,
    echo: Callable[[str], None],
) -> RunInterrupted:
    """Say where the run stopped; return the exception to raise, which says how to continue.

    ``path`` is the checkpoint written (``None``: the signal came before training began).
    The command to continue is in the exception's message only, printed once on stderr
    (``-q`` keeps it too).
    """
    from exptorch.program import expt_command

    name = signal.Signals(signum).name
    if path is None:
        echo(f"{name}: stopped before training started")
    else:
        echo(f"{name}: stopped at epoch {epoch}, step {step}; checkpoint {path}")
    return RunInterrupted(
        f"Interrupted by {name} at epoch {epoch}, step {step}; "
        f"continue with: {expt_command()} run --resume {shlex.quote(str(run_dir))}",
        signum,
    )


__all__ = ["RunInterrupted", "StopNow", "StopSignals", "interrupted"]
