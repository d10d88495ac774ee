"""``expt sweep run``: a hyperparameter search whose trials are ordinary exptorch runs.

The search itself is Optuna's (samplers, pruners, and its relational storage, which is
what lets processes on several machines share one study); this module adds what an
exptorch user expects of it:

* each trial is a run folder ``DIR/NAME/trial-0003`` made by :func:`run_experiment`
  in this process, so ``expt runs``, TensorBoard and W&B work on trials as on runs;
* pruning listens to the ``epoch_end`` hook like any plugin;
* the budget (``trials``) is spent exactly once however many processes and machines
  pull trials: deciding and asking happen under one lock held in the storage itself
  (a PostgreSQL advisory lock, or a file lock beside a SQLite file), see
  :func:`claim_next`;
* a trial whose process died (Ctrl-C, kill, a lost machine) stays ``RUNNING`` in the
  storage and is resumed from its checkpoint by the next ``expt sweep run``.

Importing this module is cheap; optuna, sqlalchemy and torch are imported where used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.errors import ExptError, first_line
from exptorch.hookspecs import hookimpl
from exptorch.rundir import pid_alive, read_json, read_metrics, write_json
from exptorch.sweep_file import SweepSpec, format_duration, resolve_trial

if TYPE_CHECKING:
    import optuna

    from exptorch.config import RunConfig
    from exptorch.plugins import Plugins
    from exptorch.types import RunContext

log = logging.getLogger("exptorch")

#: The sweep folder's record of its sweep file (canonical form and digest) and storage.
RECORD = "sweep.json"
#: The default storage: a SQLite file in the sweep folder.
DEFAULT_DB = "sweep.db"
#: How worker processes receive the storage URL (kept off their command lines).
STORAGE_ENV = "EXPT_SWEEP_STORAGE"
#: A running trial's process writes a heartbeat this often ...
HEARTBEAT_SECONDS = 20.0
#: ... and a trial whose heartbeat is older than this is taken to be dead.
STALE_SECONDS = 120.0
#: The stop reason of a pruned trial's run (``state.json``'s ``stop_reason``).
PRUNED_REASON = "pruned by the sweep"
#: Trial user attributes (``expt:`` keeps them apart from a user's own).
RUN_ATTR, OWNER_ATTR, BEAT_ATTR, ERROR_ATTR = (
    "expt:run",
    "expt:owner",
    "expt:heartbeat",
    "expt:error",
)
DIGEST_ATTR, SPEC_ATTR, SESSION_PREFIX = "expt:digest", "expt:sweep", "expt:session:"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HOST = socket.gethostname()


# -- storage ---------------------------------------------------------------------------------


def hide_password(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def storage_backend(url: str) -> str:
    """``sqlite`` or ``postgresql``; any other URL is one sentence saying what to use."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    usage = "use postgresql://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:///PATH/TO/FILE.db"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ExptError(f"Storage {hide_password(url)!r} is not a database URL; {usage}.") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ExptError(
            f"Storage {hide_password(url)!r} is a {backend} URL; `expt sweep` keeps the trial "
            f"budget exact with locks it knows for PostgreSQL and SQLite only, so {usage}."
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ExptError(f"Storage {url!r} is an in-memory database; {usage}.")
    return backend


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Connect to Optuna's RDB storage at ``url``; a wrong or unreachable URL is one sentence."""
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = storage_backend(url)
    shown = hide_password(url)
    connect_args = {"timeout": 60} if backend == "sqlite" else {"connect_timeout": 10}
    try:
        # Optuna creates its tables on first use; two processes doing that at once on one
        # PostgreSQL database collide ("duplicate key value ... pg_type_typname_nsp_index")
        with schema_lock(url, connect_args):
            return optuna.storages.RDBStorage(
                with_driver(url), engine_kwargs={"connect_args": connect_args}
            )
    except ImportError as exc:
        if backend == "postgresql":
            raise ExptError(
                f"Storage {shown} needs the PostgreSQL driver: pip install 'exptorch[postgres]'."
            ) from None
        raise ExptError(f"Storage {shown} cannot be used: {first_line(exc)}.") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise ExptError(f"Cannot reach storage {shown}: {first_line(cause)}.") from None


@contextlib.contextmanager
def schema_lock(url: str, connect_args: dict[str, int]) -> Iterator[None]:
    """One process at a time opens (and so may create) the storage's tables."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(with_driver(url), connect_args=connect_args)
    try:
        with storage_lock(url, "exptorch sweep storage tables", engine):
            yield
    finally:
        engine.dispose()


@contextlib.contextmanager
def storage_lock(url: str, name: str, engine: Any) -> Iterator[None]:
    """Hold the lock called ``name`` across every process that shares the storage at ``url``.

    SQLite: an exclusive ``flock`` on a file beside the database (every process that
    shares a SQLite file is on one machine). PostgreSQL: a transaction-level advisory
    lock keyed by ``name``, released when the transaction ends or its connection drops,
    so a killed process never leaves it held.
    """
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    if storage_backend(url) == "sqlite":
        database = make_url(url).database
        assert database is not None
        with file_lock(f"{database}.lock"):
            yield
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})
        yield


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def lock_key(text: str) -> int:
    """A PostgreSQL advisory-lock key (a signed 64-bit integer) named by ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def with_driver(url: str) -> str:
    """A plain ``postgresql://`` URL with the driver that is installed.

    SQLAlchemy's default PostgreSQL driver is psycopg2 up to 2.0 and psycopg (3) from
    2.1; ``exptorch[postgres]`` installs psycopg, and either one works.
    """
    import importlib.util

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername != "postgresql":
        return url
    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return parsed.set(drivername=driver).render_as_string(hide_password=False)
    return url


@contextlib.contextmanager
def budget_lock(storage: optuna.storages.RDBStorage, url: str, name: str) -> Iterator[None]:
    """Hold the sweep's lock: one process at a time decides whether to start a trial."""
    with storage_lock(url, f"exptorch sweep {name}", storage.engine):
        yield


# -- the sweep folder and its study ------------------------------------------------------------


@dataclass
class Sweep:
    """A sweep ready to run trials: its file, folder, storage and Optuna study."""

    name: str
    folder: Path
    spec: SweepSpec
    url: str  # may hold a password: never written to disk or printed (see shown_url)
    storage: optuna.storages.RDBStorage
    study: optuna.Study

    @property
    def shown_url(self) -> str:
        return hide_password(self.url)

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (Optuna's public storage API)."""
        study_id = self.storage.get_study_id_from_name(self.name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with budget_lock(self.storage, self.url, self.name):
            yield


def check_name(name: str) -> None:
    if not _PLAIN_NAME.match(name) or name in (".", ".."):
        raise ExptError(
            f"Sweep name {name!r} must be a plain folder name "
            "(letters, digits, '.', '_' and '-', not starting with '.' or '-')."
        )


def default_url(folder: Path) -> str:
    return f"sqlite:///{(folder / DEFAULT_DB).resolve()}"


def open_sweep(
    spec: SweepSpec,
    *,
    name: str,
    runs_dir: Path,
    storage: str | None,
    epochs: int,
    create: bool = True,
) -> Sweep:
    """Open sweep ``name`` in ``runs_dir`` (creating its folder and study if new).

    Refuses, before anything is written, a name whose folder or study was made from
    a different sweep file, a folder that is not a sweep's, and a storage other than
    the one the sweep was started with.
    """
    check_name(name)
    folder = runs_dir / name
    record = read_json(folder / RECORD) if (folder / RECORD).is_file() else None
    if record is None and folder.exists() and _foreign(folder):
        raise ExptError(f"{folder} exists and is not a sweep folder; choose another --name.")
    if record is not None:
        _check_same_file(record, spec, folder)
    url = storage or default_url(folder)
    shown = hide_password(url)
    if record is not None and record.get("storage") != shown:
        hint = "leave --storage out" if record.get("default_storage") else (
            f"pass --storage {record.get('storage')} (with its password)")  # fmt: skip
        raise ExptError(
            f"Sweep {name} keeps its trials in {record.get('storage')}, not {shown}; {hint}."
        )
    storage_backend(url)  # a wrong URL is refused before anything is created
    created = not folder.exists()
    if storage is None:
        if not create and created:
            raise ExptError(f"No sweep {name} in {runs_dir}.")
        folder.mkdir(parents=True, exist_ok=True)
    try:
        rdb = open_storage(url)
        study = _open_study(rdb, url, name, spec, epochs)
    except BaseException:
        if created and folder.exists():  # only what this call made: the folder and its db
            shutil.rmtree(folder)
        raise
    if record is None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            folder / RECORD,
            {
                "name": name,
                "sweep_file": str(spec.path.resolve()),
                "digest": spec.digest,
                "sweep": spec.canonical(),
                "storage": shown,
                "default_storage": storage is None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    return Sweep(name=name, folder=folder, spec=spec, url=url, storage=rdb, study=study)


def _foreign(folder: Path) -> bool:
    """Whether ``folder`` holds anything but the files of a sweep that is being created."""
    return any(not p.name.startswith(DEFAULT_DB) for p in folder.iterdir())


def _check_same_file(record: Mapping[str, Any], spec: SweepSpec, folder: Path) -> None:
    if record.get("digest") == spec.digest:
        return
    before = record.get("sweep") or {}
    now = spec.canonical()
    differs = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    what = f" (its {', '.join(differs)} differ)" if differs else ""
    raise ExptError(
        f"Sweep {folder.name} in {folder.parent} was started from another sweep file "
        f"({record.get('sweep_file')}){what}; use another --name, or the same file "
        "(only trials and timeout may change)."
    )


def _open_study(
    storage: optuna.storages.RDBStorage, url: str, name: str, spec: SweepSpec, epochs: int
) -> optuna.Study:
    import optuna

    with budget_lock(storage, url, name):
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=spec.direction,  # type: ignore[arg-type]
            pruner=make_pruner(spec, epochs),
            load_if_exists=True,
        )
        attrs = study.user_attrs
        if DIGEST_ATTR not in attrs:
            if study.trials:
                raise ExptError(
                    f"Storage {hide_password(url)} already holds a study {name!r} that "
                    "`expt sweep` did not make; use another --name."
                )
            study.set_user_attr(DIGEST_ATTR, spec.digest)
            study.set_user_attr(SPEC_ATTR, spec.canonical())
        elif attrs[DIGEST_ATTR] != spec.digest:
            raise ExptError(
                f"Sweep {name} in {hide_password(url)} was started from another sweep file; "
                "use another --name, or the same file (only trials and timeout may change)."
            )
    return study


def make_pruner(spec: SweepSpec, epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruner_startup_trials, n_warmup_steps=spec.pruner_warmup_epochs
        )
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 2))
    return optuna.pruners.NopPruner()


def make_sampler(spec: SweepSpec, index: int) -> optuna.samplers.BaseSampler:
    """The sampler for the ``index``-th trial of the study.

    Made afresh for every trial, seeded from ``(seed, index)``: Optuna's samplers keep
    their state in the storage, and one seed per trial keeps parallel workers from
    drawing the same random points while the sequence stays reproducible. The seed is
    hashed: consecutive seeds give NumPy generators nearly equal first draws.
    """
    import optuna

    seed = None
    if spec.seed is not None:
        digest = hashlib.sha256(f"exptorch sweep {spec.seed} {index}".encode()).digest()
        seed = int.from_bytes(digest[:4], "big")
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: the points are enqueued


def max_epochs(spec: SweepSpec, base: RunConfig) -> int:
    swept = [p for p in spec.parameters if p.name == "epochs"]
    return int(max(swept[0].edge_values())) if swept else base.epochs


# -- claiming trials under the budget ----------------------------------------------------------


@dataclass
class Session:
    """One ``expt sweep run`` command: its wall time counts towards the sweep's timeout."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    start: float = field(default_factory=time.time)

    def touch(self, study: optuna.Study) -> None:
        study.set_user_attr(SESSION_PREFIX + self.id, [self.start, time.time()])


def elapsed(study: optuna.Study) -> float:
    """Seconds the sweep has run: the union of its commands' intervals (overlaps count once)."""
    spans = sorted(
        (float(v[0]), float(v[1]))
        for k, v in study.user_attrs.items()
        if k.startswith(SESSION_PREFIX)
    )
    total, reach = 0.0, -math.inf
    for start, end in spans:
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@dataclass
class Claim:
    """A trial this process will run: new, or another process's interrupted one."""

    trial_id: int
    number: int
    params: dict[str, Any]
    run_name: str
    resumed: bool


def owner(worker: int) -> dict[str, Any]:
    return {"host": HOST, "pid": os.getpid(), "worker": worker}


def is_stale(trial: optuna.trial.FrozenTrial, now: float) -> bool:
    """Whether a RUNNING trial's process is gone: dead on this host, or silent for too long."""
    who = trial.user_attrs.get(OWNER_ATTR)
    if not isinstance(who, dict):
        return True
    if who.get("host") == HOST and not pid_alive(who.get("pid")):
        return True
    return now - float(trial.user_attrs.get(BEAT_ATTR, 0)) > STALE_SECONDS


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that spend the budget: complete, pruned, failed and running ones."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return study.get_trials(deepcopy=False, states=states)


def claim_next(sweep: Sweep, *, worker: int = 0, session: Session | None = None) -> Claim | None:
    """The next trial for this process, or ``None`` when the budget is spent.

    Under the sweep's lock: first an interrupted trial whose process is gone (it is
    resumed, and was counted already); else, while fewer than ``trials`` trials are
    counted and the timeout has not passed, a new one from ``study.ask()``. Every
    process asks only under the lock, so counting and asking are one step and
    ``trials`` trials are started in all, however many processes there are.
    """
    from optuna.trial import TrialState

    spec, study = sweep.spec, sweep.study
    with sweep.lock():
        if session is not None:
            session.touch(study)
        now = time.time()
        trials = study.get_trials(deepcopy=False)
        for frozen in trials:
            if frozen.state == TrialState.RUNNING and is_stale(frozen, now):
                trial_id = sweep.trial_id(frozen.number)
                sweep.storage.set_trial_user_attr(trial_id, OWNER_ATTR, owner(worker))
                sweep.storage.set_trial_user_attr(trial_id, BEAT_ATTR, now)
                return Claim(
                    trial_id=trial_id, number=frozen.number, params=dict(frozen.params),
                    run_name=str(frozen.user_attrs.get(RUN_ATTR) or f"trial-{frozen.number:04d}"),
                    resumed=True,
                )  # fmt: skip
        if spec.trials is not None and len(counted(study)) >= spec.trials:
            return None
        if spec.timeout is not None and elapsed(study) >= spec.timeout:
            return None
        study.sampler = make_sampler(spec, len(trials))
        if spec.grid is not None:
            used = [dict(t.params) for t in trials if t.state != TrialState.WAITING]
            todo = [point for point in spec.grid if point not in used]
            if not todo:
                return None
            study.enqueue_trial(todo[0])
        trial = study.ask()
        params = {p.key: p.suggest(trial) for p in spec.parameters}
        run_name = f"trial-{trial.number:04d}"
        trial.set_user_attr(RUN_ATTR, run_name)
        trial.set_user_attr(OWNER_ATTR, owner(worker))
        trial.set_user_attr(BEAT_ATTR, now)
        return Claim(sweep.trial_id(trial.number), trial.number, params, run_name, resumed=False)


# -- running one trial -------------------------------------------------------------------------


class SweepPruning:
    """The plugin that reports each epoch's metric to the trial and stops the run when pruned."""

    def __init__(self, trial: optuna.trial.Trial, metric: str, pruner: str) -> None:
        self.trial, self.metric, self.pruner = trial, metric, pruner
        self.pruned_at: int | None = None

    @hookimpl
    def epoch_end(self, run: RunContext, epoch: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            run.request_stop(f"{PRUNED_REASON} ({self.pruner} pruner)")


class Heartbeat:
    """A thread that marks the trial alive every :data:`HEARTBEAT_SECONDS`."""

    def __init__(self, sweep: Sweep, trial_id: int) -> None:
        self.sweep, self.trial_id = sweep, trial_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="expt-sweep-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.sweep.storage.set_trial_user_attr(self.trial_id, BEAT_ATTR, time.time())
            except Exception as exc:  # the next beat tries again; a dead trial stops us
                log.debug("sweep heartbeat: %s", exc)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join()


@dataclass
class TrialResult:
    number: int
    state: str  # complete | pruned | failed
    value: float | None
    run: str
    message: str = ""


def trial_config(
    sweep: Sweep,
    plugins: Plugins,
    params: Mapping[str, Any],
    run_name: str,
    *,
    device: str | None = None,
) -> RunConfig:
    """The trial's run: base settings and parameters, in DIR/NAME/run_name, grouped in W&B."""
    flags: dict[str, Any] = {"name": run_name, "runs_dir": str(sweep.folder)}
    if device is not None:
        flags["device"] = device
    config = resolve_trial(sweep.spec, plugins, params, flags=flags)
    if "wandb" in config.logger and not config.options.get("wandb_group"):
        config.options["wandb_group"] = sweep.name
    return config


def free_name(folder: Path, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``, ... if a folder of that name exists."""
    candidate, n = name, 1
    while (folder / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def run_trial(
    sweep: Sweep,
    claim: Claim,
    plugins: Plugins,
    *,
    device: str | None = None,
    echo: Callable[[str], None] = print,
) -> TrialResult:
    """Run (or resume) one trial as an ordinary run, and tell Optuna how it ended.

    An interrupted run (Ctrl-C, SIGTERM) raises through, leaving the trial RUNNING in
    the storage for the next ``expt sweep run`` to resume from its checkpoint.
    """
    import optuna

    from exptorch.train import find_resume_point, run_experiment

    trial = optuna.trial.Trial(sweep.study, claim.trial_id)
    run_name, point = claim.run_name, None
    run_path = sweep.folder / run_name
    if claim.resumed and run_path.is_dir():
        ended = _ended_run(sweep, trial, claim, run_path)
        if ended is not None:
            return ended
        try:
            point = find_resume_point(plugins, run_path)
        except ExptError as exc:
            # Nothing to resume from (it died before its first checkpoint): start the
            # trial again in a new folder, and keep the old one as it is.
            run_name = free_name(sweep.folder, claim.run_name)
            echo(f"trial {claim.number}: {exc} Starting it again as {run_name}.")
    elif (sweep.folder / run_name).exists():
        run_name = free_name(sweep.folder, run_name)
    if run_name != claim.run_name:
        trial.set_user_attr(RUN_ATTR, run_name)
    config = trial_config(sweep, plugins, claim.params, run_name, device=device)
    if point is not None:  # the seed it was drawn with (a resumed run keeps its seed)
        config.seed = point.checkpoint.config.get("seed", config.seed)
    pruning = SweepPruning(trial, sweep.spec.metric, sweep.spec.pruner)
    plugin_name = f"expt-sweep-trial-{claim.number}"
    plugins.add(pruning, plugin_name)
    try:
        with Heartbeat(sweep, claim.trial_id):
            run_experiment(config, plugins, echo=echo, progress=False, resume=point)
    except ExptError as exc:
        trial.set_user_attr(ERROR_ATTR, str(exc))
        sweep.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return TrialResult(claim.number, "failed", None, run_name, str(exc))
    finally:
        plugins.remove(plugin_name)
    return _tell(sweep, trial, claim.number, sweep.folder / run_name, pruning.pruned_at)


def _ended_run(
    sweep: Sweep, trial: optuna.trial.Trial, claim: Claim, run_path: Path
) -> TrialResult | None:
    """A resumed trial whose run had ended before its process died: tell Optuna as its
    process would have (pruned, or complete with its last value), no training. A run a
    callback stopped has ended too: resuming it would train on past the stop."""
    state = read_json(run_path / "state.json")
    reason = str(state.get("stop_reason") or "")
    if state.get("state") == "stopped" and reason.startswith(PRUNED_REASON):
        return _tell(sweep, trial, claim.number, run_path, int(state.get("epoch") or 0))
    if state.get("state") in ("finished", "stopped"):
        return _tell(sweep, trial, claim.number, run_path, None)
    return None


def run_metrics(run_path: Path) -> list[dict[str, Any]]:
    """A run folder's metric records; none when it died before writing its first."""
    if not (run_path / "metrics.jsonl").is_file():
        return []
    return read_metrics(run_path / "metrics.jsonl")


def _tell(
    sweep: Sweep, trial: optuna.trial.Trial, number: int, run_path: Path, pruned_at: int | None
) -> TrialResult:
    from optuna.trial import TrialState

    metric = sweep.spec.metric
    records = [r for r in run_metrics(run_path) if metric in r]
    value = float(records[-1][metric]) if records else None
    if pruned_at is not None:
        sweep.study.tell(trial, state=TrialState.PRUNED)
        return TrialResult(number, "pruned", value, run_path.name, f"at epoch {pruned_at}")
    if value is None or not math.isfinite(value):
        trial.set_user_attr(ERROR_ATTR, f"the run wrote no finite {metric}")
        sweep.study.tell(trial, state=TrialState.FAIL)
        return TrialResult(number, "failed", None, run_path.name, f"no finite {metric}")
    sweep.study.tell(trial, value)
    return TrialResult(number, "complete", value, run_path.name)


# -- workers ---------------------------------------------------------------------------------


#: A worker stops after this many failed trials in a row (a mistake every trial repeats).
MAX_FAILURES_IN_A_ROW = 3


def work(
    sweep: Sweep,
    plugins: Plugins,
    *,
    worker: int = 0,
    session: Session | None = None,
    device: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[TrialResult]:
    """Claim and run trials until the budget is spent; return what this process ran."""
    results: list[TrialResult] = []
    failures = 0
    while (claim := claim_next(sweep, worker=worker, session=session)) is not None:
        params = "  ".join(f"{k}={_short(v)}" for k, v in claim.params.items())
        verb = "resumed" if claim.resumed else "started"
        echo(f"trial {claim.number} {verb} ({claim.run_name}): {params}")
        result = run_trial(sweep, claim, plugins, device=device, echo=_prefixed(echo, claim))
        results.append(result)
        if session is not None:
            session.touch(sweep.study)
        echo(_result_line(sweep, result))
        failures = failures + 1 if result.state == "failed" else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise ExptError(
                f"{failures} trials in a row failed (the last: {result.message}); this worker "
                "stopped. Fix the cause and run the same command again to continue the sweep."
            )
    return results


def _prefixed(echo: Callable[[str], None], claim: Claim) -> Callable[[str], None]:
    prefix = f"[trial {claim.number}] "
    return lambda line: echo(prefix + line)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _result_line(sweep: Sweep, result: TrialResult) -> str:
    metric = sweep.spec.metric
    if result.state == "complete":
        return f"trial {result.number} complete: {metric} {_short(result.value)}"
    if result.state == "pruned":
        return f"trial {result.number} pruned {result.message}: {metric} {_short(result.value)}"
    return f"trial {result.number} failed: {result.message}"


def worker_devices(device: str | None, workers: int) -> list[str | None]:
    """``--device cuda`` with N workers: worker i trains on ``cuda:i``; otherwise as given."""
    if device != "cuda" or workers == 1:
        return [device] * workers
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < workers:
        raise ExptError(
            f"--device cuda with --workers {workers} gives each worker its own GPU, but "
            f"{available} are visible; use at most {available} workers or --device cpu."
        )
    return [f"cuda:{i}" for i in range(workers)]


def launch_workers(
    argv: list[str],
    *,
    workers: int,
    url: str,
    session: Session,
    devices: list[str | None],
) -> int:
    """Run ``expt sweep run`` in ``workers`` processes that share this command's session.

    Each gets ``--worker i``, the CPU threads split evenly, and its device; the storage
    URL goes through the environment. Ctrl-C and SIGTERM reach this process only (the
    workers have their own sessions) and are passed on once each, so a first Ctrl-C
    stops every worker's trial resumably, as it does for ``expt run``.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cpus or 1) // workers)
    env = {**os.environ, STORAGE_ENV: url}
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "exptorch", *argv, "--worker", str(i), "--threads",
               str(threads), "--session", f"{session.id}:{session.start!r}"]  # fmt: skip
        if devices[i] is not None:
            cmd += ["--device", str(devices[i])]
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if received:
        return 130 if received[0] == signal.SIGINT else 143
    return max(codes, key=lambda c: c != 0)


def parse_session(text: str) -> Session:
    sid, _, start = text.partition(":")
    return Session(id=sid, start=float(start))


def summary(sweep: Sweep) -> dict[str, Any]:
    """Counts by state and the best trial so far."""
    from optuna.trial import TrialState

    trials = sweep.study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        state = {"FAIL": "failed"}.get(t.state.name, t.state.name.lower())
        counts[state] = counts.get(state, 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = sweep.study.best_trial if complete else None
    return {
        "counts": counts,
        "best": None if best is None else {"number": best.number, "value": best.value,
                                           "params": best.params},
        "elapsed": elapsed(sweep.study),
    }  # fmt: skip


def describe_start(sweep: Sweep, workers: int) -> str:
    spec = sweep.spec
    params = ", ".join(p.key for p in spec.parameters)
    done = len(counted(sweep.study))
    already = f", {done} already counted" if done else ""
    return (
        f"sweep {sweep.name}: {spec.budget_text()} of {spec.sampler} over {params} "
        f"({spec.direction} {spec.metric}, pruner {spec.pruner}{already}); "
        f"{workers} worker{'s' if workers > 1 else ''}; storage {sweep.shown_url}"
    )


def describe_end(sweep: Sweep) -> str:
    info = summary(sweep)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(info["counts"].items()))
    line = f"sweep {sweep.name}: {counts or 'no trials'} in {format_duration(info['elapsed'])}"
    best = info["best"]
    if best is not None:
        line += f"; best trial {best['number']}: {sweep.spec.metric} {_short(best['value'])}"
    return line + f"; see `expt sweep show {sweep.name} --runs-dir {sweep.folder.parent}`"


__all__ = [
    "Claim",
    "Session",
    "Sweep",
    "SweepPruning",
    "TrialResult",
    "claim_next",
    "open_sweep",
    "run_trial",
    "work",
]
