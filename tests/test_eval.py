"""``expt eval``: loss, accuracy, per-class table and confusion matrix of a saved model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from image_folders import colour_run, make_class_folders

from exptorch import ExptError
from exptorch.evaluate import evaluate_checkpoint, format_report
from exptorch.rundir import read_metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return colour_run(tmp_path_factory)


def test_eval_reproduces_the_runs_own_test_metrics(expt, run: Path) -> None:
    result = expt("eval", "--checkpoint", str(run), "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    final = [r for r in read_metrics(run / "metrics.jsonl") if "test_loss" in r][-1]
    assert report["epoch"] == 12 and report["dataset"] == "folder"
    assert report["images"] == 9  # a quarter of each class's 12 images
    assert report["test_accuracy"] == pytest.approx(final["test_accuracy"])
    assert report["test_loss"] == pytest.approx(final["test_loss"], rel=1e-5)
    matrix = report["confusion_matrix"]
    assert sum(map(sum, matrix)) == 9 and [sum(row) for row in matrix] == [3, 3, 3]
    assert [row["class"] for row in report["per_class"]] == ["blue", "green", "red"]
    correct = sum(row["correct"] for row in report["per_class"])
    assert correct == sum(matrix[i][i] for i in range(3))
    assert correct / 9 == pytest.approx(report["test_accuracy"])
    for row in report["per_class"]:
        assert row["accuracy"] == pytest.approx(row["correct"] / row["images"])
    assert all(type(n) is int for line in matrix for n in line)  # counts, not floats


def test_eval_text_report_and_another_test_folder(plugins, run: Path, tmp_path: Path) -> None:
    other = make_class_folders(tmp_path / "other", per_class=5)
    report = evaluate_checkpoint(plugins, run, options={"folder_test": str(other)}, device="cpu")
    assert report["images"] == 15
    text = format_report(report)
    assert "test_accuracy" in text and "confusion matrix" in text
    assert text.count("\n") > 10 and " 2 red" in text


def test_eval_on_a_dataset_with_other_classes_is_one_sentence(plugins, run: Path) -> None:
    with pytest.raises(ExptError) as info:
        evaluate_checkpoint(plugins, run, dataset="fashion-mnist-sample")
    message = str(info.value)
    assert "has classes T-shirt/top" in message and "trained on blue, green, red" in message


def test_eval_of_a_missing_checkpoint(plugins, tmp_path: Path) -> None:
    with pytest.raises(ExptError, match="holds no checkpoint"):
        evaluate_checkpoint(plugins, tmp_path)


def test_text_report_columns_line_up_under_their_headings() -> None:
    report = {
        "checkpoint": "runs/a/checkpoints/epoch-003.pt", "epoch": 3, "dataset": "folder",
        "images": 1208, "test_loss": 0.01234, "test_accuracy": 0.99751,
        "classes": ["cat", "dog", "emu"],
        "per_class": [
            {"class": "cat", "images": 1203, "correct": 1200, "accuracy": 1200 / 1203},
            {"class": "dog", "images": 5, "correct": 5, "accuracy": 1.0},
            {"class": "emu", "images": 0, "correct": 0, "accuracy": None},
        ],
        "confusion_matrix": [[1200, 3, 0], [0, 5, 0], [0, 0, 0]],
    }  # fmt: skip
    lines = format_report(report).splitlines()
    assert lines[:3] == [
        "runs/a/checkpoints/epoch-003.pt (epoch 3) on folder: 1,208 test images",
        "test_loss 0.0123  test_accuracy 99.75%",
        "",
    ]

    def ends(line: str) -> list[int]:
        return [word.end() for word in re.finditer(r"\S+", line)]

    table = lines[3:7]
    assert [line.split() for line in table] == [
        ["class", "images", "correct", "accuracy"],
        ["cat", "1,203", "1,200", "99.75%"],
        ["dog", "5", "5", "100.00%"],
        ["emu", "0", "0", "-"],
    ]
    assert all(ends(line)[1:] == ends(table[0])[1:] for line in table)  # right-aligned numbers

    heading = lines.index(
        "confusion matrix (rows: true class, columns: predicted class, by number)"
    )
    header, *rows = lines[heading + 1 :]
    assert header.split() == ["0", "1", "2"]
    assert [row.split() for row in rows] == [
        ["0", "cat", "1,200", "3", "0"], ["1", "dog", "0", "5", "0"], ["2", "emu", "0", "0", "0"],
    ]  # fmt: skip
    # each predicted class's number sits over its column
    assert all(ends(row)[2:] == ends(header) for row in rows)
