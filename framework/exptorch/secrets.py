"""Keep API keys, tokens and passwords out of everything a run writes.

A value is secret when its name looks like one (``WANDB_API_KEY``, ``hub_token``,
``--db-password``) or when it equals the value of such an environment variable.
:func:`redact` is applied wherever exptorch writes a configuration or a command
line: ``config.json``, hyperparameters for TensorBoard, the W&B config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: What replaces a secret.
MASK = "***"

_SECRET_NAME = re.compile(
    r"(api[_-]?key|apikey|access[_-]?key|secret|token|passw(or)?d|passwd|credential|auth(?!or)|"
    r"private[_-]?key|cookie|session[_-]?key)",
    re.IGNORECASE,
)
#: Shorter values are not treated as secrets when found inside other strings.
_MIN_LEN = 6


def is_secret_name(name: str) -> bool:
    """True for names like ``WANDB_API_KEY``, ``hub_token`` or ``--db-password``."""
    return bool(_SECRET_NAME.search(name))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named environment variables, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= _MIN_LEN}
    return sorted(values, key=len, reverse=True)


def redact(data: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of ``data`` with every secret replaced by :data:`MASK`.

    Mapping values under a secret-looking key are masked whole; strings anywhere
    have secret environment values masked; lists that look like a command line
    (``["expt", "--hub-token", "abc"]``) have the value after a secret flag masked.
    """
    return _redact(data, secret_values(environ))


def _redact(data: Any, values: Sequence[str]) -> Any:
    if isinstance(data, Mapping):
        return {
            key: MASK
            if is_secret_name(str(key)) and data[key] not in (None, "")
            else _redact(data[key], values)
            for key in data
        }
    if isinstance(data, str):
        for value in values:
            data = data.replace(value, MASK)
        return data
    if isinstance(data, (list, tuple)):
        items = [_redact(item, values) for item in data]
        if all(isinstance(item, str) for item in items):
            items = _redact_argv(items)
        return type(data)(items) if isinstance(data, tuple) else items
    return data


def _redact_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next and not arg.startswith("--"):
            out.append(MASK)
            mask_next = False
            continue
        mask_next = False
        if arg.startswith("-") and is_secret_name(arg):
            flag, eq, _ = arg.partition("=")
            if eq:
                out.append(f"{flag}={MASK}")
                continue
            mask_next = True
        out.append(arg)
    return out
