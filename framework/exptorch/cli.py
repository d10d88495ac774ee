"""The ``expt`` command line. Thin: parse and validate here, do the work in plain functions.

Start-up stays cheap: this module imports no torch, torchvision, tensorboard or
wandb, and plugins are loaded on first use of the command group (never as an
import side effect).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from exptorch import __version__
from exptorch.cli_runs import runs_group
from exptorch.config import RunConfig, config_fields, resolve_config
from exptorch.errors import ExptError
from exptorch.plugins import KINDS, Plugins, load_plugins

DEBUG_ENV = "EXPT_DEBUG"


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: int) -> None:
    logger = logging.getLogger("exptorch")
    if not any(getattr(h, "_expt", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        handler._expt = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logger.setLevel(level)


class ExptGroup(click.Group):
    """The top-level group: loads plugins lazily and turns user errors into one sentence."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plugins: Plugins | None = None

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            self._plugins = load_plugins()
            self._plugins.call_each("register_commands", lambda _plugin: {"cli": self})
            add_plugin_options(run_command, self._plugins)
        return self._plugins

    def list_commands(self, ctx: click.Context) -> list[str]:
        _ = self.plugins
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        _ = self.plugins
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ExptError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            last = traceback.extract_tb(exc.__traceback__)[-1]
            raise click.ClickException(
                f"Unexpected {type(exc).__name__}: {exc} (at {Path(last.filename).name}:"
                f"{last.lineno}); this is a bug. Set {DEBUG_ENV}=1 to see the traceback."
            ) from None


@click.group(cls=ExptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="exptorch")
@click.option("-v", "--verbose", count=True, help="More output; -vv for debug output.")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars or epoch lines; `run` prints its folder."
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """exptorch: run PyTorch experiments from plugins.

    \b
    Train the tutorial's CIFAR10-quick net with TensorBoard logging:
        expt run --model quicknet --logger tensorboard
    Offline, on the bundled Fashion-MNIST sample:
        expt run --model quicknet --dataset fashion-mnist-sample --epochs 2
    """
    ctx.meta["exptorch.quiet"] = quiet
    _setup_logging(verbose)


def _click_option(f: Any) -> click.Option:
    default = RunConfig().__getattribute__(f.name)
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    kwargs: dict[str, Any] = {"help": f.metadata["help"], "show_default": default not in (None, [])}
    if f.metadata.get("multiple"):
        kwargs.update(multiple=True, default=(), show_default=False)
    elif isinstance(default, bool):
        kwargs.update(default=default)
    elif f.metadata.get("choices"):
        kwargs.update(type=click.Choice(f.metadata["choices"]), default=default)
    else:
        kind = {"seed": int, "limit_train_batches": int, "limit_eval_batches": int}.get(f.name)
        kwargs.update(type=kind or (type(default) if default is not None else str), default=default)
    return click.Option([flag, f.name], **kwargs)


def add_plugin_options(command: click.Command, plugins: Plugins) -> None:
    """Give ``command`` a flag for every option a plugin declared."""
    taken = {p.name for p in command.params}
    for reg, opt in plugins.options():
        if opt.name in taken:
            continue
        taken.add(opt.name)
        kwargs: dict[str, Any] = {"help": f"[{reg.kind} {reg.name}] {opt.help}".strip()}
        if opt.is_flag:
            kwargs.update(is_flag=True, default=bool(opt.default))
        elif opt.choices:
            kwargs.update(type=click.Choice(list(opt.choices)), default=opt.default)
        else:
            kwargs.update(type=opt.type, default=opt.default)
        kwargs["show_default"] = opt.default is not None
        command.params.append(click.Option([opt.flag, opt.name], **kwargs))


@click.command("run")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file whose keys are these options' names; flags override it.",
)
@click.pass_context
def run_command(ctx: click.Context, config_file: Path | None, **flags: Any) -> None:
    """Train a model and test it after every epoch.

    Writes runs/NAME/ with config.json, metrics.jsonl, a checkpoint per epoch
    and the loggers' files. A NAME that exists is refused, never overwritten.
    """
    from click.core import ParameterSource

    from exptorch.train import run_experiment

    explicit = [
        name
        for name in flags
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
    ]
    flags["logger"] = list(flags.get("logger") or [])
    plugins = _plugins(ctx)
    config = resolve_config(
        flags,
        explicit=explicit,
        config_file=config_file,
        plugin_options=[opt for _, opt in plugins.options()],
    )
    if ctx.meta.get("exptorch.quiet"):  # warnings and errors still reach stderr
        click.echo(run_experiment(config, plugins, echo=lambda _: None, progress=False))
    else:
        run_experiment(config, plugins, echo=click.echo)


for _field in reversed(config_fields()):
    run_command.params.insert(0, _click_option(_field))
cli.add_command(run_command)
cli.add_command(runs_group)


def _plugins(ctx: click.Context) -> Plugins:
    root = ctx.find_root().command
    assert isinstance(root, ExptGroup)
    return root.plugins


def describe_plugins(plugins: Plugins) -> dict[str, Any]:
    """What ``expt plugins --json`` prints: every plugin, what it registered, and problems."""
    registered: dict[str, dict[str, list[str]]] = {}
    for kind, table in plugins.registry.items():
        for reg in table.values():
            registered.setdefault(reg.plugin, {}).setdefault(kind, []).append(reg.name)
    rows = []
    for name, plugin in plugins.pm.list_name_plugin():
        if plugin is None:
            continue
        source = plugins.source(name)
        rows.append(
            {
                "name": name,
                "distribution": source.distribution,
                "version": source.version,
                "hooks": sorted(h.name for h in plugins.pm.get_hookcallers(plugin) or []),
                "registered": registered.get(name, {}),
            }
        )
    return {
        "plugins": rows,
        "problems": [
            {"plugin": p.plugin, "distribution": p.distribution, "message": p.message}
            for p in plugins.problems
        ],
    }


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List installed plugins, what each registered, and any that failed."""
    plugins = _plugins(ctx)
    info = describe_plugins(plugins)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for row in info["plugins"]:
        version = f" {row['version']}" if row["version"] else ""
        click.echo(f"{row['name']} ({row['distribution']}{version})")
        for kind in KINDS:
            names = row["registered"].get(kind)
            if names:
                click.echo(f"  {kind + 's:':20} {', '.join(sorted(names))}")
        other = [h for h in row["hooks"] if not h.startswith("register_")]
        if other:
            click.echo(f"  {'hooks:':20} {', '.join(other)}")
    for problem in info["problems"]:
        click.secho(
            f"error: plugin {problem['plugin']!r} ({problem['distribution']}): "
            f"{problem['message']}",
            fg="red",
            err=True,
        )


def main() -> None:
    cli(prog_name="expt")
