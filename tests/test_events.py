"""What ``Events`` hands each callback, beyond the promises in ``test_promises.py`` (which
callbacks an event reaches, which state is saved, state of a callback no longer there): the
listeners are the callbacks' own methods, called with the run itself, and a callback that
does not define ``load_state_dict`` is not handed state."""

from __future__ import annotations

from typing import Any

from exptorch import Callback
from exptorch.events import Events


class Steps(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.restored: Any = None

    def on_step_end(self, run: Any, step: int, loss: float) -> None:
        self.seen.append((run, step, loss))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state


class Plain:
    """Not a Callback subclass: what it defines is what it listens to."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_before_optimizer_step(self, run: Any, step: int) -> None:
        self.seen.append((run, step))


def test_each_listener_is_the_callbacks_own_method_called_with_the_run() -> None:
    steps, plain = Steps(), Plain()
    events = Events([("steps", steps), ("plain", plain)])
    assert events.step_end == (steps.on_step_end,)
    assert events.before_optimizer_step == (plain.on_before_optimizer_step,)
    run = object()
    events.fire("on_step_end", run, step=3, loss=0.5)
    events.fire("on_before_optimizer_step", run, step=4)
    assert steps.seen == [(run, 3, 0.5)] and plain.seen == [(run, 4)]


def test_state_goes_only_to_a_callback_that_defines_load_state_dict() -> None:
    steps, plain = Steps(), Plain()
    Events([("steps", steps), ("plain", plain)]).load_state_dict(
        {"steps": {"steps": 7}, "plain": {"x": 1}}
    )
    assert steps.restored == {"steps": 7} and not hasattr(plain, "restored")
