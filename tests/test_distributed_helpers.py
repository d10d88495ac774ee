"""The DDP helpers in one process: where torchrun's environment places it, and each collective
in a real ``gloo`` process group of one (what every rank of a larger group computes alike)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from exptorch import distributed
from exptorch.distributed import World

CPU = torch.device("cpu")


def test_the_world_is_read_from_torchruns_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = distributed.current_world()
    assert alone == World(0, 1, 0) and alone.is_main and not alone.distributed
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = distributed.current_world()
    assert world == World(rank=2, world_size=4, local_rank=1)
    assert not world.is_main and world.distributed


def test_outside_a_process_group_the_collectives_hand_back_what_they_were_given() -> None:
    assert not dist.is_initialized()
    tensor = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum([1.5, 3], CPU) == [1.5, 3]
    assert distributed.all_reduce_tensor(tensor, CPU) is tensor
    assert distributed.broadcast_flag(True, CPU) is True
    assert distributed.broadcast_flag(False, CPU) is False
    values = ["run-1", 7]
    assert distributed.broadcast_objects(values) is values
    distributed.init(World(), CPU)  # one process: no group to join
    assert not dist.is_initialized()
    distributed.shutdown()


@pytest.fixture
def group_of_one() -> Iterator[None]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_in_a_process_group_the_collectives_sum_and_broadcast(group_of_one: None) -> None:
    sums = distributed.all_reduce_sum([1.5, 3], CPU)
    assert sums == [1.5, 3.0] and all(isinstance(v, float) for v in sums)
    tensor = torch.tensor([1.0, 2.0], dtype=torch.float64)
    total = distributed.all_reduce_tensor(tensor, CPU)
    assert torch.equal(total, tensor) and total is not tensor
    total += 1
    assert torch.equal(tensor, torch.tensor([1.0, 2.0], dtype=torch.float64))  # a copy
    assert distributed.broadcast_flag(True, CPU) is True
    assert distributed.broadcast_flag(False, CPU) is False
    assert distributed.broadcast_objects(["run-1", 7]) == ["run-1", 7]


def test_a_failed_rank_leaves_the_group_to_torchrun_and_a_clean_one_leaves_it(
    group_of_one: None,
) -> None:
    distributed.shutdown(clean=False)  # another rank may wait in a collective: do not meet
    assert dist.is_initialized()
    distributed.shutdown()
    assert not dist.is_initialized()
