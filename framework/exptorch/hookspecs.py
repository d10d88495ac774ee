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
def epoch_end(run: RunContext, epoch: int, metrics: Mapping[str, float]) -> None:
    """Called after each epoch's evaluation and checkpoint.

    :param run: the run in progress.
    :param epoch: the epoch that just ended, counting from 1.
    :param metrics: that epoch's metrics (``train_loss``, ``test_loss``,
        ``test_accuracy``, ...). Call ``run.request_stop(reason)`` to end the
        run after this epoch (early stopping, a time budget, ...).

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
