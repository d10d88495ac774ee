"""exptorch: a plugin-based experiment runner for PyTorch.

This module is the public API for plugin authors. Everything a plugin may import
is re-exported here; other modules are private and may change between releases.
Importing it is cheap: nothing here imports torch.
"""

import sys as _sys

if _sys.argv and _sys.argv[0].rpartition("/")[2] in ("expt", "-m"):
    # Starting the ``expt`` program (its script, or ``python -m exptorch``): a Ctrl-C
    # while its modules import or its plugins load ends it quietly; the CLI puts Python's
    # own handler back when it invokes a command, before any work starts.
    from exptorch.program import quiet_start_up_interrupts

    quiet_start_up_interrupts()

from exptorch.errors import ExptError
from exptorch.events import Callback, Metric
from exptorch.hookspecs import hookimpl, hookspec
from exptorch.images import IMAGE_EXTENSIONS, is_greyscale, is_image_file, load_image
from exptorch.plugins import Plugins, Registration, current_plugins
from exptorch.types import (
    Checkpoint,
    CheckpointFormat,
    DatasetInfo,
    Logger,
    Option,
    RunContext,
    Splits,
)

__version__ = "0.1.0"

__all__ = [
    "IMAGE_EXTENSIONS",
    "Callback",
    "Checkpoint",
    "CheckpointFormat",
    "DatasetInfo",
    "ExptError",
    "Logger",
    "Metric",
    "Option",
    "Plugins",
    "Registration",
    "RunContext",
    "Splits",
    "__version__",
    "current_plugins",
    "hookimpl",
    "hookspec",
    "is_greyscale",
    "is_image_file",
    "load_image",
]
