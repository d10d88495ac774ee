"""Mutation testing with mutmut 3: what ``tox -e mutation`` runs.

    python scripts/mutation.py                       # every module of exptorch and exptorch_plugins
    python scripts/mutation.py exptorch.config plugins/exptorch_plugins/schedules.py
    python scripts/mutation.py --score               # the per-module table of the last runs only
    python scripts/mutation.py --sample 300          # 300 mutants drawn from the whole tree
    python scripts/mutation.py --sample 300 --score  # that sample's score, from saved verdicts
    python scripts/mutation.py --quick 20            # each mutant against its quickest tests only
    python scripts/mutation.py --against tests/test_sweep.py exptorch.sweep_file  # see below
    python scripts/mutation.py --sample 300 --again  # check the killed ones again too
    python scripts/mutation.py --again exptorch.config  # all of its mutants, killed ones too
    python scripts/mutation.py --recollect exptorch.config   # after editing tests: see below
    python scripts/mutation.py --survivors exptorch.config   # what survived, as diffs
    python scripts/mutation.py --type-check          # mypy's verdicts only: see below

mutmut names a mutant after the module its file path spells (``exptorch/config.py`` ->
``exptorch.config``) and only activates it when that matches the function's ``__module__``.
exptorch's sources live under ``framework/`` and ``plugins/`` (setup.cfg's ``package_dir``), so
this script runs mutmut in ``.mutation/``, a folder that links the two packages under their
import names, next to links to the tests and the files they read (README, docs, examples).
mutmut copies them into ``.mutation/mutants/``, and ``PYTHONPATH`` puts that copy ahead of the
installed exptorch, for the tests and for the ``expt`` processes they start (those inherit the
mutant under test through ``MUTANT_UNDER_TEST``).

mutmut collects once which tests call which function (``.mutation/mutants/mutmut-stats.json``),
runs only those tests against each mutant and keeps every verdict in ``.mutation/mutants/``; a
later run checks only the mutants without a verdict (new, or in a function whose code changed)
and those that survived (new tests may kill them), unless ``--again``. mutmut collects the
calls of new tests, but not again those of a test that was edited: ``--recollect`` collects
them all again (after editing tests, before trusting a "survived"). Delete ``.mutation/`` to
start again.
The ``expt`` processes the tests start report the functions they call too (see
``scripts/mutation_site/``), so a function only such a process runs is tested through them.
Before any test runs, mypy checks the mutated tree (``type_check_command`` in pyproject.toml):
a mutant it rejects counts as killed, in a column of its own. mutmut records that verdict only
for the mutants its run reaches, one after the other between test runs; ``--type-check``
records it for every unchecked mutant at once, without running a test (minutes, not hours).

The whole tree takes tens of hours on 2 cores, longer than any one machine keeps ``.mutation/``,
so every verdict is also kept in the repository, in ``tests/mutation-verdicts.json``: each
mutated function's hash (mutmut's, of its source) with the exit code of each of its mutants.
Before mutmut runs, the script gives each unchecked mutant the verdict kept there for it, if its
function's hash is the same; mutmut then starts over only the functions whose code changed.
After each run (and with ``--save``, also during one), the file is written again from
``.mutation/``. ``--score`` reads it when ``.mutation/`` has no verdicts.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import importlib.metadata
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = ROOT / ".mutation"
# import name -> where it lives; then what the tests read besides the packages
LINKS = {
    "exptorch": "framework/exptorch",
    "exptorch_plugins": "plugins/exptorch_plugins",
    "tests": "tests",
    "setup.cfg": "setup.cfg",
    "README.md": "README.md",
    "docs": "docs",
    "examples": "examples",
    "framework": "framework",
}
# First on PYTHONPATH of every process: sitecustomize.py there records what the `expt` processes
# started by tests call, and mutation_hits.py (a pytest plugin) reports it to mutmut.
SITE = ROOT / "scripts" / "mutation_site"
# mutmut's exit codes (mutmut.stats.status_by_exit_code), folded into what the score counts
KILLED = {1, 3, 36, -24, 24, 152, 255}
# pytest's code for a run stopped by Ctrl-C: the mutants in flight when `tox -e mutation` is
# stopped get it. It is no verdict: they are saved unchecked, to be run again.
INTERRUPTED = 2
# what ``--quick`` gives a mutant that passed its quickest tests (mutation_hits.UNDECIDED): no
# verdict either, as the other tests were left out
UNDECIDED = 34
NO_VERDICT = {INTERRUPTED, UNDECIDED}
# the variable that tells scripts/mutation_site/mutation_hits.py the quick pass's budget
QUICK = "EXPTORCH_MUTATION_QUICK"
# and the one that names the only tests it lets run (mutation_hits.ONLY)
ONLY = "EXPTORCH_MUTATION_ONLY"
# caught by the type check before any test ran (pyproject.toml's type_check_command): killed too,
# as CI's mypy rejects it, but counted apart so the tests' share shows
TYPE_ERROR = 37
# every verdict, kept in the repository (see above)
STORE = ROOT / "tests" / "mutation-verdicts.json"


def link_workspace() -> None:
    WORKSPACE.mkdir(exist_ok=True)
    for name, target in LINKS.items():
        link = WORKSPACE / name
        if not link.is_symlink():
            link.symlink_to(ROOT / target)
    if (WORKSPACE / "pyproject.toml").is_symlink():
        (WORKSPACE / "pyproject.toml").unlink()


def write_config(tests: list[str]) -> None:
    """The repository's pyproject.toml, with ``--tests`` as mutmut's test selection if given."""
    text = (ROOT / "pyproject.toml").read_text()
    if tests:
        selection = ", ".join(f'"{t}"' for t in tests)
        text = re.sub(
            r"(?m)^pytest_add_cli_args_test_selection = .*$",
            f"pytest_add_cli_args_test_selection = [{selection}]",
            text,
        )
    target = WORKSPACE / "pyproject.toml"
    if not target.is_file() or target.read_text() != text:
        target.write_text(text)


def module_glob(arg: str) -> str:
    """``plugins/exptorch_plugins/schedules.py`` or ``exptorch_plugins.schedules``: a glob; a
    function as mutmut names it (``exptorch.assemble.x_open_run_dir``): its mutants."""
    path = arg.removesuffix(".py").replace(os.sep, ".")
    for prefix in ("framework.", "plugins."):
        path = path.removeprefix(prefix)
    if not path.startswith(("exptorch.", "exptorch_plugins.")):
        raise SystemExit(f"{arg!r} is not a module of exptorch or exptorch_plugins")
    if path.rpartition(".")[2].startswith(("x_", "x\u01c1")):  # a function, a method
        return f"{path}__mutmut_*"
    return f"{path}.*"


def meta_files() -> list[Path]:
    return sorted((WORKSPACE / "mutants").glob("exptorch*/**/*.py.meta"))


def read_meta(meta: Path) -> dict[str, Any]:
    """A ``.meta`` file; mutmut rewrites it in place after each mutant, so a read during a run
    can meet a half-written one: read it again."""
    for _ in range(19):
        try:
            return dict(json.loads(meta.read_text()))
        except json.JSONDecodeError:
            time.sleep(0.1)
    return dict(json.loads(meta.read_text()))


def verdicts() -> dict[str, int | None]:
    """Every generated mutant's exit code (None: not checked yet), from the ``.meta`` files
    mutmut keeps next to each mutated file."""
    codes: dict[str, int | None] = {}
    for meta in meta_files():
        codes.update(read_meta(meta)["exit_code_by_key"])
    return codes


def verdict(code: int | None) -> str:
    if code is None or code in NO_VERDICT:
        return "not checked"
    if code == TYPE_ERROR:
        return "mypy"
    if code in KILLED:
        return "killed"
    if code in (5, 33):
        return "no tests"
    return "survived" if code == 0 else "other"


def in_modules(name: str, globs: list[str]) -> bool:
    """Whether mutant ``name`` belongs to a module ``globs`` names (any, if it names none)."""
    return not globs or any(fnmatch.fnmatch(name, g) for g in globs)


def function_of(name: str) -> tuple[str, str]:
    """``exptorch.config.x_validate__mutmut_3`` -> ``("exptorch.config.x_validate", "3")``."""
    function, _, number = name.rpartition("__mutmut_")
    return function, number


def hash_key(function: str) -> str:
    """The function's key in a ``.meta`` file's hashes, as mutmut takes it: its mangled name
    (``exptorch.config.x_validate`` -> ``x_validate``)."""
    return function.rpartition(".")[2]


def write_whole(path: Path, text: str) -> None:
    """Replace ``path`` whole: a stop at any moment leaves the old file or the new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def mutmut_version() -> str:
    return importlib.metadata.version("mutmut")


def save_verdicts() -> int:
    """Write every generated mutant (unchecked ones too) into ``STORE``, by function, each
    function with its hash; return how many have a verdict. Nothing generated: nothing written."""
    functions: dict[str, dict[str, Any]] = {}
    for meta in meta_files():
        data = read_meta(meta)
        for name, code in data["exit_code_by_key"].items():
            function, number = function_of(name)
            digest = data["hash_by_function_name"].get(hash_key(function), "")
            functions.setdefault(function, {"hash": digest, "verdicts": {}})
            functions[function]["verdicts"][number] = None if code in NO_VERDICT else code
    if not functions:
        return 0
    version = json.dumps(mutmut_version())
    rows = ",\n".join(f"  {json.dumps(f)}: {json.dumps(v)}" for f, v in sorted(functions.items()))
    # one function a line: a change of verdicts reads as a diff of the functions it touches
    write_whole(STORE, f'{{\n "mutmut": {version},\n "functions": {{\n{rows}\n }}\n}}\n')
    return sum(c is not None for v in functions.values() for c in v["verdicts"].values())


def source_of(module: str) -> Path:
    """``exptorch.config`` -> ``exptorch/config.py`` (or ``.../__init__.py``), in WORKSPACE."""
    path = Path(*module.split("."))
    if (WORKSPACE / path).with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py"


def restore_verdicts() -> int:
    """Give each unchecked mutant in ``.mutation/`` the verdict ``STORE`` keeps for it, where
    its function's hash there is the one in the ``.meta`` file; return how many were given.
    A module without a ``.meta`` file (a new clone) gets one from ``STORE`` and loses its
    mutated copy, so that mutmut generates it again and starts over each changed function."""
    if not STORE.is_file():
        return 0
    store = json.loads(STORE.read_text())
    if store["mutmut"] != mutmut_version():
        print(
            f"{STORE.name} holds mutmut {store['mutmut']}'s verdicts, not mutmut "
            f"{mutmut_version()}'s, whose mutants differ: none of them is used"
        )
        return 0
    kept: dict[str, dict[str, Any]] = store["functions"]
    by_file: dict[Path, list[str]] = {}
    for function in kept:
        by_file.setdefault(source_of(function.rpartition(".")[0]), []).append(function)
    restored = 0
    for source, functions in sorted(by_file.items()):
        meta = WORKSPACE / "mutants" / f"{source}.meta"
        if meta.is_file():
            data = read_meta(meta)
        else:
            data = unchecked_meta({f: kept[f] for f in functions})
            meta.parent.mkdir(parents=True, exist_ok=True)
            (WORKSPACE / "mutants" / source).unlink(missing_ok=True)
        given = give_kept_verdicts(data, kept)
        if given or not meta.is_file():
            write_whole(meta, json.dumps(data, indent=4))
        restored += given
    return restored


def unchecked_meta(kept: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A ``.meta`` file's content, as mutmut's ``SourceFileMutationData`` loads it, for the
    functions ``kept`` names: their hashes, and their mutants not checked yet."""
    return {
        "exit_code_by_key": {
            f"{function}__mutmut_{number}": None
            for function, entry in kept.items()
            for number in entry["verdicts"]
        },
        "hash_by_function_name": {hash_key(f): entry["hash"] for f, entry in kept.items()},
        "type_check_error_by_key": {},
        "durations_by_key": {},
        "estimated_durations_by_key": {},
    }


def give_kept_verdicts(data: dict[str, Any], kept: dict[str, dict[str, Any]]) -> int:
    """Fill the unchecked mutants of one ``.meta`` file's ``data`` from ``kept``, where the
    function's hash matches; return how many."""
    given = 0
    codes = data["exit_code_by_key"]
    for name, code in codes.items():
        function, number = function_of(name)
        entry = kept.get(function)
        digest = data["hash_by_function_name"].get(hash_key(function))
        if code is not None or entry is None or entry["hash"] != digest:
            continue
        codes[name] = entry["verdicts"].get(number)
        if codes[name] == TYPE_ERROR:
            data["type_check_error_by_key"][name] = f"mypy, as kept in {STORE.name}"
        given += codes[name] is not None
    return given


def module_of(name: str) -> str:
    """``exptorch.config.x_validate__mutmut_3`` -> ``exptorch.config``."""
    return name.rsplit(".", 1)[0]


def scores(only: list[str], names: set[str] | None = None) -> dict[str, Counter[str]]:
    """Verdicts per module, of the modules ``only`` names (all if empty) or of ``names``."""
    by_module: dict[str, Counter[str]] = {}
    for name, code in verdicts().items():
        module = module_of(name)
        if (only and not any(g[:-2] == module for g in only)) or (names and name not in names):
            continue
        by_module.setdefault(module, Counter())[verdict(code)] += 1
    return {m: c for m, c in sorted(by_module.items()) if sum(c.values()) - c["not checked"]}


def sample_file(size: int, seed: int) -> Path:
    return WORKSPACE / f"sample-{size}-seed-{seed}.txt"


def draw_sample(size: int, seed: int) -> list[str]:
    """``size`` mutants drawn uniformly, without replacement, from every generated one; the
    draw is saved so that a rerun (after new tests, or after an interruption) checks the same."""
    saved = sample_file(size, seed)
    if saved.is_file():
        return saved.read_text().split()
    names = sorted(verdicts())
    if len(names) < size:
        raise SystemExit(f"only {len(names)} mutants were generated; ask for fewer")
    chosen = sorted(random.Random(seed).sample(names, size))
    saved.write_text("\n".join(chosen) + "\n")
    return chosen


def wilson(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    p = killed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def caught(c: Counter[str]) -> int:
    """The mutants the score counts as killed: by a test, or by mypy before any test ran."""
    return c["killed"] + c["mypy"]


def print_sample_score(names: list[str]) -> None:
    codes = verdicts()
    counts = Counter(verdict(codes.get(n)) for n in names)
    checked = len(names) - counts["not checked"]
    print(
        f"sample of {len(names)} of {len(codes)} mutants: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    if checked:
        killed = caught(counts)
        low, high = wilson(killed, checked)
        print(
            f"estimated score: {100 * killed / checked:.1f}% of {checked} checked "
            f"(95% interval {100 * low:.1f}% to {100 * high:.1f}%)"
        )


def score_row(label: str, c: Counter[str]) -> str:
    checked = sum(c.values()) - c["not checked"]
    return (
        f"{label:36} {c['mypy']:>6} {c['killed']:>7} {c['survived']:>8} {c['no tests']:>8} "
        f"{checked:>6} {100 * caught(c) / checked:>5.1f}%"
        + (f"  ({c['not checked']})" * bool(c["not checked"]))
    )


def print_scores(by_module: dict[str, Counter[str]]) -> None:
    """Per module: caught by mypy, killed by a test, survived, no test calls it; the score
    counts both kinds of catch."""
    print(
        f"{'module':36} {'mypy':>6} {'killed':>7} {'survived':>8} {'no tests':>8} {'total':>6} "
        f"{'score':>6}  (not yet checked)"
    )
    total: Counter[str] = Counter()
    for module, c in by_module.items():
        total.update(c)
        print(score_row(module, c))
    if sum(total.values()) - total["not checked"]:
        print(score_row("all of the above", total))


NO_SUCH_MUTANT = "exptorch.no_mutant_has_this_name"


def run_mutmut(
    mutmut: str, names: list[str], max_children: int, env: dict[str, str], *, stop: bool = False
) -> int:
    """``mutmut run`` on the mutants ``names``. With ``stop``, the run is expected to end, after
    generating mutants and collecting which tests call what, with mutmut's assertion that no
    mutant matches: that traceback is not shown, any other error is."""
    command = [mutmut, "run", "--max-children", str(max_children), *names]
    before = forget_undecided()
    failures = WORKSPACE / "clean-run-failures.txt"
    failures.unlink(missing_ok=True)
    (WORKSPACE / "kills.txt").unlink(missing_ok=True)  # which test killed each mutant, this run
    errors = subprocess.PIPE if stop else None
    try:
        result = subprocess.run(command, cwd=WORKSPACE, env=env, stderr=errors, text=True)
    finally:  # Ctrl-C too: what was checked until then is kept
        if env.get(QUICK):
            keep_survivors(before)
        save_verdicts()
    if stop and "nothing matches" not in (result.stderr or ""):
        sys.stderr.write(result.stderr or "")
    if failures.is_file():
        print(f"Tests failed without any mutant (see {failures}):")
        print(failures.read_text())
    return result.returncode


def rewrite_codes(new_code: Callable[[str, int | None], int | None]) -> None:
    """Give every mutant ``new_code(name, code)`` as its exit code in the ``.meta`` files,
    rewriting only those it changes. Not while a run is going: mutmut rewrites those files."""
    for meta in meta_files():
        data = read_meta(meta)
        codes = data["exit_code_by_key"]
        new = {name: new_code(name, code) for name, code in codes.items()}
        changed = {name: code for name, code in new.items() if code != codes[name]}
        if changed:
            codes.update(changed)
            write_whole(meta, json.dumps(data, indent=4))


def forget_undecided() -> dict[str, int | None]:
    """Make each mutant a run left without a verdict (stopped, or undecided by ``--quick``)
    unchecked again, in the ``.meta`` files, so that mutmut checks it; return every verdict."""
    rewrite_codes(lambda _name, code: None if code in NO_VERDICT else code)
    return verdicts()


def keep_survivors(before: dict[str, int | None]) -> None:
    """A quick pass never takes a verdict away: a survivor it checked again, with only its
    quickest tests, and that none of them killed, stays a survivor (not undecided)."""
    rewrite_codes(lambda name, code: 0 if code == UNDECIDED and before.get(name) == 0 else code)


def generate(mutmut: str, max_children: int, env: dict[str, str]) -> None:
    """Generate every mutant (those of changed functions start over) and collect which tests
    call what, without checking any: mutmut stops there, as no mutant has the name given."""
    run_mutmut(mutmut, [NO_SUCH_MUTANT], max_children, env, stop=True)


def run_sample(
    size: int, seed: int, mutmut: str, max_children: int, env: dict[str, str], again: bool
) -> int:
    """Check a uniform sample of the whole tree's mutants: its score estimates the tree's."""
    if not sample_file(size, seed).is_file():
        generate(mutmut, max_children, env)
    names = draw_sample(size, seed)
    codes = verdicts()
    # a killed mutant stays killed, unless ``again``; the others are checked (again: new tests
    # may kill them)
    todo = [n for n in names if again or verdict(codes.get(n)) != "killed"]
    if todo:
        code = run_mutmut(mutmut, todo, max_children, env)
        if code:
            return code
    print_scores(scores([], set(names)))
    print_sample_score(names)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "modules",
        nargs="*",
        help="module names or files, or functions as mutmut names them (default: all)",
    )
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants (2)")
    parser.add_argument(
        "--tests",
        action="append",
        default=[],
        help="test files to collect coverage from (default: tests/); fewer is faster",
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="check N mutants drawn at random from the whole tree, for an estimate of its score",
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of --sample's draw (0)")
    parser.add_argument(
        "--again",
        action="store_true",
        help="check the killed mutants again too (to audit their kills); without it, only "
        "mutants with no verdict or that survived are checked",
    )
    parser.add_argument(
        "--recollect",
        action="store_true",
        help="collect again which tests call what (mutmut does it only for new tests)",
    )
    parser.add_argument(
        "--type-check",
        action="store_true",
        help="record mypy's verdict on every unchecked mutant, without running any test",
    )
    parser.add_argument(
        "--quick",
        type=float,
        metavar="SECONDS",
        help="run each mutant against only its quickest tests, those that fit in SECONDS: it "
        "records the kills quickly; a mutant none of them kills stays unchecked, for a full run",
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="TEST",
        help="check the unchecked and surviving mutants of the modules named against only "
        "these tests (a file, a test id, or a pytest option such as --against=-kread_sweep), "
        "without mutmut: it records kills; the others keep their verdict or none",
    )
    parser.add_argument("--score", action="store_true", help="only print the last scores")
    parser.add_argument("--survivors", action="store_true", help="show the surviving mutants")
    parser.add_argument(
        "--save",
        action="store_true",
        help=f"only write the verdicts in .mutation/ into tests/{STORE.name} (safe during a run)",
    )
    args = parser.parse_args()
    if args.sample is not None and (args.modules or args.sample < 1):
        parser.error("--sample N takes a positive N and no module names: it draws from all")
    globs = [module_glob(m) for m in args.modules]
    link_workspace()
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(SITE), str(WORKSPACE / "mutants")]),
        # `python` in pyproject.toml's type_check_command: this interpreter, which has mypy,
        # torch and exptorch (tox runs the script outside the environment that holds them)
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if args.quick is not None:
        if args.quick <= 0:
            parser.error("--quick SECONDS takes a positive number of seconds")
        env[QUICK] = str(args.quick)
    if args.save:
        print(f"{save_verdicts()} verdicts written to {STORE.relative_to(ROOT)}")
        return 0
    if args.survivors:
        return show_survivors(mutmut, globs, env)
    if args.against:
        if not globs:
            parser.error("--against checks the modules named: name at least one")
        return check_against(globs, args.against, env, args.max_children)
    # not into the .meta files of a run that may be going on, unless there are none yet
    if not args.score or not meta_files():
        restore_verdicts()
    if args.type_check:
        write_config(args.tests)
        generate(mutmut, args.max_children, env)
        print(f"mypy rejects {record_type_errors(globs, mypy_rejects(env))} more mutants")
        save_verdicts()
        print_scores(scores(globs))
        return 0
    if args.recollect and not args.score:  # only a run collects anything
        (WORKSPACE / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    if args.sample is not None:
        if args.score:
            names = draw_sample(args.sample, args.seed)
            print_scores(scores([], set(names)))
            print_sample_score(names)
            return 0
        write_config(args.tests)
        return run_sample(args.sample, args.seed, mutmut, args.max_children, env, args.again)
    if not args.score:
        write_config(args.tests)
        code = run_modules(globs, args.again, mutmut, args.max_children, env)
        if code:
            return code
    print_scores(scores(globs))
    return 0


def run_modules(
    globs: list[str], again: bool, mutmut: str, max_children: int, env: dict[str, str]
) -> int:
    """Check the mutants of these modules without a verdict or that survived (all of them,
    if ``again``). No module named: mutmut's own run over the whole tree, which checks every
    mutant without a verdict, cheapest first (or every mutant, if ``again``)."""
    if not globs:
        return run_mutmut(mutmut, ["exptorch*"] if again else [], max_children, env)
    names = globs if again else unsettled(globs, mutmut, max_children, env)
    return run_mutmut(mutmut, names, max_children, env) if names else 0


def check_against(globs: list[str], tests: list[str], env: dict[str, str], workers: int) -> int:
    """Check the unchecked and surviving mutants of these modules against ``tests`` only,
    without mutmut: a mutant they fail is killed (written into the ``.meta`` files as mutmut
    writes a kill); one they pass keeps its verdict, or none, as these need not be all the
    tests that call it. Each mutant runs only those of ``tests`` that mutmut found calling
    its function, in a process forked from this one (which imported torch once). The tests
    must pass without a mutant first, and every test that killed one must pass without it
    after (else its kills are dropped). Not while a mutmut run is going: it rewrites those
    files."""
    if not meta_files():
        raise SystemExit("No mutants are generated yet: run `tox -e mutation` first.")
    tests = [t if t.startswith("-") else str(ROOT / t) for t in tests]
    preload()
    # the control: the same tests, in the same order and (--quick) cut, with no mutant active
    started = time.monotonic()
    control = run_forked([(CONTROL, tests, None)], env, workers)[CONTROL]
    # a mutant's run ten times as long as the control's is one that hangs: no verdict
    limit = max(60.0, 10 * (time.monotonic() - started))
    if control not in (0, UNDECIDED):
        raise SystemExit(
            f"The tests {' '.join(tests)} fail without any mutant (pytest's exit code "
            f"{control}); run them with pytest to see why."
        )
    open_verdicts = ("not checked", "survived")
    names = [
        n for n, c in verdicts().items() if in_modules(n, globs) and verdict(c) in open_verdicts
    ]
    calls = tests_calling(tests, env)
    runs = [(n, files_of(ids), ids) for n in names if (ids := calls(function_of(n)[0]))]
    kills_seen = kills_size()
    codes = run_forked(runs, env, workers, limit)
    stopped = len(codes) < len(runs)
    killed = {name for name, code in codes.items() if code == 1}
    killed -= false_kills(killing_tests(kills_seen, killed), env)
    record_kills(killed)
    save_verdicts()
    errors = Counter(code for code in codes.values() if code not in (0, 1, UNDECIDED))
    print(
        f"{'Stopped: ' if stopped else ''}{len(killed)} of {len(names)} unchecked or surviving "
        f"mutants killed by {' '.join(tests)} ({len(names) - len(runs)} called by none of them"
        + "".join(f"; {n} ended with pytest's exit code {c}" for c, n in sorted(errors.items()))
        + ")"
    )
    return 130 if stopped else 0


#: a mutant no function has: its run is a run with none active, cut as a mutant's is
CONTROL = f"{NO_SUCH_MUTANT}__mutmut_0"
#: what each ``pytest`` forked for ``--against`` would import: imported once, before the forks
PRELOAD = ("pytest", "torch", "torchvision", "numpy", "PIL.Image", "click", "pluggy", "optuna")


def preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # the tests import it, or do without
            importlib.import_module(name)


def tests_calling(tests: list[str], env: dict[str, str]) -> Callable[[str], list[str]]:
    """For a function's mangled name, the tests of ``tests`` (files, test ids or options) that
    mutmut's collection run found calling it, and those it has not seen (written since: what
    they call is not known), as test ids; none, if none of them does."""
    stats = WORKSPACE / "mutants" / "mutmut-stats.json"
    if not stats.is_file():
        raise SystemExit("mutmut has not collected which tests call what: run `tox -e mutation`.")
    saved = json.loads(stats.read_text())
    by_function = saved["tests_by_mangled_function_name"]
    given = set(collect(tests, env))
    new = given - set(saved["duration_by_test"]).union(*by_function.values())

    def calling(function: str) -> list[str]:
        return sorted(given.intersection(by_function.get(function, ())) | new)

    return calling


def collect(tests: list[str], env: dict[str, str]) -> list[str]:
    """The ids of the tests ``tests`` select, as pytest names them (from the repository)."""
    listing = WORKSPACE / "against-tests.txt"
    runs = [(CONTROL, ["--collect-only", *tests], None)]  # -q: one id a line
    if run_forked(runs, every_test(env), 1, output=listing).get(CONTROL) != 0:
        raise SystemExit(f"pytest cannot collect {' '.join(tests)}: run it with pytest to see why.")
    return [line for line in listing.read_text().splitlines() if "::" in line]


def run_forked(
    runs: list[tuple[str, list[str], list[str] | None]],
    env: dict[str, str],
    workers: int,
    limit: float = 600,
    output: Path | None = None,
) -> dict[str, int]:
    """pytest's exit code for each (mutant, arguments, test ids or None for all they select),
    ``workers`` at a time, until Ctrl-C (the codes of the runs that ended by then); a run over
    ``limit`` seconds is stopped, no verdict. Their output goes to ``output``, or nowhere."""
    codes: dict[str, int] = {}
    going: dict[int, tuple[str, float]] = {}
    waiting = list(reversed(runs))
    try:
        while waiting or going:
            while waiting and len(going) < workers:
                mutant, tests, only = waiting.pop()
                going[fork_pytest(mutant, tests, env, output, only)] = (mutant, time.monotonic())
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                time.sleep(0.02)
                for late, (_, started) in going.items():
                    if time.monotonic() - started > limit:
                        os.kill(late, signal.SIGTERM)
                continue
            mutant, started = going.pop(pid)
            late = time.monotonic() - started > limit
            codes[mutant] = INTERRUPTED if late else os.waitstatus_to_exitcode(status)
    except KeyboardInterrupt:  # the children got it too: wait for them to stop
        for pid in going:
            os.waitpid(pid, 0)
    return codes


def fork_pytest(
    mutant: str,
    tests: list[str],
    env: dict[str, str],
    output: Path | None = None,
    only: list[str] | None = None,
) -> int:
    """Start ``pytest`` on ``tests`` against ``mutant``, as mutmut runs a mutant (stopping at
    the first failure, with the plugin; ``-x`` may be taken back with ``--maxfail=0``), in a
    child of this process, output into ``output`` (or hidden); its pid. ``only``: the ids of
    the tests to run out of those ``tests`` select, handed to the plugin
    (``mutation_hits.ONLY``), as pytest cannot select every id it prints on its command line
    (a parameter holding "/", such as a URL, is read as a path)."""
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        os.chdir(WORKSPACE / "mutants")
        os.environ.clear()
        os.environ.update(env, MUTANT_UNDER_TEST=mutant)
        if only is not None:
            os.environ[ONLY] = "\n".join(only)
        sys.path[:0] = ["", *env.get("PYTHONPATH", "").split(os.pathsep)]
        out = os.open(output or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        # pytest writes to sys.stdout, which a parent (a test of this script) may have swapped
        sys.stdout = sys.stderr = open(out, "w", closefd=False)  # noqa: SIM115
        import pytest

        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "mutation_hits",
                                "-p", "no:randomly", *tests]))  # fmt: skip
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def files_of(ids: list[str]) -> list[str]:
    """The files of these test ids (as pytest names them, from the repository), once each."""
    return list(dict.fromkeys(str(ROOT / test.partition("::")[0]) for test in ids))


def every_test(env: dict[str, str]) -> dict[str, str]:
    """``env`` without ``--quick``'s budget: a run of every test it selects."""
    return {k: v for k, v in env.items() if k != QUICK}


def kills_file() -> Path:
    return WORKSPACE / "kills.txt"  # mutation_hits.py writes a line per kill


def kills_size() -> int:
    return kills_file().stat().st_size if kills_file().is_file() else 0


def killing_tests(seen: int, killed: set[str]) -> dict[str, set[str]]:
    """The mutants each test killed, from the lines ``kills.txt`` got after ``seen`` bytes."""
    by_test: dict[str, set[str]] = {}
    if not killed:
        return by_test
    with open(kills_file(), "rb") as f:
        f.seek(seen)
        for line in f.read().decode().splitlines():
            mutant, test, _ = line.split("\t")
            if mutant in killed:
                by_test.setdefault(test, set()).add(mutant)
    return by_test


def false_kills(by_test: dict[str, set[str]], env: dict[str, str]) -> set[str]:
    """The kills of the tests among ``by_test`` that fail without any mutant too (all run, not
    cut by ``--quick``, not stopped at a failure): a flaky test's kills are none."""
    if not by_test:
        return set()
    seen = kills_size()
    runs = [(CONTROL, ["--maxfail=0", *files_of(list(by_test))], list(by_test))]
    code = run_forked(runs, every_test(env), 1).get(CONTROL, INTERRUPTED)
    if code == 0:
        return set()
    failed = killing_tests(seen, {CONTROL}) if code == 1 else by_test  # else: no telling which
    return {mutant for test in failed for mutant in by_test.get(test, ())}


def record_kills(killed: set[str]) -> None:
    """Give the mutants ``killed`` names mutmut's verdict for a kill (1)."""
    rewrite_codes(lambda name, code: 1 if name in killed else code)


def unsettled(globs: list[str], mutmut: str, max_children: int, env: dict[str, str]) -> list[str]:
    """The mutants of these modules without a verdict, or that survived (new tests may kill
    them). mutmut re-runs every mutant a name matches, so the killed ones are left out by
    name; it first generates the mutants of changed functions (their verdicts start over)."""
    generate(mutmut, max_children, env)
    return [
        name
        for name, code in verdicts().items()
        if in_modules(name, globs) and verdict(code) not in ("killed", "mypy")
    ]


def mypy_rejects(env: dict[str, str]) -> dict[str, str]:
    """Every mutant mypy rejects, with mypy's error: mutmut's own type-check filter, over the
    whole mutated tree in ``.mutation/mutants/``."""
    from mutmut.mutation.file_mutation import filter_mutants_with_type_checker

    os.environ["PATH"] = env["PATH"]  # the type check command's `python`
    os.chdir(WORKSPACE)
    return {
        name: failed.error.error_description
        for name, failed in filter_mutants_with_type_checker().items()
    }


def record_type_errors(globs: list[str], rejected: dict[str, str]) -> int:
    """Give each unchecked mutant of these modules (all if none) that mypy rejects the verdict
    a run gives it, written into the ``.meta`` file as mutmut writes it; return how many.
    Not while a run is going: mutmut rewrites those files."""
    recorded = 0
    for meta in meta_files():
        data = read_meta(meta)
        codes = data["exit_code_by_key"]
        new = [
            name
            for name, code in codes.items()
            if code is None and name in rejected and in_modules(name, globs)
        ]
        for name in new:
            codes[name] = TYPE_ERROR
            data.setdefault("type_check_error_by_key", {})[name] = rejected[name]
        if new:
            write_whole(meta, json.dumps(data, indent=4))
            recorded += len(new)
    return recorded


def show_survivors(mutmut: str, globs: list[str], env: dict[str, str]) -> int:
    out = subprocess.run(
        [mutmut, "results"], cwd=WORKSPACE, env=env, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        name = line.strip().split(":")[0]
        if "survived" in line and in_modules(name, globs):
            subprocess.run([mutmut, "show", name], cwd=WORKSPACE, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
