"""scripts/mutation.py's own arithmetic: the sample it draws and the score it reports from it.

The README's whole-tree mutation score is an estimate from a random sample, so a bias in the
draw or a wrong interval would misstate it; mutmut itself is not needed here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# the repository's, also from the copy of tests/ that mutmut runs in .mutation/mutants/
SCRIPT = next(
    folder / "scripts" / "mutation.py"
    for folder in Path(__file__).resolve().parents
    if (folder / "scripts" / "mutation.py").is_file()
)


@pytest.fixture
def mutation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_script", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "WORKSPACE", tmp_path)
    monkeypatch.setattr(module, "STORE", tmp_path / "kept" / "mutation-verdicts.json")
    (tmp_path / "kept").mkdir()
    monkeypatch.setattr(module, "mutmut_version", lambda: "3.8.1")
    return module


def write_meta(
    workspace: Path, module: str, codes: dict[str, int | None], hashes: dict[str, str] | None = None
) -> None:
    meta = workspace / "mutants" / (module.replace(".", "/") + ".py.meta")
    meta.parent.mkdir(parents=True, exist_ok=True)
    data = {"exit_code_by_key": codes, "hash_by_function_name": hashes or {}}
    meta.write_text(json.dumps(dict(data, type_check_error_by_key={})))


def test_wilson_interval_matches_the_published_formula(mutation: ModuleType) -> None:
    # 90 of 100: the 95% Wilson interval is 0.8256 to 0.9448 (Wilson 1927; Newcombe 1998)
    low, high = mutation.wilson(90, 100)
    assert (round(low, 4), round(high, 4)) == (0.8256, 0.9448)
    low, high = mutation.wilson(10, 10)
    assert high == pytest.approx(1.0) and round(low, 4) == 0.7225


def test_verdicts_fold_mutmuts_exit_codes(mutation: ModuleType) -> None:
    codes = (None, 1, -24, 37, 0, 33, 5, 2, 34, -11)
    assert [mutation.verdict(c) for c in codes] == [
        "not checked", "killed", "killed", "mypy", "survived", "no tests", "no tests",
        "not checked", "not checked", "other",  # 2: stopped; 34: undecided by a quick pass
    ]  # fmt: skip


def test_a_mutant_mypy_rejects_counts_as_killed_and_is_shown_apart(
    mutation: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": 37,
               "exptorch.a.x_f__mutmut_2": 1, "exptorch.a.x_f__mutmut_3": 0,
               "exptorch.a.x_f__mutmut_4": 0, "exptorch.a.x_f__mutmut_5": None})  # fmt: skip
    mutation.print_scores(mutation.scores([]))
    row = capsys.readouterr().out.splitlines()[1].split()
    # module, mypy, killed, survived, no tests, checked, score, (not yet checked)
    assert row == ["exptorch.a", "1", "1", "2", "0", "4", "50.0%", "(1)"]
    mutation.print_sample_score(["exptorch.a.x_f__mutmut_1", "exptorch.a.x_f__mutmut_3"])
    assert "estimated score: 50.0% of 2 checked" in capsys.readouterr().out


def test_a_module_or_function_names_its_mutants(mutation: ModuleType) -> None:
    method = "exptorch.a.x\u01c1C\u01c1m"  # mutmut's name of C.m
    names = ["exptorch.a.x_f__mutmut_1", "exptorch.a.x_fg__mutmut_2", f"{method}__mutmut_3",
             "exptorch.ab.x_f__mutmut_1"]  # fmt: skip
    args = ["exptorch.a", "framework/exptorch/a.py", "exptorch.a.x_f", method]
    chosen = {
        a: [n for n in names if mutation.in_modules(n, [mutation.module_glob(a)])] for a in args
    }
    assert chosen == {
        "exptorch.a": names[:3],
        "framework/exptorch/a.py": names[:3],
        "exptorch.a.x_f": names[:1],
        method: names[2:3],
    }


def test_the_sample_is_drawn_from_every_module_and_saved(mutation: ModuleType) -> None:
    a = {f"exptorch.a.x_f__mutmut_{i}": None for i in range(1, 301)}
    b = {f"exptorch_plugins.b.x_g__mutmut_{i}": None for i in range(1, 101)}
    write_meta(mutation.WORKSPACE, "exptorch.a", a)
    write_meta(mutation.WORKSPACE, "exptorch_plugins.b", b)
    drawn = mutation.draw_sample(100, seed=3)
    assert len(set(drawn)) == 100 and set(drawn) <= a.keys() | b.keys()
    # uniform over all 400: about a quarter from b (a binomial 95% range is 17 to 33)
    assert 15 <= sum(name in b for name in drawn) <= 35
    # saved: a later call (after new tests, or new mutants) checks the same ones
    write_meta(mutation.WORKSPACE, "exptorch.c", {"exptorch.c.x_h__mutmut_1": None})
    assert mutation.draw_sample(100, seed=3) == drawn
    assert mutation.draw_sample(100, seed=4) != drawn
    with pytest.raises(SystemExit, match="only 401 mutants"):
        mutation.draw_sample(500, seed=0)


def test_the_sample_score_counts_only_the_sampled_mutants(
    mutation: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": 1,
               "exptorch.a.x_f__mutmut_2": 0, "exptorch.a.x_f__mutmut_3": 0,
               "exptorch.a.x_f__mutmut_4": None})  # fmt: skip
    mutation.print_sample_score(["exptorch.a.x_f__mutmut_1", "exptorch.a.x_f__mutmut_2"])
    out = capsys.readouterr().out
    assert "sample of 2 of 4 mutants: killed 1, survived 1" in out
    assert "estimated score: 50.0% of 2 checked" in out


def test_a_module_run_checks_only_mutants_without_a_verdict_or_that_survived(
    mutation: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mutmut re-runs every mutant a name matches: the killed ones are left out by name, after
    a first mutmut run has generated the mutants of changed functions."""
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": 37,
               "exptorch.a.x_f__mutmut_2": 1, "exptorch.a.x_f__mutmut_3": 0,
               "exptorch.a.x_f__mutmut_4": None, "exptorch.a.x_f__mutmut_5": 33})  # fmt: skip
    write_meta(mutation.WORKSPACE, "exptorch.b", {"exptorch.b.x_g__mutmut_1": 0})
    runs: list[list[str]] = []
    monkeypatch.setattr(mutation, "run_mutmut", lambda _m, names, _c, _e, **_: runs.append(names))
    todo = mutation.unsettled(["exptorch.a.*"], "mutmut", 2, {})
    assert todo == [
        "exptorch.a.x_f__mutmut_3",
        "exptorch.a.x_f__mutmut_4",
        "exptorch.a.x_f__mutmut_5",
    ]
    assert runs == [["exptorch.no_mutant_has_this_name"]]


SITE = SCRIPT.parent / "mutation_site"
QUICK = "EXPTORCH_MUTATION_QUICK"


def pytest_with_the_plugin(
    folder: Path,
    mutant: str,
    *args: str,
    path: tuple[Path, ...] = (),
    quick: str | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """pytest in ``folder`` with scripts/mutation_site's plugin (and ``path`` after it on
    ``PYTHONPATH``), as mutmut runs it for ``mutant`` ("" is the clean run, "stats" its
    collection of which tests call what), in a quick pass of ``quick`` seconds if given (not
    in the one this suite may itself be run by)."""
    pythonpath = os.pathsep.join(str(p) for p in (SITE, *path))
    env = dict(os.environ, PYTHONPATH=pythonpath, MUTANT_UNDER_TEST=mutant)
    env.pop(QUICK, None)
    env.update({QUICK: quick} if quick else {})
    command = [sys.executable, "-m", "pytest", "-p", "mutation_hits", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, *args, "tests"], cwd=folder, env=env, capture_output=True, text=True, **kwargs
    )


def mutants_folder(tmp_path: Path, name: str, source: str, durations: dict[str, float]) -> Path:
    """``tmp_path/mutants``, as ``.mutation/mutants/``: ``tests/<name>`` holding ``source``, and
    mutmut's stats with these call durations (the clean run keeps its costs beside it)."""
    project = tmp_path / "mutants"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / name).write_text(source)
    (project / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": durations}))
    return project


def quick_run(project: Path, mutant: str, budget: str) -> tuple[int, list[str]]:
    """The exit code and the tests run, in order, of a quick pass of ``budget`` seconds."""
    done = pytest_with_the_plugin(project, mutant, "-v", "-x", quick=budget, check=False)
    return done.returncode, re.findall(r"::test_(\w+) (?:PASSED|FAILED)", done.stdout)


def test_a_mutants_tests_run_quickest_first(tmp_path: Path) -> None:
    """mutmut stops at a mutant's first failing test; the plugin puts the quickest first, by
    the durations mutmut recorded, and leaves the order alone outside a mutant's run."""
    durations = {"tests/test_order.py::test_slow": 9.0, "tests/test_order.py::test_quick": 0.1,
                 "tests/test_order.py::test_medium": 1.0}  # fmt: skip
    source = "def test_slow(): pass\ndef test_quick(): pass\ndef test_medium(): pass\n"
    project = mutants_folder(tmp_path, "test_order.py", source, durations)

    def order(mutant: str) -> list[str]:
        out = pytest_with_the_plugin(project, mutant, "-v", check=True).stdout
        return re.findall(r"::test_(\w+) PASSED", out)

    assert order("exptorch.a.x_f__mutmut_1") == ["quick", "medium", "slow"]
    assert order("") == ["slow", "quick", "medium"]


def test_a_quick_pass_runs_only_the_quickest_tests_and_decides_only_kills(
    tmp_path: Path,
) -> None:
    """``--quick SECONDS``: a mutant's tests, quickest first, as many as fit in SECONDS (one at
    least); passing them with others left out is no verdict (34), failing one is a kill."""
    source = (
        "import os\n"
        "def test_a(): pass\n"
        "def test_b(): assert os.environ['MUTANT_UNDER_TEST'] != 'exptorch.a.x_f__mutmut_2'\n"
        "def test_c(): assert os.environ['MUTANT_UNDER_TEST'] != 'exptorch.a.x_f__mutmut_3'\n"
    )
    durations = {"tests/test_quick.py::test_a": 1.0, "tests/test_quick.py::test_b": 2.0,
                 "tests/test_quick.py::test_c": 4.0}  # fmt: skip
    project = mutants_folder(tmp_path, "test_quick.py", source, durations)

    def run(mutant: str, budget: str) -> tuple[int, list[str]]:
        return quick_run(project, mutant, budget)

    assert run("exptorch.a.x_f__mutmut_1", "3") == (34, ["a", "b"])
    assert run("exptorch.a.x_f__mutmut_2", "3") == (1, ["a", "b"])
    assert run("exptorch.a.x_f__mutmut_3", "3") == (34, ["a", "b"])  # c, which kills it, is out
    assert run("exptorch.a.x_f__mutmut_3", "7") == (1, ["a", "b", "c"])
    assert run("exptorch.a.x_f__mutmut_1", "7") == (0, ["a", "b", "c"])  # none left out
    assert run("exptorch.a.x_f__mutmut_1", "0.5") == (34, ["a"])  # the quickest one at least
    assert run("", "0.5") == (0, ["a", "b", "c"])  # the clean run is whole
    assert run("list_all_tests", "0.5") == (0, ["a", "b", "c"])  # and mutmut's listing


def test_a_test_costs_its_set_up_too_and_a_shared_fixture_is_counted_once(
    tmp_path: Path,
) -> None:
    """mutmut's durations count a test's call only: a test whose module fixture runs ``expt``
    looks free. The clean run keeps what each test and each broader fixture cost
    (``.mutation/test-costs.json``); a mutant's tests are ordered and cut by that."""
    source = (
        "import time, pytest\n"
        "@pytest.fixture(scope='module')\n"
        "def run(): time.sleep(1.5)\n"
        "def test_x(run): pass\n"
        "def test_y(run): pass\n"
        "def test_z(): time.sleep(0.3)\n"
    )
    calls = {f"tests/test_costs.py::test_{t}": 0.0 for t in "xyz"}  # as mutmut records them
    project = mutants_folder(tmp_path, "test_costs.py", source, calls)

    def run(mutant: str, budget: str) -> tuple[int, list[str]]:
        return quick_run(project, mutant, budget)

    # not measured yet, by mutmut's durations every test is free: all fit, the fixture's first
    assert run("exptorch.a.x_f__mutmut_1", "0.9") == (0, ["x", "y", "z"])
    assert run("", "0.9") == (0, ["x", "y", "z"])  # the clean run measures
    costs = json.loads((tmp_path / "test-costs.json").read_text())
    assert 1.4 < costs["fixtures"]["tests/test_costs.py::run"] < 3
    assert costs["tests"]["tests/test_costs.py::test_x"] < 0.5  # the fixture's set-up apart
    assert 0.25 < costs["tests"]["tests/test_costs.py::test_z"] < 1
    assert run("exptorch.a.x_f__mutmut_1", "0.9") == (34, ["z"])
    code, ran = run("exptorch.a.x_f__mutmut_1", "2.5")  # 0.3 + 1.5 + 0: the fixture once
    assert (code, ran[0], sorted(ran)) == (0, "z", ["x", "y", "z"])


def test_the_test_that_killed_a_mutant_is_recorded(tmp_path: Path) -> None:
    """mutmut keeps only a mutant's exit code; the plugin writes which test failed beside the
    run folder (``.mutation/kills.txt``), so a flaky test's kills can be found."""
    project = tmp_path / "mutants"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_kill.py").write_text(
        "def test_passes(): pass\ndef test_fails(): assert False\n"
    )
    for mutant in ("exptorch.a.x_f__mutmut_2", "exptorch.a.x_f__mutmut_3"):
        pytest_with_the_plugin(project, mutant, "-x", "-q", check=False)
    assert (tmp_path / "kills.txt").read_text() == (
        "exptorch.a.x_f__mutmut_2\ttests/test_kill.py::test_fails\tcall\n"
        "exptorch.a.x_f__mutmut_3\ttests/test_kill.py::test_fails\tcall\n"
    )
    assert not (tmp_path / "clean-run-failures.txt").exists()
    # with no mutant (mutmut's clean run), a failure is the suite's own: kept with its report
    pytest_with_the_plugin(project, "", "-x", "-q", check=False)
    failures = (tmp_path / "clean-run-failures.txt").read_text()
    assert (
        failures.startswith("tests/test_kill.py::test_fails (call)\n")
        and "assert False" in failures
    )
    assert (tmp_path / "kills.txt").read_text().count("\n") == 2


def test_a_mutants_tests_get_the_signal_handlers_a_python_process_starts_with(
    tmp_path: Path,
) -> None:
    """mutmut's fork server ignores SIGINT and handles SIGTERM; a test of exptorch's signal
    handling must not fail there whatever the mutant. Ignored signals survive ``exec``, so a
    process started with both ignored stands in for mutmut's worker."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_signals.py").write_text(
        "import signal\n"
        "def test_handlers():\n"
        "    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n"
    )

    def ignored_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def outcome(mutant: str) -> int:
        result = pytest_with_the_plugin(
            tmp_path, mutant, "-q", preexec_fn=ignored_signals, check=False
        )
        return result.returncode

    assert outcome("exptorch.a.x_f__mutmut_1") == 0
    assert outcome("") == 1  # the clean run is not forked from the server: left as it is


def test_what_a_module_fixture_calls_is_filed_under_every_test_that_uses_it(
    tmp_path: Path,
) -> None:
    """A module-scoped fixture runs inside the first test that uses it; mutmut alone would
    file what it calls under that test only, and never run a mutant of it against the others.
    A stand-in for mutmut's state and its stats collector records what each test is filed
    under."""
    fake = tmp_path / "fake"
    (fake / "mutmut").mkdir(parents=True)
    (fake / "mutmut" / "__init__.py").write_text("")
    (fake / "mutmut" / "state.py").write_text(
        "class State:\n    _stats: set = set()\n\n_state = State()\n\n"
        "def state():\n    return _state\n"
    )
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(
        "import json, pytest\n"
        "from mutmut.state import state\n"
        "FILED = {}\n"
        "@pytest.hookimpl(trylast=True)\n"  # as mutmut's collector: after the plugin
        "def pytest_runtest_teardown(item, nextitem):\n"
        "    FILED[item.name] = sorted(state()._stats)\n"
        "    state()._stats.clear()\n"
        "def pytest_sessionfinish(session):\n"
        "    (session.config.rootpath / 'filed.json').write_text(json.dumps(FILED))\n"
    )
    (tests / "test_fixture.py").write_text(
        "import pytest\n"
        "from mutmut.state import state\n"
        "@pytest.fixture(scope='module')\n"
        "def trained():\n"
        "    state()._stats.add('exptorch.train.x_fit')\n"
        "    return 1\n"
        "def test_first(trained):\n"
        "    state()._stats.add('exptorch.a.x_first')\n"
        "def test_second(trained):\n"
        "    pass\n"
        "def test_without_it():\n"
        "    pass\n"
    )
    pytest_with_the_plugin(tmp_path, "stats", "-q", path=(fake,), check=True)
    assert json.loads((tmp_path / "filed.json").read_text()) == {
        "test_first": ["exptorch.a.x_first", "exptorch.train.x_fit"],
        "test_second": ["exptorch.train.x_fit"],
        "test_without_it": [],
    }


def test_generating_mutants_shows_no_traceback_for_mutmuts_expected_stop(
    mutation: ModuleType, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """mutmut ends a run on a name no mutant has with an AssertionError, after generating
    the mutants and collecting which tests call what: that is how the script asks for just
    those two, so the traceback is not shown; another failure's is."""
    fake = tmp_path / "mutmut"

    def mutmut_ending_with(message: str) -> None:
        fake.write_text(
            f"#!{sys.executable}\nimport sys\nprint('Generating mutants')\n"
            f"sys.stderr.write('Traceback ...\\nAssertionError: {message}\\n')\nsys.exit(1)\n"
        )
        fake.chmod(0o755)

    mutation.WORKSPACE.mkdir(parents=True, exist_ok=True)
    mutmut_ending_with("Filtered for specific mutants, but nothing matches")
    mutation.generate(str(fake), 2, dict(os.environ))
    shown = capfd.readouterr()
    assert "Generating mutants" in shown.out and "Traceback" not in shown.err
    mutmut_ending_with("stats collection failed")
    mutation.generate(str(fake), 2, dict(os.environ))
    assert "AssertionError: stats collection failed" in capfd.readouterr().err


def test_type_check_records_mypys_verdict_only_on_unchecked_mutants_of_the_modules_asked(
    mutation: ModuleType, tmp_path: Path
) -> None:
    write_meta(tmp_path, "exptorch.a", {"exptorch.a.x_f__mutmut_1": None,
                                        "exptorch.a.x_f__mutmut_2": 0,
                                        "exptorch.a.x_f__mutmut_3": None})  # fmt: skip
    write_meta(tmp_path, "exptorch.b", {"exptorch.b.x_g__mutmut_1": None})
    rejected = {
        "exptorch.a.x_f__mutmut_1": "Incompatible return value",
        "exptorch.a.x_f__mutmut_2": "an earlier run's verdict stands",
        "exptorch.b.x_g__mutmut_1": "a module not asked for",
    }
    assert mutation.record_type_errors([mutation.module_glob("exptorch.a")], rejected) == 1
    meta = json.loads((tmp_path / "mutants/exptorch/a.py.meta").read_text())
    assert list(meta["exit_code_by_key"].values()) == [37, 0, None]
    assert meta["type_check_error_by_key"] == {
        "exptorch.a.x_f__mutmut_1": "Incompatible return value"
    }
    assert mutation.verdicts()["exptorch.b.x_g__mutmut_1"] is None
    assert mutation.record_type_errors([], rejected) == 1  # no module named: all of them
    assert mutation.verdicts()["exptorch.b.x_g__mutmut_1"] == 37
    assert not list(tmp_path.glob("mutants/**/*.partial"))


def test_verdicts_are_kept_in_the_repository_one_function_a_line(mutation: ModuleType) -> None:
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": 1,
               "exptorch.a.x_f__mutmut_2": 0, "exptorch.a.x_f__mutmut_3": None,
               "exptorch.a.x_g__mutmut_1": 37,
               "exptorch.a.x_g__mutmut_2": 2},  # in flight when the run was stopped
               {"x_f": "hash-f", "x_g": "hash-g"})  # fmt: skip
    assert mutation.save_verdicts() == 3
    text = mutation.STORE.read_text()
    assert json.loads(text) == {
        "mutmut": "3.8.1",
        "functions": {
            "exptorch.a.x_f": {"hash": "hash-f", "verdicts": {"1": 1, "2": 0, "3": None}},
            "exptorch.a.x_g": {"hash": "hash-g", "verdicts": {"1": 37, "2": None}},
        },
    }
    assert [line for line in text.splitlines() if "exptorch.a." in line] == [
        '  "exptorch.a.x_f": {"hash": "hash-f", "verdicts": {"1": 1, "2": 0, "3": null}},',
        '  "exptorch.a.x_g": {"hash": "hash-g", "verdicts": {"1": 37, "2": null}}',
    ]
    assert not list(mutation.STORE.parent.glob("*.partial"))


def test_a_new_clone_starts_from_the_kept_verdicts(mutation: ModuleType) -> None:
    """No ``.mutation/`` yet: each module's ``.meta`` file comes from the kept verdicts and
    its stale mutated copy goes, so that mutmut generates it again and compares the hashes."""
    workspace = mutation.WORKSPACE
    write_meta(workspace, "exptorch.a", {"exptorch.a.x_f__mutmut_1": 1,
               "exptorch.a.x_g__mutmut_1": 37, "exptorch.a.x_g__mutmut_2": None},
               {"x_f": "hash-f", "x_g": "hash-g"})  # fmt: skip
    write_meta(workspace, "exptorch.b", {"exptorch.b.x_h__mutmut_1": 0}, {"x_h": "hash-h"})
    mutation.save_verdicts()
    for module in ("exptorch/a.py", "exptorch/b/__init__.py"):  # the sources mutmut reads
        (workspace / module).parent.mkdir(parents=True, exist_ok=True)
        (workspace / module).write_text("")
    (workspace / "mutants").rename(workspace / "old-mutants")
    (workspace / "mutants/exptorch").mkdir(parents=True)
    (workspace / "mutants/exptorch/a.py").write_text("stale mutated copy")
    assert mutation.restore_verdicts() == 3
    assert not (workspace / "mutants/exptorch/a.py").exists()
    meta = json.loads((workspace / "mutants/exptorch/a.py.meta").read_text())
    assert meta["exit_code_by_key"] == {
        "exptorch.a.x_f__mutmut_1": 1,
        "exptorch.a.x_g__mutmut_1": 37,
        "exptorch.a.x_g__mutmut_2": None,
    }
    assert meta["hash_by_function_name"] == {"x_f": "hash-f", "x_g": "hash-g"}
    assert meta["type_check_error_by_key"] == {
        "exptorch.a.x_g__mutmut_1": "mypy, as kept in mutation-verdicts.json"
    }
    assert set(meta) == {  # what mutmut's SourceFileMutationData.load() asserts
        "exit_code_by_key", "hash_by_function_name", "type_check_error_by_key",
        "durations_by_key", "estimated_durations_by_key",
    }  # fmt: skip
    package = json.loads((workspace / "mutants/exptorch/b/__init__.py.meta").read_text())
    assert package["exit_code_by_key"] == {"exptorch.b.x_h__mutmut_1": 0}


def test_a_kept_verdict_is_given_only_where_the_functions_code_is_the_same(
    mutation: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = mutation.WORKSPACE
    (workspace / "exptorch").mkdir()
    (workspace / "exptorch/a.py").write_text("")
    write_meta(workspace, "exptorch.a", {"exptorch.a.x_f__mutmut_1": 1,
               "exptorch.a.x_g__mutmut_1": 0, "exptorch.a.x_g__mutmut_2": 3},
               {"x_f": "hash-f", "x_g": "hash-g"})  # fmt: skip
    mutation.save_verdicts()
    # mutmut generated the mutants again: x_f's code changed, so its verdicts started over;
    # x_g's did not, but this workspace never checked it; x_k is new
    write_meta(workspace, "exptorch.a", {"exptorch.a.x_f__mutmut_1": None,
               "exptorch.a.x_g__mutmut_1": None, "exptorch.a.x_g__mutmut_2": 1,
               "exptorch.a.x_k__mutmut_1": None},
               {"x_f": "hash-f2", "x_g": "hash-g", "x_k": "hash-k"})  # fmt: skip
    assert mutation.restore_verdicts() == 1
    assert mutation.verdicts() == {
        "exptorch.a.x_f__mutmut_1": None,
        "exptorch.a.x_g__mutmut_1": 0,
        "exptorch.a.x_g__mutmut_2": 1,  # this workspace's own verdict stands
        "exptorch.a.x_k__mutmut_1": None,
    }
    stored = json.loads(mutation.STORE.read_text())
    stored["mutmut"] = "3.9.0"
    mutation.STORE.write_text(json.dumps(stored))
    write_meta(workspace, "exptorch.a", {"exptorch.a.x_g__mutmut_1": None}, {"x_g": "hash-g"})
    assert mutation.restore_verdicts() == 0
    assert "holds mutmut 3.9.0's verdicts, not mutmut 3.8.1's" in capsys.readouterr().out
    assert mutation.verdicts() == {"exptorch.a.x_g__mutmut_1": None}


def test_a_meta_file_read_while_mutmut_rewrites_it_is_read_again(
    mutation: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": 1})
    meta = mutation.WORKSPACE / "mutants/exptorch/a.py.meta"
    whole = meta.read_text()
    meta.write_text(whole[: len(whole) // 2])  # mutmut is halfway through writing it
    monkeypatch.setattr(mutation.time, "sleep", lambda _s: meta.write_text(whole))
    assert mutation.verdicts() == {"exptorch.a.x_f__mutmut_1": 1}
    meta.write_text(whole[:10])
    monkeypatch.setattr(mutation.time, "sleep", lambda _s: None)
    with pytest.raises(json.JSONDecodeError):
        mutation.verdicts()


def test_each_mutmut_run_ends_by_keeping_its_verdicts(mutation: ModuleType, tmp_path: Path) -> None:
    """Also one that fails or is stopped: what it checked until then is kept."""
    fake = tmp_path / "mutmut"
    meta = {"exit_code_by_key": {"exptorch.a.x_f__mutmut_1": 1}, "hash_by_function_name": {}}
    fake.write_text(
        f"#!{sys.executable}\nimport pathlib, sys\n"
        "pathlib.Path('mutants/exptorch').mkdir(parents=True)\n"
        f"pathlib.Path('mutants/exptorch/a.py.meta').write_text({json.dumps(meta)!r})\n"
        "sys.exit(2)\n"
    )
    fake.chmod(0o755)
    assert mutation.run_mutmut(str(fake), ["exptorch.a.*"], 2, dict(os.environ)) == 2
    kept = json.loads(mutation.STORE.read_text())["functions"]
    assert kept == {"exptorch.a.x_f": {"hash": "", "verdicts": {"1": 1}}}


def test_a_run_without_module_names_checks_the_whole_tree(
    mutation: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mutmut given no name checks every mutant without a verdict; given names, it checks
    every mutant they match, killed ones too."""
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": 1,
               "exptorch.a.x_f__mutmut_2": 0})  # fmt: skip
    runs: list[list[str]] = []
    monkeypatch.setattr(mutation, "run_mutmut", lambda _m, names, _c, _e: runs.append(names) or 0)
    monkeypatch.setattr(mutation, "unsettled", lambda globs, *_: ["exptorch.a.x_f__mutmut_2"])
    assert mutation.run_modules([], False, "mutmut", 2, {}) == 0
    assert mutation.run_modules([], True, "mutmut", 2, {}) == 0
    assert mutation.run_modules(["exptorch.a.*"], False, "mutmut", 2, {}) == 0
    assert mutation.run_modules(["exptorch.a.*"], True, "mutmut", 2, {}) == 0
    assert runs == [[], ["exptorch*"], ["exptorch.a.x_f__mutmut_2"], ["exptorch.a.*"]]
    monkeypatch.setattr(mutation, "unsettled", lambda globs, *_: [])
    assert mutation.run_modules(["exptorch.a.*"], False, "mutmut", 2, {}) == 0
    assert len(runs) == 4  # nothing left to check: mutmut is not started


def test_a_quick_pass_keeps_kills_and_takes_no_verdict_away(
    mutation: ModuleType, tmp_path: Path
) -> None:
    """What a quick pass left undecided (34), or a stopped run (2), is saved unchecked and is
    unchecked again in ``.meta`` when the next run starts, so mutmut checks it; a survivor it
    checked again and did not kill stays a survivor."""
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": None,
               "exptorch.a.x_f__mutmut_2": None, "exptorch.a.x_f__mutmut_3": 0,
               "exptorch.a.x_f__mutmut_4": 2})  # fmt: skip
    seen = tmp_path / "seen.json"
    after = {"exptorch.a.x_f__mutmut_1": 1, "exptorch.a.x_f__mutmut_2": 34,
             "exptorch.a.x_f__mutmut_3": 34, "exptorch.a.x_f__mutmut_4": 34}  # fmt: skip
    fake = tmp_path / "mutmut"
    fake.write_text(
        f"#!{sys.executable}\nimport json, pathlib\n"
        "meta = pathlib.Path('mutants/exptorch/a.py.meta')\n"
        f"pathlib.Path({str(seen)!r}).write_text(meta.read_text())\n"
        f"meta.write_text(json.dumps({{'exit_code_by_key': {after!r}, "
        "'hash_by_function_name': {}}))\n"
    )
    fake.chmod(0o755)
    assert (
        mutation.run_mutmut(str(fake), [], 2, dict(os.environ, EXPTORCH_MUTATION_QUICK="30")) == 0
    )
    # the stopped run's mutant was unchecked again before mutmut started
    assert json.loads(seen.read_text())["exit_code_by_key"]["exptorch.a.x_f__mutmut_4"] is None
    kept = json.loads(mutation.STORE.read_text())["functions"]["exptorch.a.x_f"]["verdicts"]
    assert kept == {"1": 1, "2": None, "3": 0, "4": None}
    mutation.run_mutmut(str(fake), [], 2, dict(os.environ))
    started = json.loads(seen.read_text())["exit_code_by_key"]
    assert started == {"exptorch.a.x_f__mutmut_1": 1, "exptorch.a.x_f__mutmut_2": None,
                       "exptorch.a.x_f__mutmut_3": 0, "exptorch.a.x_f__mutmut_4": None}  # fmt: skip


def against_suite(mutation: ModuleType, monkeypatch: pytest.MonkeyPatch, tests: str,
                  calls: dict[str, list[str]]) -> dict[str, str]:  # fmt: skip
    """``tests/test_k.py`` in a repository of its own, as ``--against`` runs it: mutmut found
    ``calls`` (function -> test ids); the environment of its pytest processes."""
    root = mutation.WORKSPACE
    monkeypatch.setattr(mutation, "ROOT", root)
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_k.py").write_text(tests)
    (root / "mutants").mkdir(exist_ok=True)
    stats = {"tests_by_mangled_function_name": calls, "duration_by_test": {}}
    (root / "mutants" / "mutmut-stats.json").write_text(json.dumps(stats))
    env = dict(os.environ, PYTHONPATH=str(SITE))
    env.pop(QUICK, None)
    return env


def test_against_records_the_kills_of_the_tests_given_and_nothing_else(
    mutation: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--against TESTS``: the unchecked and surviving mutants of the modules named, each run
    against those of the tests that call its function, outside mutmut; a failure is a kill, a
    pass decides nothing."""
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": None,
               "exptorch.a.x_f__mutmut_2": None, "exptorch.a.x_f__mutmut_3": 0,
               "exptorch.a.x_f__mutmut_4": 34, "exptorch.a.x_f__mutmut_5": 0,
               "exptorch.a.x_f__mutmut_6": None, "exptorch.a.x_h__mutmut_1": None})  # fmt: skip
    write_meta(mutation.WORKSPACE, "exptorch.b", {"exptorch.b.x_g__mutmut_1": None})
    dies = ["exptorch.a.x_f__mutmut_2", "exptorch.a.x_f__mutmut_3", "exptorch.a.x_f__mutmut_4",
            "exptorch.a.x_h__mutmut_1", "exptorch.b.x_g__mutmut_1"]  # fmt: skip
    every = ["tests/test_k.py::test_k", "tests/test_k.py::test_url[sqlite:///a/b.db]"]
    env = against_suite(
        mutation,
        monkeypatch,
        f"import os, pytest\ndef test_k(): assert os.environ['MUTANT_UNDER_TEST'] not in {dies!r}\n"
        "@pytest.mark.parametrize('url', ['sqlite:///a/b.db'])\n"  # an id pytest cannot select
        "def test_url(url): assert os.environ['MUTANT_UNDER_TEST'] != 'exptorch.a.x_f__mutmut_6'\n",
        {"exptorch.a.x_f": every, "exptorch.b.x_g": every},  # no test calls x_h
    )
    assert mutation.check_against(["exptorch.a.*"], ["tests/test_k.py"], env, 2) == 0
    assert mutation.verdicts() == {
        "exptorch.a.x_f__mutmut_1": None,  # passed: no verdict from these tests alone
        "exptorch.a.x_f__mutmut_2": 1,
        "exptorch.a.x_f__mutmut_3": 1,  # a survivor these tests kill
        "exptorch.a.x_f__mutmut_4": 1,  # undecided by a quick pass
        "exptorch.a.x_f__mutmut_5": 0,
        "exptorch.a.x_f__mutmut_6": 1,
        "exptorch.a.x_h__mutmut_1": None,  # not run: none of the tests calls its function
        "exptorch.b.x_g__mutmut_1": None,  # not in the modules named
    }
    kept = json.loads(mutation.STORE.read_text())["functions"]["exptorch.a.x_f"]["verdicts"]
    assert kept == {"1": None, "2": 1, "3": 1, "4": 1, "5": 0, "6": 1}
    (mutation.ROOT / "tests" / "test_k.py").write_text("def test_k(): assert False\n")
    with pytest.raises(SystemExit, match="fail without any mutant"):
        mutation.check_against(["exptorch.a.*"], ["tests/test_k.py"], env, 2)


def test_against_runs_a_test_mutmut_has_not_seen_for_every_mutant(
    mutation: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test written after mutmut's collection run may call any function; one mutmut saw
    runs only for the functions it called."""
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": None,
               "exptorch.a.x_f__mutmut_2": None})  # fmt: skip
    env = against_suite(
        mutation,
        monkeypatch,
        "import os\n"
        "def test_new(): assert os.environ['MUTANT_UNDER_TEST'] != 'exptorch.a.x_f__mutmut_1'\n"
        "def test_old(): assert os.environ['MUTANT_UNDER_TEST'] != 'exptorch.a.x_f__mutmut_2'\n",
        {"exptorch.a.x_g": ["tests/test_k.py::test_old"]},
    )
    assert mutation.check_against(["exptorch.a.*"], ["tests/test_k.py"], env, 2) == 0
    assert mutation.verdicts() == {"exptorch.a.x_f__mutmut_1": 1, "exptorch.a.x_f__mutmut_2": None}


def test_against_drops_the_kills_of_a_test_that_fails_without_a_mutant_too(
    mutation: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A test that passed the control run and then failed for every mutant (flaky, or broken by
    what an earlier run left) killed none of them: every killing test runs again, all of it,
    with no mutant, and its kills are kept only if it passes."""
    write_meta(mutation.WORKSPACE, "exptorch.a", {"exptorch.a.x_f__mutmut_1": None,
               "exptorch.a.x_g__mutmut_1": None, "exptorch.a.x_g__mutmut_2": None})  # fmt: skip
    runs = tmp_path / "runs"
    env = against_suite(
        mutation,
        monkeypatch,
        "import os, pathlib\n"
        "def test_k(): assert os.environ['MUTANT_UNDER_TEST'] != 'exptorch.a.x_f__mutmut_1'\n"
        "def test_flaky():\n"
        f"    runs = pathlib.Path({str(runs)!r})\n"
        "    count = int(runs.read_text()) if runs.exists() else 0\n"
        "    runs.write_text(str(count + 1))\n"
        "    assert count == 0  # passes its first run only: the control's\n",
        {
            "exptorch.a.x_f": ["tests/test_k.py::test_k"],
            "exptorch.a.x_g": ["tests/test_k.py::test_flaky"],
        },
    )
    assert mutation.check_against(["exptorch.a.*"], ["tests/test_k.py"], env, 1) == 0
    assert mutation.verdicts() == {
        "exptorch.a.x_f__mutmut_1": 1,
        "exptorch.a.x_g__mutmut_1": None,
        "exptorch.a.x_g__mutmut_2": None,
    }
    assert runs.read_text() == "4"  # the control, two mutants and the check of their kills
