"""``expt run``'s set-up, phase by phase: the name, the device and seed, the batches, the model.

Each phase of :func:`exptorch.train.setup` is called on its own with the configuration
``expt run`` would resolve, so what it builds is checked directly: batch sizes, order and
limits per split and per DDP rank, the memory format and autocast the model gets, the
gradient scaler and the weights a resumed run starts from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from exptorch import ExptError, train
from exptorch.assemble import resolve_parts
from exptorch.distributed import World
from exptorch.resume import ResumePoint
from exptorch.testing import make_plugins, run_config, tiny_splits
from exptorch.types import Checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def plugins() -> Any:
    return make_plugins()


@pytest.fixture(scope="module")
def splits() -> Any:
    return tiny_splits()


def config(plugins: Any, tmp_path: Path, **options: Any) -> Any:
    return run_config(plugins, tmp_path / "runs", **options)


def test_training_batches_take_the_global_batch_a_limit_and_the_seed(
    plugins: Any, splits: Any, tmp_path: Path
) -> None:
    cfg = config(plugins, tmp_path, batch_size=48, limit_train_batches=3, seed=5)
    batches, tests = train.make_batches(cfg, splits, CPU, World())
    assert (batches.batch_size, batches.shuffle, batches.seed, batches.limit) == (48, True, 5, 3)
    assert (len(batches), batches.rank, batches.world_size) == (3, 0, 1)
    assert (tests.batch_size, tests.shuffle, tests.limit, len(tests)) == (256, False, None, 1)
    images, labels = next(iter(tests))
    assert torch.equal(labels, splits.test_labels[:128])  # the test split in its own order
    expected = (splits.test_images[:128].float() / 255 - 0.2860) / 0.3530  # Fashion-MNIST's
    assert torch.allclose(images, expected, atol=1e-3)
    assert batches.device == tests.device == CPU
    assert not batches.channels_last and not tests.channels_last


def test_each_rank_takes_its_share_of_the_batch_and_a_stride_of_the_images(
    plugins: Any, splits: Any, tmp_path: Path
) -> None:
    cfg = config(plugins, tmp_path, batch_size=300, limit_eval_batches=2)
    batches, tests = train.make_batches(cfg, splits, CPU, World(rank=1, world_size=3))
    assert (batches.batch_size, batches.rank, batches.world_size) == (100, 1, 3)
    assert batches.num_samples == len(range(1, 512, 3)) and len(batches) == 2
    assert (tests.batch_size, tests.limit, tests.rank, tests.world_size) == (300, 2, 1, 3)


def test_channels_last_reaches_the_batches_and_the_models_weights(
    plugins: Any, splits: Any, tmp_path: Path
) -> None:
    cfg = config(plugins, tmp_path, channels_last="on")
    batches, _ = train.make_batches(cfg, splits, CPU, World())
    images, _ = next(iter(batches))
    assert batches.channels_last and images.is_contiguous(memory_format=torch.channels_last)
    model, net, _, _ = train.build_model(
        cfg, resolve_parts(cfg, plugins), splits, CPU, World(), None
    )
    assert net is model
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    cfg = config(plugins, tmp_path, channels_last="off")
    model, *_ = train.build_model(cfg, resolve_parts(cfg, plugins), splits, CPU, World(), None)
    assert not any(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in model.parameters()
        if p.dim() == 4
    )


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_precision_sets_autocast_and_fp16_alone_gets_a_gradient_scaler(
    plugins: Any, splits: Any, tmp_path: Path, precision: str, dtype: Any
) -> None:
    cfg = config(plugins, tmp_path, precision=precision)
    _, _, autocast, scaler = train.build_model(
        cfg, resolve_parts(cfg, plugins), splits, CPU, World(), None
    )
    with autocast():
        enabled = torch.is_autocast_enabled("cpu")
        used = torch.get_autocast_dtype("cpu")
    assert enabled is (dtype is not None)
    if dtype is not None:
        assert used == dtype
    assert (scaler is not None) is (precision == "fp16")
    if scaler is not None:
        assert isinstance(scaler, torch.amp.GradScaler)


def test_a_resumed_run_starts_from_its_checkpoints_weights_and_scaler(
    plugins: Any, splits: Any, tmp_path: Path
) -> None:
    cfg = config(plugins, tmp_path, precision="fp16", seed=3)
    parts = resolve_parts(cfg, plugins)
    torch.manual_seed(11)
    saved = parts.model.factory(splits.info)
    scaler_state = torch.amp.GradScaler("cpu", init_scale=64.0).state_dict()
    checkpoint = Checkpoint(
        model_state=saved.state_dict(), epoch=1, step=8, config={}, meta={},
        extra={"grad_scaler": scaler_state},
    )  # fmt: skip
    point = ResumePoint(
        run_dir=tmp_path / "run", path=tmp_path / "run" / "x.pt", checkpoint=checkpoint
    )
    torch.manual_seed(12)  # a fresh model would differ
    model, _, _, scaler = train.build_model(cfg, parts, splits, CPU, World(), point)
    for key, value in saved.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert scaler.get_scale() == 64.0
    fresh = ResumePoint(run_dir=point.run_dir, path=point.path, checkpoint=checkpoint, fresh=True)
    model, *_ = train.build_model(cfg, parts, splits, CPU, World(), fresh)
    first = next(iter(saved.state_dict()))
    assert not torch.equal(model.state_dict()[first], saved.state_dict()[first])


def test_compile_wraps_what_the_loop_calls_and_keeps_the_plain_model(
    plugins: Any, splits: Any, tmp_path: Path
) -> None:
    cfg = config(plugins, tmp_path, compile=True)
    model, net, _, _ = train.build_model(
        cfg, resolve_parts(cfg, plugins), splits, CPU, World(), None
    )
    assert net is not model and net._orig_mod is model


def test_a_seed_is_chosen_recorded_and_used_when_none_is_given(
    plugins: Any, tmp_path: Path
) -> None:
    cfg = config(plugins, tmp_path, seed=None, name="s")
    placed, device = train.place(cfg, plugins, World())
    assert device == CPU and isinstance(placed.seed, int) and 0 <= placed.seed < 2**31
    assert torch.initial_seed() == placed.seed and placed.name == "s"
    placed, _ = train.place(config(plugins, tmp_path, seed=123), plugins, World())
    assert placed.seed == 123 == torch.initial_seed()


def test_a_global_batch_that_does_not_divide_among_the_processes_is_refused(
    plugins: Any, tmp_path: Path
) -> None:
    cfg = config(plugins, tmp_path, batch_size=65)
    with pytest.raises(ExptError) as refused:
        train.place(cfg, plugins, World(rank=0, world_size=3))
    assert str(refused.value) == (
        "--batch-size 65 is the global batch and must divide evenly among 3 processes."
    )


def test_a_run_is_named_after_its_model_dataset_and_time_and_never_reuses_a_folder(
    plugins: Any, tmp_path: Path
) -> None:
    cfg = config(plugins, tmp_path, name=None)
    parts = resolve_parts(cfg, plugins)
    named = train.name_the_run(cfg, parts, None)
    assert re.fullmatch(r"quicknet-tiny-fashion-mnist-\d{8}-\d{6}", named.name)
    assert named.runs_dir == cfg.runs_dir
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    with pytest.raises(ExptError, match="already exists"):
        train.name_the_run(config(plugins, tmp_path, name="taken"), parts, None)
