"""A dataset's description as a checkpoint records it: what is accepted, exactly as returned,
and the sentence for each thing that is wrong with it (checkpoints come from anywhere)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from exptorch import DatasetInfo, ExptError, Splits
from exptorch.datasets_check import check_splits, checked_info, class_names_problem

INFO = {"channels": 3, "height": 32, "width": 1024, "classes": ["cat", "dog"],
        "mean": [0.5], "std": [0.25, 0.5, 1]}  # fmt: skip


def test_a_valid_description_comes_back_typed() -> None:
    assert checked_info(INFO) == {
        "channels": 3, "height": 32, "width": 1024, "classes": ("cat", "dog"),
        "mean": (0.5,), "std": (0.25, 0.5, 1.0),
    }  # fmt: skip
    info = DatasetInfo.from_dict(INFO)
    assert info.to_dict() == {
        "channels": 3, "height": 32, "width": 1024, "classes": ["cat", "dog"],
        "mean": [0.5], "std": [0.25, 0.5, 1.0],
    }  # fmt: skip
    assert DatasetInfo.from_dict(info.to_dict()) == info


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 0}, "width is 0, not a whole number from 1 to 1024"),
        ({"width": 1025}, "width is 1025, not a whole number from 1 to 1024"),
        ({"height": True}, "height is True, not a whole number from 1 to 1024"),
        ({"channels": 5}, "channels is 5, not a whole number from 1 to 4"),
        ({"channels": 2.0}, "channels is 2.0, not a whole number from 1 to 4"),
        ({"mean": "0.5"}, "mean is '0.5', not a list of numbers"),
        ({"mean": 0.5}, "mean is 0.5, not a list of numbers"),
        ({"mean": [0.1, 0.2]}, "mean has 2 values for 3 channels"),
        ({"std": [0.1, True, 0.3]}, "std holds True, which is not a number"),
        ({"std": [float("nan")]}, "std holds nan, which is not a finite number"),
        ({"std": [0.5, 0, 1]}, "std [0.5, 0.0, 1.0] has a value that is not above 0"),
        ({"classes": "cat"}, "its classes are a str, not a list of names"),
        ({"classes": ["cat", ""]}, "class name '' is not a non-empty string"),
        ({"classes": ["cat", 7]}, "class name 7 is not a non-empty string"),
        ({"classes": ["cat", "\x1b[2J"]}, "class name '\\x1b[2J' holds control characters"),
        ({"classes": ["cat", "cat"]}, "class name 'cat' appears twice"),
    ],
)
def test_each_problem_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        checked_info({**INFO, **change})
    assert str(refused.value) == message


def test_a_description_that_is_not_a_mapping_or_lacks_keys_is_named() -> None:
    with pytest.raises(ValueError) as refused:
        checked_info([1, 2])
    assert str(refused.value) == "its dataset info is a list, not a mapping"
    with pytest.raises(ValueError) as refused:
        checked_info({k: v for k, v in INFO.items() if k not in ("height", "std")})
    assert str(refused.value) == "its dataset info lacks height, std"


def test_how_many_classes_a_classifier_needs_is_said_with_the_count() -> None:
    assert class_names_problem(["only"]) is None  # a checkpoint may describe one
    assert class_names_problem([], minimum=1) == (
        "it has 0 classes, and a classifier needs at least 1"
    )
    assert class_names_problem(["only"], minimum=2) == (
        "it has 1 class, and a classifier needs at least 2"
    )
    assert class_names_problem(("a", "b"), minimum=2) is None
    assert class_names_problem(None) == "its classes are a NoneType, not a list of names"


def splits(**change: Any) -> Splits:
    fields: dict[str, Any] = dict(
        train_images=torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
        train_labels=torch.tensor([0, 1, 2, 0]),
        test_images=torch.zeros(2, 1, 2, 2, dtype=torch.uint8), test_labels=torch.tensor([1, 2]),
        classes=("a", "b", "c"), mean=(0.5,), std=(0.5,),
    )  # fmt: skip
    return Splits(**{**fields, **change})


def test_labels_must_name_one_of_the_classes() -> None:
    check_splits(splits(), "d")
    with pytest.raises(ExptError) as refused:
        check_splits(splits(test_labels=torch.tensor([3, -1])), "d")
    assert str(refused.value) == (
        "Dataset 'd' cannot be used: 2 of its test labels are outside 0..2 for its 3 classes "
        "(the first is 3)."
    )
    with pytest.raises(ExptError, match="its train images and labels are not tensors"):
        check_splits(splits(train_labels=[0, 1, 2, 0]), "d")
