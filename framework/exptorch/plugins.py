"""The plugin manager: loads plugins from entry points and builds the registry.

Nothing here runs at import time. :func:`load_plugins` builds a fresh manager;
the CLI calls it once per process and tests build their own isolated ones.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from exptorch import hookspecs
from exptorch.errors import ExptError, describe
from exptorch.types import Option

log = logging.getLogger("exptorch")

ENTRY_POINT_GROUP = "exptorch"
PROJECT_NAME = "exptorch"
#: Comma-separated plugin names that are not loaded at all.
DISABLE_ENV = "EXPT_DISABLE_PLUGINS"
#: Set to 1 to load only exptorch's own built-in plugins (for debugging a broken install).
NO_AUTOLOAD_ENV = "EXPT_DISABLE_PLUGIN_AUTOLOAD"
#: Set to 1 to print every hook call and its result to stderr.
TRACE_ENV = "EXPT_TRACE_HOOKS"

#: What each registration hook registers, keyed by the singular noun used in messages.
KINDS: dict[str, str] = {
    "model": "register_models",
    "dataset": "register_datasets",
    "device": "register_devices",
    "logger": "register_loggers",
    "checkpoint format": "register_checkpoint_formats",
    "optimizer": "register_optimizers",
    "schedule": "register_schedules",
    "loss": "register_losses",
    "transform": "register_transforms",
    "metric": "register_metrics",
    "callback": "register_callbacks",
}


@dataclass(frozen=True)
class Registration:
    """One named thing a plugin registered."""

    kind: str
    name: str
    factory: Any
    plugin: str
    description: str = ""
    options: tuple[Option, ...] = ()


@dataclass
class PluginProblem:
    """A plugin that failed to load, raised in a hook, or clashed with another."""

    plugin: str
    distribution: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} ({self.distribution}): {self.message}"


@dataclass
class PluginSource:
    """Where a plugin came from."""

    distribution: str = "registered in code"
    version: str = ""


@dataclass
class Plugins:
    """A plugin manager plus what was loaded, what failed, and the registry of names."""

    pm: pluggy.PluginManager
    sources: dict[str, PluginSource] = field(default_factory=dict)
    problems: list[PluginProblem] = field(default_factory=list)
    _registry: dict[str, dict[str, Registration]] | None = None
    _clashes: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    # -- loading ---------------------------------------------------------------------------

    def add(self, plugin: object, name: str, source: PluginSource | None = None) -> None:
        """Register a plugin object (a module or an instance) under ``name``."""
        if self.pm.is_blocked(name):
            return
        if self.pm.has_plugin(name):
            other = self.sources.get(name, PluginSource()).distribution
            mine = (source or PluginSource()).distribution
            self.problems.append(
                PluginProblem(name, mine, f"not loaded: the name is already taken by {other}")
            )
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validates hook names and signatures here
            self.problems.append(
                PluginProblem(name, (source or PluginSource()).distribution, describe(exc))
            )
            return
        self.sources[name] = source or PluginSource()
        self._registry = None

    def remove(self, name: str) -> None:
        """Unregister the plugin ``add`` registered under ``name`` (nothing if there is none)."""
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
            self.sources.pop(name, None)
            self._registry = None

    def source(self, name: str) -> PluginSource:
        return self.sources.get(name, PluginSource())

    # -- calling hooks ---------------------------------------------------------------------

    def call_each(self, hook_name: str, make_kwargs: Callable[[str], dict[str, Any]]) -> None:
        """Call ``hook_name`` once per implementing plugin, isolating failures.

        A plugin whose hook raises is reported with its name and distribution;
        the other plugins are still called.
        """
        caller = getattr(self.pm.hook, hook_name)
        all_plugins = [p for _, p in self.pm.list_name_plugin() if p is not None]
        for impl in caller.get_hookimpls():
            others = [p for p in all_plugins if p is not impl.plugin]
            subset = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                subset(**make_kwargs(impl.plugin_name))
            except ExptError:
                raise
            except Exception as exc:
                problem = PluginProblem(
                    impl.plugin_name,
                    self.source(impl.plugin_name).distribution,
                    f"hook {hook_name} raised {describe(exc)}",
                )
                self.problems.append(problem)
                log.warning("%s", problem)
                log.debug("%s", "".join(traceback.format_exception(exc)))

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook on every plugin; a plugin that raises is reported, not fatal."""
        self.call_each(hook_name, lambda _plugin: kwargs)

    # -- the registry ----------------------------------------------------------------------

    @property
    def registry(self) -> dict[str, dict[str, Registration]]:
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> dict[str, dict[str, Registration]]:
        registry: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        self._clashes = {}
        for kind, hook_name in KINDS.items():
            table = registry[kind]

            def make_kwargs(
                plugin: str, kind: str = kind, table: dict[str, Registration] = table
            ) -> dict[str, Any]:
                def register(
                    name: str,
                    factory: Any,
                    *,
                    description: str = "",
                    options: Sequence[Option] = (),
                ) -> None:
                    if name in table:
                        self._clashes.setdefault((kind, name), [table[name].plugin]).append(plugin)
                        first = table[name].plugin
                        self.problems.append(
                            PluginProblem(
                                plugin,
                                self.source(plugin).distribution,
                                f"{kind} {name!r} is already registered by plugin {first!r} "
                                f"({self.source(first).distribution}); this registration is "
                                "ignored and the name cannot be used until one of them is "
                                f"disabled with {DISABLE_ENV}",
                            )
                        )
                        return
                    table[name] = Registration(
                        kind, name, factory, plugin, description, tuple(options)
                    )

                return {"register": register}

            self.call_each(hook_name, make_kwargs)
        return registry

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry[kind])

    def get(self, kind: str, name: str) -> Registration:
        """The registration for ``name``, or an :class:`ExptError` listing what is available."""
        table = self.registry[kind]
        clash = self._clashes.get((kind, name))
        if clash:
            who = " and ".join(f"{p!r} ({self.source(p).distribution})" for p in clash)
            raise ExptError(
                f"{kind} {name!r} is registered by more than one plugin: {who}; "
                f"disable all but one with {DISABLE_ENV}=NAME."
            )
        if name not in table:
            available = ", ".join(sorted(table)) or "none"
            raise ExptError(f"Unknown {kind} {name!r}; available: {available}.")
        return table[name]

    def options(self) -> list[tuple[Registration, Option]]:
        """Every plugin-declared option, with the registration that declared it."""
        return [
            (reg, opt)
            for table in self.registry.values()
            for reg in table.values()
            for opt in reg.options
        ]


def _env_list(value: str | None) -> set[str]:
    return {item.strip() for item in (value or "").split(",") if item.strip()}


def _ordered_entry_points() -> list[tuple[str, str, metadata.EntryPoint]]:
    """Entry points in load order: exptorch's built-ins first, then others by distribution.

    The order is what decides a clash: the plugin registered first keeps a name,
    and the later one is reported (see :meth:`Plugins.get`).
    """
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "(unknown distribution)"
        found.append((dist_name, dist.version if dist is not None else "", ep))
    return sorted(found, key=lambda item: (item[0] != PROJECT_NAME, item[0], item[2].name))


def load_plugins(
    *,
    entry_points: bool = True,
    extra: Iterable[tuple[str, object]] = (),
    environ: dict[str, str] | None = None,
) -> Plugins:
    """Build a plugin manager with the hook specs and load plugins into it.

    :param entry_points: load every plugin in the ``exptorch`` entry-point group,
        one at a time; one that fails to import is reported and skipped.
    :param extra: ``(name, plugin)`` pairs registered after the entry points
        (tests use this for small plugin classes).
    :param environ: the environment to read ``EXPT_*`` settings from.
    """
    env = os.environ if environ is None else environ
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm)
    for name in _env_list(env.get(DISABLE_ENV)):
        pm.set_blocked(name)
    if env.get(TRACE_ENV, "") not in ("", "0"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()

    if entry_points:
        only_builtin = env.get(NO_AUTOLOAD_ENV, "") not in ("", "0")
        for dist_name, version, ep in _ordered_entry_points():
            if pm.is_blocked(ep.name) or (only_builtin and dist_name != PROJECT_NAME):
                continue
            source = PluginSource(dist_name, version)
            try:
                plugin = ep.load()
            except Exception as exc:
                problem = PluginProblem(ep.name, dist_name, f"failed to load: {describe(exc)}")
                plugins.problems.append(problem)
                log.debug("%s", "".join(traceback.format_exception(exc)))
                continue
            plugins.add(plugin, ep.name, source)

    for name, plugin in extra:
        plugins.add(plugin, name)
    _drop_invalid(plugins)
    return plugins


def current_plugins() -> Plugins:
    """The plugins of the running ``expt`` command (loaded once), for commands plugins add.

    Outside an ``expt`` command it loads them afresh from the entry points.
    """
    import click

    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().command if ctx is not None else None
    plugins = getattr(root, "plugins", None)
    return plugins if isinstance(plugins, Plugins) else load_plugins()


def _drop_invalid(plugins: Plugins) -> None:
    """Unregister plugins that implement hooks no spec defines, reporting each one."""
    while True:
        try:
            plugins.pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = plugins.pm.get_name(exc.plugin) or repr(exc.plugin)
            plugins.pm.unregister(exc.plugin)
            plugins.problems.append(
                PluginProblem(name, plugins.source(name).distribution, describe(exc))
            )
