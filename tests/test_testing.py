"""``exptorch.testing``: the helpers and fixtures plugin authors test their plugins with."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_plugins import make_distribution

from exptorch import DatasetInfo, ExptError, Splits, hookimpl
from exptorch.testing import TINY_DATASET, make_plugins, run_expt, tiny_splits


class TinyModelPlugin:
    """A model plugin with an option, as a plugin author would write one."""

    @hookimpl
    def register_models(self, register):
        from exptorch import Option

        register(
            "linear",
            self.build,
            description="one linear layer",
            options=[Option("linear_bias", default=True, is_flag=True, help="use a bias")],
        )

    @staticmethod
    def build(info: DatasetInfo, linear_bias: bool = True) -> torch.nn.Module:
        features = info.channels * info.height * info.width
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(features, info.num_classes, bias=linear_bias)
        )


@pytest.fixture
def expt_plugin():
    return ("tiny_model", TinyModelPlugin())


def test_tiny_splits_is_a_real_balanced_slice() -> None:
    splits = tiny_splits()
    assert isinstance(splits, Splits)
    assert splits.train_images.shape == (512, 1, 28, 28)
    assert splits.train_images.dtype == torch.uint8 and splits.train_labels.dtype == torch.int64
    assert splits.test_images.shape == (128, 1, 28, 28)
    assert set(splits.train_labels.tolist()) == set(range(10))
    assert splits.classes[0] == "T-shirt/top"
    assert splits.train_images.float().std() > 50  # real pictures, not blank


def test_expt_plugins_holds_builtins_tiny_dataset_and_the_plugin(expt_plugins) -> None:
    assert "linear" in expt_plugins.names("model") and "quicknet" in expt_plugins.names("model")
    assert TINY_DATASET in expt_plugins.names("dataset")
    assert expt_plugins.get("model", "linear").plugin == "tiny_model"
    assert expt_plugins.problems == []


def test_expt_run_returns_the_run_folder(expt_run) -> None:
    first = expt_run(model="linear", linear_bias=False, lr=0.1)
    second = expt_run(model="linear", epochs=2)
    assert (first.name, second.name) == ("run-1", "run-2")
    config = json.loads((first / "config.json").read_text())
    assert config["config"]["dataset"] == TINY_DATASET and config["device"] == "cpu"
    assert config["config"]["options"]["linear_bias"] is False
    assert (second / "checkpoints" / "epoch-002.pt").is_file()
    state = json.loads((second / "state.json").read_text())
    assert state["state"] == "finished" and state["epoch"] == 2


def test_expt_run_reports_user_mistakes(expt_run) -> None:
    with pytest.raises(ExptError, match=r"Unknown model 'nope'; available: .*linear"):
        expt_run(model="nope")
    with pytest.raises(TypeError, match=r"unknown expt run option\(s\) linear_bais; known: .*"):
        expt_run(model="linear", linear_bais=False)


def test_make_plugins_ignores_installed_third_party_plugins(tmp_path: Path, monkeypatch) -> None:
    site = make_distribution(
        tmp_path / "site",
        "someone-elses-plugins",
        {"elsewhere": "elsewhere_plugin"},
        {
            "elsewhere_plugin": """
                from exptorch import hookimpl

                @hookimpl
                def register_models(register):
                    register("elsewhere", lambda info: None)
            """
        },
    )
    monkeypatch.syspath_prepend(str(site))
    plugins = make_plugins(("tiny_model", TinyModelPlugin()))
    assert "elsewhere" not in plugins.names("model")
    assert {s.distribution for s in plugins.sources.values()} == {
        "exptorch",
        "registered in code",
    }


def test_make_plugins_registers_the_tiny_dataset_under_its_own_plugin_name() -> None:
    from exptorch.testing import TINY_DATASET

    assert make_plugins().get("dataset", TINY_DATASET).plugin == "tiny_dataset"


def test_make_plugins_without_builtins_and_strict_problems() -> None:
    plugins = make_plugins(("tiny_model", TinyModelPlugin()), builtins=False)
    assert plugins.names("model") == ["linear"] and plugins.names("device") == []

    class Broken:
        @hookimpl
        def register_models(self, register):
            raise RuntimeError("forgot an import")

    with pytest.raises(AssertionError) as info:
        make_plugins(("broken", Broken()), ("broken_too", Broken()))
    heading, *problems = str(info.value).splitlines()
    assert heading == "plugin problems:"  # then one indented line per problem
    assert [line.split(":")[0] for line in problems] == [
        "  plugin 'broken' (registered in code)",
        "  plugin 'broken_too' (registered in code)",
    ]
    assert all(line.endswith("RuntimeError: forgot an import") for line in problems)
    lenient = make_plugins(("broken", Broken()), strict=False)
    assert "quicknet" in lenient.names("model")  # registration hooks run lazily, here
    assert [p.plugin for p in lenient.problems] == ["broken"]


def test_run_expt_outside_pytest(tmp_path: Path) -> None:
    lines: list[str] = []
    plugins = make_plugins(("tiny_model", TinyModelPlugin()))
    run = run_expt(plugins, tmp_path / "runs", model="linear", echo=lines.append)
    assert run == tmp_path / "runs" / "run-1"
    assert lines[0].startswith(f"run {run}: linear (") and lines[-1].startswith("finished")


def test_fixtures_reach_a_plugin_authors_project(tmp_path: Path) -> None:
    """A separate project gets the fixtures through the pytest11 entry point, no import needed."""
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "my_plugin.py").write_text(
        textwrap.dedent(
            """
            import torch
            from exptorch import hookimpl

            def build(info):
                return torch.nn.Sequential(
                    torch.nn.Flatten(),
                    torch.nn.Linear(info.channels * info.height * info.width, info.num_classes),
                )

            @hookimpl
            def register_models(register):
                register("mine", build)
            """
        )
    )
    (project / "tests" / "conftest.py").write_text(
        "import pytest\nimport my_plugin\n\n\n"
        "@pytest.fixture\ndef expt_plugin():\n    return my_plugin\n"
    )
    (project / "tests" / "test_mine.py").write_text(
        textwrap.dedent(
            """
            def test_registered(expt_plugins):
                assert expt_plugins.get("model", "mine").plugin == "my_plugin"

            def test_trains(expt_run, expt_splits):
                run = expt_run(model="mine", limit_train_batches=2)
                assert (run / "checkpoints" / "epoch-001.pt").is_file()
                assert len(expt_splits.test_labels) == 128
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_importing_exptorch_testing_is_cheap() -> None:
    code = (
        "import sys, exptorch.testing;"
        "print(sorted(m for m in ('torch', 'torchvision', 'exptorch_plugins') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_plugins_names_a_module_by_its_last_part_and_an_object_by_its_class() -> None:
    import types

    def register_models(register: object) -> None:
        register("from-module", lambda info, **_: torch.nn.Identity())  # type: ignore[operator]

    module = types.ModuleType("my_package.plugins.extras")
    module.register_models = hookimpl(register_models)  # type: ignore[attr-defined]

    class Extras:
        @hookimpl
        def register_models(self, register: object) -> None:
            register("from-object", lambda info, **_: torch.nn.Identity())  # type: ignore[operator]

    plugins = make_plugins(module, Extras(), builtins=False, tiny_dataset=False)
    assert plugins.get("model", "from-module").plugin == "extras"
    assert plugins.get("model", "from-object").plugin == "Extras"


def test_resume_expt_takes_plugin_options_and_neither_draws_a_progress_bar(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """As `expt run --resume RUN --epochs 2 --adamw-beta2 0.99`: a plugin's option is an
    option like the others; and a test's output stays free of progress bars."""
    from exptorch.testing import resume_expt

    plugins = make_plugins()
    run = run_expt(plugins, tmp_path / "runs", echo=lambda _: None, optimizer="adamw")
    assert "epoch 1/1" not in capfd.readouterr().err
    resume_expt(plugins, run, echo=lambda _: None, epochs=2, adamw_beta2=0.99)
    assert "epoch 2/2" not in capfd.readouterr().err  # tqdm's bar would start so
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["epochs"], config["options"]["adamw_beta2"]) == (2, 0.99)


def test_tiny_splits_ignores_installed_third_party_plugins(tmp_path: Path, monkeypatch) -> None:
    """It never imports another package's plugin: a broken or slow one someone else
    installed cannot break or slow down a plugin author's tests."""
    imported = tmp_path / "imported"
    site = make_distribution(
        tmp_path / "site",
        "broken-plugins",
        {"broken": "broken_plugin"},
        {"broken_plugin": f"import pathlib\npathlib.Path({str(imported)!r}).touch()\n"
                          "raise ImportError('this plugin is broken')"},
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    splits = tiny_splits(16, 8)
    assert (len(splits.train_labels), len(splits.test_labels)) == (16, 8)
    assert not imported.exists()


def test_run_config_takes_one_logger_name_and_names_unknown_options() -> None:
    from exptorch.config import config_fields
    from exptorch.testing import run_config

    plugins = make_plugins()
    one = run_config(plugins, Path("runs"), logger="tensorboard")
    assert one.logger == ["tensorboard"]
    with pytest.raises(TypeError) as error:
        run_config(plugins, Path("runs"), epoch=2, bogus=1)
    known = sorted({f.name for f in config_fields()} | {o.name for _, o in plugins.options()})
    assert str(error.value) == (
        f"unknown expt run option(s) bogus, epoch; known: {', '.join(known)}"
    )
