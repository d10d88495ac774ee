"""The run folder: config, metrics, state and checkpoints, written so nothing is half-written.

Layout of ``runs/<name>/``::

    config.json      resolved options, versions and the plugins used
    metrics.jsonl    one JSON object per line; the run's source of truth
    state.json       running / finished / stopped / interrupted / failed, and the last epoch
    checkpoints/     one file per epoch, in the chosen checkpoint format
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from exptorch.errors import ExptError

#: The file in a run folder that the process training it holds an exclusive OS lock on.
LOCK_NAME = ".lock"


def disk_error(exc: OSError, action: str, hint: str = "") -> ExptError:
    """``OSError`` ``exc`` met while trying to ``action``, as one sentence with what to do.

    ``hint`` is added where the error is one that a retry can get past (a full disk).
    """
    reason = exc.strerror or str(exc)
    fixes = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space (the disk quota is reached)",
        errno.EROFS: "choose a writable --runs-dir",
        errno.EACCES: "choose a --runs-dir you can write to",
        errno.EPERM: "choose a --runs-dir you can write to",
        errno.ENAMETOOLONG: "choose a shorter --name or --runs-dir",
        errno.ENOTDIR: "choose a --runs-dir that is a folder",
    }
    fix = fixes.get(exc.errno or 0)
    what = f"; {fix}" if fix else ""
    if fix and hint and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what += f", {hint}"
    return ExptError(f"Cannot {action}: {reason}{what}.")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    If the body raises (or the process dies) the temporary file is removed or left
    under a hidden name, and whatever was at ``path`` before is untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_files(path: Path) -> Iterator[Path]:
    """Like :func:`atomic_path`, for a file that may come with companion files.

    Yields ``path``'s name inside a hidden staging folder beside it; the body
    writes the main file there, plus any companions named ``path.name`` + a
    further suffix. On success every file is fsynced and moved into place,
    the companions first and the main file last, so the main file's presence
    means the whole set is there. If the body raises, or the process dies, the
    staging folder is all that is left (removed here, or by
    :func:`remove_stale_staging` later) and what was at ``path`` is untouched.
    """
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.mkdir()
    try:
        yield staging / path.name
        staged = sorted(staging.iterdir())
        if not (staging / path.name).is_file():
            raise FileNotFoundError(f"nothing was written to {path}")
        for item in staged:
            with open(item, "rb+") as fh:
                os.fsync(fh.fileno())
        if len(staged) > 1 and path.exists():
            path.unlink()  # never leave an old main file beside new companions
        for item in staged:
            if item.name != path.name:
                os.replace(item, path.parent / item.name)
        os.replace(staging / path.name, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rmdir()
    _fsync_dir(path.parent)


def remove_stale_staging(folder: Path) -> None:
    """Remove the staging folders and temporary files a killed process left in ``folder``."""
    for item in folder.glob(".*.tmp-*"):
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def json_safe(value: Any) -> Any:
    """``value`` with every ``nan``/``inf`` float replaced by ``None``: strict JSON has neither.

    ``json.dumps`` would write them as bare ``NaN``/``Infinity``, which other JSON
    readers (``jq``, browsers, W&B) reject; a metric that was not a number reads as null.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def dumps(data: Any, **kwargs: Any) -> str:
    """``data`` as strict JSON (see :func:`json_safe`), as every JSON exptorch writes is."""
    return json.dumps(json_safe(data), allow_nan=False, **kwargs)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented strict JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing, torn or non-object file reads as ``{}``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this machine (a run's owner, from state.json)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # it exists, owned by someone else
        return True
    except (OSError, OverflowError):  # no such process, or a pid no process here can have
        return False
    return True


def iter_metrics(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, one line at a time, so a file of any size
    costs one line of memory; a torn line (from a crash) or a non-object line is skipped."""
    with open(path) as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a whole ``metrics.jsonl`` file (see :func:`iter_metrics`)."""
    return list(iter_metrics(path))


#: What ``state.json`` keeps of the newest epoch's record (under ``final``), so that
#: ``expt runs list`` shows a run from ``config.json`` and ``state.json`` alone.
FINAL_KEYS = ("test_accuracy", "test_loss", "epoch_train_loss")


def finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool, not nan or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def final_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`FINAL_KEYS` of an epoch's record (one with ``test_accuracy``)."""
    return {key: record[key] for key in FINAL_KEYS if key in record}


class RunDir:
    """A run's folder and the files in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._metrics: IO[str] | None = None
        #: The newest epoch's final metrics and the best test accuracy seen, written into
        #: state.json by set_state (so ``expt runs list`` never reads metrics.jsonl).
        self._final: dict[str, Any] | None = None
        self._best: float | None = None
        #: Whether ``_best`` covers the whole history (after truncate_metrics read it all).
        self._best_is_whole = False
        self._lock_fd: int | None = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @staticmethod
    def check_new(runs_dir: Path, name: str) -> None:
        """Refuse a name that an existing run already uses, before any work starts."""
        for folder in (runs_dir, *runs_dir.parents):
            if folder.exists() or folder.is_symlink():
                if not folder.is_dir():
                    raise ExptError(
                        f"--runs-dir {runs_dir} cannot hold run folders: {folder} is a file, "
                        "not a folder; choose another --runs-dir."
                    )
                break
        if (runs_dir / name).exists() or (runs_dir / name).is_symlink():
            raise ExptError(
                f"Run {runs_dir / name} already exists; choose another --name "
                "(or continue it with --resume)."
            )

    @classmethod
    def create(
        cls, runs_dir: Path, name: str, config: Mapping[str, Any] | None = None, **state: Any
    ) -> RunDir:
        """Make the run folder whole or not at all, and hold its lock.

        The folder is assembled under a hidden name (``checkpoints/``, an empty
        ``metrics.jsonl``, ``config.json`` and ``state.json``) and renamed into
        place, so a run folder always says what it was started with and a kill
        at any moment leaves either nothing or a folder that ``--resume`` can
        start again. The caller holds the folder's lock from then on.
        """
        cls.check_new(runs_dir, name)
        final = runs_dir / name
        staging = runs_dir / f".{name}.tmp-{os.getpid()}"
        run = cls(staging)
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            run.lock()
            run.checkpoints.mkdir()
            run.metrics_path.touch()
            if config is not None:
                run.write_config(config)
            run.set_state("running", **{"epoch": 0, **state})
            if final.exists() or final.is_symlink():
                raise FileExistsError(errno.EEXIST, "exists", str(final))
            os.rename(staging, final)
        except BaseException as exc:
            run.unlock()
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ExptError(f"Run {final} already exists; choose another --name.") from None
            if isinstance(exc, OSError):
                raise disk_error(exc, f"create run folder {final}") from None
            raise
        run.path = final
        _fsync_dir(runs_dir)
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run folder, to continue it (``expt run --resume``)."""
        if not (path / "checkpoints").is_dir():
            raise ExptError(f"{path} is not a run folder (it has no checkpoints/ folder).")
        return cls(path)

    # --- the lock ---------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the folder's exclusive OS lock, or say who holds it (one sentence).

        ``flock`` on ``.lock``: held until :meth:`unlock` or the process ends
        however it ends (the OS releases it on SIGKILL), and honoured on NFS.
        """
        if self._lock_fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on this platform
            return
        path = self.path / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise disk_error(exc, f"lock run folder {self.path}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_pid(path)
            by = f" (process {holder})" if holder else ""
            raise ExptError(
                f"{self.path} is being trained by another process{by}; wait for it to end, "
                "or stop it, before continuing this run."
            ) from None
        except OSError:  # a file system without locks: carry on unlocked
            os.close(fd)
            return
        self._lock_fd = fd
        with contextlib.suppress(OSError):  # a full disk may refuse even this
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def is_locked(path: Path) -> bool | None:
        """Whether a process holds ``path``'s lock now (``None``: the folder has no lock file)."""
        try:
            import fcntl

            fd = os.open(path / LOCK_NAME, os.O_RDONLY)
        except (ImportError, OSError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        finally:
            os.close(fd)
        return False

    def read_state(self) -> dict[str, Any]:
        return read_json(self.path / "state.json")

    def _resume_hint(self) -> str:
        from exptorch.program import expt_command

        return f"then continue with: {expt_command()} run --resume {self.path}"

    def truncate_metrics(self, step: int) -> int:
        """Drop the records after ``step`` (a resumed run writes them again); return how many.

        A torn last line (a kill in the middle of a write) is dropped too, so the
        next record starts on a line of its own.
        """
        if not self.metrics_path.exists():
            return 0
        with open(self.metrics_path) as fh:
            lines = fh.readlines()
        records = read_metrics(self.metrics_path)
        kept = [r for r in records if int(r.get("step", 0)) <= step]
        epochs = [r for r in kept if "test_accuracy" in r]
        self._final = final_metrics(epochs[-1]) if epochs else {}
        accuracies = [r["test_accuracy"] for r in epochs if finite_number(r["test_accuracy"])]
        self._best, self._best_is_whole = (max(accuracies) if accuracies else None), True
        if len(kept) != len(lines) or (lines and not lines[-1].endswith("\n")):
            try:
                with atomic_path(self.metrics_path) as tmp:
                    tmp.write_text("".join(dumps(r) + "\n" for r in kept))
            except OSError as exc:
                raise disk_error(exc, f"rewrite {self.metrics_path}", "and try again") from None
        return len(records) - len(kept)

    def write_config(self, data: Mapping[str, Any]) -> None:
        try:
            write_json(self.path / "config.json", data)
        except OSError as exc:
            raise disk_error(exc, f"write {self.path / 'config.json'}", "and try again") from None

    def read_config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        return data

    def set_state(self, state: str, **fields: Any) -> None:
        path = self.path / "state.json"
        current = read_json(path)
        if self._final is not None:
            current["final"] = self._final
        if self._best is not None:  # the caller's own best_test_accuracy, if given, wins
            prior: Any = current.get("best_test_accuracy")
            if not self._best_is_whole and finite_number(prior):
                self._best = max(self._best, float(prior))
            current["best_test_accuracy"] = self._best
        current.update(fields, state=state, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            write_json(path, current)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not _rewrite_in_place(
                path, current
            ):
                raise disk_error(exc, f"write {path}", self._resume_hint()) from None

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line and flush it, so a crash loses at most the line being written."""
        try:
            if self._metrics is None:
                self._metrics = open(self.metrics_path, "a")  # noqa: SIM115 - closed in close()
            self._metrics.write(dumps(record) + "\n")
            self._metrics.flush()
        except OSError as exc:
            raise disk_error(exc, f"write {self.metrics_path}", self._resume_hint()) from None
        if "test_accuracy" in record:  # an epoch's end: state.json's next write carries it
            self._final = final_metrics(record)
            if finite_number(accuracy := record["test_accuracy"]):
                self._best = accuracy if self._best is None else max(self._best, accuracy)

    def sync(self) -> None:
        if self._metrics is not None:
            try:
                os.fsync(self._metrics.fileno())
            except OSError as exc:
                raise disk_error(exc, f"write {self.metrics_path}", self._resume_hint()) from None

    def close(self) -> None:
        """Flush and close ``metrics.jsonl`` (the lock is kept: see :meth:`unlock`)."""
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            try:
                os.fsync(metrics.fileno())
            finally:
                with contextlib.suppress(OSError):  # its buffer was flushed at each record
                    metrics.close()


def _rewrite_in_place(path: Path, data: Any) -> bool:
    """Overwrite a small JSON file in place when the disk has no room for a new one.

    Not atomic, but it reuses the file's own blocks: on a full disk, the state a
    run ended in is worth more than the atomicity of writing it.
    """
    text = dumps(data, indent=2, default=str) + "\n"
    try:
        with open(path, "r+" if path.exists() else "w") as fh:
            fh.write(text)
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        return False
    return True


class FollowerRunDir(RunDir):
    """The run folder as a DDP rank other than 0 holds it: it reads and writes nothing.

    Only rank 0 writes a distributed run's files; the other ranks run the same
    loop against this stand-in.
    """

    def read_state(self) -> dict[str, Any]:
        return {}

    def lock(self) -> None:
        pass

    def truncate_metrics(self, step: int) -> int:
        return 0

    def write_config(self, data: Mapping[str, Any]) -> None:
        pass

    def read_config(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: str, **fields: Any) -> None:
        pass

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass
