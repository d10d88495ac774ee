"""Loaded by every Python process of a mutation run (scripts/mutation.py puts this folder first
on ``PYTHONPATH``), which matters only in the ``expt`` processes the tests start.

While mutmut collects which tests call which function (``MUTANT_UNDER_TEST=stats``), its own
recorder only works inside the pytest process. Here a process started by a test appends the name
of each mutated function it calls, once, to a file in ``EXPTORCH_MUTATION_HITS``; the
``mutation_hits`` pytest plugin hands them to mutmut as calls of the test that started it. So a
function that only ``expt`` runs is still tested against its mutants, through those processes.
"""

import os

_hits_dir = os.environ.get("EXPTORCH_MUTATION_HITS")

if os.environ.get("MUTANT_UNDER_TEST") == "stats" and _hits_dir:
    from mutmut.mutation import trampoline

    _seen: set[str] = set()
    _hits_file = os.path.join(_hits_dir, f"{os.getpid()}.txt")

    def _record(name: str, caller: str | None = None) -> None:
        if name not in _seen:
            _seen.add(name)
            with open(_hits_file, "a") as f:
                f.write(name + "\n")

    trampoline.record_trampoline_hit = _record
