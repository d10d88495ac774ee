"""The batch data path: order, sharding, augmentation and normalisation."""

from __future__ import annotations

import torch

from exptorch.data import Batches, random_crop_flip


def make(n: int = 10, **kwargs) -> Batches:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    labels = torch.arange(n)
    defaults = dict(batch_size=4, device=torch.device("cpu"), mean=[0.0], std=[1.0], shuffle=True)
    return Batches(images, labels, **{**defaults, **kwargs})


def labels_of(batches: Batches) -> list[int]:
    return [int(v) for _, y in batches for v in y]


def test_each_epoch_is_a_permutation_and_reproducible() -> None:
    batches = make(seed=7)
    batches.set_epoch(1)
    first = labels_of(batches)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert labels_of(make(seed=7)) == first  # same (seed, epoch): same order, e.g. after resume
    batches.set_epoch(2)
    assert labels_of(batches) != first


def test_normalisation_and_pixels_follow_labels() -> None:
    batches = make(mean=[0.5], std=[0.25])
    for x, y in batches:
        expected = (y.float() / 255 - 0.5) / 0.25
        assert torch.allclose(x[:, 0, 0, 0], expected)
        assert x.dtype == torch.float32


def test_ranks_share_out_one_permutation() -> None:
    shards = [labels_of(make(n=11, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(11))
    full = labels_of(make(n=11, seed=3))
    assert shards[0] == full[0::2] and shards[1] == full[1::2]


def test_limit_and_length() -> None:
    assert len(make()) == 3 and len(make(limit=2)) == 2
    assert len(labels_of(make(limit=2))) == 8


def test_random_crop_flip_keeps_content_and_is_seeded() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2)
    again = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == images.shape and torch.equal(out, again)
    for i in range(2):
        # Every non-zero pixel of the crop comes from the same image, shifted and maybe mirrored.
        values = set(out[i][out[i] > 0].tolist())
        assert values <= set(images[i].flatten().tolist())
        assert len(values) >= 3 * 4 * 4  # at most 2 of 8 rows/cols lost per side


def test_random_crop_flip_takes_a_window_of_the_padded_image_mirrored_or_not() -> None:
    """Each image becomes an h x w window of itself with 4 zero pixels (the default padding)
    on every side, mirrored left to right or not: the window's row and column offsets are
    drawn independently from 0 to 8, and some images are mirrored and some not."""
    import torch.nn.functional as F

    images = torch.rand(64, 2, 6, 7) + 1  # every pixel differs and none is a padding zero
    out = random_crop_flip(images, torch.Generator().manual_seed(3))
    padded = F.pad(images, (4, 4, 4, 4))
    found = []
    for image, crop in zip(padded, out, strict=True):
        views = {(dy, dx): image[:, dy : dy + 6, dx : dx + 7] for dy in range(9) for dx in range(9)}
        windows = [
            (dy, dx, mirrored)
            for (dy, dx), view in views.items()
            for mirrored in (False, True)
            if torch.equal(crop, view.flip(-1) if mirrored else view)
        ]
        assert len(windows) == 1, windows
        found.extend(windows)
    offsets = {dy for dy, _, _ in found} | {dx for _, dx, _ in found}
    assert {0, 8} <= offsets and any(dy != dx for dy, dx, _ in found)
    assert {mirrored for _, _, mirrored in found} == {False, True}


def test_crop_without_padding_is_flip_or_identity() -> None:
    images = torch.rand(16, 1, 5, 5)
    out = random_crop_flip(images, torch.Generator().manual_seed(1), padding=0)
    for a, b in zip(images, out, strict=True):
        assert torch.equal(a, b) or torch.equal(a.flip(2), b)


def test_channels_last() -> None:
    images = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    common = dict(batch_size=4, device=torch.device("cpu"), mean=[0.0] * 3, std=[1.0] * 3)
    x, _ = next(iter(Batches(images, torch.arange(4), shuffle=False, channels_last=True, **common)))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    x, _ = next(iter(Batches(images, torch.arange(4), shuffle=False, **common)))
    assert x.is_contiguous()
