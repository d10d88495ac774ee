"""How a run's callbacks are grouped by the events they implement, called, saved and restored:
a ``Callback`` subclass and a plain object with the same methods are treated alike."""

from __future__ import annotations

from typing import Any

from exptorch import Callback
from exptorch.events import EVENTS, Events


class Steps(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.restored: Any = None

    def on_step_end(self, run: Any, step: int, loss: float) -> None:
        self.seen.append((run, step, loss))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": len(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state


class Plain:
    """Not a Callback subclass: what it defines is what it listens to."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_before_optimizer_step(self, run: Any, step: int) -> None:
        self.seen.append((run, step))

    def state_dict(self) -> None:
        return None  # nothing to save this time


class Silent(Callback):
    pass


def test_each_event_reaches_only_the_callbacks_that_define_it() -> None:
    steps, plain, silent = Steps(), Plain(), Silent()
    events = Events([("steps", steps), ("plain", plain), ("silent", silent)])
    assert events.step_end == (steps.on_step_end,)
    assert events.before_optimizer_step == (plain.on_before_optimizer_step,)
    assert set(events.callbacks) == {"steps", "plain", "silent"}
    run = object()
    events.fire("on_step_end", run, step=3, loss=0.5)
    events.fire("on_before_optimizer_step", run, step=4)
    for event in EVENTS:  # nobody else listens: nothing happens
        if event not in ("on_step_end", "on_before_optimizer_step"):
            events.fire(event, run)
    assert steps.seen == [(run, 3, 0.5)] and plain.seen == [(run, 4)]


def test_only_the_state_a_callback_returns_is_saved_and_handed_back_to_it() -> None:
    steps, plain, silent = Steps(), Plain(), Silent()
    events = Events([("steps", steps), ("plain", plain), ("silent", silent)])
    steps.seen.append(("run", 1, 1.0))
    assert events.state_dict() == {"steps": {"steps": 1}}
    events.load_state_dict({"steps": {"steps": 7}, "plain": {"x": 1}, "gone": {"y": 2}})
    assert steps.restored == {"steps": 7}  # plain defines no load_state_dict; gone is gone
