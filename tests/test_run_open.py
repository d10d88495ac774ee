"""What a run says and keeps when it opens: the first line's parameter count (frozen ones
named), and the best checkpoint a resumed run carries over from its earlier processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from test_loop_phases import SHORT, state

from exptorch import hookimpl
from exptorch.testing import make_plugins, resume_expt, run_expt
from exptorch_plugins.networks import QuickNet

#: Nothing is learned at this rate, so every epoch ties and the first stays the best.
STILL = {**SHORT, "lr": 1e-30, "keep": "all"}


def test_a_resumed_run_keeps_the_best_checkpoint_of_its_earlier_epochs(tmp_path: Path) -> None:
    run = run_expt(
        make_plugins(), tmp_path, epochs=2, monitor="test_loss", echo=lambda _: None, **STILL
    )
    assert state(run)["best_checkpoint"] == "epoch-001.pt"
    resume_expt(make_plugins(), run, epochs=3, echo=lambda _: None)
    after = state(run)
    assert (after["best_checkpoint"], after["best_metric"]) == ("epoch-001.pt", "test_loss")


def test_a_state_from_before_best_value_was_recorded_resumes_from_its_best_accuracy(
    tmp_path: Path,
) -> None:
    run = run_expt(make_plugins(), tmp_path, epochs=2, echo=lambda _: None, **STILL)
    old = state(run)
    best = old["best_test_accuracy"]
    for key in ("best_value", "best_metric"):  # an older exptorch wrote neither
        del old[key]
    (run / "state.json").write_text(json.dumps(old))
    resume_expt(make_plugins(), run, epochs=3, echo=lambda _: None)
    after = state(run)
    assert (after["best_checkpoint"], after["best_value"]) == ("epoch-001.pt", best)


class Frozen:
    @hookimpl
    def register_models(self, register: Any) -> None:
        def build(info: Any, **_: Any) -> torch.nn.Module:
            model = QuickNet(info.channels, info.height, info.width, info.num_classes)
            for p in list(model.parameters())[:2]:  # the first layer's weight and bias
                p.requires_grad_(False)
            return model

        register("half-frozen", build)


def test_the_first_line_counts_the_frozen_parameters_apart(tmp_path: Path) -> None:
    said: list[str] = []
    run = run_expt(make_plugins(("frozen", Frozen())), tmp_path, model="half-frozen", epochs=1,
                   echo=said.append, **STILL)  # fmt: skip
    model = QuickNet(1, 28, 28, 10)
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in list(model.parameters())[:2])
    assert said[0].startswith(
        f"run {run}: half-frozen ({total:,} parameters, {frozen:,} frozen) on tiny-fashion-mnist"
    )
