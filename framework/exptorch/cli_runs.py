"""``expt runs``: list, show, compare and plot runs from their folders (no torch import)."""

from __future__ import annotations

from pathlib import Path

import click

from exptorch import runs as runs_lib

runs_dir_option = click.option(
    "--runs-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("runs"),
    show_default=True,
    help="Folder that holds run folders.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group("runs")
def runs_group() -> None:
    """Look at finished and running runs: list, show, compare, plot."""


@runs_group.command("list")
@runs_dir_option
@json_option
def list_command(runs_dir: Path, as_json: bool) -> None:
    """Every run: name, model, dataset, epochs, best test accuracy and state.

    State is finished, stopped, running, interrupted, failed, or crashed (state.json
    says running, but its process is gone).
    """
    runs = runs_lib.list_runs(runs_dir)
    if as_json:
        click.echo(runs_lib.to_json([r.summary() for r in runs]))
    elif runs:
        click.echo(runs_lib.list_table(runs))
    else:
        click.echo(f"no runs in {runs_dir}")


@runs_group.command("show")
@click.argument("name")
@runs_dir_option
@json_option
def show_command(name: str, runs_dir: Path, as_json: bool) -> None:
    """One run's state, configuration and per-epoch metrics."""
    run = runs_lib.find_run(runs_dir, name)
    click.echo(runs_lib.to_json(run.details()) if as_json else runs_lib.show_text(run))


@runs_group.command("compare")
@click.argument("names", nargs=-1, required=True)
@runs_dir_option
@json_option
def compare_command(names: tuple[str, ...], runs_dir: Path, as_json: bool) -> None:
    """Runs side by side: the settings that differ, epochs, best and final metrics."""
    comparison = runs_lib.compare([runs_lib.find_run(runs_dir, n) for n in names])
    click.echo(runs_lib.to_json(comparison) if as_json else runs_lib.compare_text(comparison))


@runs_group.command("plot")
@click.argument("names", nargs=-1, required=True)
@runs_dir_option
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("curves.png"),
    show_default=True,
    help="Image file to write (.png, .svg or .pdf).",
)
def plot_command(names: tuple[str, ...], runs_dir: Path, output: Path) -> None:
    """Loss and accuracy curves of several runs in one picture (needs matplotlib)."""
    runs = [runs_lib.find_run(runs_dir, n) for n in names]
    click.echo(f"wrote {runs_lib.plot(runs, output)}")
