"""What a dataset (and a checkpoint's record of one) must be before exptorch uses it.

A dataset plugin returns :class:`~exptorch.Splits`; a checkpoint carries
:class:`~exptorch.DatasetInfo` as a dict. Both come from files exptorch did not
write, so both are checked here, once, with one sentence for the first problem:

* images are ``uint8`` tensors ``(N, C, H, W)`` with 1 to :data:`MAX_CHANNELS`
  channels and sides of at most :data:`MAX_IMAGE_SIDE` pixels, the same size in
  both splits, neither split empty (pixel data of another type is refused, never cast);
* labels are ``int64`` in ``[0, number of classes)``, one per image;
* there are at least 2 classes, with distinct, non-empty, printable names (a
  name holding control characters, such as a terminal escape, is refused: names
  are printed);
* ``mean`` and ``std`` have one value per channel (or one for all), finite, and
  every ``std`` above 0 (a ``std`` of 0 turns every prediction into ``nan``).

torch is imported only inside :func:`check_splits`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from exptorch.errors import ExptError

if TYPE_CHECKING:
    from exptorch.types import Splits

#: The largest image side a dataset or checkpoint may describe, in pixels. VGG16 on
#: ImageNet takes 224; this leaves room for larger inputs while a bogus checkpoint
#: claiming 4000x4000 is refused before a model of that size is built.
MAX_IMAGE_SIDE = 1024
#: Grey, grey and alpha, RGB, RGBA.
MAX_CHANNELS = 4
INFO_KEYS = ("channels", "height", "width", "classes", "mean", "std")


def class_names_problem(classes: Any, minimum: int = 1) -> str | None:
    """Why ``classes`` is not a list of at least ``minimum`` usable class names, or ``None``.

    Names are quoted with ``repr`` in the message, so a control character is shown
    escaped (``'\\x1b[2J'``), never sent to the terminal.
    """
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        return f"its classes are a {type(classes).__name__}, not a list of names"
    if len(classes) < minimum:
        count = f"{len(classes)} class" + ("" if len(classes) == 1 else "es")
        return f"it has {count}, and a classifier needs at least {max(minimum, 1)}"
    seen: set[str] = set()
    for name in classes:
        if not isinstance(name, str) or not name:
            return f"class name {name!r} is not a non-empty string"
        if not name.isprintable():
            return f"class name {name!r} holds control characters"
        if name in seen:
            return f"class name {name!r} appears twice"
        seen.add(name)
    return None


def _whole(data: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} is {value!r}, not a whole number from {low} to {high}")
    return value


def _numbers(data: Mapping[str, Any], key: str, channels: int) -> tuple[float, ...]:
    values = data[key]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{key} is {values!r}, not a list of numbers")
    if len(values) not in (1, channels):
        raise ValueError(f"{key} has {len(values)} values for {channels} channels")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} holds {value!r}, which is not a number")
        if not math.isfinite(value):
            raise ValueError(f"{key} holds {value}, which is not a finite number")
    return tuple(float(v) for v in values)


def checked_info(data: Any) -> dict[str, Any]:
    """The fields of a :class:`~exptorch.DatasetInfo` from ``data``, or ``ValueError`` saying
    what is wrong (a missing key, a size out of range, a ``std`` of 0, an escape in a name)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"its dataset info is a {type(data).__name__}, not a mapping")
    missing = [key for key in INFO_KEYS if key not in data]
    if missing:
        raise ValueError(f"its dataset info lacks {', '.join(missing)}")
    channels = _whole(data, "channels", 1, MAX_CHANNELS)
    height = _whole(data, "height", 1, MAX_IMAGE_SIDE)
    width = _whole(data, "width", 1, MAX_IMAGE_SIDE)
    problem = class_names_problem(data["classes"])
    if problem:
        raise ValueError(problem)
    mean = _numbers(data, "mean", channels)
    std = _numbers(data, "std", channels)
    if min(std) <= 0:
        raise ValueError(f"std {list(std)} has a value that is not above 0")
    return {
        "channels": channels, "height": height, "width": width,
        "classes": tuple(data["classes"]), "mean": mean, "std": std,
    }  # fmt: skip


def splits_problem(splits: Splits) -> str | None:
    """The first reason ``splits`` cannot be trained or tested on, or ``None``."""
    import torch

    problem = class_names_problem(splits.classes, minimum=2)
    if problem:
        return problem
    shapes = {}
    for split in ("train", "test"):
        images = getattr(splits, f"{split}_images")
        labels = getattr(splits, f"{split}_labels")
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            return f"its {split} images and labels are not tensors"
        if images.dtype != torch.uint8:
            return f"its {split} images are {images.dtype}, not torch.uint8 (pixels are not cast)"
        if images.ndim != 4:
            return f"its {split} images have shape {tuple(images.shape)}, not (N, C, H, W)"
        if len(images) == 0:
            return f"its {split} split is empty"
        if labels.dtype != torch.int64:
            return f"its {split} labels are {labels.dtype}, not torch.int64"
        if labels.shape != (len(images),):
            return f"it has {len(images)} {split} images but labels of shape {tuple(labels.shape)}"
        outside = labels[(labels < 0) | (labels >= len(splits.classes))]
        if len(outside):
            return (
                f"{len(outside)} of its {split} labels are outside 0..{len(splits.classes) - 1} "
                f"for its {len(splits.classes)} classes (the first is {int(outside[0])})"
            )
        shapes[split] = tuple(images.shape[1:])
    if shapes["train"] != shapes["test"]:
        return f"its train images are {shapes['train']} and its test images {shapes['test']}"
    try:
        checked_info(splits.info.to_dict())
    except ValueError as exc:
        return str(exc)
    return None


def check_splits(splits: Splits, dataset_name: str) -> None:
    """Refuse a dataset exptorch cannot use, in one sentence that names it (:class:`ExptError`).

    Called on every dataset exptorch loads (``expt run``, ``expt eval``); dataset
    plugins may call it too (``splits.validate(name)``), to fail before returning.
    """
    problem = splits_problem(splits)
    if problem:
        raise ExptError(f"Dataset {dataset_name!r} cannot be used: {problem}.")
