"""Where ``--resume TARGET`` continues: each way of naming a run, each refusal in its whole
sentence, the folder's lock, and the GPU generator put back on the run's own device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from exptorch import ExptError
from exptorch.resume import find_resume_point, restore_rng
from exptorch.rundir import RunDir, read_json
from exptorch.testing import make_plugins, run_expt


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch run that kept both checkpoints."""
    runs = tmp_path_factory.mktemp("runs")
    return run_expt(make_plugins(), runs, epochs=2, batch_size=16, limit_train_batches=2,
                    limit_eval_batches=1, keep="all", echo=lambda _: None)  # fmt: skip


@pytest.mark.parametrize("form", ["folder", "checkpoints", "newest"])
def test_a_run_is_named_by_its_folder_its_checkpoints_or_its_newest_checkpoint(
    finished: Path, form: str
) -> None:
    target = {"folder": finished, "checkpoints": finished / "checkpoints",
              "newest": finished / "checkpoints" / "epoch-002.pt"}[form]  # fmt: skip
    point = find_resume_point(make_plugins(), target)
    try:
        assert (point.run_dir, point.path) == (finished, finished / "checkpoints" / "epoch-002.pt")
        assert (point.checkpoint.epoch, point.next_epoch, point.fresh) == (2, 3, False)
        assert point.state == read_json(finished / "state.json")
        assert RunDir.is_locked(finished) is True  # held from here to the run's end
    finally:
        point.release()
    assert RunDir.is_locked(finished) is False


def test_an_older_checkpoint_is_refused_and_the_folder_left_unlocked(finished: Path) -> None:
    older = finished / "checkpoints" / "epoch-001.pt"
    with pytest.raises(ExptError) as refused:
        find_resume_point(make_plugins(), older)
    assert str(refused.value) == (
        f"epoch-001.pt is not the newest checkpoint of {finished} (epoch-002.pt is); resuming "
        "from it would rewrite the run's later epochs, so resume from the newest."
    )
    assert RunDir.is_locked(finished) is False


def test_a_file_outside_a_run_or_nothing_at_all_is_refused(tmp_path: Path) -> None:
    stray = tmp_path / "epoch-001.pt"
    stray.write_bytes(b"")
    with pytest.raises(ExptError) as refused:
        find_resume_point(make_plugins(), stray)
    assert str(refused.value) == (
        f"{stray} is not in a run folder's checkpoints/ folder; --resume continues a run "
        "folder, so pass the run folder or one of its checkpoints."
    )
    with pytest.raises(ExptError) as refused:
        find_resume_point(make_plugins(), tmp_path / "nope")
    assert str(refused.value) == f"Nothing to resume at {tmp_path / 'nope'}: it does not exist."


def test_the_gpu_generator_is_put_back_on_the_runs_own_gpu_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    put: list[tuple[Any, Any]] = []
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: put.append((state, device))
    )
    gpu_state = torch.arange(4, dtype=torch.uint8)
    saved = {"torch_rng_state": torch.get_rng_state(), "cuda_rng_state": gpu_state}
    restore_rng(saved, torch.device("cpu"))
    assert put == []
    restore_rng(saved, torch.device("cuda", 1))
    assert len(put) == 1 and torch.equal(put[0][0], gpu_state)
    assert put[0][1] == torch.device("cuda", 1)
    restore_rng({"torch_rng_state": saved["torch_rng_state"]}, torch.device("cuda", 1))
    assert len(put) == 1  # a checkpoint written on a CPU has no GPU state
