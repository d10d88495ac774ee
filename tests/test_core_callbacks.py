"""exptorch's own callbacks on their own: the progress bar, the training-loss window, the
stop on a non-finite value and ``-vv``'s step line, each fed the events a run would send."""

from __future__ import annotations

import logging
import types
from typing import Any

import pytest
import torch

from exptorch import ExptError
from exptorch.core_callbacks import NonFiniteStop, ProgressBar, StepDebugLog, TrainLossLog


def fake_run(**fields: Any) -> Any:
    logged: list[dict[str, float]] = []
    defaults = dict(
        device=torch.device("cpu"), step=0, epoch=1, lr=0.01, logged=logged, log=logged.append,
        config=types.SimpleNamespace(epochs=3), start_epoch=1, eval_model=None,
        model=torch.nn.Linear(2, 2),
    )  # fmt: skip
    return types.SimpleNamespace(**{**defaults, **fields})


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_the_bar_counts_the_epochs_steps_from_where_a_resumed_run_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bar = ProgressBar(True, steps_per_epoch=20, batch_size=32)
    bar.on_epoch_start(fake_run(step=25), epoch=2)  # resumed after step 5 of epoch 2
    shown = bar.bar
    assert (shown.total, shown.n, shown.desc, shown.unit) == (20, 5, "epoch 2/3", "batch")
    assert (shown.leave, shown.disable) == (False, False)
    assert shown.dynamic_ncols not in (False, None)  # tqdm keeps a function that measures
    bar.close()
    bar.on_epoch_start(fake_run(step=0), epoch=2)  # a step count behind the epoch starts at 0
    assert bar.bar.n == 0
    bar.close()


def test_every_tenth_step_shows_the_loss_and_the_epochs_images_per_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(100.0)
    monkeypatch.setattr("exptorch.core_callbacks.time.perf_counter", clock)
    bar = ProgressBar(True, steps_per_epoch=40, batch_size=32)
    run = fake_run(step=3)
    bar.on_epoch_start(run, epoch=1)
    for step in range(11, 20):  # nine steps: no figures yet
        clock.now += 0.25
        bar.on_step_end(run, step=step, loss=0.5)
        assert bar.bar.postfix is None or "loss" not in bar.bar.postfix
    clock.now = 102.0
    bar.on_step_end(run, step=20, loss=0.123456)
    assert bar.bar.n == 13
    assert bar.bar.postfix == "img_s=160, loss=0.123"  # 10 batches of 32 in 2 s (tqdm sorts)
    bar.on_evaluate_end(run, epoch=1, metrics={})
    assert bar.bar is None
    bar.on_epoch_start(run, epoch=2)
    bar.on_run_end(run, state="finished", metrics={})
    assert bar.bar is None


@pytest.mark.parametrize(("enabled", "disabled"), [(False, True), (None, True), (True, False)])
def test_the_bar_is_drawn_when_asked_or_on_a_terminal(enabled: Any, disabled: bool) -> None:
    bar = ProgressBar(enabled, steps_per_epoch=4, batch_size=8)
    bar.on_epoch_start(fake_run(), epoch=1)  # stderr is no terminal under pytest
    assert bar.bar.disable is disabled
    bar.on_step_end(fake_run(), step=10, loss=1.0)
    bar.close()


def test_train_loss_is_each_windows_mean_and_the_rest_goes_into_the_epochs_record() -> None:
    log = TrainLossLog(log_every=2)
    run = fake_run()
    for step, loss in enumerate([1.0, 3.0, 5.0, 7.0, 10.0], start=1):
        log.on_step_end(run, step=step, loss=loss)
    assert run.logged == [{"train_loss": 2.0}, {"train_loss": 6.0}]
    assert log.state_dict() == {"window_loss": 10.0, "window_steps": 1}
    metrics: dict[str, float] = {}
    log.on_epoch_end(run, epoch=1, metrics=metrics)
    assert metrics == {"train_loss": 10.0}
    later: dict[str, float] = {}
    log.on_epoch_end(run, epoch=2, metrics=later)
    assert later == {}  # nothing left in the window
    resumed = TrainLossLog(log_every=2)
    resumed.load_state_dict({"window_loss": 4, "window_steps": 1})
    resumed.on_step_end(run, step=6, loss=2.0)
    assert run.logged[-1] == {"train_loss": 3.0}
    empty = TrainLossLog(log_every=2)
    empty.load_state_dict({})
    assert empty.state_dict() == {"window_loss": 0.0, "window_steps": 0}


def test_a_non_finite_loss_or_weight_stops_the_run_naming_the_last_good_checkpoint() -> None:
    stop = NonFiniteStop()
    run = fake_run(start_epoch=2)
    stop.on_run_start(run)
    stop.on_step_end(run, step=5, loss=0.5)
    with pytest.raises(ExptError) as raised:
        stop.on_step_end(fake_run(epoch=2), step=7, loss=float("nan"))
    assert str(raised.value) == (
        "The training loss became nan at epoch 2, step 7, so the run stopped; the last good "
        "checkpoint is epoch 1; lower --lr and start again."
    )
    stop.on_epoch_end(run, epoch=4, metrics={})
    with pytest.raises(ExptError) as raised:
        stop.on_evaluate_end(run, epoch=5, metrics={"test_loss": float("inf")})
    assert str(raised.value) == (
        "The test loss became inf after epoch 5, so the run stopped; the last good checkpoint "
        "is epoch 4; lower --lr and start again."
    )
    stop.on_evaluate_end(run, epoch=5, metrics={"test_loss": 1.0})
    with torch.no_grad():
        run.model.weight[0, 0] = float("nan")
    with pytest.raises(ExptError) as raised:
        stop.on_evaluate_end(run, epoch=5, metrics={"test_loss": 1.0})
    assert str(raised.value).startswith("The model's weights stopped being finite in epoch 5,")
    run.eval_model = torch.nn.Linear(2, 2)  # evaluation uses the (finite) average instead
    stop.on_evaluate_end(run, epoch=5, metrics={})
    first = NonFiniteStop()
    first.on_run_start(fake_run())
    with pytest.raises(ExptError) as raised:
        first.on_step_end(fake_run(), step=1, loss=float("inf"))
    assert str(raised.value) == (
        "The training loss became inf at epoch 1, step 1, so the run stopped; lower --lr and "
        "start again."
    )


def test_very_verbose_logs_each_steps_loss_rate_and_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(50.0)
    monkeypatch.setattr("exptorch.core_callbacks.time.perf_counter", clock)
    caplog.set_level(logging.DEBUG, logger="exptorch")
    debug = StepDebugLog()
    clock.now = 50.0125
    debug.on_step_end(fake_run(epoch=2, lr=0.00012346), step=9, loss=0.123456)
    clock.now = 50.0135
    debug.on_step_end(fake_run(epoch=2), step=10, loss=2.0)
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 2 step 9: loss 0.1235, lr 0.0001235, 12.5 ms",
        "epoch 2 step 10: loss 2.0000, lr 0.01, 1.0 ms",
    ]
