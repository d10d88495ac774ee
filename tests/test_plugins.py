"""Plugin discovery, isolation of failures, and the registry's rules."""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from pathlib import Path

import pytest
import torch

from exptorch import Checkpoint, ExptError, Option, hookimpl
from exptorch.checkpoint import load_checkpoint
from exptorch.plugins import load_plugins
from exptorch.testing import make_plugins, run_expt

BUILTINS = {
    "model": {"quicknet", "vgg16"},
    "dataset": {"cifar10", "fashion-mnist", "fashion-mnist-sample", "folder"},
    "device": {"auto", "cpu", "cuda", "mps"},
    "logger": {"tensorboard", "wandb"},
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


def search_path(site: Path) -> str:
    """``site`` first on the import path of an ``expt`` process, keeping the test's own path
    (mutation testing puts the mutated exptorch there)."""
    return os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))


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
        assert names <= set(plugins.names(kind))
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
    rows = {line.split(":")[0].strip() for line in table.splitlines() if line.startswith("  ")}
    assert rows == {  # each kind in the plural, as its registration hook spells it
        "models", "datasets", "devices", "loggers", "checkpoint formats", "optimizers",
        "schedules", "losses", "transforms", "metrics", "commands",
    }  # fmt: skip


def test_third_party_entry_points_broken_one_reported(expt, site: Path) -> None:
    env = {"PYTHONPATH": search_path(site)}
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
    env = {"PYTHONPATH": search_path(site), "EXPT_DISABLE_PLUGINS": "broken,clash"}
    info = json.loads(expt("plugins", "--json", env=env, check=True).stdout)
    assert {row["name"] for row in info["plugins"]} >= {"good", "quicknet"}
    assert not {"broken", "clash"} & {row["name"] for row in info["plugins"]}
    assert info["problems"] == []


def test_autoload_opt_out_keeps_only_builtins(expt, site: Path) -> None:
    env = {"PYTHONPATH": search_path(site), "EXPT_DISABLE_PLUGIN_AUTOLOAD": "1"}
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


def test_plugins_show_describes_a_plugin_by_its_name_or_a_name_it_registered(make_plugins) -> None:
    """`expt plugins show NAME --json`: the owning plugin, its hooks, each option's flag, key,
    type, default and choices, and only that plugin's problems."""
    from exptorch.cli import describe_plugin, describe_plugins

    class Exploding:
        @hookimpl
        def register_models(self, register):
            raise RuntimeError("boom")

    plugins = make_plugins(("exploding", Exploding()))
    shown = describe_plugin(plugins, "sgd")  # a registered name: its plugin is shown
    assert (shown["name"], shown["hooks"], shown["problems"]) == (
        "optimizers", ["register_optimizers"], []
    )  # fmt: skip
    options = {o["flag"]: o for r in shown["registered"] for o in r["options"]}
    assert options["--sgd-nesterov"] == {
        "flag": "--sgd-nesterov", "key": "sgd_nesterov", "type": "flag", "default": False,
        "choices": None, "help": "Nesterov momentum (needs --momentum).",
    }  # fmt: skip
    assert (options["--adam-beta1"]["type"], options["--adam-beta1"]["default"]) == ("float", 0.9)
    folder = describe_plugin(plugins, "folder")
    channels = next(o for r in folder["registered"] for o in r["options"] if o["choices"])
    assert (channels["key"], channels["choices"]) == ("folder_channels", ["auto", "1", "3"])
    assert describe_plugin(plugins, "exploding")["problems"] == [plugins.problems[0].message]
    rows = {row["name"]: row for row in describe_plugins(plugins)["plugins"]}
    assert rows["optimizers"]["hooks"] == shown["hooks"]  # `expt plugins --json` agrees
    with pytest.raises(ExptError) as unknown:
        describe_plugin(plugins, "resnet")
    prefix, listed = str(unknown.value).split("; plugins: ")
    names = listed.removesuffix(".").split(", ")
    assert prefix == "No plugin or registered name 'resnet'"
    assert names == sorted(names) and {"exploding", "folder", "optimizers"} <= set(names)


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


# --- load order and override rules ------------------------------------------------------------

MODEL_PLUGIN = """
from exptorch import hookimpl

def build(info, **options):
    from exptorch_plugins.networks import QuickNet
    return QuickNet(info.channels, info.height, info.width, info.num_classes)

@hookimpl
def register_models(register):
    register({name!r}, build, description={description!r})
"""


def model_plugin(name: str, description: str) -> str:
    return MODEL_PLUGIN.format(name=name, description=description)


def test_builtins_first_then_third_party_by_distribution(tmp_path: Path, monkeypatch) -> None:
    # "aaa-..." sorts before "exptorch", yet the built-ins still load first.
    for dist, module in (("zzz-models", "zzz_plugin"), ("aaa-models", "aaa_plugin")):
        make_distribution(
            tmp_path / dist,
            dist,
            {module: module},
            {module: model_plugin("shared", f"from {dist}")},
        )
        monkeypatch.syspath_prepend(str(tmp_path / dist))
    plugins = load_plugins(environ={})
    order = [name for name, _ in plugins.pm.list_name_plugin()]
    assert order.index("quicknet") < order.index("aaa_plugin") < order.index("zzz_plugin")
    with pytest.raises(ExptError, match=r"'aaa_plugin' \(aaa-models\) and 'zzz_plugin'"):
        plugins.get("model", "shared")
    messages = {(p.plugin, p.message.split(";")[0]) for p in plugins.problems}
    assert (
        "zzz_plugin",
        "model 'shared' is already registered by plugin 'aaa_plugin' (aaa-models)",
    ) in messages


def test_disabling_a_builtin_lets_a_third_party_plugin_take_its_name(
    tmp_path: Path, monkeypatch
) -> None:
    site = make_distribution(
        tmp_path / "site",
        "better-quicknet",
        {"better": "better_plugin"},
        {"better_plugin": model_plugin("quicknet", "a better quicknet")},
    )
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ExptError, match=r"'quicknet' \(exptorch\) and 'better'"):
        load_plugins(environ={}).get("model", "quicknet")
    plugins = load_plugins(environ={"EXPT_DISABLE_PLUGINS": "quicknet"})
    reg = plugins.get("model", "quicknet")
    assert (reg.plugin, reg.description) == ("better", "a better quicknet")
    assert plugins.source("better").distribution == "better-quicknet"
    assert plugins.problems == []


def test_same_plugin_name_in_two_distributions_names_both(tmp_path: Path, monkeypatch) -> None:
    for dist in ("first-dist", "second-dist"):
        module = dist.replace("-", "_")
        make_distribution(
            tmp_path / dist, dist, {"twin": module}, {module: model_plugin(module, dist)}
        )
        monkeypatch.syspath_prepend(str(tmp_path / dist))
    plugins = load_plugins(environ={})
    assert plugins.source("twin").distribution == "first-dist"
    (problem,) = [p for p in plugins.problems if p.plugin == "twin"]
    assert str(problem) == (
        "plugin 'twin' (second-dist): not loaded: the name is already taken by first-dist"
    )


def test_trace_mode_in_the_cli(expt) -> None:
    result = expt("plugins", env={"EXPT_TRACE_HOOKS": "1"}, check=True)
    assert "register_models [hook]" in result.stderr
    assert "register_models" not in expt("plugins", check=True).stderr


# --- every hook, called through a plugin ------------------------------------------------------

COMMAND_PLUGIN = """
import click
from exptorch import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command("hello")
    @click.argument("who")
    def hello(who):
        \"\"\"Say hello.\"\"\"
        click.echo(f"hello {who}")

    @cli.command("optimizers")
    def optimizers():
        \"\"\"List the optimizers expt knows.\"\"\"
        from exptorch import current_plugins

        click.echo(" ".join(current_plugins().names("optimizer")))
"""

CALLBACK_ONLY_PLUGIN = """
from exptorch import Callback, Option, hookimpl

class Patience(Callback):
    def __init__(self, epochs):
        self.epochs = epochs

@hookimpl
def register_callbacks(register):
    register(
        "patience",
        lambda run, patience_epochs=None: Patience(patience_epochs) if patience_epochs else None,
        description="stop when the test loss stops improving",
        options=[Option("patience_epochs", None, "Epochs to wait.", int, minimum=1)],
    )
"""


def test_register_commands_adds_a_command(expt, tmp_path: Path) -> None:
    site = make_distribution(
        tmp_path / "site", "expt-hello", {"hello": "hello_plugin"}, {"hello_plugin": COMMAND_PLUGIN}
    )
    env = {"PYTHONPATH": search_path(site)}
    assert expt("hello", "world", env=env, check=True).stdout == "hello world\n"
    assert "hello" in expt("--help", env=env, check=True).stdout
    assert expt("hello", "world").returncode == 2  # not installed: no such command
    # a plugin's command reaches the registry through the public API
    assert expt("optimizers", env=env, check=True).stdout.split() == ["adam", "adamw", "sgd"]
    listed = json.loads(expt("plugins", "--json", env=env, check=True).stdout)
    row = next(r for r in listed["plugins"] if r["name"] == "hello")
    assert row["registered"] == {"command": ["hello", "optimizers"]}
    assert "commands:            hello, optimizers" in expt("plugins", env=env, check=True).stdout
    shown = expt("plugins", "show", "hello", env=env, check=True).stdout
    assert "command hello: Say hello." in shown


def test_a_plugin_that_only_adds_a_callback_is_listed_with_its_options(expt, tmp_path) -> None:
    site = make_distribution(
        tmp_path / "site", "expt-patience", {"patience": "patience_plugin"},
        {"patience_plugin": CALLBACK_ONLY_PLUGIN},
    )  # fmt: skip
    env = {"PYTHONPATH": search_path(site)}
    assert "callbacks:           patience" in expt("plugins", env=env, check=True).stdout
    shown = expt("plugins", "show", "patience", env=env, check=True).stdout
    assert "callback patience: stop when the test loss stops improving" in shown
    assert "--patience-epochs INTEGER" in shown
    bad = expt("run", "--dataset", "fashion-mnist-sample", "--patience-epochs", "0", env=env)
    assert bad.returncode == 1
    assert "--patience-epochs must be at least 1, not 0." in bad.stderr
    assert not (tmp_path / "runs").exists()


class EverythingPlugin:
    """A device, a dataset with an option and a checkpoint format, from one plugin."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def register_devices(self, register):
        def device(index):
            self.calls.append(f"device {index}")
            return torch.device("cpu")

        register("slowcpu", device, description="the CPU under another name")

    @hookimpl
    def register_datasets(self, register):
        def load(data_dir, download, stripes_count):
            from exptorch.testing import tiny_splits

            self.calls.append(f"dataset {stripes_count}")
            return tiny_splits(train=stripes_count, test=32)

        register("stripes", load, options=[Option("stripes_count", default=64, type=int)])

    @hookimpl
    def register_checkpoint_formats(self, register):
        register("pickled", PickledFormat)


class PickledFormat:
    suffix = ".pkl"

    def save(self, checkpoint: Checkpoint, path: Path) -> None:
        torch.save(dataclasses.asdict(checkpoint), path)

    def load(self, path: Path, *, map_location="cpu", trust=False) -> Checkpoint:
        return Checkpoint(**torch.load(path, map_location=map_location, weights_only=False))


def test_registration_hooks_for_devices_datasets_and_formats(tmp_path: Path) -> None:
    plugin = EverythingPlugin()
    plugins = make_plugins(("everything", plugin))
    run = run_expt(
        plugins, tmp_path, device="slowcpu", dataset="stripes", stripes_count=96,
        checkpoint_format="pickled", echo=lambda _: None,
    )  # fmt: skip
    assert "dataset 96" in plugin.calls and "device None" in plugin.calls
    config = json.loads((run / "config.json").read_text())
    assert config["device"] == "cpu" and config["config"]["options"]["stripes_count"] == 96
    checkpoint = load_checkpoint(plugins, run / "checkpoints" / "epoch-001.pkl")
    assert checkpoint.epoch == 1 and checkpoint.step == 2  # 96 images in batches of 64


class FlakyObserver:
    @hookimpl
    def epoch_end(self, run, epoch, metrics):
        raise ValueError("dashboard unreachable")

    @hookimpl
    def run_end(self, run, state, metrics):
        run.extras["ended"] = state


def test_lifecycle_hook_that_raises_is_reported_and_the_run_finishes(tmp_path, caplog) -> None:
    plugins = make_plugins(("flaky", FlakyObserver()))
    run = run_expt(plugins, tmp_path, model="quicknet", epochs=2, echo=lambda _: None)
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
    problems = [p for p in plugins.problems if p.plugin == "flaky"]
    assert len(problems) == 2  # once per epoch, each time with the plugin's name
    assert problems[0].message == "hook epoch_end raised ValueError: dashboard unreachable"
    assert "plugin 'flaky' (registered in code): hook epoch_end raised" in caplog.text


def test_current_plugins_outside_the_cli_loads_the_installed_ones() -> None:
    from exptorch import current_plugins

    plugins = current_plugins()  # no click context: a script or a notebook
    assert {"quicknet", "vgg16"} <= set(plugins.names("model"))
    assert "sgd" in plugins.names("optimizer")


def test_ctrl_c_while_plugins_load_ends_quietly(expt, tmp_path: Path) -> None:
    """A Ctrl-C that lands while the installed plugins are imported (the moment is forced: the
    plugin's import sends it) ends expt with 130 and one line, not a traceback or click's
    "Aborted!", whether they load to list the commands or to run one."""
    interrupting = "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n"
    site = make_distribution(
        tmp_path / "site",
        "expt-slow-plugin",
        {"slow": "slow_plugin"},
        {"slow_plugin": interrupting},
    )
    for command in (["--help"], ["plugins"]):
        result = expt(*command, env={"PYTHONPATH": search_path(site)})
        assert (result.returncode, result.stderr) == (130, "Interrupted.\n"), command


class Switches:
    @hookimpl
    def register_models(self, register):
        register(
            "switched",
            lambda info, **_: None,
            options=[
                Option("sw_on", default=True, is_flag=True, help="on unless turned off"),
                Option("sw_off", default=False, is_flag=True, help="off unless turned on"),
            ],
        )


def test_a_plugin_flag_is_an_on_off_switch_whatever_its_default(make_plugins) -> None:
    """A flag that defaults to on can be turned off (``--no-...``), and the best command of a
    sweep spells either value so that it trains the same model again."""
    import click

    from exptorch.cli import add_plugin_options
    from exptorch.sweep_report import run_command

    plugins = make_plugins(("switches", Switches()))
    command = click.Command("run", params=[])
    add_plugin_options(command, plugins, kinds=("model",))

    def parse(*args: str) -> dict[str, bool]:
        params = command.make_context("run", list(args)).params
        return {k: v for k, v in params.items() if k.startswith("sw_")}

    assert parse() == {"sw_on": True, "sw_off": False}
    assert parse("--no-sw-on", "--sw-off") == {"sw_on": False, "sw_off": True}
    assert parse("--sw-on", "--no-sw-off") == {"sw_on": True, "sw_off": False}
    spelled = run_command({}, {"sw-on": False, "sw-off": True}, None, plugins)
    assert spelled == "expt run --no-sw-on --sw-off"
    assert parse(*spelled.split()[2:]) == {"sw_on": False, "sw_off": True}
