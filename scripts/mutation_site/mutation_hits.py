"""pytest plugin for mutmut's test-collection run (see sitecustomize.py next to it): before
mutmut files the functions a test called, add those the test's subprocesses called, and those
its module- and session-scoped fixtures called when they were set up (in an earlier test)."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: Any) -> None:
    """Each test starts with an empty folder for its subprocesses' calls."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        hits = Path(tempfile.gettempdir()) / f"exptorch-mutation-hits-{os.getpid()}"
        shutil.rmtree(hits, ignore_errors=True)
        hits.mkdir()
        os.environ["EXPTORCH_MUTATION_HITS"] = str(hits)


#: What each fixture broader than a test (by id of its definition) called while it was set up.
FIXTURE_HITS: dict[int, set[str]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Any:
    """A module- or session-scoped fixture is set up once, inside the first test that uses it,
    so mutmut files what it calls under that test only, and a mutant of a function only the
    fixture calls is never run against the other tests that read its result (a false survivor).
    Keep what the fixture called, its ``expt`` processes included, for every test using it."""
    if fixturedef.scope == "function":
        yield
        return
    if os.environ.get("MUTANT_UNDER_TEST") == "":
        started = time.perf_counter()
        yield
        spent = time.perf_counter() - started
        FIXTURE_COSTS[fixture_key(fixturedef)] = spent
        BROADER_SETUP[0] += spent
        return
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        yield
        return
    from mutmut.state import state

    before = set(state()._stats)
    yield
    FIXTURE_HITS[id(fixturedef)] = (set(state()._stats) - before) | subprocess_hits()


def subprocess_hits() -> set[str]:
    """The functions the ``expt`` processes started in this test so far have called."""
    hits = os.environ.get("EXPTORCH_MUTATION_HITS")
    if not hits or not os.path.isdir(hits):
        return set()
    return {name for path in Path(hits).glob("*.txt") for name in path.read_text().split()}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: Any, nextitem: Any) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    from mutmut.state import state

    state()._stats.update(subprocess_hits())
    fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    for definitions in fixtures.values():
        for definition in definitions:
            state()._stats.update(FIXTURE_HITS.get(id(definition), ()))


# Ctrl-C 50 ms after start: mutmut's instrumentation (its trampoline module, imported by every
# mutated module before exptorch installs its quiet handler) makes start-up slower than that, so
# under mutmut this case fails whatever the mutant; the 0.4 s and 1 s cases still run.
TOO_FAST_FOR_MUTMUT = (
    "tests/test_reliability.py::test_ctrl_c_during_start_up_prints_no_traceback[0.05]",
)


def running_a_mutant() -> bool:
    """Whether mutmut runs this process for a mutant (not for its collection of which tests call
    what, its clean run, its check that a failing test is seen or its listing of the tests, each
    of which it names otherwise)."""
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


def pytest_configure(config: Any) -> None:
    """mutmut runs a mutant's tests in a process forked from its fork server, which ignores
    SIGINT and handles SIGTERM itself: give the tests the handlers a Python process starts
    with, or a test of exptorch's own signal handling fails whatever the mutant (a false
    kill)."""
    if running_a_mutant():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    only = os.environ.pop(ONLY, None)  # not for a pytest a test starts
    if only is not None:
        wanted = set(only.split("\n"))
        other = [item for item in items if item.nodeid not in wanted]
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item.nodeid in wanted]
    unfit = [item for item in items if item.nodeid.endswith(TOO_FAST_FOR_MUTMUT)]
    if unfit:
        config.hook.pytest_deselected(items=unfit)
        items[:] = [item for item in items if item not in unfit]
    if running_a_mutant():
        costs = Costs.load()
        items.sort(key=costs.alone)
        budget = os.environ.get(QUICK)
        if budget:
            cut = items[costs.fitting(items, float(budget)) :]
            if cut:
                config.hook.pytest_deselected(items=cut)
                del items[-len(cut) :]
                config.stash[LEFT_OUT] = len(cut)


#: ``scripts/mutation.py --against``: the ids of the tests to run, a line each, out of the
#: files given (pytest cannot select every id on its command line: a parameter holding "/"
#: such as a URL is read as a path)
ONLY = "EXPTORCH_MUTATION_ONLY"
#: ``scripts/mutation.py --quick SECONDS``: each mutant runs only its quickest tests, as many
#: as fit in SECONDS of their costs (``Costs``; the quickest one at least)
QUICK = "EXPTORCH_MUTATION_QUICK"
#: how many of a mutant's tests the quick pass left out
LEFT_OUT = pytest.StashKey[int]()
#: the exit code of a mutant that passed the quickest tests with others left out: no verdict
#: (mutmut calls it "skipped"); scripts/mutation.py saves it unchecked, for a full run
UNDECIDED = 34


#: what each test cost in mutmut's clean run, set-up and tear-down included, and what each
#: fixture broader than a test took to set up; kept beside the run folder (``.mutation/``)
COSTS = "test-costs.json"
#: this process's: seconds by test id (less its broader fixtures' set-up), by fixture
TEST_COSTS: collections.Counter[str] = collections.Counter()
FIXTURE_COSTS: dict[str, float] = {}
#: seconds of broader fixtures' set-up inside the current test's set-up
BROADER_SETUP = [0.0]


def fixture_key(fixturedef: Any) -> str:
    return f"{fixturedef.baseid}::{fixturedef.argname}"


class Costs:
    """What running a test costs a mutant's process, which starts with no fixture set up.
    mutmut's durations count only each test's call: a test whose module fixture runs ``expt``
    looked free, came first and cost that run. These come from the clean run (``record``),
    mutmut's durations stand in for tests it has not measured."""

    def __init__(self, tests: dict[str, float], fixtures: dict[str, float]) -> None:
        self.tests = tests
        self.fixtures = fixtures

    @staticmethod
    def path() -> Path:
        return Path.cwd().parent / COSTS  # mutmut runs the tests in .mutation/mutants/

    @staticmethod
    def saved() -> dict[str, dict[str, float]]:
        path = Costs.path()
        return json.loads(path.read_text()) if path.is_file() else {}

    @classmethod
    def load(cls) -> Costs:
        saved = cls.saved()
        tests = dict(duration_by_test(), **saved.get("tests", {}))
        return cls(collections.defaultdict(float, tests), saved.get("fixtures", {}))

    def broader(self, item: Any) -> dict[str, float]:
        """The set-up cost of each fixture broader than a test that ``item`` uses."""
        fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        used = [definitions[-1] for definitions in fixtures.values() if definitions]
        keys = (fixture_key(d) for d in used if d.scope != "function")
        return {key: self.fixtures[key] for key in keys if key in self.fixtures}

    def alone(self, item: Any) -> float:
        return self.tests[item.nodeid] + sum(self.broader(item).values())

    def fitting(self, items: list[Any], budget: float) -> int:
        """How many of ``items``, in order, fit in ``budget`` seconds, each broader fixture
        counted once; at least one."""
        spent, ready = 0.0, set()
        for kept, item in enumerate(items):
            fixtures = self.broader(item)
            spent += self.tests[item.nodeid] + sum(
                cost for key, cost in fixtures.items() if key not in ready
            )
            ready |= fixtures.keys()
            if spent > budget:
                return max(kept, 1)
        return len(items)

    @staticmethod
    def record() -> None:
        """Add this clean run's costs to those kept (a clean run may run only some tests)."""
        path, saved = Costs.path(), Costs.saved()
        saved.setdefault("tests", {}).update(TEST_COSTS)
        saved.setdefault("fixtures", {}).update(FIXTURE_COSTS)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(saved, indent=1, sort_keys=True))
        partial.replace(path)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """A mutant that passed its quickest tests survived nothing yet: tests were left out.
    The clean run keeps what its tests cost."""
    if exitstatus == 0 and session.config.stash.get(LEFT_OUT, 0):
        session.exitstatus = UNDECIDED
    if os.environ.get("MUTANT_UNDER_TEST") == "" and TEST_COSTS:
        Costs.record()


def add_cost(report: Any) -> None:
    """Count a phase of a test of the clean run; its set-up without that of the broader
    fixtures it set up (each is counted apart, in ``FIXTURE_COSTS``)."""
    broader = BROADER_SETUP[0] if report.when == "setup" else 0.0
    BROADER_SETUP[0] -= broader
    TEST_COSTS[report.nodeid] += max(report.duration - broader, 0.0)


def duration_by_test() -> dict[str, float]:
    """How long each test took in mutmut's collection run: mutmut hands a mutant's tests over
    in no particular order and stops at the first failure (``-x``), so the quickest first
    finds a killing test sooner. The unit tests come before the ones that start ``expt``."""
    stats = Path("mutmut-stats.json")  # mutmut runs the tests in .mutation/mutants/
    durations = json.loads(stats.read_text())["duration_by_test"] if stats.is_file() else {}
    return collections.defaultdict(float, durations)


def pytest_runtest_logreport(report: Any) -> None:
    """mutmut hides the output of its clean run and of its collection of which tests call what
    (the tests with no mutant, ``-x``: one failure stops either); keep what failed in
    ``.mutation/clean-run-failures.txt`` (the tests run in ``.mutation/mutants/``). mutmut
    does not say which test killed a mutant either: ``.mutation/kills.txt`` does, a line per
    kill, so that a flaky test's kills can be found and checked again."""
    mutant = os.environ.get("MUTANT_UNDER_TEST")
    if mutant == "":
        add_cost(report)
    if not report.failed:
        return
    if mutant in ("", "stats"):
        with open(Path.cwd().parent / "clean-run-failures.txt", "a") as f:
            f.write(f"{report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
    elif running_a_mutant():
        with open(Path.cwd().parent / "kills.txt", "a") as f:
            f.write(f"{mutant}\t{report.nodeid}\t{report.when}\n")
