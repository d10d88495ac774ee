"""Where the data lives and where its batches arrive, on an accelerator as on the CPU.

PyTorch's ``meta`` device stands in for an accelerator: it has no memory to read back, but a
tensor left on the CPU cannot be combined with one on it, so what moved where is visible.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from exptorch.data import Batches, fits_on_device

META = torch.device("meta")


def make(device: torch.device, mode: str, **options: Any) -> Batches:
    images = torch.arange(10 * 2 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8)
    return Batches(
        images.view(10, 2, 4, 4), torch.arange(10), batch_size=4, device=device,
        mean=[0.5, 0.25], std=[0.25, 0.5], shuffle=options.pop("shuffle", True),
        data_on_device=mode, **options,
    )  # fmt: skip


@pytest.mark.parametrize(("mode", "resident"), [("on", True), ("off", False), ("auto", True)])
def test_on_an_accelerator_the_data_stays_there_unless_told_not_to(
    mode: str, resident: bool
) -> None:
    batches = make(META, mode)
    assert batches.on_device is resident
    assert (
        batches.images.device.type == batches.labels.device.type == ("meta" if resident else "cpu")
    )
    for images, labels in batches:  # every batch arrives on the device, normalised to float32
        assert (images.device, labels.device, images.dtype) == (META, META, torch.float32)
        assert images.shape[1:] == (2, 4, 4)
    assert batches.mean.device == batches.std.device == META
    assert batches.mean.dtype == batches.std.dtype == torch.float32


@pytest.mark.parametrize("mode", ["on", "off", "auto"])
def test_on_the_cpu_the_data_is_never_copied(mode: str) -> None:
    batches = make(torch.device("cpu"), mode)
    assert batches.on_device is False
    assert batches.images.device.type == "cpu"


def test_auto_keeps_a_split_on_a_gpu_only_within_a_quarter_of_its_free_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[Any] = []

    def mem_get_info(device: Any) -> tuple[int, int]:
        asked.append(device)
        return 1000, 4000  # free, total

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    gpu = torch.device("cuda", 1)
    assert fits_on_device(249, gpu) and not fits_on_device(250, gpu)
    assert fits_on_device(499, gpu, fraction=0.5) and not fits_on_device(500, gpu, fraction=0.5)
    assert asked == [gpu] * 4
    assert fits_on_device(10**12, META) and not fits_on_device(1, torch.device("cpu"))


def test_a_resumed_epoch_yields_only_the_batches_after_where_it_stopped() -> None:
    batches = make(torch.device("cpu"), "off", seed=4)
    batches.set_epoch(2)
    whole = [labels.tolist() for _, labels in batches]
    batches.set_epoch(2, start=1)
    assert [labels.tolist() for _, labels in batches] == whole[1:]
    assert len(whole) == 3 and sorted(x for labels in whole for x in labels) == list(range(10))
