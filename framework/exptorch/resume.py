"""``expt run --resume``: find the run folder and checkpoint to continue, and check the settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.checkpoint import checkpoint_files, formats, load_checkpoint
from exptorch.config import RunConfig
from exptorch.distributed import current_world
from exptorch.errors import ExptError
from exptorch.plugins import Plugins, Registration
from exptorch.rundir import RunDir, read_json
from exptorch.types import Checkpoint

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class ResumePoint:
    """Where ``expt run --resume`` continues: a run folder and its newest checkpoint, loaded."""

    run_dir: Path
    path: Path
    checkpoint: Checkpoint
    #: The run folder, locked by this process from the moment it was found (see
    #: :meth:`~exptorch.rundir.RunDir.lock`); ``None`` for a point made by hand.
    folder: RunDir | None = None
    #: True when the run wrote no checkpoint: it starts again from epoch 1 with the
    #: configuration and seed its ``config.json`` recorded (``checkpoint`` holds only those).
    fresh: bool = False
    #: The run's ``state.json`` when it was found.
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        """The run's saved settings, named after the folder as it is now (a copied, renamed
        or linked run folder continues where it is, under its present name)."""
        return {
            **self.checkpoint.config,
            "name": self.run_dir.name,
            "runs_dir": str(self.run_dir.parent),
        }

    def release(self) -> None:
        """Give the run folder's lock back (the run did not go ahead)."""
        if self.folder is not None:
            self.folder.unlock()

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
    if current_world().is_main:
        run_dir.lock()  # held for the whole run; a second --resume stops here
    try:
        return _resume_point(plugins, run_dir, target, trust)
    except BaseException:
        run_dir.unlock()
        raise


def _resume_point(plugins: Plugins, run_dir: RunDir, target: Path, trust: bool) -> ResumePoint:
    from exptorch.rundir import remove_stale_staging

    run_path = run_dir.path
    remove_stale_staging(run_dir.checkpoints)
    suffixes = [fmt.suffix for fmt in formats(plugins).values()]
    files = checkpoint_files(run_dir.checkpoints, suffixes)
    state = run_dir.read_state()
    if not files:
        return _fresh_point(run_dir, state)
    path = files[-1] if target.is_dir() else target
    if path.resolve() != files[-1].resolve():
        raise ExptError(
            f"{path.name} is not the newest checkpoint of {run_path} ({files[-1].name} is); "
            "resuming from it would rewrite the run's later epochs, so resume from the newest."
        )
    checkpoint = load_checkpoint(plugins, path, trust=trust)
    return ResumePoint(
        run_dir=run_path, path=path, checkpoint=checkpoint, folder=run_dir, state=state
    )


def _fresh_point(run_dir: RunDir, state: dict[str, Any]) -> ResumePoint:
    """A run stopped before its first checkpoint: start it again from its config.json."""
    saved = read_json(run_dir.path / "config.json").get("config")
    if not isinstance(saved, dict) or not saved.get("model") or saved.get("seed") is None:
        raise ExptError(
            f"{run_dir.path} holds no checkpoint and no config.json to start it again from; "
            "it never started, so remove it and start the run anew."
        )
    start = Checkpoint(model_state={}, epoch=0, step=0, config=saved, meta={})
    return ResumePoint(
        run_dir=run_dir.path, path=run_dir.checkpoints, checkpoint=start, folder=run_dir,
        fresh=True, state=state,
    )  # fmt: skip


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
    if config.name not in (None, resume.run_dir.name, saved.get("name")):
        raise ExptError(f"--resume continues {resume.run_dir}; it cannot take another --name.")
    for reg in regs:
        for opt in reg.options:
            was = options.get(opt.name, opt.default)
            if not opt.initial_weights and config.options.get(opt.name, opt.default) != was:
                raise ExptError(
                    f"--resume continues {resume.run_dir} as it was set up; {opt.flag} cannot "
                    f"change (it was {was!r})."
                )
    unrecorded_end = resume.state.get("state") in ("running", "interrupted")
    if resume.next_epoch > config.epochs and not (
        unrecorded_end and resume.next_epoch == config.epochs + 1
    ):
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
