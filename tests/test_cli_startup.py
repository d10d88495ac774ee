"""``expt --help`` and friends must not import the heavy libraries."""

import subprocess
import sys

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
