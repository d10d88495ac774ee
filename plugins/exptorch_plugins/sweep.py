"""Command plugin ``sweep``: ``expt sweep run``, ``show`` and ``plot`` (hyperparameter search).

Registered through ``register_commands`` like a third-party command would be. The
commands parse their flags and call plain functions in :mod:`exptorch.sweep`,
:mod:`exptorch.sweep_file` and :mod:`exptorch.sweep_report`; optuna, sqlalchemy and
torch are imported only when a command runs, so ``expt --help`` stays cheap.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import click

from exptorch import ExptError, hookimpl

_RUNS_DIR = click.option(
    "--runs-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("runs"),
    show_default=True,
    help="Folder that holds the sweep's folder.",
)
_STORAGE = click.option(
    "--storage",
    metavar="URL",
    help="Optuna storage shared by every process of the sweep, such as "
    "postgresql://USER:PASSWORD@HOST/DB. [default: sqlite in the sweep folder]",
)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(sweep_group)


def _plugins(ctx: click.Context) -> Any:
    """The plugins the running ``expt`` command loaded."""
    from exptorch import current_plugins

    return current_plugins()


@click.group("sweep")
def sweep_group() -> None:
    """Hyperparameter search with Optuna: every trial is an ordinary run folder.

    \b
    expt sweep run sweep.toml --name lr-search --workers 2
    expt sweep show lr-search
    expt sweep plot lr-search --output plots/
    """


@sweep_group.command("run")
@click.argument("sweep_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", required=True, help="The sweep's name: its folder under --runs-dir.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Trials at once on this machine, in separate processes that split the CPU threads "
    "(with --device cuda, worker i uses cuda:i).",
)
@_RUNS_DIR
@_STORAGE
@click.option("--device", help="Device for every trial (cpu, cuda, cuda:N, mps, auto).")
@click.option("--worker", type=int, hidden=True)
@click.option("--threads", type=int, hidden=True)
@click.option("--session", hidden=True)
@click.pass_context
def run_command(
    ctx: click.Context,
    sweep_file: Path,
    name: str,
    workers: int,
    runs_dir: Path,
    storage: str | None,
    device: str | None,
    worker: int | None,
    threads: int | None,
    session: str | None,
) -> None:
    """Search the [sweep.parameters] of SWEEP_FILE, one run folder per trial in DIR/NAME/.

    SWEEP_FILE is a --config file (base settings, recipes included) with a [sweep]
    table: metric, direction, trials and/or timeout, sampler (grid, random, tpe),
    pruner (none, median, hyperband), seed, and [sweep.parameters]. Stop it with
    Ctrl-C at any time; the same command continues it, resuming interrupted trials
    from their checkpoints, until the budget is spent.
    """
    from exptorch import sweep as sweeping
    from exptorch.sweep_file import read_sweep, resolve_trial
    from exptorch.train import RunInterrupted, parse_device

    plugins = _plugins(ctx)
    quiet = bool(ctx.meta.get("exptorch.quiet"))
    echo = (lambda _: None) if quiet else click.echo
    spec = read_sweep(sweep_file, plugins)
    if device is not None:
        plugins.get("device", parse_device(device)[0])
    base = resolve_trial(spec, plugins, {}, flags={"device": device} if device else None)
    epochs = sweeping.max_epochs(spec, base)
    if worker is not None:  # one of the processes `--workers N` started
        if threads:
            import torch

            torch.set_num_threads(threads)
        url = storage or os.environ.get(sweeping.STORAGE_ENV)
        sweep = sweeping.open_sweep(spec, name=name, runs_dir=runs_dir, storage=url, epochs=epochs)
        try:
            sweeping.work(
                sweep, plugins, worker=worker, device=device, echo=echo,
                session=sweeping.parse_session(session) if session else None,
            )  # fmt: skip
        except RunInterrupted as exc:
            ctx.exit(exc.exit_code)
        return

    devices = sweeping.worker_devices(device or base.device, workers)
    sweep = sweeping.open_sweep(
        spec, name=name, runs_dir=runs_dir, storage=storage, epochs=epochs
    )  # everything is checked before the first trial starts
    echo(sweeping.describe_start(sweep, workers))
    again = _command_again(sweep_file, name, runs_dir, sweep.shown_url if storage else None,
                           workers, device)  # fmt: skip
    run_session = sweeping.Session()
    code = 0
    try:
        if workers == 1:
            sweeping.work(sweep, plugins, session=run_session, device=device, echo=echo)
        else:
            argv = [*(["-q"] if quiet else []), "sweep", "run", str(sweep_file), "--name", name,
                    "--runs-dir", str(runs_dir)]  # fmt: skip
            code = sweeping.launch_workers(
                argv, workers=workers, url=sweep.url, session=run_session, devices=devices
            )
    except RunInterrupted as exc:
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    if code in (130, 143):
        click.echo(
            f"Sweep {name} interrupted; its finished trials are kept and interrupted ones "
            f"resume from their checkpoints. Continue it with: {again}",
            err=True,
        )
        ctx.exit(code)
    if quiet:
        click.echo(sweep.folder)
    else:
        click.echo(sweeping.describe_end(sweep))
    if code:
        ctx.exit(code)


def _command_again(
    sweep_file: Path,
    name: str,
    runs_dir: Path,
    storage: str | None,
    workers: int,
    device: str | None,
) -> str:
    words = ["expt", "sweep", "run", str(sweep_file), "--name", name]
    if runs_dir != Path("runs"):
        words += ["--runs-dir", str(runs_dir)]
    if storage:
        words += ["--storage", storage]
    if workers > 1:
        words += ["--workers", str(workers)]
    if device:
        words += ["--device", device]
    return " ".join(shlex.quote(w) for w in words)


@sweep_group.command("show")
@click.argument("name")
@_RUNS_DIR
@_STORAGE
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show_command(
    ctx: click.Context, name: str, runs_dir: Path, storage: str | None, as_json: bool
) -> None:
    """The leaderboard of sweep NAME and the `expt run` command of its best trial.

    Each trial: its number, parameters, metric, state (complete, pruned, failed,
    running, or interrupted: running, but its process is gone), epochs and time.
    """
    from exptorch.sweep_report import leaderboard, load_study, show_text

    study, canonical, folder = load_study(name, runs_dir, storage)
    board = leaderboard(study, canonical, folder, _plugins(ctx))
    click.echo(json.dumps(board, indent=2, default=str) if as_json else show_text(board))


@sweep_group.command("plot")
@click.argument("name")
@click.option(
    "--output",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the PNG files.",
)
@_RUNS_DIR
@_STORAGE
def plot_command(name: str, output: Path, runs_dir: Path, storage: str | None) -> None:
    """Optimisation history, parameter importances and parallel coordinates of NAME, as PNGs.

    Needs matplotlib: pip install 'exptorch[plot]'.
    """
    from exptorch.sweep_report import load_study, plot_sweep

    study, canonical, _ = load_study(name, runs_dir, storage)
    written, skipped = plot_sweep(study, output, canonical.get("metric"))
    for path in written:
        click.echo(path)
    for reason in skipped:
        click.echo(f"skipped {reason}", err=True)
    if not written:
        raise ExptError(f"No figure could be drawn for sweep {name}.")
