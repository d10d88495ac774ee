"""Loading plugins in-process: what ``-vv`` shows of a plugin that fails, the settings read from
the environment, and which plugins a command added by a plugin sees."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from test_plugins import BROKEN, make_distribution

from exptorch import hookimpl
from exptorch.plugins import Plugins, current_plugins, load_plugins


class Raises:
    @hookimpl
    def run_start(self, run: Any) -> None:
        raise ValueError("dashboard unreachable")


class Quiet:
    @hookimpl
    def run_start(self, run: Any) -> None:
        pass


def debug_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]


def test_a_hook_that_raises_is_a_warning_and_its_traceback_a_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="exptorch")
    plugins = load_plugins(entry_points=False, extra=[("flaky", Raises())])
    plugins.notify("run_start", run=None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "plugin 'flaky' (registered in code): hook run_start raised ValueError: dashboard "
        "unreachable"
    ]
    [trace] = debug_records(caplog)
    assert trace.startswith("Traceback (most recent call last):\n")
    assert trace.endswith("ValueError: dashboard unreachable\n") and "in run_start" in trace


def test_a_plugin_that_fails_to_import_is_skipped_with_its_traceback_for_debugging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    site = make_distribution(tmp_path / "site", "expt-broken", {"broken": "broken_plugin"},
                             {"broken_plugin": BROKEN})  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    caplog.set_level(logging.DEBUG, logger="exptorch")
    plugins = load_plugins(environ={})
    [problem] = plugins.problems
    assert str(problem) == (
        "plugin 'broken' (expt-broken): failed to load: ImportError: this plugin needs a "
        "library that is not installed"
    )
    [trace] = [m for m in debug_records(caplog) if "broken_plugin" in m]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert trace.endswith("ImportError: this plugin needs a library that is not installed\n")
    assert "quicknet" in plugins.registry["model"]  # the others loaded


@pytest.mark.parametrize(("value", "autoload"), [("", True), ("0", True), ("1", False)])
def test_autoload_is_off_for_any_value_but_empty_or_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, autoload: bool
) -> None:
    site = make_distribution(tmp_path / "site", "expt-broken", {"broken": "broken_plugin"},
                             {"broken_plugin": BROKEN})  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    plugins = load_plugins(environ={"EXPT_DISABLE_PLUGIN_AUTOLOAD": value})
    assert [p.plugin for p in plugins.problems] == (["broken"] if autoload else [])
    assert "quicknet" in plugins.registry["model"]


@pytest.mark.parametrize(("value", "traced"), [("", False), ("0", False), ("1", True)])
def test_tracing_is_on_for_any_value_but_empty_or_0(
    capsys: pytest.CaptureFixture[str], value: str, traced: bool
) -> None:
    plugins = load_plugins(
        entry_points=False, extra=[("quiet", Quiet())], environ={"EXPT_TRACE_HOOKS": value}
    )
    plugins.notify("run_start", run=None)
    assert ("run_start" in capsys.readouterr().err) is traced


def test_a_plugins_command_sees_the_plugins_of_the_expt_command_it_runs_in() -> None:
    mine = load_plugins(entry_points=False)
    seen: list[Plugins] = []

    @click.group()
    def root() -> None: ...

    @root.command()
    def show() -> None:
        seen.append(current_plugins())

    root.plugins = mine  # type: ignore[attr-defined]  # as ExptGroup holds them
    result = CliRunner().invoke(root, ["show"])
    assert result.exit_code == 0, result.output
    assert seen == [mine]
    outside = current_plugins()  # no command running: the installed ones, loaded afresh
    assert outside is not mine and "quicknet" in outside.registry["model"]
