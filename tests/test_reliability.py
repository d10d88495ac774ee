"""Never lose a run: kills at any moment, racing resumes, full and read-only disks, moved
folders, errors after the folder exists, and signals -- with real processes and files."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_training_plugins import TracePlugin

from conftest import EXPT
from exptorch import ExptError, Logger, hookimpl
from exptorch.checkpoint import checkpoint_files, latest_checkpoint, load_checkpoint
from exptorch.rundir import RunDir, read_json, read_metrics
from exptorch.testing import make_plugins, resume_expt, run_expt

SUFFIXES = [".pt", ".safetensors", ".full.pt"]
#: A tiny real run: 8 steps of 16 images per epoch, one test batch.
TINY = (
    "run", "--dataset", "fashion-mnist-sample", "--device", "cpu", "--batch-size", "16",
    "--limit-train-batches", "8", "--limit-eval-batches", "1", "--log-every", "2",
)  # fmt: skip


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EXPT_DATA_DIR": str(tmp_path / "none"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*EXPT, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def wait_for(condition, child: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def state(run: Path) -> dict:
    return read_json(run / "state.json")  # {} while it does not exist yet


def epoch_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "test_accuracy" in r]


def weights(run: Path) -> dict[str, torch.Tensor]:
    plugins = make_plugins()
    return load_checkpoint(plugins, latest_checkpoint(run, plugins)).model_state


# --- item 3: a kill at any moment leaves a run that --resume finishes -------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_finishes(expt, tmp_path: Path) -> None:
    rng = random.Random(11)
    for attempt in range(5):
        name = f"k{attempt}"
        run = tmp_path / "runs" / name
        child = start(tmp_path, *TINY, "--epochs", "2", "--checkpoint-every", "3", "--name", name)
        try:
            wait_for(run.exists, child)
            time.sleep(rng.uniform(0, 0.8 if attempt else 0))  # the first one at once
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
        assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()
        if state(run)["state"] != "finished":  # on a quick machine the run may beat the kill
            result = expt("run", "--resume", f"runs/{name}")
            assert result.returncode == 0, f"attempt {attempt}: {result.stdout}{result.stderr}"
            assert state(run)["state"] == "finished"
        assert [r["epoch"] for r in epoch_records(run)] == [1, 2], attempt
        assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())


def test_run_killed_before_its_first_checkpoint_starts_again_with_its_seed(
    tmp_path: Path,
) -> None:
    child = start(tmp_path, *TINY, "--epochs", "1", "--name", "early", "--logger", "tensorboard")
    run = tmp_path / "runs" / "early"
    try:
        wait_for(run.exists, child)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert not checkpoint_files(run / "checkpoints", SUFFIXES)
    assert (run / "metrics.jsonl").is_file()  # written with the folder
    seed = json.loads((run / "config.json").read_text())["config"]["seed"]

    plugins = make_plugins()
    lines: list[str] = []
    assert resume_expt(plugins, run, echo=lines.append) == run
    assert "again from epoch 1 with its recorded settings and seed" in lines[1]
    assert state(run)["state"] == "finished"
    straight = run_expt(
        plugins, tmp_path / "other", echo=lambda _: None, dataset="fashion-mnist-sample",
        batch_size=16, limit_train_batches=8, limit_eval_batches=1, log_every=2, seed=seed,
        logger=["tensorboard"],
    )  # fmt: skip
    for key, value in weights(straight).items():
        assert torch.equal(value, weights(run)[key]), key
    saved = json.loads((run / "config.json").read_text())
    assert saved["resumed"][0]["from"] is None


def test_checkpoint_every_steps_then_kill_resumes_exactly(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "steps"
    child = start(tmp_path, *TINY, "--epochs", "1", "--seed", "5", "--name", "steps",
                  "--checkpoint-every", "3", "--keep", "last")  # fmt: skip
    try:
        wait_for(lambda: "step-000006" in (state(run).get("checkpoint") or ""), child)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    names = [p.name for p in checkpoint_files(run / "checkpoints", SUFFIXES)]
    assert names == ["epoch-001-step-000006.pt"]  # step 3's was pruned by --keep
    assert state(run)["state"] == "running"  # as its last checkpoint left it

    plugins = make_plugins()
    lines: list[str] = []
    resume_expt(plugins, run, echo=lines.append)
    assert "resuming from epoch-001-step-000006.pt at epoch 1, batch 7 of 8" in lines[1]
    straight = run_expt(
        plugins, tmp_path / "other", echo=lambda _: None, dataset="fashion-mnist-sample",
        batch_size=16, limit_train_batches=8, limit_eval_batches=1, log_every=2, seed=5,
        checkpoint_every="off",
    )  # fmt: skip
    for key, value in weights(straight).items():
        assert torch.equal(value, weights(run)[key]), key
    assert [p.name for p in checkpoint_files(run / "checkpoints", SUFFIXES)] == ["epoch-001.pt"]


def test_checkpoints_inside_a_later_epoch_keep_the_best_epochs_under_keep_best(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--keep best --checkpoint-every``: each checkpoint written inside epoch 2 prunes the
    older ones, never the best epoch's (here epoch 1, by a callback's accuracy)."""
    from exptorch import Callback

    class FirstEpochBest(Callback):
        def on_evaluate_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
            metrics["test_accuracy"] = 1.0 / epoch

    plugins = make_plugins(("first-best", TracePlugin(FirstEpochBest())))
    caplog.set_level(logging.INFO, logger="exptorch")  # what -v shows
    run = run_expt(plugins, tmp_path / "runs", echo=lambda _: None, epochs=2,
                   limit_train_batches=8, checkpoint_every="3", keep="best")  # fmt: skip
    assert state(run)["best_checkpoint"] == "epoch-001.pt"
    names = [p.name for p in checkpoint_files(run / "checkpoints", SUFFIXES)]
    assert names == ["epoch-001.pt", "epoch-002.pt"]
    assert "checkpoint epoch-002-step-000012.pt written inside epoch 2" in caplog.messages


def test_checkpoint_every_duration_checkpoints_each_time_it_passes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--checkpoint-every 1s`` with steps of 0.4 s: a checkpoint every few steps inside the
    epoch, each timed from the one before."""
    from exptorch import Callback

    class SlowSteps(Callback):
        def on_step_end(self, run: Any, step: int, loss: float) -> None:
            time.sleep(0.4)

    caplog.set_level(logging.INFO, logger="exptorch")
    run_expt(make_plugins(("slow", TracePlugin(SlowSteps()))), tmp_path / "runs",
             echo=lambda _: None, limit_train_batches=8, checkpoint_every="1s")  # fmt: skip
    inside = [m for m in caplog.messages if m.endswith("written inside epoch 1")]
    assert 2 <= len(inside) <= 3, inside  # about every 3 or 4 of the 8 steps, none at step 8


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("10x", "must be a duration (30s, 10m, 2h)"), ("0.5", "must be a whole number")],
)
def test_checkpoint_every_bad_values(expt, tmp_path: Path, value: str, fragment: str) -> None:
    result = expt(*TINY, "--checkpoint-every", value, "--name", "bad")
    assert result.returncode == 1 and fragment in result.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_after_the_last_checkpoint_but_before_finished_records_it(tmp_path: Path) -> None:
    plugins = make_plugins()
    run = run_expt(plugins, tmp_path / "runs", echo=lambda _: None)
    saved = state(run)
    (run / "state.json").write_text(json.dumps({**saved, "state": "running", "pid": 999999}))
    resume_expt(plugins, run, echo=lambda _: None)  # as if killed before recording "finished"
    assert state(run)["state"] == "finished"
    with pytest.raises(ExptError, match="already trained 1 epoch"):
        resume_expt(plugins, run, echo=lambda _: None)


# --- item 4: one process per run folder --------------------------------------------------------


def test_two_resumes_of_one_run_cannot_both_run(expt, tmp_path: Path) -> None:
    expt(*TINY, "--epochs", "1", "--name", "r", "--seed", "1", check=True)
    run = tmp_path / "runs" / "r"
    first = start(tmp_path, "run", "--resume", "runs/r", "--epochs", "60",
                  "--limit-train-batches", "40")  # fmt: skip
    try:
        wait_for(lambda: RunDir.is_locked(run) is True and state(run)["pid"] == first.pid, first)
        second = expt("run", "--resume", "runs/r", "--epochs", "3")
        assert second.returncode == 1
        message = second.stderr.strip()
        assert message == (
            f"Error: runs/r is being trained by another process (process {first.pid}); wait for "
            "it to end, or stop it, before continuing this run."
        )
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert RunDir.is_locked(run) is False  # the OS released it with the killed process
    records = read_metrics(run / "metrics.jsonl")
    assert len([r for r in records if r.get("epoch") == 2 and "test_accuracy" in r]) <= 1


def test_a_running_run_holds_its_lock(tmp_path: Path) -> None:
    seen: list[bool | None] = []

    class Peek:
        @hookimpl
        def run_start(self, run):
            seen.append(RunDir.is_locked(run.run_dir))

    plugins = make_plugins(("peek", Peek()))
    run = run_expt(plugins, tmp_path / "runs", echo=lambda _: None)
    assert seen == [True] and RunDir.is_locked(run) is False


# --- item 5: disks that refuse ----------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(where)],
        capture_output=True,
    )
    if mount.returncode != 0:
        pytest.skip("needs to mount a tmpfs (root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_is_one_sentence_and_keeps_earlier_checkpoints(expt, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "1200k") as small:
        result = expt(*TINY, "--epochs", "3", "--momentum", "0.9", "--runs-dir", str(small),
                      "--name", "full", "--seed", "2")  # fmt: skip
        run = small / "full"
        assert result.returncode == 1, result.stderr
        error = result.stderr.strip().splitlines()
        assert (
            len(error) == 1
            and "No space left on device; free some space, then continue "
            f"with: {_python()} -m exptorch run --resume {run}"
            in error[0]
        ), result.stderr
        assert "bug" not in result.stderr and "state.json" not in error[0]
        recorded = state(run)
        assert recorded["state"] == "failed" and "No space left" in recorded["error"]
        kept = checkpoint_files(run / "checkpoints", SUFFIXES)
        assert [p.name for p in kept] == ["epoch-001.pt"]
        load_checkpoint(make_plugins(), kept[0])  # intact
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]

        subprocess.run(["mount", "-o", "remount,size=20m", str(small)], check=True)
        resumed = expt("run", "--resume", str(run))
        assert resumed.returncode == 0, resumed.stderr
        assert state(run)["state"] == "finished" and state(run)["error"] is None


def _python() -> str:
    from exptorch.program import python_command

    return python_command()


def test_read_only_runs_folder(expt, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        result = expt(*TINY, "--epochs", "1", "--runs-dir", str(ro), "--name", "x")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: Cannot create run folder {ro}/x: Read-only file system; choose a writable "
        "--runs-dir."
    )


def test_runs_dir_that_is_a_file_and_a_300_character_name(expt, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    result = expt(*TINY, "--runs-dir", "afile", "--name", "x")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: --runs-dir afile cannot hold run folders: afile is a file, not a folder; "
        "choose another --runs-dir."
    )
    result = expt(*TINY, "--name", "n" * 300)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: Run name is 300 characters long; use at most 200 (--name)."
    )
    assert not (tmp_path / "runs").exists()


def test_failed_state_is_kept_when_recording_it_fails_too(tmp_path: Path, monkeypatch) -> None:
    """The error the user sees is the first one, not the cleanup's."""

    class Boom:
        @hookimpl
        def epoch_end(self, run, epoch, metrics):
            raise ExptError("the first error")

    plugins = make_plugins(("boom", Boom()))
    real = RunDir.set_state

    def refuse_failed(self, state, **fields):
        if state == "failed":
            raise ExptError("Cannot write state.json: No space left on device.")
        real(self, state, **fields)

    monkeypatch.setattr(RunDir, "set_state", refuse_failed)
    with pytest.raises(ExptError, match="the first error"):
        run_expt(plugins, tmp_path / "runs", echo=lambda _: None, name="f")
    assert RunDir.is_locked(tmp_path / "runs" / "f") is False


# --- item 6: resume continues the folder it is given --------------------------------------------


def test_copied_renamed_and_linked_run_folders_resume_in_place(expt, tmp_path: Path) -> None:
    expt(*TINY, "--epochs", "1", "--name", "orig", "--seed", "4", check=True)
    runs = tmp_path / "runs"
    shutil.copytree(runs / "orig", runs / "copy")
    (runs / "link").symlink_to("orig")
    for name in ("copy", "link"):
        result = expt("run", "--resume", f"runs/{name}", "--epochs", "2")
        assert result.returncode == 0, result.stderr
        assert f"run runs/{name}:" in result.stdout
    assert [r["epoch"] for r in epoch_records(runs / "copy")] == [1, 2]
    assert [r["epoch"] for r in epoch_records(runs / "orig")] == [1, 2]  # through the link
    shutil.move(runs / "copy", runs / "moved")
    result = expt("run", "--resume", "runs/moved", "--epochs", "3")
    assert result.returncode == 0, result.stderr
    refused = expt("run", "--resume", "runs/moved", "--epochs", "4", "--name", "other")
    assert "it cannot take another --name" in refused.stderr

    listed = expt("runs", "list", "--json", check=True)
    names = [row["name"] for row in json.loads(listed.stdout)]
    assert sorted(names) == ["moved", "orig"]  # the link is the same run as orig


# --- item 19: an error after the folder exists is recorded ---


def test_a_plugin_error_in_run_start_leaves_failed_with_the_reason(expt, tmp_path: Path) -> None:
    class Refuse:
        @hookimpl
        def run_start(self, run):
            raise ExptError("The tracking server refused the run.")

    plugins = make_plugins(("refuse", Refuse()))
    with pytest.raises(ExptError, match="tracking server"):
        run_expt(plugins, tmp_path / "runs", echo=lambda _: None, name="p")
    recorded = state(tmp_path / "runs" / "p")
    assert recorded["state"] == "failed"
    assert recorded["error"] == "The tracking server refused the run."
    listed = expt("runs", "list", check=True)
    assert "failed" in listed.stdout


@pytest.mark.parametrize("where", ["logger start", "run_start"])
def test_ctrl_c_after_the_folder_exists_leaves_interrupted_not_failed(
    tmp_path: Path, where: str
) -> None:
    class CtrlC(Logger):
        def __init__(self, run) -> None:
            raise KeyboardInterrupt

    class Plugin:
        @hookimpl
        def register_loggers(self, register):
            register("ctrl-c", CtrlC)

        @hookimpl
        def run_start(self, run):
            raise KeyboardInterrupt

    plugins = make_plugins(("ctrl-c", Plugin()))
    logger = ["ctrl-c"] if where == "logger start" else []
    with pytest.raises(KeyboardInterrupt):
        run_expt(plugins, tmp_path / "runs", echo=lambda _: None, name="p", logger=logger)
    recorded = state(tmp_path / "runs" / "p")
    assert (recorded["state"], recorded["stop_reason"]) == ("interrupted", "interrupted by SIGINT")
    assert RunDir.is_locked(tmp_path / "runs" / "p") is False


class RefusingLogger(Logger):
    def __init__(self, run) -> None:
        raise ExptError("The logger cannot start.")


class LoggersPlugin:
    """Registers the loggers it is given, by name."""

    def __init__(self, **loggers) -> None:
        self.loggers = loggers

    @hookimpl
    def register_loggers(self, register):
        for name, factory in self.loggers.items():
            register(name, factory)


def test_an_error_in_setup_after_the_folder_exists_is_recorded(tmp_path: Path) -> None:
    plugins = make_plugins(("refusing", LoggersPlugin(refusing=RefusingLogger)))
    with pytest.raises(ExptError, match="cannot start"):
        run_expt(plugins, tmp_path / "runs", echo=lambda _: None, name="s", logger=["refusing"])
    recorded = state(tmp_path / "runs" / "s")
    assert recorded["state"] == "failed" and recorded["error"] == "The logger cannot start."
    assert RunDir.is_locked(tmp_path / "runs" / "s") is False


def test_a_resumed_run_that_cannot_start_keeps_its_epoch_and_finishes_its_started_loggers(
    tmp_path: Path,
) -> None:
    """A logger that refuses to start fails the resumed run: state.json says so and still
    names the epoch its checkpoints reach, and a logger already started is told "failed"."""
    finished: list[str] = []

    class Recording(Logger):
        def __init__(self, run) -> None:
            pass

        def finish(self, state: str) -> None:
            finished.append(state)

    plugins = make_plugins(("loggers", LoggersPlugin(recording=Recording, refusing=RefusingLogger)))
    run = run_expt(plugins, tmp_path / "runs", echo=lambda _: None, name="r", epochs=1)
    assert state(run)["epoch"] == 1
    with pytest.raises(ExptError, match="cannot start"):
        resume_expt(plugins, run, echo=lambda _: None, epochs=2, logger=["recording", "refusing"])
    recorded = state(run)
    assert (recorded["state"], recorded["epoch"]) == ("failed", 1)
    assert finished == ["failed"] and RunDir.is_locked(run) is False


# --- items 18 and 20: signals ---


def test_two_sigterms_exit_143_and_record_the_signal(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "t2"
    child = start(tmp_path, "run", "--dataset", "fashion-mnist-sample", "--device", "cpu",
                  "--batch-size", "1000", "--epochs", "3", "--name", "t2")  # fmt: skip
    try:
        wait_for(lambda: (run / "state.json").exists(), child)
        time.sleep(0.3)
        child.send_signal(signal.SIGTERM)
        child.send_signal(signal.SIGTERM)
        _out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    recorded = state(run)
    assert recorded["state"] == "interrupted"
    assert recorded["stop_reason"] == "interrupted by SIGTERM"


@pytest.mark.parametrize("delay", [0.05, 0.4, 1.0])
def test_ctrl_c_during_start_up_prints_no_traceback(tmp_path: Path, delay: float) -> None:
    child = start(tmp_path, *TINY, "--epochs", "1", "--name", "c")
    time.sleep(delay)
    child.send_signal(signal.SIGINT)
    _out, err = child.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert child.returncode in (0, 130), err


def test_ctrl_c_while_a_command_loads_exits_at_once_only_in_the_expt_program() -> None:
    """``expt run`` reads its options and imports torch inside ``quiet_interrupts``: there a
    KeyboardInterrupt can be swallowed by torch's import or abort it, and nothing is written."""
    import sys

    from exptorch.program import quiet_interrupts

    before = signal.getsignal(signal.SIGINT)
    with quiet_interrupts():  # exptorch used as a library (here, by pytest): left alone
        assert signal.getsignal(signal.SIGINT) is before
    code = (
        "import os, signal, time\n"
        "from exptorch import program\n"
        "program.quiet_start_up_interrupts()\n"
        "program.normal_interrupts()\n"
        "with program.quiet_interrupts():\n"
        "    pass\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "with program.quiet_interrupts():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
    )
    ended = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (ended.returncode, ended.stderr) == (130, "Interrupted.\n")


# --- items 16 and 18: hints and what a run tells ---------------------------------------------


def test_the_resume_hint_names_expt_as_it_was_run(monkeypatch) -> None:
    import sys

    from exptorch.program import expt_command

    script = Path(sys.executable).parent / "expt"
    assert script.is_file()
    monkeypatch.setattr(sys, "argv", [str(script), "run"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert expt_command() == str(script)  # a venv that was not activated
    monkeypatch.setenv("PATH", str(script.parent))
    assert expt_command() == "expt"
    gone = str(script.parent / "missing" / "expt")  # another expt, removed since: not PATH's
    monkeypatch.setattr(sys, "argv", [gone, "run"])
    assert expt_command() == gone
    main = Path(__file__).parents[1] / "framework" / "exptorch" / "__main__.py"
    monkeypatch.setattr(sys, "argv", [str(main), "run"])
    assert expt_command() == "python -m exptorch"  # this python is first on PATH now
    monkeypatch.setenv("PATH", "/nonexistent")
    assert expt_command() == f"{sys.executable} -m exptorch"


def test_python_command_is_the_name_path_finds_this_interpreter_by(
    monkeypatch, tmp_path: Path
) -> None:
    import sys

    from exptorch.program import expt_command, python_command

    (tmp_path / "python3").symlink_to(sys.executable)  # only python3, no python, on PATH
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert python_command() == "python3"
    monkeypatch.setattr(sys, "argv", [])  # an embedding interpreter may leave argv empty
    assert expt_command() == "expt"
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "other" / "__main__.py")])  # python -m other
    assert expt_command() == "expt"


def test_resume_message_says_the_batch_within_the_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class StopAt:
        @hookimpl
        def register_callbacks(self, register):
            from exptorch import Callback

            class Kill(Callback):
                def on_step_end(self, run, step, loss):
                    if step == 11:  # epoch 2, batch 3 of 8
                        os.kill(os.getpid(), signal.SIGTERM)

            register("kill", lambda run: Kill() if not run.resumed else None)

    from exptorch.train import RunInterrupted

    plugins = make_plugins(("stop", StopAt()))
    options = dict(dataset="fashion-mnist-sample", batch_size=16, limit_train_batches=8,
                   limit_eval_batches=1, epochs=2, name="m")  # fmt: skip
    said: list[str] = []
    with pytest.raises(RunInterrupted):
        run_expt(plugins, tmp_path / "runs", echo=said.append, **options)
    run = tmp_path / "runs" / "m"
    assert state(run)["stop_reason"] == "interrupted by SIGTERM"
    stopped = said[-1].partition("; checkpoint ")  # the checkpoint it names is the one written
    assert stopped[:2] == ("SIGTERM: stopped at epoch 2, step 11", "; checkpoint ")
    assert Path(stopped[2]).parent == run / "checkpoints" and Path(stopped[2]).is_file()
    assert "SIGTERM: stopping after this step and writing a checkpoint" in capsys.readouterr().err
    lines: list[str] = []
    resume_expt(plugins, run, echo=lines.append, limit_train_batches=2)
    assert "at the end of epoch 2 (all 2 of its batches are done)" in lines[1]
    (run / "state.json").unlink()
    lines.clear()
    resume_expt(plugins, run, echo=lines.append, epochs=3)
    assert "resuming from epoch-002.pt at the start of epoch 3; 3 epochs in all" in lines[1]


def test_verbose_says_what_was_resolved_and_very_verbose_each_step(expt) -> None:
    result = expt("-v", *TINY, "--epochs", "1", "--name", "v", check=True)
    assert "info: device cpu, precision fp32, channels-last" in result.stderr
    assert "info: plugins used: model quicknet (quicknet, exptorch)" in result.stderr
    assert "info: data: 6,000 train images in 8 batches of 16 per epoch" in result.stderr
    assert "debug:" not in result.stderr
    started = time.perf_counter()
    result = expt("-vv", *TINY, "--epochs", "1", "--name", "vv", check=True)
    elapsed_ms = 1000 * (time.perf_counter() - started)
    steps = re.findall(
        r"debug: epoch 1 step (\d+): loss [\d.]+, lr [\d.e-]+, ([\d.]+) ms", result.stderr
    )
    assert [int(step) for step, _ in steps] == list(range(1, 9))
    step_ms = [float(ms) for _, ms in steps]  # each step's time, within the process's own
    assert all(ms > 0 for ms in step_ms) and sum(step_ms) < elapsed_ms, step_ms


def test_tensorboard_hparams_hold_only_the_options_of_plugins_used(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = run_expt(make_plugins(), tmp_path / "runs", echo=lambda _: None, logger=["tensorboard"])
    events = EventAccumulator(str(run))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert "lr" in hparams
    foreign = [k for k in hparams if "vgg16" in k or "folder" in k or "wandb" in k]
    assert not foreign, foreign
    saved = json.loads((run / "config.json").read_text())["config"]["options"]
    assert not [k for k in saved if k.startswith(("vgg16", "folder", "wandb"))]


def test_what_a_signal_says_when_it_stops_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first signal asks to stop (before training while setting up, then after the step)
    and says so; a second stops at once; the line after the stop names the checkpoint, or says
    training had not started."""
    from exptorch.interrupts import StopNow, StopSignals, interrupted

    signals = StopSignals()
    signals._handle(signal.SIGINT, None)
    assert signals.received == signal.SIGINT
    assert capsys.readouterr().err == (
        "\nSIGINT: stopping before training (send it again to stop at once)\n"
    )
    training = StopSignals()
    training.training = True
    training._handle(signal.SIGINT, None)
    assert capsys.readouterr().err == (
        "\nSIGINT: stopping after this step and writing a checkpoint "
        "(send it again to stop at once)\n"
    )
    with pytest.raises(StopNow) as again:
        signals._handle(signal.SIGTERM, None)
    assert (str(again.value), again.value.signum) == ("SIGTERM", signal.SIGTERM)
    lines: list[str] = []
    interrupted(signal.SIGINT, tmp_path, None, 0, 0, lines.append)
    checkpoint = tmp_path / "checkpoints" / "step-000012.pt"
    error = interrupted(signal.SIGTERM, tmp_path, checkpoint, 2, 12, lines.append)
    assert lines == [
        "SIGINT: stopped before training started",
        f"SIGTERM: stopped at epoch 2, step 12; checkpoint {checkpoint}",
    ]
    assert error.exit_code == 128 + signal.SIGTERM


def test_a_signal_while_setting_up_stops_before_the_run_folder_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Set-up (a download, torch's imports) is not interrupted in the middle, where torch can
    swallow a KeyboardInterrupt or abort on one; the run stops before it writes anything."""
    from exptorch.testing import tiny_splits
    from exptorch.train import RunInterrupted

    loaded: list[str] = []

    class SignalWhileLoading:
        @hookimpl
        def register_datasets(self, register):
            def load(**_):
                os.kill(os.getpid(), signal.SIGINT)
                loaded.append("all")  # not reached if the signal raised here
                return tiny_splits()

            register("signalled", load)

    before = signal.getsignal(signal.SIGINT)
    plugins = make_plugins(("signalled", SignalWhileLoading()))
    with pytest.raises(RunInterrupted) as stopped:
        run_expt(plugins, tmp_path / "runs", echo=lambda _: None, name="s", dataset="signalled")
    assert (
        str(stopped.value) == "Interrupted by SIGINT before the run started; nothing was written."
    )
    assert stopped.value.exit_code == 130
    assert loaded == ["all"]
    assert not (tmp_path / "runs" / "s").exists()
    assert signal.getsignal(signal.SIGINT) is before
    assert "SIGINT: stopping before training (send it again" in capsys.readouterr().err


def test_a_failing_logger_is_switched_off_with_one_warning(caplog) -> None:
    from exptorch.loggers import GuardedLogger

    class Unreachable(Logger):
        calls = 0

        def log_metrics(self, metrics, step) -> None:
            Unreachable.calls += 1
            raise ConnectionError("dashboard unreachable")

    guarded = GuardedLogger("remote", Unreachable())
    guarded.log_metrics({"loss": 1.0}, 1)
    guarded.log_metrics({"loss": 0.5}, 2)  # switched off: not called again
    assert Unreachable.calls == 1
    assert guarded.failed == "ConnectionError: dashboard unreachable"
    assert [r.getMessage() for r in caplog.records] == [
        "logger 'remote' failed in log_metrics (ConnectionError: dashboard unreachable) and is "
        "switched off; the run continues and metrics.jsonl keeps every metric"
    ]
