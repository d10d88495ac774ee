"""The ``expt`` command line. Thin: parse and validate here, do the work in plain functions.

Start-up stays cheap: this module imports no torch, torchvision, tensorboard or
wandb, and plugins are loaded on first use of the command group (never as an
import side effect).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from exptorch import __version__
from exptorch.cli_runs import runs_group
from exptorch.config import RunConfig, config_fields, resolve_config
from exptorch.errors import ExptError
from exptorch.plugins import KINDS, Plugins, load_plugins
from exptorch.program import normal_interrupts, quiet_interrupts

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
        self._adding_for: str | None = None
        #: Which plugin added each command (``expt plugins`` lists them).
        self.command_plugins: dict[str, str] = {}

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(cmd, name)
        if self._adding_for is not None:
            self.command_plugins[name or str(cmd.name)] = self._adding_for

    def _cli_for(self, plugin: str) -> dict[str, Any]:
        self._adding_for = plugin
        return {"cli": self}

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            self._plugins = load_plugins()
            try:
                self._plugins.call_each("register_commands", self._cli_for)
            finally:
                self._adding_for = None
            add_plugin_options(run_command, self._plugins)
            add_plugin_options(eval_command, self._plugins, kinds=("dataset",))
        return self._plugins

    def list_commands(self, ctx: click.Context) -> list[str]:
        _ = self.plugins
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        _ = self.plugins
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        # Until now (start-up, options, help, loading plugins outside a command) a Ctrl-C has
        # nothing to clean up and exits at once; a command gets Python's KeyboardInterrupt.
        normal_interrupts()
        try:
            return super().invoke(ctx)
        except ExptError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:
            click.echo("Interrupted.", err=True)
            ctx.exit(128 + getattr(exc, "signum", signal.SIGINT))
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
    if verbose > 1:  # -vv: every hook call, as pluggy traces it
        log = logging.getLogger("exptorch")
        manager = _plugins(ctx).pm
        manager.trace.root.setwriter(lambda text: log.debug("hook %s", text.strip()))
        manager.enable_tracing()


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


def add_plugin_options(
    command: click.Command, plugins: Plugins, kinds: tuple[str, ...] | None = None
) -> None:
    """Give ``command`` a flag for every option a plugin declared (for ``kinds`` only, if given)."""
    taken = {p.name for p in command.params}
    for reg, opt in plugins.options():
        if opt.name in taken or (kinds is not None and reg.kind not in kinds):
            continue
        taken.add(opt.name)
        kwargs: dict[str, Any] = {"help": f"[{reg.kind} {reg.name}] {opt.help}".strip()}
        # an on/off switch for a flag, so that one that defaults to on can be turned off
        flag = f"{opt.flag}/{opt.off_flag}" if opt.is_flag else opt.flag
        if opt.is_flag:
            kwargs.update(default=bool(opt.default))
        elif opt.choices:
            kwargs.update(type=click.Choice(list(opt.choices)), default=opt.default)
        else:
            kwargs.update(type=opt.type, default=opt.default)
        kwargs["show_default"] = opt.default is not None
        command.params.append(click.Option([flag, opt.name], **kwargs))


@click.command("run")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file whose keys are these options' names; flags override it.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue RUN_FOLDER (or its newest checkpoint) from where it stopped, in the same "
    "folder, with its own settings; --epochs is the total.",
)
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow --resume to load a full (pickled) checkpoint, which runs code from the file.",
)
@click.pass_context
def run_command(
    ctx: click.Context,
    /,
    config_file: Path | None,
    resume: Path | None,
    trust_checkpoint: bool,
    **flags: Any,
) -> None:
    """Train a model and test it after every epoch.

    Writes runs/NAME/ with config.json, metrics.jsonl, a checkpoint per epoch
    and the loggers' files. A NAME that exists is refused, never overwritten.
    Ctrl-C or SIGTERM stops after the current step with a checkpoint to --resume.
    """
    with quiet_interrupts():  # nothing is written until run_experiment records signals
        from exptorch.train import RunInterrupted, find_resume_point, run_experiment

        explicit = _given(ctx, flags)
        flags["logger"] = list(flags.get("logger") or [])
        plugins = _plugins(ctx)
        point = None
        if resume is not None:
            point = find_resume_point(plugins, resume, trust=trust_checkpoint)
        config = resolve_config(
            flags,
            explicit=explicit,
            config_file=config_file,
            plugin_options=[opt for _, opt in plugins.options()],
            base=_unmasked(point.config) if point else None,
        )
    if config.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        # Re-run this very command in N processes under torch.distributed.run; each one
        # sees LOCAL_RANK and trains its share (see exptorch.distributed).
        from exptorch.distributed import launch

        if point is not None:
            point.release()  # rank 0 takes the run folder's lock

        ctx.exit(launch(config.nproc_per_node, sys.argv[1:]))
    quiet = ctx.meta.get("exptorch.quiet")  # warnings and errors still reach stderr
    try:
        if quiet:
            folder = run_experiment(
                config, plugins, echo=lambda _: None, progress=False, resume=point
            )
            click.echo(folder)
        else:
            run_experiment(config, plugins, echo=click.echo, resume=point)
    except RunInterrupted as exc:
        click.echo(str(exc), err=True)
        ctx.exit(exc.exit_code)


def _given(ctx: click.Context, names: Iterable[str]) -> list[str]:
    """Which of ``names`` the user set on the command line (not left at their defaults)."""
    from click.core import ParameterSource

    return [
        name
        for name in names
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
    ]


def _unmasked(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config without the values that were redacted when it was written."""
    from exptorch.secrets import MASK

    kept = {k: v for k, v in saved.items() if v != MASK}
    kept["options"] = {k: v for k, v in (saved.get("options") or {}).items() if v != MASK}
    return kept


_CHECKPOINT = click.option(
    "--checkpoint",
    "checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="A checkpoint file, or a run folder (its newest checkpoint).",
)
_TRUST = click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow a full (pickled) checkpoint, which runs code from the file when loaded.",
)
_DEVICE = click.option(
    "--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, mps or auto."
)


@click.command("predict")
@_CHECKPOINT
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", default=1, show_default=True, help="Show the K most probable classes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_DEVICE
@_TRUST
@click.pass_context
def predict_command(
    ctx: click.Context,
    checkpoint: Path,
    images: tuple[Path, ...],
    top: int,
    as_json: bool,
    device: str,
    trust_checkpoint: bool,
) -> None:
    """Classify IMAGES (files or folders) with a saved model.

    Each image is converted to the model's channels, resized to its input size
    and normalised as in training. Files that cannot be read are reported by
    name, the others are still classified, and the exit status is then 1.
    """
    from exptorch.predict import predict_files
    from exptorch.rundir import dumps

    result = predict_files(
        _plugins(ctx), checkpoint, images, top=top, device=device, trust=trust_checkpoint
    )
    if as_json:
        click.echo(dumps(result.to_dict(), indent=2))
    elif result.predictions:
        click.echo(result.format())
    for _file, error in result.failures:
        click.echo(f"error: {error}", err=True)
    if result.failures:
        ctx.exit(1)


@click.command("eval")
@_CHECKPOINT
@click.option("--dataset", help="Dataset to test on. [default: the checkpoint's]")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Folder holding the datasets. [default: the checkpoint's, or the per-user cache]",
)
@click.option("--batch-size", default=256, show_default=True, help="Images per batch.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--download/--no-download", default=True, help="Download a missing dataset.")
@_DEVICE
@_TRUST
@click.pass_context
def eval_command(
    ctx: click.Context,
    /,
    checkpoint: Path,
    dataset: str | None,
    data_dir: Path | None,
    batch_size: int,
    as_json: bool,
    download: bool,
    device: str,
    trust_checkpoint: bool,
    **options: Any,
) -> None:
    """Test a saved model: loss, accuracy, per-class accuracy and a confusion matrix.

    The dataset and its options are the checkpoint's unless given here.
    """
    from exptorch.evaluate import evaluate_checkpoint, format_report
    from exptorch.rundir import dumps

    given = {name: options[name] for name in _given(ctx, options)}
    report = evaluate_checkpoint(
        _plugins(ctx), checkpoint, dataset=dataset, data_dir=data_dir, options=given,
        device=device, batch_size=batch_size, download=download, trust=trust_checkpoint,
    )  # fmt: skip
    click.echo(dumps(report, indent=2) if as_json else format_report(report))


for _field in reversed(config_fields()):
    run_command.params.insert(0, _click_option(_field))
cli.add_command(run_command)


@cli.command("recipes")
@click.argument("name", required=False)
def recipes_command(name: str | None) -> None:
    """List the bundled recipes for `expt run --recipe`, or show one's settings."""
    from exptorch.config import read_recipe, recipe_names

    for recipe in [name] if name else recipe_names():
        settings = read_recipe(recipe)
        click.echo(f"{recipe}: " + ", ".join(f"{k}={v}" for k, v in settings.items()))


cli.add_command(predict_command)
cli.add_command(eval_command)
cli.add_command(runs_group)


def _plugins(ctx: click.Context) -> Plugins:
    root = ctx.find_root().command
    assert isinstance(root, ExptGroup)
    return root.plugins


def _command_plugins() -> dict[str, str]:
    """Which plugin added each ``expt`` command (through ``register_commands``)."""
    return dict(getattr(cli, "command_plugins", {}))


def describe_plugins(plugins: Plugins) -> dict[str, Any]:
    """What ``expt plugins --json`` prints: every plugin, what it registered, and problems."""
    registered: dict[str, dict[str, list[str]]] = {}
    for kind, table in plugins.registry.items():
        for reg in table.values():
            registered.setdefault(reg.plugin, {}).setdefault(kind, []).append(reg.name)
    for command, owner in sorted(_command_plugins().items()):
        registered.setdefault(owner, {}).setdefault("command", []).append(command)
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


@cli.group("plugins", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List installed plugins, what each registered, and any that failed.

    `expt plugins show NAME` describes one plugin and its options.
    """
    if ctx.invoked_subcommand is not None:
        return
    plugins = _plugins(ctx)
    info = describe_plugins(plugins)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for row in info["plugins"]:
        version = f" {row['version']}" if row["version"] else ""
        click.echo(f"{row['name']} ({row['distribution']}{version})")
        for kind, hook in (*KINDS.items(), ("command", "register_commands")):
            names = row["registered"].get(kind)
            if names:  # the plural as the hook spells it: losses, checkpoint formats
                plural = hook.removeprefix("register_").replace("_", " ")
                click.echo(f"  {plural + ':':20} {', '.join(sorted(names))}")
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


def describe_plugin(plugins: Plugins, name: str) -> dict[str, Any]:
    """What ``expt plugins show NAME`` prints: one plugin's registrations and their options."""
    owners = {reg.name: reg.plugin for table in plugins.registry.values() for reg in table.values()}
    plugin = name if plugins.pm.has_plugin(name) else owners.get(name)
    if plugin is None or not plugins.pm.has_plugin(plugin):
        known = ", ".join(sorted(n for n, p in plugins.pm.list_name_plugin() if p is not None))
        raise ExptError(f"No plugin or registered name {name!r}; plugins: {known}.")
    source = plugins.source(plugin)
    registrations = [
        {
            "kind": reg.kind,
            "name": reg.name,
            "description": reg.description,
            "options": [
                {
                    "flag": opt.flag,
                    "key": opt.name,
                    "type": "flag" if opt.is_flag else opt.type.__name__,
                    "default": opt.default,
                    "choices": list(opt.choices) if opt.choices else None,
                    "help": opt.help,
                }
                for opt in reg.options
            ],
        }
        for table in plugins.registry.values()
        for reg in table.values()
        if reg.plugin == plugin
    ]
    for command, owner in sorted(_command_plugins().items()):
        if owner == plugin:
            help_text = (
                (cli.commands[command].get_short_help_str(80)) if command in cli.commands else ""
            )
            registrations.append(
                {"kind": "command", "name": command, "description": help_text, "options": []}
            )
    hooks = plugins.pm.get_hookcallers(plugins.pm.get_plugin(plugin)) or []
    return {
        "name": plugin,
        "distribution": source.distribution,
        "version": source.version,
        "hooks": sorted(h.name for h in hooks),
        "registered": registrations,
        "problems": [p.message for p in plugins.problems if p.plugin == plugin],
    }


@plugins_command.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def plugins_show_command(ctx: click.Context, name: str, as_json: bool) -> None:
    """Describe plugin NAME (or the plugin that registered NAME): what it adds, and its options."""
    info = describe_plugin(_plugins(ctx), name)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    version = f" {info['version']}" if info["version"] else ""
    click.echo(f"{info['name']} ({info['distribution']}{version})")
    for reg in info["registered"]:
        click.echo(f"  {reg['kind']} {reg['name']}: {reg['description']}")
        for opt in reg["options"]:
            names = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT"}
            kind = "|".join(opt["choices"]) if opt["choices"] else names.get(opt["type"], "")
            default = "" if opt["default"] is None else f" [default: {opt['default']}]"
            click.echo(f"    {opt['flag']} {kind}{default}".replace("  ", " "))
            click.echo(f"        {opt['help']} (config key: {opt['key']})")
    other = [h for h in info["hooks"] if not h.startswith("register_")]
    if other:
        click.echo(f"  hooks: {', '.join(other)}")
    for problem in info["problems"]:
        click.secho(f"error: {problem}", fg="red", err=True)


def main() -> None:
    """The ``expt`` program: a Ctrl-C at any moment ends it without a traceback."""
    try:
        cli(prog_name="expt")
    except SystemExit:
        # The command is done; a Ctrl-C now would only interrupt the interpreter's
        # shutdown (torch's threads, atexit handlers) with a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise
