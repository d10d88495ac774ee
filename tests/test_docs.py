"""Meta-tests: the hook reference matches the hook specs, and every hook has a test.

In the manner of datasette's: adding a hook spec without documenting it here and
testing it somewhere fails the suite, naming what is missing.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import exptorch
from exptorch import hookspecs
from exptorch.events import EVENTS, Callback

ROOT = Path(__file__).resolve().parent.parent
HOOKS_MD = ROOT / "docs" / "hooks.md"
GUIDE_MD = ROOT / "docs" / "writing-plugins.md"
TEST_FILES = sorted(
    [*ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("examples").glob("*/tests/**/*.py")]
)
HOOKIMPL = re.compile(r"@(?:exptorch\.)?hookimpl(?:\([^)]*\))?\s*\n\s*def (\w+)\(")


def hook_specs() -> dict[str, Callable[..., Any]]:
    """Every hook spec, found the way pluggy finds them (the marker's attribute)."""
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return {name: fn for name, fn in vars(hookspecs).items() if hasattr(fn, marker)}


def signature_line(name: str, fn: Callable[..., Any]) -> str:
    """``def name(arg: Type, ...) -> Return``, with the annotations as written in hookspecs.py."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name if p.annotation is p.empty else f"{p.name}: {p.annotation}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        params.append(text)
    returns = "" if sig.return_annotation is sig.empty else f" -> {sig.return_annotation}"
    return f"def {name}({', '.join(params)}){returns}"


def sections(markdown: str) -> dict[str, str]:
    """``### `name` `` headings of the reference, each with the text up to the next heading."""
    parts = re.split(r"^### `(\w+)`\s*$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


SPECS = hook_specs()


def test_there_are_hook_specs() -> None:
    assert {"register_models", "run_start", "epoch_end"} <= set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_in_the_reference_with_its_current_signature(name: str) -> None:
    documented = sections(HOOKS_MD.read_text())
    assert name in documented, f"docs/hooks.md has no '### `{name}`' section"
    line = signature_line(name, SPECS[name])
    block = f"```python\n@hookspec\n{line}\n```"
    assert block in documented[name], (
        f"docs/hooks.md's section on {name} lacks its current signature; it should hold:\n{block}"
    )
    assert "**Called:**" in documented[name] and "**Returns:**" in documented[name]
    options = getattr(SPECS[name], f"{hookspecs.hookspec.project_name}_spec")
    for flag in ("firstresult", "historic"):
        if options.get(flag):
            assert flag in documented[name], f"{name} is {flag}; docs/hooks.md must say so"


def test_reference_documents_no_hook_that_does_not_exist() -> None:
    stale = set(sections(HOOKS_MD.read_text())) - set(SPECS)
    assert not stale, f"docs/hooks.md documents hooks that no longer exist: {sorted(stale)}"


def test_register_signature_is_documented() -> None:
    text = HOOKS_MD.read_text()
    for p in list(inspect.signature(hookspecs.Register.__call__).parameters.values())[1:]:
        default = "" if p.default is p.empty else f" = {p.default!r}".replace("'", '"')
        assert f"{p.name}: {p.annotation}{default}," in text, f"Register's {p.name} is stale"


def implemented_in_tests() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in TEST_FILES:
        for name in HOOKIMPL.findall(path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_has_a_test_that_implements_it(name: str) -> None:
    assert name in implemented_in_tests(), (
        f"no test implements the hook {name}: add a test plugin with an @hookimpl {name} "
        "to a test that makes exptorch call it"
    )


def test_guide_names_every_public_name() -> None:
    text = GUIDE_MD.read_text()
    missing = [n for n in exptorch.__all__ if n != "__version__" and f"`{n}`" not in text]
    assert not missing, f"docs/writing-plugins.md does not describe {missing}"


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *sorted(ROOT.joinpath("docs").glob("*.md"))], ids=lambda p: p.name
)
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def event_sections(markdown: str) -> dict[str, str]:
    """``#### `on_event` `` headings of the reference's Events section, with their text."""
    parts = re.split(r"^#### `(\w+)`\s*$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("event", EVENTS)
def test_event_is_in_the_reference_with_its_current_signature(event: str) -> None:
    documented = event_sections(HOOKS_MD.read_text())
    assert event in documented, f"docs/hooks.md has no '#### `{event}`' section"
    line = signature_line(event, getattr(Callback, event))
    assert f"```python\n{line}\n```" in documented[event], (
        f"docs/hooks.md's section on {event} lacks its current signature: {line}"
    )


def test_reference_documents_no_event_that_does_not_exist() -> None:
    stale = set(event_sections(HOOKS_MD.read_text())) - set(EVENTS)
    assert not stale, f"docs/hooks.md documents events that no longer exist: {sorted(stale)}"


@pytest.mark.parametrize("event", EVENTS)
def test_event_has_a_test_that_implements_it(event: str) -> None:
    pattern = re.compile(rf"^\s+def {event}\(self", flags=re.MULTILINE)
    assert any(pattern.search(path.read_text()) for path in TEST_FILES), (
        f"no test implements the event {event}: add a Callback overriding it to a test"
    )
