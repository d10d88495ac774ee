"""Precision, memory format, compile, schedules, augmentation and recipes in real runs."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import pytest
import torch
from test_resume import StopAtStep, StopPlugin, assert_identical, config, resume

from exptorch import ExptError
from exptorch.config import RunConfig, read_recipe, recipe_names, resolve_config
from exptorch.rundir import read_metrics
from exptorch.train import RunInterrupted, run_experiment
from exptorch_plugins import schedules


def lr_factor(name: str, step: int, total: int) -> float:
    """The built-in schedule ``name``'s factor at ``step`` of ``total``."""
    return getattr(schedules, name)(total_steps=total, steps_per_epoch=total)(step)


def saved_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["config"]


def final_metrics(run: Path) -> dict:
    return [r for r in read_metrics(run / "metrics.jsonl") if "test_loss" in r][-1]


def test_auto_choices_are_resolved_and_recorded_for_cpu(plugins, tmp_path: Path) -> None:
    run = run_experiment(config(tmp_path, "auto", epochs=1), plugins, echo=lambda _: None)
    recorded = saved_config(run)
    assert recorded["precision"] == "fp32" and recorded["channels_last"] == "on"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_close_to_fp32(plugins, tmp_path: Path, precision: str) -> None:
    common = dict(epochs=1, limit_train_batches=10, limit_eval_batches=4)
    fp32 = run_experiment(config(tmp_path, "fp32", **common), plugins, echo=lambda _: None)
    low = run_experiment(
        config(tmp_path, precision, precision=precision, **common), plugins, echo=lambda _: None
    )
    assert saved_config(low)["precision"] == precision
    a, b = final_metrics(fp32), final_metrics(low)
    assert math.isfinite(b["test_loss"])
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=0.05)
    assert abs(b["test_accuracy"] - a["test_accuracy"]) < 0.05


def test_channels_last_changes_nothing_but_speed(plugins, tmp_path: Path) -> None:
    on = run_experiment(config(tmp_path, "on", channels_last="on"), plugins, echo=lambda _: None)
    off = run_experiment(config(tmp_path, "off", channels_last="off"), plugins, echo=lambda _: None)
    assert final_metrics(on)["test_loss"] == pytest.approx(
        final_metrics(off)["test_loss"], rel=1e-3
    )


def test_lr_schedules() -> None:
    assert lr_factor("constant", 50, 100) == 1.0
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert lr_factor("onecycle", 0, 100) == pytest.approx(0.1)
    assert lr_factor("onecycle", 25, 100) == pytest.approx(1.0)
    assert lr_factor("onecycle", 100, 100) == pytest.approx(0.001)
    ramp = [lr_factor("onecycle", s, 100) for s in range(0, 26)]
    assert ramp == sorted(ramp)


def test_schedule_is_applied_and_logged(plugins, tmp_path: Path) -> None:
    run = run_experiment(
        config(tmp_path, "cos", schedule="cosine", lr=0.02), plugins, echo=lambda _: None
    )
    lrs = [r["lr"] for r in read_metrics(run / "metrics.jsonl") if "lr" in r]
    # lr is read after the epoch's last step: 6 of 12 steps, then 12 of 12 (minus one).
    assert lrs[0] == pytest.approx(0.02 * lr_factor("cosine", 5, 12))
    assert lrs[1] == pytest.approx(0.02 * lr_factor("cosine", 11, 12))


def test_resume_is_exact_with_augmentation_schedule_and_smoothing(make_plugins, tmp_path) -> None:
    """Interrupted mid-epoch and resumed == straight through, with every recipe ingredient on.

    (A schedule spans ``--epochs``, so the interrupted run is set up for 2 epochs too.)
    """
    plugins = make_plugins(("stop", StopPlugin()))
    extra = dict(augment=True, schedule="onecycle", label_smoothing=0.1, precision="bf16")
    straight = run_experiment(config(tmp_path, "straight", **extra), plugins, echo=lambda _: None)
    StopAtStep.at = 8  # epoch 2, batch 2 of 6
    try:
        with pytest.raises(RunInterrupted):
            cut = config(tmp_path, "cut", logger=["stop-at-step"], **extra)
            run_experiment(cut, plugins, echo=lambda _: None)
    finally:
        StopAtStep.at = 0
    resumed = resume(plugins, tmp_path / "runs" / "cut")
    assert_identical(plugins, straight, resumed)


def test_recipe_sits_under_config_file_and_flags(tmp_path: Path) -> None:
    assert {"tutorial", "fast"} <= set(recipe_names())
    fast = read_recipe("fast")
    (tmp_path / "exp.toml").write_text('recipe = "fast"\nlr = 0.02\n')
    resolved = resolve_config(
        {"batch_size": 32}, explicit=["batch_size"], config_file=tmp_path / "exp.toml"
    )
    assert resolved.recipe == "fast"
    assert resolved.lr == 0.02  # the file beats the recipe
    assert resolved.batch_size == 32  # the flag beats both
    assert resolved.schedule == fast["schedule"] and resolved.augment is True
    assert RunConfig().schedule == "constant"  # no recipe: the tutorial's defaults
    with pytest.raises(ExptError, match="Unknown recipe 'best'; available: fast, tuned, tutorial"):
        resolve_config({"recipe": "best"}, explicit=["recipe"])


def test_expt_recipes_command(expt) -> None:
    out = expt("recipes", check=True).stdout
    assert "fast:" in out and "schedule=onecycle" in out and "tutorial:" in out
    assert "tuned: optimizer=adamw" in out


@pytest.mark.slow
def test_compiled_run_checkpoints_load_into_a_plain_model(plugins, tmp_path: Path) -> None:
    from exptorch.checkpoint import load_checkpoint
    from exptorch_plugins.networks import QuickNet

    run = run_experiment(
        config(tmp_path, "compiled", epochs=1, compile=True, limit_train_batches=3),
        plugins,
        echo=lambda _: None,
    )
    checkpoint = load_checkpoint(plugins, run / "checkpoints" / "epoch-001.pt")
    assert not any(k.startswith("_orig_mod.") for k in checkpoint.model_state)
    QuickNet(1, 28, 28, 10).load_state_dict(checkpoint.model_state)
    assert torch.isfinite(torch.tensor(final_metrics(run)["test_loss"]))


class NarrowShortcut:
    """A model with a 1x1 stride-2 convolution on 4 channels: the shape whose channels-last
    CPU backward crashed torch 2.14.1 ("double free or corruption")."""

    @staticmethod
    def factory(info, **_):
        from torch import nn

        side = (info.height + 1) // 2 * ((info.width + 1) // 2)
        return nn.Sequential(
            nn.Conv2d(info.channels, 4, 3, padding=1), nn.Conv2d(4, 8, 1, 2, bias=False),
            nn.Flatten(), nn.Linear(8 * side, len(info.classes)),
        )  # fmt: skip

    from exptorch import hookimpl as _hookimpl

    @_hookimpl
    def register_models(self, register):
        register("narrow", self.factory, description="a narrow strided 1x1 shortcut")


def test_channels_last_auto_on_cpu_only_for_models_that_declare_it_pays(
    make_plugins, tmp_path: Path
) -> None:
    plugins = make_plugins(("narrow", NarrowShortcut()))
    narrow = run_experiment(
        config(tmp_path, "narrow", epochs=1, model="narrow", momentum=0.0), plugins,
        echo=lambda _: None,
    )  # fmt: skip
    assert saved_config(narrow)["channels_last"] == "off"  # undeclared: off on a CPU
    from exptorch_plugins.quicknet import build

    assert build.channels_last_on_cpu is True  # measured (README, "Performance")


@pytest.mark.parametrize(
    ("device", "bf16", "declared", "chosen"),
    [
        ("cuda", True, False, ("bf16", "on")),
        ("cuda", False, False, ("fp16", "on")),
        ("cpu", True, False, ("fp32", "off")),
        ("cpu", True, True, ("fp32", "on")),
        ("mps", True, True, ("fp32", "off")),
    ],
)
def test_auto_precision_and_memory_format_are_each_devices_choice(
    monkeypatch: pytest.MonkeyPatch, device: str, bf16: bool, declared: bool, chosen: tuple
) -> None:
    """``auto``: bf16 on a GPU that has it, else fp16 there; fp32 elsewhere. Channels-last on a
    GPU, and on a CPU only for a model that declares it pays. Chosen values are kept."""
    from exptorch.assemble import resolve_speed
    from exptorch.plugins import Registration

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

    def factory() -> None: ...

    if declared:
        factory.channels_last_on_cpu = True  # type: ignore[attr-defined]
    model = Registration("model", "demo", factory, "demo")
    auto = resolve_speed(RunConfig(), torch.device(device), model)
    assert (auto.precision, auto.channels_last) == chosen
    assert resolve_speed(RunConfig(), torch.device(device)).channels_last == (
        "on" if device == "cuda" else "off"  # no model: nothing declared
    )
    kept = resolve_speed(RunConfig(precision="fp16", channels_last="off"), torch.device(device))
    assert (kept.precision, kept.channels_last) == ("fp16", "off")


def test_bf16_on_a_cpu_without_native_bf16_warns_once(plugins, tmp_path, monkeypatch, caplog):
    from exptorch import assemble

    monkeypatch.setattr(assemble, "cpu_features", lambda: {"fpu", "avx2", "fma"})  # AVX2 only
    run_experiment(config(tmp_path, "bf", epochs=1, precision="bf16"), plugins, echo=print)
    warnings = [(r.name, r.getMessage()) for r in caplog.records if r.levelname == "WARNING"]
    message = (
        "--precision bf16: this CPU has no AVX512-BF16 or AMX-BF16 instructions, so bf16 is "
        "emulated and typically several times slower than fp32 (13x measured on an AVX2-only "
        "EPYC); use --precision fp32 (the default on CPU)."
    )
    assert warnings == [("exptorch", message)]  # on the logger `expt` prints
    assert not assemble.warn_emulated_precision("bf16", {"avx2", "avx512f", "avx512_bf16"})
    assert assemble.warn_emulated_precision("fp16", {"avx2", "avx512f", "avx512_bf16"})
    assert not assemble.warn_emulated_precision("bf16", set())  # not an x86 CPU we can judge


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not Path("/proc/cpuinfo").exists(),
    reason="reads an x86 Linux CPU's flags",
)
def test_cpu_features_are_this_cpus_flags() -> None:
    from exptorch.assemble import cpu_features

    features = cpu_features()
    assert "sse2" in features  # every x86-64 CPU has it
    assert all(flag and ":" not in flag for flag in features)
