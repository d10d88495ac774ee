"""Logger plugin ``wandb``: Weights & Biases, online or offline, files inside the run folder.

* Settings come from ``--wandb-*`` flags (or the same keys in a config file) and,
  for anything not given, the usual ``WANDB_*`` environment variables
  (``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE``, ``WANDB_API_KEY``, ...).
* The resolved run configuration, with secrets masked, is the W&B config; every
  metric is logged with exptorch's global step, which only grows; the summary
  holds the final values and ``best_test_accuracy`` / ``best_test_loss``.
* W&B's files go to ``RUN/wandb/``; the W&B run id is kept in ``RUN/wandb.json``
  so that ``expt run --resume`` continues the same W&B run.
* When online mode cannot reach the server (or has no API key), the run goes on
  offline with one warning, and the ``wandb sync`` command to upload it later is
  printed.

``wandb`` is imported only when a run uses this logger.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import socket
import string
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from exptorch import Logger, Option, RunContext, hookimpl

if TYPE_CHECKING:
    import torch

log = logging.getLogger("exptorch.wandb")

#: Where the W&B run id, the last step and the best values are kept, in the run folder.
STATE_FILE = "wandb.json"
DEFAULT_PROJECT = "exptorch"
#: Seconds to wait for the W&B server before going offline.
DEFAULT_TIMEOUT = 15.0
#: Metrics whose best value goes into the summary, and what "best" means for them.
BEST = {"test_accuracy": max, "test_loss": min}
#: What a W&B run id read back from ``wandb.json`` may look like.
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

OPTIONS = [
    Option("wandb_project", help=f"W&B project. [env WANDB_PROJECT; default {DEFAULT_PROJECT}]"),
    Option("wandb_entity", help="W&B team or user. [env WANDB_ENTITY]"),
    Option("wandb_name", help="W&B run name. [env WANDB_NAME; default: the run's name]"),
    Option("wandb_tags", help="Comma-separated W&B tags. [env WANDB_TAGS]"),
    Option("wandb_group", help="W&B run group. [env WANDB_RUN_GROUP]"),
    Option("wandb_notes", help="W&B run notes. [env WANDB_NOTES]"),
    Option(
        "wandb_mode",
        help="online, offline (upload later with wandb sync) or disabled. "
        "[env WANDB_MODE; default online]",
        choices=("online", "offline", "disabled"),
    ),
    Option(
        "wandb_timeout",
        type=float,
        help="Seconds to wait for the W&B server before going offline. "
        f"[default {DEFAULT_TIMEOUT:g}]",
    ),
]


def wandb_program() -> str:
    """How to run W&B's command line so that a printed hint works when pasted: ``wandb``
    when ``PATH`` finds the one beside this Python, else that one's path (a venv that was
    not activated), else ``python -m wandb``."""
    import shlex
    import shutil

    beside = Path(sys.executable).parent / "wandb"
    found = shutil.which("wandb")
    if found and (not beside.is_file() or os.path.samefile(found, beside)):
        return "wandb"
    if beside.is_file():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m wandb"


class WandbLogger(Logger):
    def __init__(
        self,
        run: RunContext,
        *,
        wandb_project: str | None = None,
        wandb_entity: str | None = None,
        wandb_name: str | None = None,
        wandb_tags: str | None = None,
        wandb_group: str | None = None,
        wandb_notes: str | None = None,
        wandb_mode: str | None = None,
        wandb_timeout: float | None = None,
    ) -> None:
        import wandb

        from exptorch.errors import describe
        from exptorch.secrets import redact

        self.wandb = wandb
        self.state_path = run.run_dir / STATE_FILE
        saved = self._read_state() if run.resumed else {}
        self.run_id: str = saved.get("id") or _new_id()
        #: Steps below this were committed by an earlier process of this run.
        self.floor: int = saved.get("last_step", -1) + 1 if saved else 0
        self.last_step: int = saved.get("last_step", -1)
        self.best: dict[str, float] = dict(saved.get("best", {}))
        #: The summary's best values: test accuracy and loss, and whatever --monitor names.
        self.best_rules = {**BEST, run.monitor: max if run.monitor_mode == "max" else min}

        mode = _mode(wandb_mode or os.environ.get("WANDB_MODE") or "online")
        timeout = wandb_timeout or _env_float("WANDB_INIT_TIMEOUT") or DEFAULT_TIMEOUT
        config = {**run.config.to_dict(), "dataset_info": _info(run)}
        init = redact(  # a token pasted into the notes is masked like one in the config
            dict(
                project=wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                entity=wandb_entity or None,
                name=wandb_name or os.environ.get("WANDB_NAME") or run.config.name,
                tags=[t.strip() for t in wandb_tags.split(",") if t.strip()]
                if wandb_tags
                else None,
                group=wandb_group or None,
                notes=wandb_notes or None,
                config=config,
                dir=str(run.run_dir),
                id=self.run_id,
                resume="allow" if saved else None,
            )
        )
        self._write_state()  # before init: an offline fallback reuses the same id
        self.offline = mode == "offline"
        if mode == "online":
            problem = _unreachable(_base_url(), timeout)
            if problem is None:
                try:
                    self.run = wandb.init(mode="online", settings=self._settings(timeout), **init)
                except Exception as exc:  # no API key, refused, timed out, ...
                    problem = describe(exc)
                    wandb.teardown()  # frees the run id for the offline run below
            if problem is not None:
                self.run = wandb.init(mode="offline", settings=self._settings(timeout), **init)
                self.offline = True
                log.warning(
                    "W&B is not reachable (%s); logging offline instead. Upload the run "
                    "later with: %s",
                    problem,
                    self.sync_command(),
                )
        else:
            self.run = wandb.init(mode=mode, settings=self._settings(timeout), **init)  # type: ignore[arg-type]
        log.info("wandb: run %s (%s) in %s", self.run_id, mode, self.run_folder)

    def _settings(self, timeout: float) -> Any:
        return self.wandb.Settings(
            init_timeout=timeout,
            silent=not log.isEnabledFor(logging.INFO),
            console="off",  # exptorch prints nothing secret, but a plugin's output might
            x_disable_meta=True,  # the metadata file records sys.argv unredacted
            disable_git=True,  # a remote URL can hold a token
            save_code=False,
        )

    # -- where things are --------------------------------------------------------------------

    @property
    def run_folder(self) -> Path | None:
        """``RUN/wandb/offline-run-...-ID`` (or ``run-...``), the folder ``wandb sync`` takes."""
        directory = getattr(self.run, "dir", None)
        return Path(directory).parent if directory else None

    def sync_command(self) -> str:
        folder = self.run_folder
        if folder is None:
            return f"{wandb_program()} sync"
        try:
            shown = folder.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            shown = folder.resolve()
        return f"{wandb_program()} sync {shown}"

    # -- the Logger interface -------------------------------------------------------------------

    def _step(self, step: int) -> int:
        """W&B drops a step smaller than the last; after a resume, steps continue past it."""
        step = max(step, self.floor, self.last_step)
        self.last_step = step
        return step

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=self._step(step))
        for key, better in self.best_rules.items():
            if key in metrics and math.isfinite(value := float(metrics[key])):
                self.best[key] = better(value, self.best.get(key, value))
                self.run.summary[f"best_{key}"] = self.best[key]

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        # The config went in at init; the summary gets the final epoch's metrics.
        self.run.summary.update({key: float(value) for key, value in metrics.items()})

    def log_images(
        self, tag: str, images: torch.Tensor, captions: Sequence[str], step: int
    ) -> None:
        pictures = [
            self.wandb.Image(
                (image.detach().float().clamp(0, 1) * 255).byte().permute(1, 2, 0).cpu().numpy(),
                caption=caption.replace("\n", " / "),
            )
            for image, caption in zip(images, captions, strict=True)
        ]
        self.run.log({tag: pictures}, step=self._step(step))

    def flush(self) -> None:
        self._write_state()

    def finish(self, state: str) -> None:
        self.run.summary["state"] = state
        self.run.finish(exit_code=0 if state in ("finished", "stopped") else 1)
        self._write_state()
        if self.offline and log.isEnabledFor(logging.WARNING):
            print(
                f"wandb: offline run saved; upload it with: {self.sync_command()}", file=sys.stderr
            )

    # -- the state file -------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        """What ``wandb.json`` holds, keeping only a W&B-like id, an integer step and finite
        best values: the file is data, and anything else in it is ignored."""
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        state: dict[str, Any] = {}
        if isinstance(data.get("id"), str) and RUN_ID.fullmatch(data["id"]):
            state["id"] = data["id"]
        step = data.get("last_step")
        if isinstance(step, int) and not isinstance(step, bool) and step >= -1:
            state["last_step"] = step
        best = data.get("best")
        if isinstance(best, dict):
            state["best"] = {
                key: float(value)
                for key, value in best.items()
                if key in BEST and isinstance(value, (int, float)) and math.isfinite(value)
            }
        return state

    def _write_state(self) -> None:
        tmp = self.state_path.with_name(f".{STATE_FILE}.tmp")
        state = {"id": self.run_id, "last_step": self.last_step, "best": self.best}
        tmp.write_text(json.dumps(state, allow_nan=False) + "\n")
        os.replace(tmp, self.state_path)


def _new_id() -> str:
    """Eight random lowercase letters and digits, the form W&B itself uses."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(random.SystemRandom().choices(alphabet, k=8))


def _mode(value: str) -> str:
    value = {"run": "online", "dryrun": "offline"}.get(value, value)
    if value not in ("online", "offline", "disabled"):
        from exptorch import ExptError

        raise ExptError(f"W&B mode {value!r} is not one of online, offline, disabled.")
    return value


def _env_float(name: str) -> float | None:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return None


def _info(run: RunContext) -> dict[str, Any] | None:
    return run.info.to_dict() if run.info is not None else None


def _base_url() -> str:
    url = os.environ.get("WANDB_BASE_URL")
    if url:
        return url
    import wandb

    return str(wandb.Settings().base_url)


def _unreachable(url: str, timeout: float) -> str | None:
    """Why the W&B server at ``url`` cannot be reached within ``timeout`` seconds, or None.

    A plain TCP connection (in a thread, so a hanging DNS lookup is bounded too)
    answers in moments where ``wandb.init`` would retry until its timeout.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(f"{host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"{host}:{port}: no answer in {timeout:g}s"


@hookimpl
def register_loggers(register: Any) -> None:
    register(
        "wandb",
        WandbLogger,
        description="Weights & Biases, online or offline (then `wandb sync`); files in the run",
        options=OPTIONS,
    )
