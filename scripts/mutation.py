"""Mutation testing with mutmut 3: what ``tox -e mutation`` runs.

    python scripts/mutation.py                       # every module of exptorch and exptorch_plugins
    python scripts/mutation.py exptorch.config plugins/exptorch_plugins/schedules.py
    python scripts/mutation.py --score               # the per-module table of the last runs only
    python scripts/mutation.py --survivors exptorch.config   # what survived, as diffs

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
later run re-tests only the functions whose code changed. Delete ``.mutation/`` to start again.
A function that only an ``expt`` subprocess calls has no recorded tests ("no tests"): the
subprocess's calls are not reported back to mutmut.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

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
# Put first on the PATH of every process the tests start. While mutmut collects which tests call
# which function (MUTANT_UNDER_TEST=stats), an `expt` subprocess cannot report its calls back,
# and mutmut's recorder would fail there (it looks for its configuration in the process's working
# folder), so such a process runs the original code; under a mutant it runs the mutant.
SITECUSTOMIZE = """\
import os

if os.environ.get("MUTANT_UNDER_TEST") == "stats":
    os.environ["MUTANT_UNDER_TEST"] = ""
"""
# mutmut's exit codes (mutmut.stats.status_by_exit_code), folded into what the score counts
KILLED = {1, 3, 36, -24, 24, 152, 255, 37}


def link_workspace() -> None:
    WORKSPACE.mkdir(exist_ok=True)
    for name, target in LINKS.items():
        link = WORKSPACE / name
        if not link.is_symlink():
            link.symlink_to(ROOT / target)
    if (WORKSPACE / "pyproject.toml").is_symlink():
        (WORKSPACE / "pyproject.toml").unlink()
    (WORKSPACE / "site").mkdir(exist_ok=True)
    (WORKSPACE / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)


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
    """``plugins/exptorch_plugins/schedules.py`` or ``exptorch_plugins.schedules``: a glob."""
    path = arg.removesuffix(".py").replace(os.sep, ".")
    for prefix in ("framework.", "plugins."):
        path = path.removeprefix(prefix)
    if not path.startswith(("exptorch.", "exptorch_plugins.")):
        raise SystemExit(f"{arg!r} is not a module of exptorch or exptorch_plugins")
    return f"{path}.*"


def scores(only: list[str]) -> dict[str, Counter[str]]:
    """Verdicts per module, from the ``.meta`` files mutmut keeps next to each mutated file."""
    by_module: dict[str, Counter[str]] = {}
    for meta in sorted((WORKSPACE / "mutants").glob("exptorch*/**/*.py.meta")):
        module = str(meta.relative_to(WORKSPACE / "mutants"))[: -len(".py.meta")]
        module = module.replace(os.sep, ".")
        if only and not any(g[:-2] == module for g in only):
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        counts: Counter[str] = Counter()
        for code in codes:
            if code is None:
                counts["not checked"] += 1
            elif code in KILLED:
                counts["killed"] += 1
            elif code in (5, 33):
                counts["no tests"] += 1
            elif code == 0:
                counts["survived"] += 1
            else:
                counts["other"] += 1
        if sum(counts.values()) - counts["not checked"]:
            by_module[module] = counts
    return by_module


def print_scores(by_module: dict[str, Counter[str]]) -> None:
    print(
        f"{'module':36} {'killed':>7} {'survived':>8} {'no tests':>8} {'total':>6} {'score':>6}"
        "  (not yet checked)"
    )
    total: Counter[str] = Counter()
    for module, c in by_module.items():
        total.update(c)
        checked = sum(c.values()) - c["not checked"]
        print(
            f"{module:36} {c['killed']:>7} {c['survived']:>8} {c['no tests']:>8} {checked:>6} "
            f"{100 * c['killed'] / checked:>5.1f}%"
            + (f"  ({c['not checked']})" * bool(c["not checked"]))
        )
    checked = sum(total.values()) - total["not checked"]
    if checked:
        print(
            f"{'all of the above':36} {total['killed']:>7} {total['survived']:>8} "
            f"{total['no tests']:>8} {checked:>6} {100 * total['killed'] / checked:>5.1f}%"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="module names or files (default: all)")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants (2)")
    parser.add_argument(
        "--tests",
        action="append",
        default=[],
        help="test files to collect coverage from (default: tests/); fewer is faster",
    )
    parser.add_argument("--score", action="store_true", help="only print the last scores")
    parser.add_argument("--survivors", action="store_true", help="show the surviving mutants")
    args = parser.parse_args()
    globs = [module_glob(m) for m in args.modules]
    link_workspace()
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(WORKSPACE / "site"), str(WORKSPACE / "mutants")]),
    )
    if args.survivors:
        out = subprocess.run(
            [mutmut, "results"], cwd=WORKSPACE, env=env, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            name = line.strip().split(":")[0]
            if "survived" in line and (not globs or any(name.startswith(g[:-1]) for g in globs)):
                subprocess.run([mutmut, "show", name], cwd=WORKSPACE, env=env)
        return 0
    if not args.score:
        write_config(args.tests)
        command = [mutmut, "run", "--max-children", str(args.max_children), *globs]
        code = subprocess.run(command, cwd=WORKSPACE, env=env).returncode
        if code:
            return code
    print_scores(scores(globs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
