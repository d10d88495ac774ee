"""A plugin's options as ``expt`` flags: their type, choices, default, on/off form and help,
only for the kinds a command asks for; and ``-v``'s one log handler on stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from click.testing import CliRunner

from exptorch import Option, hookimpl
from exptorch.cli import _setup_logging, add_plugin_options
from exptorch.plugins import load_plugins


class Opts:
    @hookimpl
    def register_models(self, register: Any) -> None:
        register("m", lambda info, **_: None, options=(
            Option("m_depth", 3, "Depth.", int),
            Option("m_mode", "fast", "Mode.", choices=("fast", "slow")),
            Option("m_bias", True, "Use a bias.", is_flag=True),
            Option("m_note", None, "A note."),
            Option("lr", 0.5, "Taken by the command already.", float),
        ))  # fmt: skip

    @hookimpl
    def register_losses(self, register: Any) -> None:
        register("l", lambda **_: None, options=(Option("l_weight", 1.0, "Weight.", float),))


def command(kinds: tuple[str, ...] | None = None) -> tuple[click.Command, list[dict]]:
    seen: list[dict] = []

    @click.command()
    @click.option("--lr", type=float, default=0.1)
    def run(**values: Any) -> None:
        seen.append(values)

    add_plugin_options(run, load_plugins(entry_points=False, extra=[("opts", Opts())]), kinds)
    return run, seen


def test_each_option_becomes_a_flag_of_its_type_with_its_default_and_help() -> None:
    run, seen = command()
    params = {p.name: p for p in run.params}
    assert list(params) == ["lr", "m_depth", "m_mode", "m_bias", "m_note", "l_weight"]
    depth, mode, bias, note = (params[n] for n in ("m_depth", "m_mode", "m_bias", "m_note"))
    assert (depth.opts, depth.type, depth.default, depth.show_default) == (
        ["--m-depth"], click.INT, 3, True
    )  # fmt: skip
    assert depth.help == "[model m] Depth."
    assert isinstance(mode.type, click.Choice) and list(mode.type.choices) == ["fast", "slow"]
    assert (mode.default, bias.default, bias.secondary_opts) == ("fast", True, ["--no-m-bias"])
    assert (note.default, note.show_default) == (None, False)
    assert params["lr"].default == 0.1  # the command's own, not the plugin's
    result = CliRunner().invoke(run, ["--m-depth", "5", "--no-m-bias", "--l-weight", "2"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == {"lr": 0.1, "m_depth": 5, "m_mode": "fast", "m_bias": False,
                        "m_note": None, "l_weight": 2.0}  # fmt: skip
    refused = CliRunner().invoke(run, ["--m-mode", "medium"])
    assert refused.exit_code == 2 and "'medium' is not one of 'fast', 'slow'" in refused.output


def test_a_command_can_take_the_options_of_some_kinds_only() -> None:
    run, _ = command(kinds=("loss",))
    assert [p.name for p in run.params] == ["lr", "l_weight"]


def test_verbosity_sets_the_level_of_one_handler_on_stderr() -> None:
    logger = logging.getLogger("exptorch")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_expt", False)]
        for verbose, level in ((0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG)):
            _setup_logging(verbose)
            assert logger.level == level
        ours = [h for h in logger.handlers if getattr(h, "_expt", False)]
        assert len(ours) == 1 and ours[0].stream is sys.stderr and not logger.propagate
        record = logging.LogRecord("exptorch", logging.WARNING, "", 0, "disk %s", ("full",), None)
        assert ours[0].formatter is not None
        assert ours[0].formatter.format(record) == "warning: disk full"
    finally:
        logger.handlers, logger.level, logger.propagate = saved
