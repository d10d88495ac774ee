"""Hook specifications: everything a plugin can contribute to exptorch.

Registration hooks follow one pattern: exptorch calls the hook once per plugin
with a ``register`` function bound to that plugin, and the plugin calls
``register(name, factory, description=..., options=...)`` for each thing it
provides. Factories are called only when the thing is used, so a plugin module
should import heavy libraries (torch, torchvision, tensorboard, wandb) inside its
factories, never at module level. Registering a name that another plugin already
registered is an error that names both plugins.

Hooks are always called with keyword arguments; an implementation may accept
fewer arguments than its spec lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import click

    from exptorch.types import Option, RunContext

hookspec = pluggy.HookspecMarker("exptorch")
hookimpl = pluggy.HookimplMarker("exptorch")


class Register(Protocol):
    """The ``register`` callable a registration hook receives."""

    def __call__(
        self,
        name: str,
        factory: Any,
        *,
        description: str = "",
        options: Sequence[Option] = (),
    ) -> None: ...


@hookspec
def register_models(register: Register) -> None:
    """Register model factories. Called once, when exptorch builds its registry.

    :param register: call ``register(name, factory, description=..., options=...)``
        per model. ``factory(info: DatasetInfo, **options) -> torch.nn.Module``
        builds the model for a dataset's channels, image size and class count;
        it receives the resolved value of every :class:`~exptorch.Option` it declared.

    Return nothing.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset factories. Called once, when exptorch builds its registry.

    :param register: call ``register(name, factory, ...)`` per dataset.
        ``factory(data_dir: pathlib.Path, download: bool, **options) -> Splits``
        returns the train and test splits decoded into ``uint8`` tensors. When the
        data is missing and cannot be downloaded it raises :class:`~exptorch.ExptError`
        saying what to do.

    Return nothing.
    """


@hookspec
def register_devices(register: Register) -> None:
    """Register compute devices. Called once, when exptorch builds its registry.

    :param register: call ``register(name, factory, ...)`` per device type.
        ``factory(index: int | None) -> torch.device`` returns the device for
        ``--device name`` or ``--device name:index``, and raises
        :class:`~exptorch.ExptError` when it is not available on this machine.

    Return nothing.
    """


@hookspec
def register_loggers(register: Register) -> None:
    """Register metric loggers. Called once, when exptorch builds its registry.

    :param register: call ``register(name, factory, ...)`` per logger.
        ``factory(run: RunContext, **options) -> Logger`` is called at the start
        of a run that names the logger with ``--logger``.

    Return nothing.
    """


@hookspec
def register_checkpoint_formats(register: Register) -> None:
    """Register checkpoint formats. Called once, when exptorch builds its registry.

    :param register: call ``register(name, factory, ...)`` per format.
        ``factory() -> CheckpointFormat`` returns an object with a ``suffix``
        and ``save``/``load`` methods (see :class:`~exptorch.CheckpointFormat`:
        companion files, atomic writes, and ``trust`` for formats that unpickle).

    Return nothing.
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizers for ``--optimizer NAME``. Called once, when exptorch builds its registry.

    :param register: call ``register(name, factory, ...)`` per optimizer.
        ``factory(model: torch.nn.Module, *, lr: float, weight_decay: float, **options)
        -> torch.optim.Optimizer`` builds it over the model's trainable parameters
        (parameter groups are the factory's choice). A factory that also takes
        ``momentum`` receives ``--momentum``; ``--momentum`` with a factory that does
        not take it is refused.

    Return nothing.
    """


@hookspec
def register_schedules(register: Register) -> None:
    """Register learning-rate schedules for ``--schedule NAME``. Called once.

    :param register: call ``register(name, factory, ...)`` per schedule.
        ``factory(*, total_steps: int, steps_per_epoch: int, **options) -> Callable[[int],
        float]`` returns the learning rate at a step as a fraction of ``--lr``. It must be
        a pure function of the step, so a resumed run continues exactly. exptorch applies
        ``--warmup`` on top of every schedule. Raise :class:`~exptorch.ExptError` for
        options that do not fit (checked before anything is written).

    Return nothing.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register training losses for ``--loss NAME``. Called once.

    :param register: call ``register(name, factory, ...)`` per loss.
        ``factory(*, label_smoothing: float, **options) -> Callable[[logits, targets],
        torch.Tensor]``; ``targets`` are class indices (``int64``, shape ``(N,)``) or class
        probabilities (float, shape ``(N, classes)``) after a mixing transform.

    Return nothing.
    """


@hookspec
def register_transforms(register: Register) -> None:
    """Register batch transforms for ``--transform NAME`` (repeatable, in order). Called once.

    :param register: call ``register(name, factory, ...)`` per transform.
        ``factory(info: DatasetInfo, **options) -> Callable[[images, targets, generator],
        tuple[images, targets]]`` transforms a normalised training batch on its device.
        Random numbers must come from ``generator`` (a CPU ``torch.Generator`` seeded from
        the run's seed, the epoch and the batch), so a resumed run sees the same batches.
        Raise :class:`~exptorch.ExptError` when the transform does not fit ``info``.

    Return nothing.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register test metrics for ``--metric NAME`` (repeatable). Called once.

    :param register: call ``register(name, factory, ...)`` per metric.
        ``factory(info: DatasetInfo, **options) -> Metric`` (see :class:`~exptorch.Metric`);
        its value is recorded as ``test_`` + the name with ``-`` as ``_`` (``macro-f1``:
        ``test_macro_f1``) after every evaluation.

    Return nothing.
    """


@hookspec
def register_callbacks(register: Register) -> None:
    """Register callbacks: objects that listen to a run's step and epoch events. Called once.

    :param register: call ``register(name, factory, ...)`` per callback.
        ``factory(run: RunContext, **options) -> Callback | None`` is called for every
        run, before its folder is written, with ``run.model`` and ``run.optimizer`` set;
        return ``None`` when the options leave the callback off for this run, or raise
        :class:`~exptorch.ExptError` to refuse them. See :class:`~exptorch.Callback`.

    Return nothing.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``expt`` command group. Called when the CLI starts.

    :param cli: the top-level click group; use ``@cli.command()`` or
        ``cli.add_command(...)``. Keep module-level imports cheap: the hook runs
        for every ``expt`` invocation, ``expt --help`` included.

    Return nothing.
    """


@hookspec
def run_start(run: RunContext) -> None:
    """Called once a run's directory, model and data are ready, before the first epoch.

    :param run: the run; ``run.config`` is the resolved configuration and
        ``run.run_dir`` its folder. Call ``run.request_stop(reason)`` to stop it.

    Return nothing.
    """


@hookspec
def epoch_end(run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
    """Called after each epoch's evaluation, before its record and checkpoint are written.

    :param run: the run in progress.
    :param epoch: the epoch that just ended, counting from 1.
    :param metrics: that epoch's metrics (``epoch_train_loss``, ``test_loss``,
        ``test_accuracy``, ...); keys added to it are written to ``metrics.jsonl`` and
        every logger. Call ``run.request_stop(reason)`` to end the run after this
        epoch (early stopping, a time budget, ...).

    Return nothing.
    """


@hookspec
def run_end(run: RunContext, state: str, metrics: Mapping[str, float]) -> None:
    """Called once when a run ends, however it ends.

    :param run: the run.
    :param state: ``finished``, ``stopped`` (a plugin asked), ``interrupted`` or ``failed``.
    :param metrics: the last epoch's metrics (empty if no epoch completed).

    Return nothing.
    """


__all__ = ["Register", "hookimpl", "hookspec"]
