"""Each extra, in-process, through exptorch.testing: what it does to tensors, and in real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from exptorch import ExptError
from exptorch.rundir import read_metrics
from exptorch.testing import resume_expt

from exptorch_training_extras.blend import make_blend
from exptorch_training_extras.lion import Lion
from exptorch_training_extras.metrics import BalancedAccuracy


def epochs(run: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "test_loss" in r]


def checkpoint(run: Path, epoch: int) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / f"epoch-{epoch:03d}.pt", weights_only=True)


def test_lion_step_by_hand() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.5, -0.25])
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    opt.step()
    # decay first: p * (1 - 0.1 * 0.5); then minus lr * sign(0.1 * g) on a zero momentum
    assert p.detach().tolist() == pytest.approx([1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1])
    assert opt.state[p]["exp_avg"].tolist() == pytest.approx([0.005, -0.0025])


def test_lion_trains_in_a_real_run(expt_run) -> None:
    run = expt_run(optimizer="lion", lr=0.001, epochs=2, weight_decay=0.01, lion_beta2=0.98)
    rows = epochs(run)
    assert rows[-1]["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    saved = json.loads((run / "config.json").read_text())["config"]["options"]
    assert saved["lion_beta2"] == 0.98


def test_blend_is_a_convex_mix_drawn_from_the_generator() -> None:
    transform = make_blend(4, 0.4)
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    out, targets = transform(images, torch.arange(4), torch.Generator().manual_seed(1))
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    for i in range(4):
        assert torch.allclose(out[i], sum(targets[i, c] * images[c] for c in range(4)))
    again, _ = transform(images, torch.arange(4), torch.Generator().manual_seed(1))
    other, _ = transform(images, torch.arange(4), torch.Generator().manual_seed(2))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_clipping_bounds_the_gradient_norm_the_log_sees(expt_run) -> None:
    def norms(**options: Any) -> list[float]:
        run = expt_run(grad_log_every=1, lr=0.05, **options)
        return [r["grad_norm"] for r in read_metrics(run / "metrics.jsonl") if "grad_norm" in r]

    free = norms()
    assert len(free) == 8 and max(free) > 0.3  # 512 images, batch 64; unclipped norms are larger
    clipped = norms(clip_norm=0.3)
    assert len(clipped) == 8 and max(clipped) <= 0.3 + 1e-5


def test_ema_evaluates_the_average_and_resumes_it(expt_plugins, expt_run, tmp_path) -> None:
    frozen = expt_run(ema_decay=1.0, epochs=2, lr=0.05)  # the average never moves
    rows = epochs(frozen)
    assert rows[0]["test_loss"] == rows[1]["test_loss"]  # evaluated on the same weights
    one, two = checkpoint(frozen, 1), checkpoint(frozen, 2)
    average_1 = one["extra"]["callbacks"]["ema"]["average"]
    average_2 = two["extra"]["callbacks"]["ema"]["average"]
    assert all(torch.equal(average_1[k], average_2[k]) for k in average_1)
    weights_1, weights_2 = one["model_state"], two["model_state"]
    assert any(not torch.equal(weights_1[k], weights_2[k]) for k in weights_1)  # training moved

    follows = expt_run(ema_decay=0.0, epochs=1, lr=0.05, name="follows")  # average == model
    plain = expt_run(epochs=1, lr=0.05, name="plain")
    assert epochs(follows)[0]["test_loss"] == pytest.approx(epochs(plain)[0]["test_loss"])


def test_ema_and_blend_resume_bit_exact(expt_plugins, expt_run, tmp_path) -> None:
    options = dict(ema_decay=0.9, transform=["blend"], epochs=2, lr=0.05)
    straight = expt_run(name="straight", **options)
    cut = expt_run(name="cut", **{**options, "epochs": 1})
    resumed = resume_expt(expt_plugins, cut, epochs=2, echo=lambda _: None)
    a, b = checkpoint(straight, 2), checkpoint(resumed, 2)
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    ema_a = a["extra"]["callbacks"]["ema"]["average"]
    ema_b = b["extra"]["callbacks"]["ema"]["average"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_balanced_accuracy_by_hand_and_as_the_monitor(expt_run) -> None:
    metric = BalancedAccuracy(3)
    metric.reset(torch.device("cpu"))
    logits = torch.eye(3)[[0, 0, 0, 1, 2]]
    metric.update(logits, torch.tensor([0, 0, 1, 1, 1]))  # class 0: 2/2, class 1: 1/3
    assert metric.compute(metric.sums()) == pytest.approx((1 + 1 / 3) / 2)
    run = expt_run(metric=["balanced-accuracy"], monitor="balanced-accuracy", epochs=2)
    state = json.loads((run / "state.json").read_text())
    values = [r["test_balanced_accuracy"] for r in epochs(run)]
    assert state["best_metric"] == "test_balanced_accuracy" and state["best_value"] == max(values)


def test_options_are_validated(expt_run) -> None:
    with pytest.raises(ExptError, match="--ema-decay must be at most 1"):
        expt_run(ema_decay=1.5)
    with pytest.raises(ExptError, match="--grad-log-every must be at least 1"):
        expt_run(grad_log_every=0)
    with pytest.raises(ExptError, match="--lion-beta1 belongs to optimizer 'lion'"):
        expt_run(lion_beta1=0.5)


def test_predict_and_eval_use_the_ema_weights(expt_plugins, expt_run) -> None:
    from exptorch.checkpoint import load_trained

    run = expt_run(ema_decay=1.0, epochs=1, lr=0.05)  # the average stays the initial weights
    saved = checkpoint(run, 1)
    trained = load_trained(expt_plugins, run / "checkpoints" / "epoch-001.pt", device="cpu")
    loaded = trained.model.state_dict()
    average = saved["extra"]["callbacks"]["ema"]["average"]
    assert all(torch.equal(loaded[k], average[k]) for k in loaded)
    assert any(not torch.equal(loaded[k], saved["model_state"][k]) for k in loaded)
