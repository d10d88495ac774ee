"""What ``--resume`` refuses to change, each refusal's whole sentence, and the state it restores.

The checks are called on a resume point made by hand (a saved configuration and a state), so
every fixed setting, plugin option and epoch count is tried without training anything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from exptorch import ExptError, Option
from exptorch.plugins import Registration
from exptorch.resume import FIXED_ON_RESUME, ResumePoint, check_resume, restore_rng
from exptorch.testing import make_plugins, run_config
from exptorch.types import Checkpoint

SAVED = {"model": "quicknet", "dataset": "tiny-fashion-mnist", "batch_size": 64, "seed": 0,
         "optimizer": "sgd", "name": "r"}  # fmt: skip


@pytest.fixture(scope="module")
def plugins() -> Any:
    return make_plugins()


def point(tmp_path: Path, epoch: int = 2, state: str = "finished", **saved: Any) -> ResumePoint:
    checkpoint = Checkpoint(model_state={}, epoch=epoch, step=8 * epoch, config={**SAVED, **saved},
                            meta={})  # fmt: skip
    folder = tmp_path / "runs" / "r"
    return ResumePoint(folder, folder / "checkpoints" / "x.pt", checkpoint, state={"state": state})


def check(
    plugins: Any, tmp_path: Path, resume: ResumePoint, regs: Any = (), options: Any = None,
    **flags: Any,
) -> None:  # fmt: skip
    config = run_config(plugins, tmp_path / "runs", **{**SAVED, "epochs": 3, **flags})
    check_resume(dataclasses.replace(config, options=options or {}), resume, regs)


@pytest.mark.parametrize(
    ("key", "value", "flag"),
    [("model", "vgg16", "--model"), ("dataset", "fashion-mnist-sample", "--dataset"),
     ("batch_size", 32, "--batch-size"), ("seed", 5, "--seed"),
     ("optimizer", "adam", "--optimizer")],
)  # fmt: skip
def test_each_setting_a_run_keeps_is_refused_with_what_it_was(
    plugins: Any, tmp_path: Path, key: str, value: Any, flag: str
) -> None:
    resume = point(tmp_path)
    with pytest.raises(ExptError) as refused:
        check(plugins, tmp_path, resume, **{key: value})
    assert str(refused.value) == (
        f"--resume continues {resume.run_dir} as it was set up; {flag} cannot change (it was "
        f"{SAVED[key]!r}); start a new run for that."
    )
    assert key in FIXED_ON_RESUME


def test_a_setting_the_checkpoint_did_not_record_may_be_given(plugins: Any, tmp_path: Path) -> None:
    check(plugins, tmp_path, point(tmp_path, seed=None), seed=None)
    resume = point(tmp_path)
    del resume.checkpoint.config["optimizer"]  # an older checkpoint, without the key
    check(plugins, tmp_path, resume, optimizer="adam")


def test_a_resumed_run_keeps_its_name(plugins: Any, tmp_path: Path) -> None:
    resume = point(tmp_path, name="old-name")  # the folder was renamed since
    check(plugins, tmp_path, resume, name="r")
    check(plugins, tmp_path, resume, name="old-name")
    check(plugins, tmp_path, resume, name=None)
    with pytest.raises(ExptError) as refused:
        check(plugins, tmp_path, resume, name="other")
    assert str(refused.value) == (
        f"--resume continues {resume.run_dir}; it cannot take another --name."
    )


def test_a_plugin_option_is_kept_unless_it_only_sets_the_first_weights(
    plugins: Any, tmp_path: Path
) -> None:
    reg = Registration(
        kind="model", name="quicknet", factory=lambda **_: None, plugin="p",
        options=(Option("width", 8, "Width.", int), Option("pretrained", "", "Weights.", str,
                                                          initial_weights=True)),
    )  # fmt: skip
    resume = point(tmp_path, options={"width": 16})
    check(plugins, tmp_path, resume, [reg], options={"width": 16, "pretrained": "x.pt"})
    with pytest.raises(ExptError) as refused:
        check(plugins, tmp_path, resume, [reg], options={"width": 8})
    assert str(refused.value) == (
        f"--resume continues {resume.run_dir} as it was set up; --width cannot change (it was 16)."
    )
    with pytest.raises(ExptError, match=r"--width cannot change \(it was 8\)"):
        check(plugins, tmp_path, point(tmp_path), [reg], options={"width": 16})  # the default


@pytest.mark.parametrize(
    ("state", "epochs", "refused"),
    [("finished", 2, True), ("finished", 3, False), ("running", 2, False),
     ("interrupted", 2, False), ("running", 1, True), ("stopped", 2, True)],
)  # fmt: skip
def test_epochs_is_the_total_a_resumed_run_trains_to(
    plugins: Any, tmp_path: Path, state: str, epochs: int, refused: bool
) -> None:
    """A run that ended after its last epoch's checkpoint without recording it (killed, or
    interrupted) may be resumed to record its end; otherwise --epochs must go further."""
    resume = point(tmp_path, epoch=2, state=state)
    if not refused:
        check(plugins, tmp_path, resume, epochs=epochs)
        return
    with pytest.raises(ExptError) as raised:
        check(plugins, tmp_path, resume, epochs=epochs)
    assert str(raised.value) == (
        f"{resume.run_dir} has already trained 2 epoch(s) and --epochs is the total; pass "
        "--epochs greater than 2 to train more."
    )


def test_a_checkpoint_inside_an_epoch_resumes_that_epoch(plugins: Any, tmp_path: Path) -> None:
    resume = point(tmp_path, epoch=1)
    resume.checkpoint.extra["position"] = {"epoch": 2, "batch": 3}
    assert resume.next_epoch == 2
    check(plugins, tmp_path, resume, epochs=2)


def test_the_random_generator_continues_where_the_checkpoint_left_it() -> None:
    torch.manual_seed(1)
    saved = {"torch_rng_state": torch.get_rng_state()}
    expected = torch.rand(3)
    torch.manual_seed(2)
    restore_rng(saved, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)
    restore_rng({}, torch.device("cpu"))  # an older checkpoint without it: left alone
