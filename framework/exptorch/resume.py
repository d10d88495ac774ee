"""``expt run --resume``: find the run folder and checkpoint to continue, and check the settings."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.checkpoint import checkpoint_files, formats, load_checkpoint
from exptorch.config import RunConfig
from exptorch.errors import ExptError
from exptorch.plugins import Plugins, Registration
from exptorch.rundir import RunDir, pid_alive
from exptorch.types import Checkpoint

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class ResumePoint:
    """Where ``expt run --resume`` continues: a run folder and its newest checkpoint, loaded."""

    run_dir: Path
    path: Path
    checkpoint: Checkpoint

    @property
    def position(self) -> dict[str, Any] | None:
        """Where inside an epoch an interrupted run stopped (``None``: at an epoch's end)."""
        position: dict[str, Any] | None = self.checkpoint.extra.get("position")
        return position

    @property
    def next_epoch(self) -> int:
        return int(self.position["epoch"]) if self.position else self.checkpoint.epoch + 1


#: Settings a resumed run keeps: changing them would not continue the same training.
FIXED_ON_RESUME = ("model", "dataset", "batch_size", "seed", "optimizer")


def find_resume_point(plugins: Plugins, target: Path, *, trust: bool = False) -> ResumePoint:
    """The run folder and checkpoint that ``--resume TARGET`` names, with the checkpoint loaded.

    ``TARGET`` is a run folder (its newest checkpoint is used) or the newest
    checkpoint file in a run folder's ``checkpoints/``.
    """
    if target.is_dir():
        run_path = target.parent if target.name == "checkpoints" else target
    elif target.is_file():
        run_path = target.parent.parent
        if target.parent.name != "checkpoints":
            raise ExptError(
                f"{target} is not in a run folder's checkpoints/ folder; --resume continues a "
                "run folder, so pass the run folder or one of its checkpoints."
            )
    else:
        raise ExptError(f"Nothing to resume at {target}: it does not exist.")
    run_dir = RunDir.open(run_path)
    suffixes = [fmt.suffix for fmt in formats(plugins).values()]
    files = checkpoint_files(run_dir.checkpoints, suffixes)
    if not files:
        raise ExptError(f"{run_path} holds no checkpoint to resume from.")
    path = files[-1] if target.is_dir() else target
    if path.resolve() != files[-1].resolve():
        raise ExptError(
            f"{path.name} is not the newest checkpoint of {run_path} ({files[-1].name} is); "
            "resuming from it would rewrite the run's later epochs, so resume from the newest."
        )
    state = run_dir.read_state()
    pid = state.get("pid")
    if state.get("state") == "running" and pid != os.getpid() and pid_alive(pid):
        raise ExptError(f"{run_path} is still being trained by process {state['pid']}.")
    checkpoint = load_checkpoint(plugins, path, trust=trust)
    return ResumePoint(run_dir=run_path, path=path, checkpoint=checkpoint)


def check_resume(config: RunConfig, resume: ResumePoint, regs: Sequence[Registration]) -> None:
    """Refuse settings that would make ``--resume`` something other than the same run, continued."""
    saved = resume.checkpoint.config
    options = saved.get("options") or {}
    for key in FIXED_ON_RESUME:
        if key in saved and getattr(config, key) != saved[key]:
            raise ExptError(
                f"--resume continues {resume.run_dir} as it was set up; --{key.replace('_', '-')} "
                f"cannot change (it was {saved[key]!r}); start a new run for that."
            )
    if config.name not in (None, resume.run_dir.name):
        raise ExptError(f"--resume continues {resume.run_dir}; it cannot take another --name.")
    for reg in regs:
        for opt in reg.options:
            was = options.get(opt.name, opt.default)
            if not opt.initial_weights and config.options.get(opt.name, opt.default) != was:
                raise ExptError(
                    f"--resume continues {resume.run_dir} as it was set up; {opt.flag} cannot "
                    f"change (it was {was!r})."
                )
    if resume.next_epoch > config.epochs:
        done = resume.checkpoint.epoch
        raise ExptError(
            f"{resume.run_dir} has already trained {done} epoch(s) and --epochs is the total; "
            f"pass --epochs greater than {done} to train more."
        )


def restore_rng(extra: Mapping[str, Any], device: torch.device) -> None:
    """Put back the random number generators' state a checkpoint recorded."""
    import torch

    if "torch_rng_state" in extra:
        torch.set_rng_state(extra["torch_rng_state"].cpu())
    if device.type == "cuda" and "cuda_rng_state" in extra:
        torch.cuda.set_rng_state(extra["cuda_rng_state"].cpu(), device)


__all__ = ["FIXED_ON_RESUME", "ResumePoint", "check_resume", "find_resume_point", "restore_rng"]
