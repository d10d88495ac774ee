"""Console output of ``expt run``: progress bar, one line per epoch, ``-q`` and ``-v``."""

from __future__ import annotations

from pathlib import Path

from exptorch.config import RunConfig
from exptorch.train import run_experiment

ARGS = (
    "run", "--dataset", "fashion-mnist-sample", "--epochs", "1", "--limit-train-batches", "3",
    "--limit-eval-batches", "1", "--device", "cpu", "--logger", "tensorboard", "--seed", "1",
)  # fmt: skip


def test_verbose_run_prints_a_header_one_line_per_epoch_the_end_and_info(expt) -> None:
    result = expt("-v", *ARGS, "--name", "v", check=True)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run runs/v: quicknet")
    assert lines[1].startswith("epoch 1/1  train_loss ") and lines[1].endswith(" img/s)")
    assert lines[2].startswith("finished in ") and lines[2].endswith("run folder runs/v")
    assert "info: tensorboard: writing events to runs/v" in result.stderr  # only with -v


def test_quiet_prints_only_the_run_folder(expt) -> None:
    result = expt("-q", *ARGS, "--name", "q", check=True)
    assert result.stdout == "runs/q\n"
    assert result.stderr == ""


def test_progress_bar_shows_loss_and_throughput(
    tmp_path: Path, plugins, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # redraw on every step, not every 0.1 s
    config = RunConfig(
        dataset="fashion-mnist-sample", device="cpu", epochs=1, seed=0,
        runs_dir=str(tmp_path / "runs"), name="p", limit_train_batches=12, limit_eval_batches=1,
    )  # fmt: skip
    run_experiment(config, plugins, echo=lambda _: None, progress=True)
    bar = capsys.readouterr().err
    assert "epoch 1/1" in bar and "/12 [" in bar
    assert "loss=" in bar and "img_s=" in bar
