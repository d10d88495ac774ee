"""Test helpers for plugin authors: an isolated plugin manager, a tiny dataset, in-process runs.

exptorch registers this module as a pytest plugin (the ``pytest11`` entry point
``exptorch``), so in any environment where exptorch is installed these fixtures
are available without an import:

``expt_plugin``
    The plugin under test. **Override it** in your ``conftest.py`` to return your
    plugin module (or an instance, or a list of them, or ``(name, plugin)`` pairs).
``expt_plugins``
    An isolated plugin manager: exptorch's built-in plugins, the tiny dataset
    ``tiny-fashion-mnist`` and your plugin, and nothing else that happens to be
    installed. A plugin that fails to register fails the test with its problems.
``expt_splits``
    A tiny real dataset: the first 512 training and 128 test images of the
    bundled Fashion-MNIST sample (1 x 28 x 28, 10 classes), as :class:`~exptorch.Splits`.
``expt_run``
    ``expt_run(**options) -> pathlib.Path``: runs ``expt run`` in-process with
    ``expt_plugins`` and returns the run folder. Options are ``expt run``'s
    option names in snake_case (your plugin's options included), and default to
    one epoch of the tiny dataset on the CPU with seed 0, in a temporary folder.

The same helpers are plain functions too (:func:`make_plugins`, :func:`tiny_splits`,
:func:`run_expt`), for use outside pytest. With ``-p no:exptorch`` pytest does not
load the fixtures. Importing this module is cheap: it imports neither torch nor
any plugin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from exptorch.hookspecs import Register, hookimpl
from exptorch.plugins import DISABLE_ENV, NO_AUTOLOAD_ENV, Plugins, load_plugins
from exptorch.types import Splits

if TYPE_CHECKING:
    from exptorch.config import RunConfig

#: The name of the tiny dataset that :func:`make_plugins` registers.
TINY_DATASET = "tiny-fashion-mnist"

#: What :func:`run_expt` uses unless told otherwise: quick, deterministic, on the CPU.
RUN_DEFAULTS: dict[str, Any] = {
    "dataset": TINY_DATASET,
    "device": "cpu",
    "epochs": 1,
    "batch_size": 64,
    "seed": 0,
    "log_every": 4,
}

PluginSpec = object  # a module or instance, or a (name, plugin) pair


def tiny_splits(train: int = 512, test: int = 128) -> Splits:
    """The first ``train`` training and ``test`` test images of the bundled Fashion-MNIST sample.

    Real images and labels (all ten classes occur in any slice of 100 or more),
    ``uint8``, shape ``(N, 1, 28, 28)``; read from exptorch's own files, no network.
    """
    sample = load_plugins(environ={NO_AUTOLOAD_ENV: "1"}).get("dataset", "fashion-mnist-sample")
    full: Splits = sample.factory(data_dir=Path("."), download=False)
    return dataclasses.replace(
        full,
        train_images=full.train_images[:train].clone(),
        train_labels=full.train_labels[:train].clone(),
        test_images=full.test_images[:test].clone(),
        test_labels=full.test_labels[:test].clone(),
    )


class TinyDatasetPlugin:
    """Registers :data:`TINY_DATASET`, the slice :func:`tiny_splits` returns."""

    @hookimpl
    def register_datasets(self, register: Register) -> None:
        def load(**_: Any) -> Splits:
            return tiny_splits()

        register(TINY_DATASET, load, description="512/128 images of the Fashion-MNIST sample")


def _named(plugin: PluginSpec) -> tuple[str, object]:
    if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
        return plugin[0], plugin[1]
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    return str(name).rpartition(".")[2], plugin


def make_plugins(
    *plugins: PluginSpec,
    builtins: bool = True,
    tiny_dataset: bool = True,
    strict: bool = True,
    environ: dict[str, str] | None = None,
) -> Plugins:
    """An isolated plugin manager holding exactly the plugins a test names.

    :param plugins: plugin modules or objects, or ``(name, plugin)`` pairs; a module
        is registered under the last part of its ``__name__``.
    :param builtins: also load exptorch's built-in plugins (devices, datasets,
        quicknet, ...), as ``expt`` would. Third-party plugins that happen to be
        installed are never loaded.
    :param tiny_dataset: also register the dataset :data:`TINY_DATASET`.
    :param strict: raise ``AssertionError`` listing the problems when any plugin
        fails to register, raises in a registration hook or clashes with another.
    :param environ: ``EXPT_*`` settings, e.g. ``{"EXPT_TRACE_HOOKS": "1"}``.
    """
    env = {**(environ or {}), NO_AUTOLOAD_ENV: "1"}
    extra = [_named(p) for p in plugins]
    if tiny_dataset:
        extra.insert(0, ("tiny_dataset", TinyDatasetPlugin()))
    if not builtins:
        builtin_names = [ep for ep in _builtin_plugin_names() if ep not in dict(extra)]
        env[DISABLE_ENV] = ",".join([*builtin_names, env.get(DISABLE_ENV, "")])
    manager = load_plugins(extra=extra, environ=env)
    if strict:
        _ = manager.registry  # run the registration hooks now, so their problems surface here
        if manager.problems:
            raise AssertionError(
                "plugin problems:\n" + "\n".join(f"  {p}" for p in manager.problems)
            )
    return manager


def _builtin_plugin_names() -> list[str]:
    from importlib import metadata

    from exptorch.plugins import ENTRY_POINT_GROUP, PROJECT_NAME

    return [
        ep.name
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.metadata["Name"] == PROJECT_NAME
    ]


def run_config(plugins: Plugins, runs_dir: Path, **options: Any) -> RunConfig:
    """The configuration ``expt run`` would resolve from these options (snake_case names)."""
    from exptorch.config import config_fields, resolve_config

    values = {**RUN_DEFAULTS, "runs_dir": str(runs_dir), **options}
    plugin_options = [opt for _, opt in plugins.options()]
    known = {f.name for f in config_fields()} | {opt.name for opt in plugin_options}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(
            f"unknown expt run option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if isinstance(values.get("logger"), str):
        values["logger"] = [values["logger"]]
    return resolve_config(values, explicit=list(values), plugin_options=plugin_options)


def run_expt(
    plugins: Plugins,
    runs_dir: Path,
    *,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> Path:
    """Run ``expt run`` in-process with ``plugins`` and return the run folder.

    ``options`` are ``expt run``'s options in snake_case (``batch_size=32``,
    ``logger=["tensorboard"]``, your plugin's own options); unnamed ones take
    :data:`RUN_DEFAULTS`, then ``expt run``'s defaults. A user mistake raises
    :class:`~exptorch.ExptError` with the sentence the CLI would print. Without
    ``name``, runs are named ``run-1``, ``run-2``, ... in ``runs_dir``.
    """
    from exptorch.train import run_experiment

    if options.get("name") is None:
        taken = {p.name for p in runs_dir.iterdir()} if runs_dir.is_dir() else set()
        options["name"] = next(
            f"run-{i}" for i in range(1, len(taken) + 2) if f"run-{i}" not in taken
        )
    config = run_config(plugins, runs_dir, **options)
    return run_experiment(config, plugins, echo=echo, progress=False)


def resume_expt(
    plugins: Plugins,
    run_dir: Path,
    *,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> Path:
    """Run ``expt run --resume RUN_DIR`` in-process, with ``options`` given as flags.

    The run continues with its own recorded settings; ``options`` (``epochs=4``,
    ``lr=0.01``, ...) override them as flags given with ``--resume`` would.
    """
    from exptorch.config import resolve_config
    from exptorch.train import find_resume_point, run_experiment

    point = find_resume_point(plugins, run_dir)
    config = resolve_config(
        {"logger": [], **options},
        explicit=list(options),
        plugin_options=[opt for _, opt in plugins.options()],
        base=point.config,
    )
    return run_experiment(config, plugins, echo=echo, progress=False, resume=point)


# --- pytest fixtures --------------------------------------------------------------------------


@pytest.fixture
def expt_plugin() -> PluginSpec | Iterable[PluginSpec] | None:
    """The plugin under test; override this fixture to return your plugin module."""
    return None


@pytest.fixture
def expt_plugins(expt_plugin: PluginSpec | Iterable[PluginSpec] | None) -> Plugins:
    """An isolated plugin manager: built-ins, the tiny dataset and ``expt_plugin``."""
    if expt_plugin is None:
        chosen: list[PluginSpec] = []
    elif isinstance(expt_plugin, (list, tuple)) and not _is_pair(expt_plugin):
        chosen = list(expt_plugin)
    else:
        chosen = [expt_plugin]
    return make_plugins(*chosen)


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)


@pytest.fixture
def expt_splits() -> Splits:
    """A tiny real dataset (see :func:`tiny_splits`)."""
    return tiny_splits()


@pytest.fixture
def expt_run(expt_plugins: Plugins, tmp_path: Path) -> Callable[..., Path]:
    """``expt_run(**options) -> Path``: ``expt run`` in-process; returns the run folder."""

    def run(**options: Any) -> Path:
        return run_expt(expt_plugins, tmp_path / "runs", **options)

    return run


__all__ = [
    "RUN_DEFAULTS",
    "TINY_DATASET",
    "TinyDatasetPlugin",
    "expt_plugin",
    "expt_plugins",
    "expt_run",
    "expt_splits",
    "make_plugins",
    "resume_expt",
    "run_config",
    "run_expt",
    "tiny_splits",
]
