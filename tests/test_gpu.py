"""What only a CUDA GPU can show: work done on the batch's device, and checkpoints loaded onto it.

On a CPU the device a tensor is made on never matters, so a tensor left on the CPU by mistake
goes unnoticed there. Every test here is skipped on a machine without a CUDA GPU (CI's); run
them where one is, with ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_checkpoints import save, trained_checkpoint

from exptorch import DatasetInfo
from exptorch.checkpoint import load_checkpoint, load_trained
from exptorch.data import random_crop_flip
from exptorch_plugins import transforms
from exptorch_plugins.metrics import MacroF1

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RGB = DatasetInfo(3, 8, 8, tuple(f"c{i}" for i in range(10)), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def on_cpu_and_gpu(make, *tensors: torch.Tensor) -> tuple:
    """``make(*tensors, generator)`` on the CPU and on the GPU, with the same seed."""
    cpu = make(*tensors, torch.Generator().manual_seed(7))
    gpu = make(*(t.cuda() for t in tensors), torch.Generator().manual_seed(7))
    return cpu, gpu


def test_random_crop_flip_on_the_gpu_gives_the_cpus_pixels_there() -> None:
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cpu, gpu = on_cpu_and_gpu(lambda x, g: random_crop_flip(x, g, 2), images)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("name", ["crop_flip", "mixup", "cutmix"])
def test_batch_transforms_on_the_gpu_match_the_cpu(name: str) -> None:
    """The transform plugins draw on the CPU (reproducible) and work where the batch is."""
    transform = getattr(transforms, name)(RGB)
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 10
    (cpu_images, cpu_targets), (gpu_images, gpu_targets) = on_cpu_and_gpu(transform, images, labels)
    assert gpu_images.device.type == gpu_targets.device.type == "cuda"
    torch.testing.assert_close(gpu_images.cpu(), cpu_images)
    torch.testing.assert_close(gpu_targets.cpu(), cpu_targets)


def test_macro_f1_counts_on_the_gpu() -> None:
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    values = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        metric = MacroF1(10)
        metric.reset(device)
        metric.update(logits.to(device), labels.to(device))
        assert metric.sums().device.type == device.type
        values.append(metric.compute(metric.sums()))
    assert values[0] == pytest.approx(values[1])


@pytest.mark.parametrize("name", ["state_dict", "full", "safetensors"])
def test_a_checkpoint_loads_onto_the_gpu_it_is_mapped_to(
    plugins, tmp_path: Path, name: str
) -> None:
    """``load_checkpoint(map_location=...)`` puts weights and optimizer state there, and
    ``load_trained(device="cuda")`` gives a model on the GPU."""
    path = save(plugins, name, trained_checkpoint(), tmp_path)
    loaded = load_checkpoint(plugins, path, map_location="cuda", trust=True)
    assert {t.device.type for t in loaded.model_state.values()} == {"cuda"}
    momenta = [s["momentum_buffer"] for s in loaded.optimizer_state["state"].values()]
    assert momenta and {t.device.type for t in momenta} == {"cuda"}
    trained = load_trained(plugins, path, device="cuda", trust=True)
    assert {p.device.type for p in trained.model.parameters()} == {"cuda"}
    assert trained.device.type == "cuda"
