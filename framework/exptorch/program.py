"""How to name ``expt`` in the commands exptorch prints, so that they work when pasted.

``continue with: expt run --resume runs/x`` only works where ``expt`` is on
``PATH``. After ``python -m venv .venv && pip install ...`` without activating
the environment it is not: the user ran ``.venv/bin/expt`` or ``python -m
exptorch``, and the hint must say the same.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Iterator


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def python_command() -> str:
    """``python`` when that is this interpreter on ``PATH``, else this interpreter's path."""
    for name in ("python", "python3"):
        found = shutil.which(name)
        # Compare the paths as given, not resolved: a venv's python links to the system's.
        if found and os.path.abspath(found) == os.path.abspath(sys.executable):
            return name
    return shlex.quote(sys.executable)


def expt_command() -> str:
    """The command that runs this ``expt`` again: ``expt`` when ``PATH`` finds this one,
    else the path it was run by (``.venv/bin/expt``), or ``python -m exptorch``.

    Outside an ``expt`` process (exptorch used as a library, or in tests) it is ``expt``.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    base = os.path.basename(argv0)
    if base == "__main__.py" and os.path.basename(os.path.dirname(argv0)) == "exptorch":
        return f"{python_command()} -m exptorch"
    if not base.startswith("expt"):
        return "expt"
    found = shutil.which(base)
    if found and _same_file(found, argv0):
        return base
    return shlex.quote(argv0)


def _exit_interrupted(signum: int, _frame: object) -> None:
    sys.stderr.write("Interrupted.\n")
    os._exit(128 + signum)  # nothing has started yet: there is nothing to clean up


_program = False  # whether this process is the ``expt`` program


def quiet_start_up_interrupts() -> None:
    """Until ``expt`` invokes a command, a Ctrl-C exits 130 without a traceback."""
    import signal
    import threading

    global _program
    if threading.current_thread() is threading.main_thread():
        _program = True
        signal.signal(signal.SIGINT, _exit_interrupted)


@contextlib.contextmanager
def quiet_interrupts() -> Iterator[None]:
    """In the ``expt`` program, a Ctrl-C inside this block exits 130 at once, as at start-up.

    For a command's work that writes nothing and may import torch: a ``KeyboardInterrupt``
    raised inside that import can be swallowed (a later import then fails strangely) or
    abort the process from torch's C++ code.
    """
    import signal
    import threading

    if not _program or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _exit_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def normal_interrupts() -> None:
    """Python's own Ctrl-C handling (``KeyboardInterrupt``), as the commands expect it."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGINT) is _exit_interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


__all__ = [
    "expt_command",
    "normal_interrupts",
    "python_command",
    "quiet_interrupts",
    "quiet_start_up_interrupts",
]
