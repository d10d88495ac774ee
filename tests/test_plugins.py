"""Plugin discovery, isolation of failures, and the registry's rules."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from exptorch import ExptError, hookimpl
from exptorch.plugins import load_plugins

BUILTINS = {
    "model": {"quicknet", "vgg16"},
    "dataset": {"cifar10", "fashion-mnist", "fashion-mnist-sample", "folder"},
    "device": {"auto", "cpu", "cuda", "mps"},
    "logger": {"tensorboard"},
    "checkpoint format": {"full", "safetensors", "state_dict"},
}


def make_distribution(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]):
    """Lay out an installed distribution (dist-info + modules) in ``site``: real entry points."""
    dist_info = site / f"{name}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[exptorch]\n{lines}\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    return site


GOOD = """
from exptorch import hookimpl

def build(info, **options):
    from exptorch_plugins.networks import QuickNet
    return QuickNet(info.channels, info.height, info.width, info.num_classes)

@hookimpl
def register_models(register):
    register("tiny", build, description="a test model")
"""

BROKEN = """
raise ImportError("this plugin needs a library that is not installed")
"""

CLASH = """
from exptorch import hookimpl

@hookimpl
def register_models(register):
    register("quicknet", lambda info: None)
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_distribution(
        tmp_path / "site",
        "expt-test-plugins",
        {"good": "good_plugin", "broken": "broken_plugin", "clash": "clash_plugin"},
        {"good_plugin": GOOD, "broken_plugin": BROKEN, "clash_plugin": CLASH},
    )


def test_builtins_are_registered(plugins) -> None:
    for kind, names in BUILTINS.items():
        assert set(plugins.names(kind)) == names
    assert all(source.distribution == "exptorch" for source in plugins.sources.values())


def test_expt_plugins_lists_every_builtin(expt) -> None:
    info = json.loads(expt("plugins", "--json", check=True).stdout)
    registered: dict[str, set[str]] = {}
    for row in info["plugins"]:
        assert row["distribution"] == "exptorch"
        assert row["version"]
        for kind, names in row["registered"].items():
            registered.setdefault(kind, set()).update(names)
    for kind, names in BUILTINS.items():
        assert names <= registered[kind]
    table = expt("plugins", check=True).stdout
    assert "quicknet (exptorch" in table and "fashion-mnist-sample" in table


def test_third_party_entry_points_broken_one_reported(expt, site: Path) -> None:
    env = {"PYTHONPATH": str(site)}
    result = expt("plugins", "--json", env=env, check=True)
    info = json.loads(result.stdout)
    names = {row["name"]: row for row in info["plugins"]}
    assert names["good"]["distribution"] == "expt-test-plugins"
    assert names["good"]["registered"] == {"model": ["tiny"]}
    problems = {p["plugin"]: p for p in info["problems"]}
    assert "needs a library that is not installed" in problems["broken"]["message"]
    assert problems["broken"]["distribution"] == "expt-test-plugins"
    # Built-ins load first, so the third-party plugin is the one reported for the clash.
    assert (
        "model 'quicknet' is already registered by plugin 'quicknet' (exptorch)"
        in (problems["clash"]["message"])
    )

    # The CLI keeps working and reports the broken plugin on stderr.
    help_result = expt("--help", env=env)
    assert help_result.returncode == 0 and "run" in help_result.stdout
    table = expt("plugins", env=env)
    assert "broken" in table.stderr and "expt-test-plugins" in table.stderr

    # Using the clashing name is refused with one sentence naming both plugins.
    clash = expt("run", "--model", "quicknet", "--dataset", "fashion-mnist-sample", env=env)
    assert clash.returncode == 1
    assert "'quicknet'" in clash.stderr and "'clash'" in clash.stderr
    assert "Traceback" not in clash.stderr


def test_disable_plugins_by_name(expt, site: Path) -> None:
    env = {"PYTHONPATH": str(site), "EXPT_DISABLE_PLUGINS": "broken,clash"}
    info = json.loads(expt("plugins", "--json", env=env, check=True).stdout)
    assert {row["name"] for row in info["plugins"]} >= {"good", "quicknet"}
    assert not {"broken", "clash"} & {row["name"] for row in info["plugins"]}
    assert info["problems"] == []


def test_autoload_opt_out_keeps_only_builtins(expt, site: Path) -> None:
    env = {"PYTHONPATH": str(site), "EXPT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    info = json.loads(expt("plugins", "--json", env=env, check=True).stdout)
    assert {row["distribution"] for row in info["plugins"]} == {"exptorch"}


def test_duplicate_registration_names_both_plugins(make_plugins) -> None:
    class First:
        @hookimpl
        def register_loggers(self, register):
            register("csv", object)

    class Second:
        @hookimpl
        def register_loggers(self, register):
            register("csv", object)

    plugins = make_plugins(("first", First()), ("second", Second()))
    with pytest.raises(ExptError, match=r"'first'.*'second'"):
        plugins.get("logger", "csv")
    assert any("already registered by plugin 'first'" in p.message for p in plugins.problems)


def test_unknown_name_lists_available(plugins) -> None:
    with pytest.raises(ExptError, match=r"Unknown model 'resnet'; available: quicknet"):
        plugins.get("model", "resnet")


def test_hook_that_raises_is_reported_and_others_still_register(make_plugins) -> None:
    class Exploding:
        @hookimpl
        def register_models(self, register):
            raise RuntimeError("boom")

    plugins = make_plugins(("exploding", Exploding()))
    assert "quicknet" in plugins.names("model")
    (problem,) = plugins.problems
    assert problem.plugin == "exploding" and "RuntimeError: boom" in problem.message


def test_plugin_with_unknown_hook_is_rejected_not_fatal(make_plugins) -> None:
    class Typo:
        @hookimpl
        def register_modles(self, register):  # misspelt hook name
            pass

    plugins = make_plugins(("typo", Typo()))
    assert not plugins.pm.has_plugin("typo")
    assert plugins.problems[0].plugin == "typo"
    assert "quicknet" in plugins.names("model")


def test_importing_the_cli_loads_no_plugin() -> None:
    import subprocess
    import sys

    code = (
        "import sys, exptorch.cli, exptorch.plugins, exptorch.hookspecs;"
        "print(sorted(m for m in sys.modules if m.startswith('exptorch_plugins')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_trace_mode_prints_hook_calls(capsys) -> None:
    plugins = load_plugins(environ={"EXPT_TRACE_HOOKS": "1", "EXPT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    plugins.names("model")
    assert "register_models" in capsys.readouterr().err
