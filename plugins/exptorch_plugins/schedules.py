"""Learning-rate schedule plugins ``constant``, ``cosine``, ``onecycle`` and ``step``.

A schedule is a pure function of the global step returning a fraction of
``--lr``, so a resumed run continues exactly where it stopped. exptorch
multiplies every schedule by the ``--warmup`` ramp.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from exptorch import ExptError, Option, hookimpl


def constant(**_: Any) -> Callable[[int], float]:
    return lambda step: 1.0


def cosine(*, total_steps: int, **_: Any) -> Callable[[int], float]:
    """From 1 down to 0 along half a cosine over all steps."""

    def factor(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))

    return factor


def onecycle(*, total_steps: int, **_: Any) -> Callable[[int], float]:
    """Up linearly from 0.1 over the first 25% of steps, then a cosine down to 0.001."""

    def factor(step: int) -> float:
        progress = min(step / max(total_steps, 1), 1.0)
        if progress < 0.25:
            return 0.1 + 0.9 * progress / 0.25
        rest = (progress - 0.25) / 0.75
        return 0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * rest))

    return factor


def parse_milestones(text: str) -> list[int]:
    """``"3,4"`` -> ``[3, 4]``: increasing positive epoch numbers."""
    try:
        milestones = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ExptError(
            f"--step-milestones must be epoch numbers separated by commas (3,4), not {text!r}."
        ) from None
    if not milestones or milestones != sorted(set(milestones)) or milestones[0] < 1:
        raise ExptError(
            f"--step-milestones must be increasing epoch numbers from 1 on (3,4), not {text!r}."
        )
    return milestones


def step(
    *, steps_per_epoch: int, step_milestones: str = "", step_gamma: float = 0.1, **_: Any
) -> Callable[[int], float]:
    """Multiply the rate by ``gamma`` at the start of each milestone epoch."""
    if not step_milestones:
        raise ExptError("--schedule step needs --step-milestones, the epochs to decay at (3,4).")
    boundaries = [(m - 1) * steps_per_epoch for m in parse_milestones(step_milestones)]

    def factor(step: int) -> float:
        return float(step_gamma ** sum(step >= b for b in boundaries))

    return factor


@hookimpl
def register_schedules(register: Any) -> None:
    register("constant", constant, description="the same rate throughout")
    register("cosine", cosine, description="cosine from --lr down to 0 over all steps")
    register(
        "onecycle",
        onecycle,
        description="linear warm-up from 0.1x over 25% of steps, then cosine to 0.001x",
    )
    register(
        "step",
        step,
        description="multiply the rate by --step-gamma at each milestone epoch",
        options=(
            Option("step_milestones", "", "Epochs at whose start the rate decays (3,4)."),
            Option("step_gamma", 0.1, "Factor per milestone.", float, minimum=0, maximum=1),
        ),
    )
