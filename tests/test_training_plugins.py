"""The open loop: optimizers, schedules, losses, transforms, metrics and callbacks as plugins.

Each built-in is checked for what it does to the tensors it touches, and every
registry through a real run with a test plugin registered the way a third-party
package would register it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from exptorch import Callback, DatasetInfo, ExptError, Metric, Option, hookimpl
from exptorch.assemble import build_optimizer, check_options_used, resolve_monitor
from exptorch.config import RunConfig, check_plugin_options
from exptorch.interrupts import RunInterrupted
from exptorch.plugins import Registration
from exptorch.rundir import read_metrics
from exptorch.runs import read_run, show_text
from exptorch.testing import make_plugins, resume_expt, run_expt, tiny_splits
from exptorch_plugins import losses, metrics, optimizers, schedules, transforms
from exptorch_plugins.networks import QuickNet

INFO = DatasetInfo(1, 28, 28, tuple("abcdefghij"), (0.5,), (0.25,))


def records(run: Path) -> list[dict[str, Any]]:
    return read_metrics(run / "metrics.jsonl")


def epochs(run: Path) -> list[dict[str, Any]]:
    return [r for r in records(run) if "test_loss" in r]


def saved_config(run: Path) -> dict[str, Any]:
    return json.loads((run / "config.json").read_text())["config"]


# --- optimizers ------------------------------------------------------------------------------


def test_optimizer_options_reach_the_torch_optimizer() -> None:
    model = QuickNet(1, 28, 28, 10)
    reg = make_plugins().get("optimizer", "sgd")
    config = RunConfig(lr=0.1, momentum=0.9, weight_decay=0.01, options={"sgd_nesterov": True})
    sgd = build_optimizer(reg, config, model)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["lr"] == 0.1 and sgd.param_groups[0]["weight_decay"] == 0.01


def test_momentum_reaches_only_an_optimizer_that_takes_it() -> None:
    model = QuickNet(1, 28, 28, 10)
    adam = make_plugins().get("optimizer", "adam")
    assert "momentum" not in build_optimizer(adam, RunConfig(), model).param_groups[0]
    with pytest.raises(ExptError) as caught:
        build_optimizer(adam, RunConfig(momentum=0.9), model)
    assert str(caught.value) == "--momentum does not apply to optimizer 'adam'; drop it."

    def takes_any(model: torch.nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), **kwargs)

    anything = Registration("optimizer", "any", takes_any, "demo")
    group = build_optimizer(anything, RunConfig(lr=0.2, momentum=0.5), model).param_groups[0]
    assert (group["lr"], group["momentum"], group["initial_lr"]) == (0.2, 0.5, 0.2)


def test_an_option_of_a_plugin_the_run_does_not_use_is_refused() -> None:
    """An option set away from its default belongs to a registration this run uses; one that
    two registrations share is fine with either."""
    shared = Option("demo_width", default=1)

    class Demo:
        @hookimpl
        def register_models(self, register: Any) -> None:
            register("wide", QuickNet, options=[shared])
            register("wider", QuickNet, options=[shared])

    plugins = make_plugins(("demo", Demo()))
    sgd, adam = plugins.get("optimizer", "sgd"), plugins.get("optimizer", "adam")
    wider = plugins.get("model", "wider")
    check_options_used(RunConfig(options={"sgd_nesterov": True}), plugins, [sgd])
    check_options_used(RunConfig(options={"sgd_nesterov": False}), plugins, [adam])  # default
    check_options_used(RunConfig(options={"demo_width": 2}), plugins, [wider])
    with pytest.raises(ExptError) as caught:
        check_options_used(RunConfig(options={"sgd_nesterov": True}), plugins, [adam])
    assert str(caught.value) == (
        "--sgd-nesterov belongs to optimizer 'sgd', which this run does not use; choose it "
        "(--optimizer sgd) or drop --sgd-nesterov."
    )
    with pytest.raises(ExptError) as caught:
        check_options_used(RunConfig(options={"demo_width": 2}), plugins, [sgd])
    assert str(caught.value) == (
        "--demo-width belongs to model 'wide' (or 1 more), which this run does not use; choose "
        "it (--model wide) or drop --demo-width."
    )


class Lower(Metric):
    higher_is_better = False


@pytest.mark.parametrize(
    ("monitor", "mode", "chosen"),
    [
        ("loss", "auto", ("test_loss", "min")),
        ("test_loss", "auto", ("test_loss", "min")),
        ("loss", "max", ("test_loss", "max")),
        ("accuracy", "auto", ("test_accuracy", "max")),
        ("test_accuracy", "auto", ("test_accuracy", "max")),
        ("top-error", "auto", ("test_top_error", "min")),
        ("top-error", "max", ("test_top_error", "max")),
    ],
)
def test_monitor_names_a_recorded_metric_and_its_better_direction(
    monitor: str, mode: str, chosen: tuple[str, str]
) -> None:
    recorded = {"test_accuracy": Metric(), "test_top_error": Lower()}
    assert resolve_monitor(RunConfig(monitor=monitor, monitor_mode=mode), recorded) == chosen


def test_monitor_of_a_metric_the_run_does_not_record_is_one_sentence() -> None:
    with pytest.raises(ExptError) as caught:
        resolve_monitor(
            RunConfig(monitor="f1"), {"test_accuracy": Metric(), "test_top_error": Lower()}
        )
    assert str(caught.value) == (
        "--monitor 'f1' is not a metric this run records; available: loss, accuracy, top_error "
        "(add others with --metric)."
    )


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_each_optimizer_decays_every_weight_unless_told_to_spare_biases_and_norms(
    name: str,
) -> None:
    """`--weight-decay` reaches every optimizer; `--NAME-no-decay-norm-bias` spares exactly
    the one-dimensional parameters."""
    model = QuickNet(1, 28, 28, 10)
    factory = getattr(optimizers, name)
    (every,) = factory(model, lr=0.001, weight_decay=0.05).param_groups
    assert every["weight_decay"] == 0.05 and len(every["params"]) == len(list(model.parameters()))
    split = factory(model, lr=0.001, weight_decay=0.05, **{f"{name}_no_decay_norm_bias": True})
    decay, no_decay = split.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_adam_and_adamw_take_their_betas_and_learning_rate(name: str, kind: type) -> None:
    betas = {f"{name}_beta1": 0.8, f"{name}_beta2": 0.95}
    optimizer = getattr(optimizers, name)(
        QuickNet(1, 28, 28, 10), lr=0.002, weight_decay=0.0, **betas
    )
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, kind) and (group["betas"], group["lr"]) == ((0.8, 0.95), 0.002)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_betas_default_to_torchs_and_stay_below_one(name: str) -> None:
    """--NAME-beta1/2: torch's defaults when not given, a float each, explained in --help, and
    refused outside [0, 0.999999] before the run starts (1.0 would never forget)."""
    reg = make_plugins().get("optimizer", name)
    declared = {o.name: o for o in reg.options}
    beta1, beta2 = declared[f"{name}_beta1"], declared[f"{name}_beta2"]
    assert (beta1.type, beta2.type) == (float, float)
    assert (beta1.help, beta2.help) == (
        "Decay of the gradient average.", "Decay of the squared-gradient average."
    )  # fmt: skip
    group = build_optimizer(reg, RunConfig(), QuickNet(1, 28, 28, 10)).param_groups[0]
    assert group["betas"] == (0.9, 0.999)
    for value in (0.0, 0.999999):
        check_plugin_options(
            RunConfig(options={beta1.name: value, beta2.name: value}), [beta1, beta2]
        )
    for option in (beta1, beta2):
        flag = f"--{option.name.replace('_', '-')}"
        for value, bound in ((-0.1, "at least 0"), (1.0, "at most 0.999999")):
            with pytest.raises(ExptError) as caught:
                check_plugin_options(RunConfig(options={option.name: value}), [option])
            assert str(caught.value) == f"{flag} must be {bound}, not {value}."


def test_momentum_is_refused_for_an_optimizer_without_it(tmp_path: Path) -> None:
    with pytest.raises(ExptError, match="--momentum does not apply to optimizer 'adam'"):
        run_expt(make_plugins(), tmp_path / "runs", optimizer="adam", momentum=0.9)
    assert not (tmp_path / "runs").exists()


def test_a_run_records_its_optimizers_options_and_no_other_plugins(tmp_path: Path) -> None:
    run = run_expt(
        make_plugins(), tmp_path / "runs", optimizer="adam", lr=0.002, adam_beta2=0.99,
        echo=lambda _: None,
    )  # fmt: skip
    options = saved_config(run)["options"]
    assert options["adam_beta2"] == 0.99 and options["adam_beta1"] == 0.9
    assert not any(k.startswith(("sgd_", "adamw_", "vgg16_", "folder_", "wandb_")) for k in options)
    assert epochs(run)[0]["lr"] == pytest.approx(0.002)


# --- schedules -------------------------------------------------------------------------------


def test_step_schedule_decays_at_each_milestone_epoch() -> None:
    factor = schedules.step(steps_per_epoch=10, step_milestones="2,4", step_gamma=0.5)
    assert [factor(s) for s in (0, 9, 10, 29, 30, 45)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(ExptError, match="increasing epoch numbers"):
        schedules.step(steps_per_epoch=10, step_milestones="4,2")
    with pytest.raises(ExptError, match="needs --step-milestones"):
        schedules.step(steps_per_epoch=10)


def test_schedules_at_their_edges() -> None:
    """A one-step run, steps past the planned end (a run resumed with more epochs), milestone
    epoch 1 (decay from the start), and the whole sentence of each bad milestone list."""
    cosine = schedules.cosine(total_steps=1)
    assert [cosine(0), cosine(1), cosine(5)] == pytest.approx([1.0, 0.0, 0.0])
    onecycle = schedules.onecycle(total_steps=1)
    assert [onecycle(1), onecycle(5)] == pytest.approx([0.001, 0.001])
    from_the_start = schedules.step(steps_per_epoch=10, step_milestones="1", step_gamma=0.5)
    assert [from_the_start(0), from_the_start(10)] == [0.5, 0.5]
    bad = {
        "3,x": "--step-milestones must be epoch numbers separated by commas (3,4), not '3,x'.",
        "0,2": "--step-milestones must be increasing epoch numbers from 1 on (3,4), not '0,2'.",
        "": "--schedule step needs --step-milestones, the epochs to decay at (3,4).",
    }
    for text, sentence in bad.items():
        with pytest.raises(ExptError) as caught:
            schedules.step(steps_per_epoch=10, step_milestones=text)
        assert str(caught.value) == sentence


class StepTrace(Callback):
    """Keeps each step's learning rate and training loss, as the loop hands them over."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.losses: dict[int, float] = {}

    def on_step_end(self, run: Any, step: int, loss: float) -> None:
        self.lrs.append(run.lr)
        self.losses[step] = loss


class TracePlugin:
    def __init__(self, callback: Callback) -> None:
        self.callback = callback

    @hookimpl
    def register_callbacks(self, register: Any) -> None:
        register("trace", lambda run: self.callback)


def test_warmup_ramps_up_any_schedule_in_a_real_run(tmp_path: Path) -> None:
    trace = StepTrace()
    plugins = make_plugins(("trace", TracePlugin(trace)))
    run_expt(
        plugins, tmp_path / "runs", epochs=2, lr=0.1, schedule="step", step_milestones="2",
        warmup=0.25, echo=lambda _: None,
    )  # fmt: skip
    assert len(trace.lrs) == 16  # 2 epochs of 8 steps; 4 of them warm up
    assert trace.lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert trace.lrs[4:8] == pytest.approx([0.1] * 4)
    assert trace.lrs[8:] == pytest.approx([0.01] * 8)  # milestone epoch 2, gamma 0.1


def test_train_loss_is_the_mean_of_each_window_of_steps(tmp_path: Path) -> None:
    """``train_loss`` is the mean of the last ``--log-every`` steps' losses; the steps left at
    the epoch's end (7 and 8 of 8 here) are the epoch record's ``train_loss``."""
    trace = StepTrace()
    plugins = make_plugins(("trace", TracePlugin(trace)))
    run = run_expt(plugins, tmp_path / "runs", epochs=1, log_every=3, echo=lambda _: None)
    losses = trace.losses
    assert sorted(losses) == list(range(1, 9))
    logged = [r["train_loss"] for r in read_metrics(run / "metrics.jsonl") if "train_loss" in r]
    windows = [(1, 2, 3), (4, 5, 6), (7, 8)]
    assert logged == pytest.approx([sum(losses[s] for s in w) / len(w) for w in windows])


class FailsAtTheEnd(Callback):
    def on_run_end(self, run: Any, state: str, metrics: Any) -> None:
        raise OSError("dashboard unreachable")


def test_a_callback_failing_at_the_run_end_is_logged_and_the_run_still_finishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugins = make_plugins(("late", TracePlugin(FailsAtTheEnd())))
    run = run_expt(plugins, tmp_path / "runs", epochs=1, echo=lambda _: None)
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["a callback failed in on_run_end: OSError: dashboard unreachable"]


# --- loss and transforms ---------------------------------------------------------------------


def test_cross_entropy_takes_class_probabilities() -> None:
    loss = losses.cross_entropy(label_smoothing=0.0)
    logits = torch.randn(4, 10)
    labels = torch.tensor([1, 2, 3, 4])
    hard = loss(logits, labels)
    assert loss(logits, torch.nn.functional.one_hot(labels, 10).float()) == pytest.approx(hard)
    assert losses.cross_entropy(label_smoothing=0.2)(logits, labels) != pytest.approx(hard)


def test_crop_flip_pads_with_black_and_is_reproducible() -> None:
    transform = transforms.crop_flip(INFO, crop_flip_padding=4)
    white = torch.full((64, 1, 28, 28), (1 - 0.5) / 0.25)
    labels = torch.arange(64) % 10
    out, targets = transform(white, labels, torch.Generator().manual_seed(3))
    black = (0 - 0.5) / 0.25
    assert torch.equal(targets, labels)
    assert set(out.unique().tolist()) == {black, (1 - 0.5) / 0.25}  # image and black padding
    assert (out == black).any(dim=(1, 2, 3)).float().mean() > 0.5  # most images were shifted
    again, _ = transform(white, labels, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_crop_flip_pads_each_channel_with_its_black_and_keeps_the_batchs_layout() -> None:
    info = DatasetInfo(3, 8, 8, tuple("ab"), (0.2, 0.4, 0.6), (0.5, 0.25, 0.125))
    with pytest.raises(ExptError, match=r"--crop-flip-padding 8 must be smaller than the images"):
        transforms.crop_flip(info, crop_flip_padding=8)
    transform = transforms.crop_flip(info, crop_flip_padding=7)
    white = [(1 - m) / s for m, s in zip(info.mean, info.std, strict=True)]
    black = [-m / s for m, s in zip(info.mean, info.std, strict=True)]
    images = torch.tensor(white).view(1, 3, 1, 1).expand(32, 3, 8, 8)
    for dtype, layout in ((torch.float16, torch.channels_last), (torch.float32, None)):
        batch = images.to(dtype).contiguous(memory_format=layout or torch.contiguous_format)
        out, _ = transform(batch, torch.zeros(32), torch.Generator().manual_seed(0))
        assert out.dtype == dtype
        assert out.is_contiguous(memory_format=layout or torch.contiguous_format)
        for c in range(3):  # every pixel is the image's white or the channel's own black
            near = [(out[:, c].float() - v).abs() < 0.01 for v in (white[c], black[c])]
            assert (near[0] | near[1]).all() and near[1].any()
    out, _ = transform(images, torch.zeros(32), torch.Generator().manual_seed(0))
    assert out.is_contiguous()  # an expanded (not contiguous) batch comes out contiguous
    columns = (out[:, 0] > 0).any(dim=1).sum(dim=1)  # columns with some of the image left
    assert columns.min() <= 2  # shifted by 6 or 7 pixels: the padding asked for, not 4


def test_mixup_blends_images_and_targets_alike() -> None:
    transform = transforms.mixup(INFO, mixup_alpha=1.0)
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 28, 28)
    labels = torch.arange(8)
    out, targets = transform(images, labels, torch.Generator().manual_seed(0))
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(dim=1), torch.ones(8))
    assert transforms.soft_targets(targets, 10) is targets  # probabilities pass as they are
    lam = targets.max(dim=1).values[0].item()
    # each image is lam * itself + (1 - lam) * its partner; targets say who the partner is
    for i in range(8):
        weights = targets[i]
        expected = sum(weights[c] * images[c] for c in range(8))
        assert torch.allclose(out[i], expected, atol=1e-5)
    assert 0 < lam <= 1


def test_mixing_weights_are_fresh_draws_from_beta_alpha_alpha() -> None:
    """Each batch's weight is a new Beta(alpha, alpha) draw: thousands of batches give
    thousands of weights (not a handful repeating), spread as Beta's mean and variance say."""
    generator = torch.Generator().manual_seed(0)
    weights = [transforms.beta(0.5, generator) for _ in range(4000)]
    assert len(set(weights)) == 4000
    draws = torch.tensor(weights, dtype=torch.float64)
    assert draws.mean().item() == pytest.approx(0.5, abs=0.02)
    assert draws.var().item() == pytest.approx(0.125, abs=0.01)  # a*a / ((2a)^2 (2a+1))


def test_cutmix_mixes_targets_by_pasted_area_and_refuses_tiny_images() -> None:
    transform = transforms.cutmix(INFO, cutmix_alpha=1.0)
    images = torch.zeros(8, 1, 28, 28)
    images[4:] = 1.0
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out, targets = transform(images, labels, torch.Generator().manual_seed(5))
    for i in range(8):  # the share of pixels from class 1 equals the class-1 target weight
        share = out[i].mean().item()
        assert targets[i, 1].item() == pytest.approx(share, abs=1e-6)
    tiny = DatasetInfo(1, 1, 1, tuple("ab"), (0.5,), (0.25,))
    with pytest.raises(ExptError, match="cutmix needs images of at least 2x2 pixels"):
        transforms.cutmix(tiny)


@pytest.mark.parametrize("name", ["crop-flip", "mixup", "cutmix"])
def test_transforms_draw_only_from_the_generator_they_are_given(name: str) -> None:
    # what makes a resumed run transform its remaining batches as the first run did
    transform = make_plugins().get("transform", name).factory(INFO)
    images, labels = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    torch.manual_seed(0)
    first = transform(images, labels, torch.Generator().manual_seed(7))
    torch.manual_seed(1)
    again = transform(images, labels, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_cutmix_pastes_a_box_of_the_drawn_area_centred_anywhere() -> None:
    transform = transforms.cutmix(INFO, cutmix_alpha=1e6)  # lam ~ 0.5: a 19-pixel cut
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 28, 28)
    pasted = torch.stack(  # one box per batch, at a new place in each batch
        [
            (
                transform(images, torch.arange(8), torch.Generator().manual_seed(seed))[0] != images
            ).any(dim=(0, 1))
            for seed in range(64)
        ]
    )
    assert pasted.sum(dim=(1, 2)).max() == 18 * 18  # 19 // 2 each side of the centre
    assert pasted.any(dim=0).all()  # the first and last rows and columns included


def test_cutmix_needs_both_sides_of_two_pixels_or_more() -> None:
    for height, width in ((1, 5), (5, 1)):
        with pytest.raises(ExptError, match=f"this dataset's are {height}x{width}"):
            transforms.cutmix(DatasetInfo(1, height, width, tuple("ab"), (0.5,), (0.25,)))
    two = transforms.cutmix(DatasetInfo(1, 2, 2, tuple("ab"), (0.5,), (0.25,)))
    out, _ = two(torch.zeros(4, 1, 2, 2), torch.arange(4) % 2, torch.Generator())
    assert out.shape == (4, 1, 2, 2)


class TinyImages:
    """A 1x1-pixel dataset and a linear model that accepts it."""

    @hookimpl
    def register_datasets(self, register: Any) -> None:
        def load(**_: Any) -> Any:
            splits = tiny_splits(128, 64)
            splits.train_images = splits.train_images[:, :, :1, :1].clone()
            splits.test_images = splits.test_images[:, :, :1, :1].clone()
            return splits

        register("one-pixel", load)

    @hookimpl
    def register_models(self, register: Any) -> None:
        def build(info: DatasetInfo, **_: Any) -> torch.nn.Module:
            size = info.channels * info.height * info.width
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size, info.num_classes))

        register("linear", build)


def test_a_transform_that_does_not_fit_the_data_writes_nothing(tmp_path: Path) -> None:
    plugins = make_plugins(("tiny-images", TinyImages()))
    with pytest.raises(ExptError, match="cutmix needs images of at least 2x2"):
        run_expt(
            plugins, tmp_path / "runs", dataset="one-pixel", model="linear", transform=["cutmix"]
        )
    assert not (tmp_path / "runs").exists()


def test_transforms_reach_training_but_never_the_test_split(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Spy(Callback):
        def on_before_optimizer_step(self, run: Any, step: int) -> None:
            seen.setdefault("grads", all(p.grad is not None for p in run.model.parameters()))

    class SpyPlugin(TracePlugin):
        @hookimpl
        def register_transforms(self, register: Any) -> None:
            def build(info: DatasetInfo, **_: Any) -> Any:
                def transform(images: Any, targets: Any, generator: Any) -> Any:
                    seen["train_shape"] = tuple(images.shape)
                    return images, transforms.soft_targets(targets, info.num_classes)

                return transform

            register("spy", build)

    plugins = make_plugins(("spy", SpyPlugin(Spy())))
    run = run_expt(plugins, tmp_path / "runs", transform=["spy"], echo=lambda _: None)
    assert seen == {"train_shape": (64, 1, 28, 28), "grads": True}
    assert saved_config(run)["transform"] == ["spy"]


def test_each_batch_of_each_epoch_transforms_with_its_own_generator(tmp_path: Path) -> None:
    """A transform draws from `batch_generator(seed, epoch, batch, rank)`: a new generator for
    every batch of every epoch, made from the run's seed (so a resumed run draws the same)."""
    from exptorch.loop import batch_generator

    drawn: list[int] = []

    def record(images: Any, targets: Any, generator: Any) -> Any:
        drawn.append(generator.initial_seed())
        return images, targets

    class RecordingPlugin:
        @hookimpl
        def register_transforms(self, register: Any) -> None:
            register("record", lambda info, **_: record)

    run_expt(
        make_plugins(("record", RecordingPlugin())), tmp_path / "runs", transform=["record"],
        epochs=2, seed=5, limit_train_batches=3, echo=lambda _: None,
    )  # fmt: skip
    expected = [
        batch_generator(5, epoch, batch).initial_seed() for epoch in (1, 2) for batch in range(3)
    ]
    assert drawn == expected and len(set(drawn)) == 6


def test_batch_generators_differ_for_every_seed_epoch_batch_and_rank() -> None:
    from exptorch.loop import batch_generator

    keys = [
        (seed, epoch, batch, rank)
        for seed in (0, 1, 2**31 - 1)
        for epoch in (1, 2, 3)
        for batch in range(50)
        for rank in (0, 1)
    ]
    assert len({batch_generator(*key).initial_seed() for key in keys}) == len(keys)


# --- metrics and --monitor -------------------------------------------------------------------


def test_macro_f1_and_top_k_against_hand_computed_values() -> None:
    # 3 classes; predictions 0,0,1,2,2,2 for labels 0,1,1,2,2,0
    logits = torch.eye(3)[[0, 0, 1, 2, 2, 2]]
    labels = torch.tensor([0, 1, 1, 2, 2, 0])
    f1 = metrics.MacroF1(3)
    f1.reset(torch.device("cpu"))
    f1.update(logits[:3], labels[:3])
    f1.update(logits[3:], labels[3:])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp1 fp0 fn1 -> 2/3; class 2: tp2 fp1 fn0 -> 0.8
    assert f1.compute(f1.sums()) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    top2 = metrics.TopK(2)
    top2.reset(torch.device("cpu"))
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    top2.update(scores, torch.tensor([1, 2, 0]))
    assert top2.compute(top2.sums()) == pytest.approx(2 / 3)


def test_metrics_reach_metrics_jsonl_state_and_monitor_chooses_the_best(tmp_path: Path) -> None:
    run = run_expt(
        make_plugins(), tmp_path / "runs", epochs=3, lr=0.05, metric=["top5", "macro-f1"],
        monitor="loss", keep="best", echo=lambda _: None,
    )  # fmt: skip
    rows = epochs(run)
    assert all({"test_top5", "test_macro_f1", "test_accuracy"} <= set(r) for r in rows)
    assert all(r["test_top5"] >= r["test_accuracy"] for r in rows)
    shown = show_text(read_run(run)).splitlines()
    header = next(line for line in shown if line.startswith("epoch"))
    assert header.split()[5:7] == ["test_top5", "test_macro_f1"]  # expt runs show has them
    state = json.loads((run / "state.json").read_text())
    losses_ = [r["test_loss"] for r in rows]
    best_epoch = losses_.index(min(losses_)) + 1
    assert state["best_metric"] == "test_loss" and state["best_value"] == min(losses_)
    assert state["best_checkpoint"] == f"epoch-{best_epoch:03d}.pt"
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == sorted({f"epoch-{best_epoch:03d}.pt", "epoch-003.pt"})


class Clash:
    @hookimpl
    def register_metrics(self, register: Any) -> None:
        register("top5", lambda info: metrics.TopK(5))


class ConstantMetric(Metric):
    higher_is_better = False

    def reset(self, device: Any) -> None:
        pass

    def update(self, logits: Any, labels: Any) -> None:
        pass

    def sums(self) -> Any:
        return torch.zeros(1)

    def compute(self, sums: Any) -> float:
        return 0.25


class LossNamedMetric:
    @hookimpl
    def register_metrics(self, register: Any) -> None:
        register("loss", lambda info: ConstantMetric())
        register("quarter", lambda info: ConstantMetric())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimizer": "lion"}, "Unknown optimizer 'lion'; available: adam, adamw, sgd."),
        ({"schedule": "linear"}, "Unknown schedule 'linear'; available: constant, cosine,"),
        ({"loss": "focal"}, "Unknown loss 'focal'; available: cross-entropy."),
        ({"transform": ["flip"]}, "Unknown transform 'flip'; available: crop-flip, cutmix, mixup."),
        ({"metric": ["auc"]}, "Unknown metric 'auc'; available: accuracy, macro-f1, top5."),
        (
            {"monitor": "top5"},
            "--monitor 'top5' is not a metric this run records; available: "
            "loss, accuracy (add others with --metric).",
        ),
        ({"sgd_nesterov": True, "optimizer": "adam"}, "--sgd-nesterov belongs to optimizer 'sgd'"),
        ({"mixup_alpha": 0.5}, "--mixup-alpha belongs to transform 'mixup', which this run"),
        ({"step_gamma": 2.0}, "--step-gamma must be at most 1, not 2.0."),
        ({"mixup_alpha": float("nan"), "transform": ["mixup"]}, "--mixup-alpha must be a finite"),
        ({"warmup": 1.5}, "--warmup is a fraction of all steps below 1"),
        ({"sgd_nesterov": True}, "--sgd-nesterov needs --momentum above 0"),
    ],
)
def test_bad_choices_are_one_sentence_and_write_nothing(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ExptError) as caught:
        run_expt(make_plugins(), tmp_path / "runs", **options)
    assert message in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_metric_name_clashes_are_refused(tmp_path: Path) -> None:
    plugins = make_plugins(("clash", Clash()), strict=False)
    with pytest.raises(ExptError, match="metric 'top5' is registered by more than one plugin"):
        run_expt(plugins, tmp_path / "runs", metric=["top5"])
    plugins = make_plugins(("loss-named", LossNamedMetric()))
    with pytest.raises(ExptError, match="would be recorded as test_loss, which exptorch itself"):
        run_expt(plugins, tmp_path / "runs", metric=["loss"])
    assert not (tmp_path / "runs").exists()
    run = run_expt(plugins, tmp_path / "runs", metric=["quarter"], monitor="quarter", epochs=2)
    state = json.loads((run / "state.json").read_text())
    assert state["best_value"] == 0.25 and state["best_checkpoint"] == "epoch-001.pt"  # min


# --- callbacks -------------------------------------------------------------------------------


class Counter(Callback):
    """Counts steps (state that must survive --resume), logs extras, stops early on request."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.steps = 0
        self.kill_at = 0

    def on_step_end(self, run: Any, step: int, loss: float) -> None:
        self.steps += 1
        if step % self.every == 0:
            run.log({"counted_steps": self.steps})
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGINT)

    def on_evaluate_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        metrics["evaluated_epoch"] = epoch

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]


class CounterPlugin:
    """A plugin that only adds a callback with its own validated option."""

    def __init__(self) -> None:
        self.made: list[Counter] = []
        self.kill_at = 0

    @hookimpl
    def register_callbacks(self, register: Any) -> None:
        def build(run: Any, counter_every: int | None = None) -> Counter | None:
            if counter_every is None:
                return None
            counter = Counter(counter_every)
            counter.kill_at = self.kill_at
            self.made.append(counter)
            return counter

        register(
            "counter", build, description="counts steps",
            options=(Option("counter_every", None, "Log every N steps.", int, minimum=1),),
        )  # fmt: skip

    @hookimpl
    def epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        metrics["from_epoch_end"] = 10.0 * epoch


@pytest.mark.parametrize(
    "training",
    [
        {"transform": ["crop-flip", "mixup"], "schedule": "cosine"},
        {"transform": ["cutmix"], "schedule": "step", "step_milestones": "2", "warmup": 0.2},
        {"optimizer": "adamw", "schedule": "onecycle", "adamw_no_decay_norm_bias": True},
    ],
    ids=["crop-flip+mixup+cosine", "cutmix+step+warmup", "adamw+onecycle"],
)
def test_callback_state_survives_resume_and_extra_metrics_reach_every_record(
    tmp_path: Path, training: dict[str, Any]
) -> None:
    """Killed mid-epoch and resumed == straight through, bit for bit, with a stateful callback."""
    plugin = CounterPlugin()
    plugins = make_plugins(("counter", plugin))
    options = dict(epochs=2, counter_every=3, **training)
    straight = run_expt(plugins, tmp_path / "runs", name="straight", echo=lambda _: None, **options)
    assert plugin.made[-1].steps == 16
    plugin.kill_at = 11  # epoch 2, mid-epoch
    with pytest.raises(RunInterrupted):
        run_expt(plugins, tmp_path / "runs", name="cut", echo=lambda _: None, **options)
    plugin.kill_at = 0
    resumed = resume_expt(plugins, tmp_path / "runs" / "cut", echo=lambda _: None)
    assert plugin.made[-1].steps == 16  # 11 before, 5 after: the state came back
    assert records(resumed) == records(straight) or _same_but_time(resumed, straight)
    rows = records(straight)
    assert [r["counted_steps"] for r in rows if "counted_steps" in r] == [3, 6, 9, 12, 15]
    assert [r["evaluated_epoch"] for r in epochs(straight)] == [1, 2]
    assert [r["from_epoch_end"] for r in epochs(straight)] == [10.0, 20.0]
    a = torch.load(straight / "checkpoints" / "epoch-002.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "epoch-002.pt", weights_only=True)
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    assert b["extra"]["callbacks"]["counter"] == {"steps": 16}


def _same_but_time(a: Path, b: Path) -> bool:
    timing = ("images_per_second", "epoch_time")

    def clean(run: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in timing} for r in records(run)]

    return clean(a) == clean(b)


def test_a_callback_option_is_validated_and_off_by_default(tmp_path: Path) -> None:
    plugin = CounterPlugin()
    plugins = make_plugins(("counter", plugin))
    with pytest.raises(ExptError, match="--counter-every must be at least 1, not 0"):
        run_expt(plugins, tmp_path / "runs", counter_every=0)
    run_expt(plugins, tmp_path / "runs", echo=lambda _: None)
    assert plugin.made == []


def test_eval_model_set_by_a_callback_is_what_evaluation_uses(tmp_path: Path) -> None:
    class AlwaysClassZero(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(len(x), 10)
            logits[:, 0] = 1
            return logits

    class Swap(Callback):
        def on_run_start(self, run: Any) -> None:
            run.eval_model = AlwaysClassZero()

    run = run_expt(make_plugins(("swap", TracePlugin(Swap()))), tmp_path / "runs")
    share_of_zero = float((tiny_splits().test_labels == 0).float().mean())
    assert epochs(run)[0]["test_accuracy"] == pytest.approx(share_of_zero)


class ThirdParty(Callback):
    """An optimizer, schedule, loss and early-stopping callback, all from one outside plugin."""

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.best = float("inf")

    @hookimpl
    def register_optimizers(self, register: Any) -> None:
        def sign_sgd(model: torch.nn.Module, *, lr: float, weight_decay: float) -> Any:
            class SignSGD(torch.optim.SGD):
                @torch.no_grad()
                def step(self, closure: Any = None) -> Any:
                    for group in self.param_groups:
                        for p in group["params"]:
                            if p.grad is not None:
                                p.grad.sign_()
                    return super().step(closure)

            return SignSGD([p for p in model.parameters() if p.requires_grad], lr=lr)

        register("sign-sgd", sign_sgd, description="SGD on the gradients' signs")

    @hookimpl
    def register_schedules(self, register: Any) -> None:
        register("halving", lambda *, steps_per_epoch, **_: lambda s: 0.5 ** (s // steps_per_epoch))

    @hookimpl
    def register_losses(self, register: Any) -> None:
        def squared(**_: Any) -> Any:
            def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
                probs = logits.softmax(dim=1)
                return ((probs - transforms.soft_targets(targets, probs.shape[1])) ** 2).mean()

            return loss

        register("squared", squared)

    @hookimpl
    def register_callbacks(self, register: Any) -> None:
        register("stop-when-worse", lambda run: self)

    def on_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        if metrics["test_loss"] >= self.best:
            run.request_stop(f"test loss stopped improving at epoch {epoch}")
        self.best = min(self.best, metrics["test_loss"])
        if epoch == 2:  # a forced stop, whatever the loss did
            run.request_stop("two epochs are enough")

    def on_run_end(self, run: Any, state: str, metrics: Any) -> None:
        self.ended.append(state)


def test_a_third_party_optimizer_schedule_loss_and_early_stop(tmp_path: Path) -> None:
    plugin = ThirdParty()
    plugins = make_plugins(("outside", plugin))
    run = run_expt(
        plugins, tmp_path / "runs", epochs=4, optimizer="sign-sgd", lr=0.001,
        schedule="halving", loss="squared", echo=lambda _: None,
    )  # fmt: skip
    rows = epochs(run)
    assert [r["lr"] for r in rows] == pytest.approx([0.001, 0.0005][: len(rows)])
    state = json.loads((run / "state.json").read_text())
    assert state["state"] == "stopped" and len(rows) <= 2
    assert plugin.ended == ["stopped"]
    assert saved_config(run)["loss"] == "squared"


class SharedOption:
    """Two models declaring one option, as a family of models does (tv-resnet18, tv-resnet34)."""

    @hookimpl
    def register_models(self, register: Any) -> None:
        def build(info: DatasetInfo, fam_width: int = 8) -> torch.nn.Module:
            size = info.channels * info.height * info.width
            return torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(size, fam_width), torch.nn.ReLU(),
                torch.nn.Linear(fam_width, info.num_classes),
            )  # fmt: skip

        width = Option("fam_width", 8, "Hidden units.", int, minimum=1)
        register("fam-small", build, options=[width])
        register("fam-large", build, options=[width])


def test_an_option_shared_by_registrations_belongs_to_each(tmp_path: Path) -> None:
    plugins = make_plugins(("family", SharedOption()))
    run = run_expt(plugins, tmp_path / "runs", model="fam-large", fam_width=16, echo=lambda _: None)
    assert saved_config(run)["options"]["fam_width"] == 16
    with pytest.raises(ExptError, match=r"--fam-width belongs to model 'fam-small' \(or 1 more\)"):
        run_expt(plugins, tmp_path / "runs", fam_width=16)


def test_each_builtin_factory_defaults_to_the_options_documented_default() -> None:
    """Called without an option (from Python, as a plugin's test does), a built-in factory
    behaves as `expt plugins show` documents: its keyword defaults are its options'."""
    import inspect

    plugins = make_plugins()
    checked = []
    for registration in (r for kind in plugins.registry.values() for r in kind.values()):
        parameters = inspect.signature(registration.factory).parameters
        for option in registration.options:
            parameter = parameters.get(option.name)
            if parameter is not None and parameter.default is not inspect.Parameter.empty:
                checked.append((registration.name, option.name))
                assert parameter.default == option.default, (registration.name, option.name)
    assert ("mixup", "mixup_alpha") in checked and ("cutmix", "cutmix_alpha") in checked

    # and what they do, not only what they say (mutmut's trampoline keeps the signature)
    def plain_and_documented(kind: str, name: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        registration = plugins.get(kind, name)
        documented = {option.name: option.default for option in registration.options}
        factory = registration.factory
        return factory(*args, **kwargs), factory(*args, **kwargs, **documented)

    images, labels = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    for name in ("crop-flip", "mixup", "cutmix"):
        batches = [
            transform(images, labels, torch.Generator().manual_seed(3))
            for transform in plain_and_documented("transform", name, INFO)
        ]
        assert all(torch.equal(a, b) for a, b in zip(*batches, strict=True)), name

    def groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
        return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]

    model = QuickNet(1, 28, 28)
    for name in ("sgd", "adamw", "adam"):
        plain, documented = plain_and_documented("optimizer", name, model, lr=0.1,
                                                 weight_decay=0.01)  # fmt: skip
        assert groups(plain) == groups(documented), name
    plain, documented = plain_and_documented("metric", "top5", INFO)
    assert vars(plain) == vars(documented)
