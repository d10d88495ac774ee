"""Step and epoch events, and the objects that listen to them.

The loop fires a small set of events (see :class:`Callback`); everything that
reacts to them, exptorch's own progress bar, train-loss logging and non-finite
loss check included, is a callback. A callback overrides only the methods it
needs: :class:`Events` looks up, once per run, which callbacks override each
event, so an event nobody listens to costs one empty-tuple check per step.

Only the standard library is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from exptorch.types import RunContext

#: The events, in the order a run fires them.
EVENTS = (
    "on_run_start",
    "on_epoch_start",
    "on_before_optimizer_step",
    "on_step_end",
    "on_evaluate_end",
    "on_epoch_end",
    "on_run_end",
)


class Callback:
    """Listens to a run's events; override the methods you need.

    Every method receives the :class:`~exptorch.RunContext` (``run.model``,
    ``run.optimizer``, ``run.step``, ``run.epoch``, ``run.lr``, ``run.config``).
    A callback may call ``run.request_stop(reason)`` to end the run after the
    epoch, ``run.log(metrics)`` to record extra scalars at the current step,
    and set ``run.eval_model`` to the model evaluation and the best checkpoint
    use (an EMA of the weights). State returned by :meth:`state_dict` is saved
    in every checkpoint and handed back to :meth:`load_state_dict` on
    ``--resume``, so the run continues exactly.
    """

    def on_run_start(self, run: RunContext) -> None:
        """The run folder, model and data are ready; the first (or resumed) epoch is next."""

    def on_epoch_start(self, run: RunContext, epoch: int) -> None:
        """Epoch ``epoch`` (from 1) is about to train."""

    def on_before_optimizer_step(self, run: RunContext, step: int) -> None:
        """Gradients of step ``step`` (from 1) are ready and unscaled; the optimizer steps next.

        Clip or inspect ``p.grad`` of ``run.model.parameters()`` here.
        """

    def on_step_end(self, run: RunContext, step: int, loss: float) -> None:
        """Optimizer step ``step`` is done; ``loss`` is its training loss, ``run.lr`` its rate."""

    def on_evaluate_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        """The test split was evaluated; add keys to ``metrics`` to record more values."""

    def on_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's metrics are complete; keys added here are recorded too.

        The epoch's record and checkpoint are written right after this event.
        """

    def on_run_end(self, run: RunContext, state: str, metrics: Mapping[str, float]) -> None:
        """The run ended (``finished``, ``stopped``, ``interrupted`` or ``failed``)."""

    def state_dict(self) -> dict[str, Any] | None:
        """What to save in checkpoints to resume exactly (``None``: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when a run is resumed."""


class Metric:
    """A test metric, accumulated over the test batches as additive sums.

    :meth:`update` adds one batch's contribution to a tensor of sums that
    :meth:`sums` returns; under DDP the sums of all processes are added before
    :meth:`compute` turns them into the metric's value. ``higher_is_better``
    decides what "best" means for ``--monitor``.
    """

    higher_is_better: bool = True

    def reset(self, device: torch.device) -> None:
        """Start a new evaluation on ``device``."""
        raise NotImplementedError

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``logits`` ``(N, classes)`` and class-index ``labels`` ``(N,)``."""
        raise NotImplementedError

    def sums(self) -> torch.Tensor:
        """The accumulated sums (a float64 tensor of any shape)."""
        raise NotImplementedError

    def compute(self, sums: torch.Tensor) -> float:
        """The metric's value from the (all-processes) sums."""
        raise NotImplementedError


class Events:
    """The callbacks of one run, grouped by the events each one overrides."""

    def __init__(self, callbacks: Iterable[tuple[str, Callback]]) -> None:
        self.callbacks: dict[str, Callback] = dict(callbacks)
        self._listeners: dict[str, tuple[Callable[..., Any], ...]] = {
            event: tuple(
                getattr(cb, event) for cb in self.callbacks.values() if _overrides(cb, event)
            )
            for event in EVENTS
        }
        self.before_optimizer_step = self._listeners["on_before_optimizer_step"]
        self.step_end = self._listeners["on_step_end"]

    def fire(self, event: str, run: RunContext, **kwargs: Any) -> None:
        """Call ``event`` on every callback that listens to it, in registration order."""
        for listener in self._listeners[event]:
            listener(run, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """Every stateful callback's state, by its registered name."""
        states = {
            name: cb.state_dict()
            for name, cb in self.callbacks.items()
            if _overrides(cb, "state_dict")
        }
        return {name: state for name, state in states.items() if state is not None}

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        for name, state in states.items():
            if name in self.callbacks and _overrides(self.callbacks[name], "load_state_dict"):
                self.callbacks[name].load_state_dict(state)


def _overrides(callback: object, method: str) -> bool:
    """Whether ``callback`` implements ``method`` itself (a subclass of Callback or not)."""
    impl = getattr(type(callback), method, None)
    return impl is not None and impl is not getattr(Callback, method)


__all__ = ["EVENTS", "Callback", "Events", "Metric"]
