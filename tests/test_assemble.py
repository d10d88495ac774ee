"""How a run's optimizer, schedule and recorded versions are put together from its settings."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

import exptorch
from exptorch import ExptError
from exptorch.assemble import (
    build_optimizer,
    build_schedule,
    default_data_dir,
    parse_device,
    restore_optimizer,
    transform_names,
    used_options,
    versions,
)
from exptorch.testing import make_plugins, run_config
from exptorch_plugins.networks import QuickNet


@pytest.fixture(scope="module")
def plugins() -> Any:
    return make_plugins()


def schedule(plugins: Any, tmp_path: Path, steps_per_epoch: int, **options: Any) -> Any:
    config = run_config(plugins, tmp_path, **options)
    return build_schedule(plugins.get("schedule", config.schedule), config, steps_per_epoch)


def test_the_schedule_spans_every_step_of_every_epoch(plugins: Any, tmp_path: Path) -> None:
    cosine = schedule(plugins, tmp_path, 4, epochs=2, schedule="cosine")
    assert [cosine(s) for s in (0, 4, 8)] == pytest.approx([1.0, 0.5, 0.0])  # 8 steps in all
    step = schedule(plugins, tmp_path, 3, epochs=3, schedule="step", step_milestones="2")
    assert [step(s) for s in (0, 2, 3, 8)] == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_warmup_ramps_the_first_fraction_of_all_steps_linearly(
    plugins: Any, tmp_path: Path
) -> None:
    warm = schedule(plugins, tmp_path, 4, epochs=2, schedule="constant", warmup=0.5)
    assert [warm(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    cosine = schedule(plugins, tmp_path, 5, epochs=2, schedule="cosine", warmup=0.2)
    assert cosine(0) == pytest.approx(0.5 * 0.5 * (1 + 1))  # 1 of 2 warm steps, cosine at 1
    assert cosine(5) == pytest.approx(0.5)  # past the ramp: the cosine alone
    none = schedule(plugins, tmp_path, 4, epochs=1, schedule="constant", warmup=0.2)
    assert none(0) == 1.0  # a fifth of 4 steps is no whole step: no ramp


def test_a_warmup_of_all_steps_or_more_is_refused(plugins: Any, tmp_path: Path) -> None:
    with pytest.raises(ExptError) as refused:
        schedule(plugins, tmp_path, 4, epochs=2, schedule="constant", warmup=1.0)
    assert str(refused.value) == "--warmup is a fraction of all steps below 1, not 1.0."


def saved_state(name: str, **settings: Any) -> dict[str, Any]:
    """An optimizer state with one step taken, as a checkpoint holds it."""
    torch.manual_seed(0)
    model = QuickNet(1, 28, 28, 10)
    optimizer = getattr(torch.optim, name)(model.parameters(), **settings)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def test_a_resumed_optimizer_keeps_its_buffers_and_takes_the_rate_momentum_and_decay_given(
    plugins: Any, tmp_path: Path
) -> None:
    config = run_config(plugins, tmp_path, lr=0.2, momentum=0.5, weight_decay=0.01)
    optimizer = build_optimizer(plugins.get("optimizer", "sgd"), config, QuickNet(1, 28, 28, 10))
    state = saved_state("SGD", lr=0.1, momentum=0.9, weight_decay=0.0)
    restore_optimizer(optimizer, state, config)
    [group] = optimizer.param_groups
    assert (group["lr"], group["initial_lr"], group["momentum"]) == (0.2, 0.2, 0.5)
    assert group["weight_decay"] == 0.01
    buffers = [s["momentum_buffer"] for s in optimizer.state.values()]
    saved = [s["momentum_buffer"] for s in state["state"].values()]
    assert len(buffers) == len(saved) > 0
    assert all(torch.equal(a, b) for a, b in zip(buffers, saved, strict=True))


def test_a_resumed_adam_gets_the_rate_and_no_momentum_it_does_not_take(
    plugins: Any, tmp_path: Path
) -> None:
    config = run_config(plugins, tmp_path, optimizer="adam", lr=0.003, weight_decay=0.0)
    optimizer = build_optimizer(plugins.get("optimizer", "adam"), config, QuickNet(1, 28, 28, 10))
    restore_optimizer(optimizer, saved_state("Adam", lr=0.001, weight_decay=0.5), config)
    [group] = optimizer.param_groups
    assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (0.003, 0.003, 0.0)
    assert "momentum" not in group
    assert all(int(s["step"]) == 1 for s in optimizer.state.values())


def test_a_run_records_the_versions_it_ran_with() -> None:
    assert versions() == {
        "exptorch": exptorch.__version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


def test_data_lives_in_the_users_cache_unless_expt_data_dir_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import platformdirs

    monkeypatch.delenv("EXPT_DATA_DIR", raising=False)
    assert default_data_dir() == Path(platformdirs.user_cache_dir("exptorch")) / "data"
    monkeypatch.setenv("EXPT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_a_device_is_a_name_and_an_optional_index() -> None:
    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("cpu") == ("cpu", None)
    with pytest.raises(ExptError) as refused:
        parse_device("cuda:x")
    assert str(refused.value) == "Device 'cuda:x' has a bad index; use a form like cuda:0."


def test_augment_puts_crop_flip_first_and_only_once(plugins: Any, tmp_path: Path) -> None:
    names = transform_names(run_config(plugins, tmp_path, augment=True, transform=["mixup"]))
    assert names == ["crop-flip", "mixup"]
    again = run_config(plugins, tmp_path, augment=True, transform=["mixup", "crop-flip"])
    assert transform_names(again) == ["mixup", "crop-flip"]
    assert transform_names(run_config(plugins, tmp_path, transform=["mixup"])) == ["mixup"]


def test_a_run_records_only_the_options_of_the_plugins_it_uses(
    plugins: Any, tmp_path: Path
) -> None:
    config = run_config(plugins, tmp_path, sgd_nesterov=True, momentum=0.9)
    config.options["adam_beta1"] = 0.8  # an unused optimizer's option
    used = used_options(config, [plugins.get("optimizer", "sgd")])
    assert used.options == {"sgd_nesterov": True, "sgd_no_decay_norm_bias": False}
    assert used.lr == config.lr and config.options["adam_beta1"] == 0.8  # a copy
