"""``expt --help`` and friends must not import the heavy libraries."""

import re
import subprocess
import sys
from collections.abc import Callable

import pytest

HEAVY = ("torch", "torchvision", "tensorboard", "wandb", "optuna", "sqlalchemy")

PROBE = """
import sys
from exptorch.cli import cli
try:
    cli({args!r}, prog_name="expt")
except SystemExit as exc:
    assert exc.code == 0, exc.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["plugins"],
        ["plugins", "--json"],
        ["--version"],
        ["runs", "list", "--runs-dir", "."],
        ["predict", "--help"],
        ["eval", "--help"],
        ["plugins", "show", "vgg16"],
        ["plugins", "show", "folder", "--json"],
        ["recipes"],
        ["sweep", "--help"],
        ["sweep", "run", "--help"],
        ["sweep", "show", "--help"],
    ],
)
def test_cli_start_up_imports_no_heavy_library(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_run_help_lists_every_option(expt) -> None:
    out = expt("run", "--help", check=True).stdout
    for flag in ("--model", "--dataset", "--data-dir", "--device", "--logger", "--epochs",
                 "--batch-size", "--lr", "--optimizer", "--momentum", "--seed", "--log-every",
                 "--checkpoint-format", "--runs-dir", "--name", "--limit-train-batches",
                 "--limit-eval-batches", "--config", "--resume", "--keep",
                 "--trust-checkpoint", "--vgg16-head", "--vgg16-pretrained",
                 "--vgg16-freeze-backbone", "--folder-train", "--folder-image-size"):  # fmt: skip
        assert flag in out
    assert "[default: 64]" in out


def test_each_setting_becomes_an_option_of_its_type_with_its_default() -> None:
    import click

    from exptorch.cli import _click_option
    from exptorch.config import RunConfig, config_fields

    options = {f.name: _click_option(f) for f in config_fields()}
    defaults = RunConfig()
    for name, option in options.items():
        if not option.multiple:
            assert option.default == getattr(defaults, name), name
    assert (options["epochs"].type, options["lr"].type) == (click.INT, click.FLOAT)
    assert options["epochs"].show_default and not options["seed"].show_default  # no default
    for unset in ("seed", "limit_train_batches", "limit_eval_batches"):
        assert options[unset].type is click.INT, unset
    assert options["data_dir"].type is click.STRING
    assert (options["logger"].multiple, options["logger"].default) == (True, ())
    assert not options["logger"].show_default
    assert isinstance(options["keep"].type, click.Choice)
    assert list(options["keep"].type.choices) == ["all", "last", "best"]
    assert (options["download"].opts, options["download"].secondary_opts) == (
        ["--download"], ["--no-download"]
    )  # fmt: skip
    assert options["batch_size"].opts == ["--batch-size"] and options["batch_size"].help


@pytest.mark.parametrize(("verbose", "level"), [(0, "WARNING"), (1, "INFO"), (2, "DEBUG")])
def test_verbose_sets_the_level_of_exptorchs_own_handler_once(verbose: int, level: str) -> None:
    import logging

    from exptorch.cli import _setup_logging

    logger = logging.getLogger("exptorch")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_expt", False)]
        _setup_logging(verbose)
        _setup_logging(verbose)
        (ours,) = [h for h in logger.handlers if getattr(h, "_expt", False)]
        assert isinstance(ours, logging.StreamHandler) and ours.stream is sys.stderr
        assert logging.getLevelName(logger.level) == level and logger.propagate is False
    finally:
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


def test_a_commands_errors_become_one_line_and_an_exit_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ExptGroup makes of what a command raises: a user mistake is its sentence (exit 1),
    Ctrl-C "Interrupted." (128 + the signal), anything else one line naming the bug's place,
    or the traceback with EXPT_DEBUG=1; click's own exits pass through."""
    import click
    from click.testing import CliRunner

    from exptorch import ExptError
    from exptorch.cli import ExptGroup

    @click.group(cls=ExptGroup)
    def group() -> None: ...

    group._plugins = object()  # type: ignore[assignment]  # no plugin loading here

    class Stopped(KeyboardInterrupt):
        signum = 15

    raised = {
        "mistake": ExptError("Say it once."), "ctrl-c": KeyboardInterrupt(), "sigterm": Stopped(),
        "bug": ValueError("boom"), "usage": click.UsageError("no"),
    }  # fmt: skip

    def raising(exc: BaseException) -> Callable[[], None]:
        def command() -> None:
            raise exc

        return command

    for name, exc in raised.items():
        group.command(name)(raising(exc))
    runner = CliRunner()
    monkeypatch.delenv("EXPT_DEBUG", raising=False)

    def run(name: str) -> tuple[int, str]:
        result = runner.invoke(group, [name])
        return result.exit_code, result.output.strip()

    assert run("mistake") == (1, "Error: Say it once.")
    assert run("ctrl-c") == (130, "Interrupted.")
    assert run("sigterm") == (143, "Interrupted.")
    assert run("usage")[0] == 2
    code, out = run("bug")
    assert code == 1
    assert re.fullmatch(
        r"Error: Unexpected ValueError: boom \(at test_cli_startup\.py:\d+\); this is a bug\. "
        r"Set EXPT_DEBUG=1 to see the traceback\.",
        out,
    )
    monkeypatch.setenv("EXPT_DEBUG", "1")
    assert isinstance(runner.invoke(group, ["bug"]).exception, ValueError)
    monkeypatch.setenv("EXPT_DEBUG", "0")
    assert run("bug") == (code, out)
