"""``expt eval``: loss, accuracy, per-class table and confusion matrix of a saved model."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from image_folders import colour_run, make_class_folders

from conftest import normalised, write_cifar10
from exptorch import ExptError, hookimpl
from exptorch.checkpoint import (
    build_model,
    latest_checkpoint,
    load_checkpoint,
    load_trained,
    save_checkpoint,
)
from exptorch.evaluate import evaluate_checkpoint, format_report
from exptorch.rundir import read_metrics
from exptorch.testing import make_plugins, run_expt, tiny_splits


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


# --- the numbers, by hand -------------------------------------------------------------------


class OneImage:
    """Datasets made from the tiny dataset: one test image, renamed classes, smaller images,
    or test labels out of range."""

    def __init__(self, index: int = 0) -> None:
        self.index = index

    @hookimpl
    def register_datasets(self, register) -> None:
        def one(**_):
            splits = tiny_splits()
            i = self.index
            return dataclasses.replace(
                splits, test_images=splits.test_images[i : i + 1],
                test_labels=splits.test_labels[i : i + 1],
            )  # fmt: skip

        def renamed(**_):
            splits = tiny_splits()
            return dataclasses.replace(splits, classes=[f"k{i}" for i in range(10)])

        def small(**_):
            splits = tiny_splits()
            return dataclasses.replace(
                splits, train_images=splits.train_images[:, :, :14, :12],
                test_images=splits.test_images[:, :, :14, :12],
            )  # fmt: skip

        def bad_labels(**_):
            splits = tiny_splits()
            return dataclasses.replace(splits, test_labels=splits.test_labels + 10)

        register("one-image", one)
        register("bad-labels", bad_labels)
        register("renamed", renamed)
        register("small", small)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One epoch on the tiny Fashion-MNIST slice: a model that is right on some images only."""
    runs = tmp_path_factory.mktemp("tiny") / "runs"
    return run_expt(make_plugins(), runs, echo=lambda _: None, name="tiny")


def by_hand(run: Path, images: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[int]]:
    """Each image's cross-entropy and predicted class, computed directly."""
    trained = load_trained(make_plugins(), run, device="cpu")
    with torch.no_grad():
        logits = trained.model.eval()(normalised(images, trained.info.mean, trained.info.std))
    return F.cross_entropy(logits, labels, reduction="none").tolist(), logits.argmax(1).tolist()


def test_eval_numbers_equal_a_hand_computed_pass_over_uneven_batches(tiny_run: Path) -> None:
    report = evaluate_checkpoint(make_plugins(), tiny_run, device="cpu", batch_size=50)
    splits = tiny_splits()
    losses, predicted = by_hand(tiny_run, splits.test_images, splits.test_labels)
    confusion = [[0] * 10 for _ in range(10)]
    for true, guess in zip(splits.test_labels.tolist(), predicted, strict=True):
        confusion[true][guess] += 1
    assert report["checkpoint"] == str(tiny_run)
    assert (report["dataset"], report["images"]) == ("tiny-fashion-mnist", 128)
    assert report["test_loss"] == pytest.approx(sum(losses) / 128, rel=1e-5)
    assert report["confusion_matrix"] == confusion
    correct = sum(confusion[i][i] for i in range(10))
    assert 0 < correct < 128  # a model that is neither always right nor always wrong
    assert report["test_accuracy"] == correct / 128


def test_eval_on_one_image_leaves_classes_without_images_unscored(tiny_run: Path) -> None:
    splits = tiny_splits()
    labels = splits.test_labels.tolist()
    losses, predicted = by_hand(tiny_run, splits.test_images, splits.test_labels)
    right = next(i for i, (t, p) in enumerate(zip(labels, predicted, strict=True)) if t == p)
    plugins = make_plugins(("one", OneImage(right)))
    report = evaluate_checkpoint(plugins, tiny_run, dataset="one-image", device="cpu")
    assert (report["images"], report["test_accuracy"]) == (1, 1.0)
    assert report["test_loss"] == pytest.approx(losses[right], rel=1e-5)
    scored = [row for row in report["per_class"] if row["accuracy"] is not None]
    name = splits.classes[labels[right]]
    assert scored == [{"class": name, "images": 1, "correct": 1, "accuracy": 1.0}]


def test_eval_refuses_other_class_names_and_image_sizes_in_one_sentence(tiny_run: Path) -> None:
    plugins = make_plugins(("other", OneImage()))
    with pytest.raises(ExptError) as renamed:
        evaluate_checkpoint(plugins, tiny_run, dataset="renamed", device="cpu")
    trained_on = ", ".join(tiny_splits().classes)
    assert str(renamed.value) == (
        f"Dataset 'renamed' has classes {', '.join(f'k{i}' for i in range(10))}, but the model "
        f"was trained on {trained_on}."
    )
    with pytest.raises(ExptError) as small:
        evaluate_checkpoint(plugins, tiny_run, dataset="small", device="cpu")
    assert str(small.value) == (
        "Dataset 'small' has 1x14x12 images (channels x height x width), but the model takes "
        "1x28x28."
    )


def test_eval_reads_the_data_where_the_run_did_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CIFAR-10 run with --data-dir: eval finds the data there without being told, reads
    another copy when given --data-dir, and (as a library call) does not download."""
    first = tmp_path / "first"
    write_cifar10(first)
    plugins = make_plugins()
    run = run_expt(plugins, tmp_path / "runs", echo=lambda _: None, dataset="cifar10",
                   data_dir=str(first), batch_size=20, name="c")  # fmt: skip
    monkeypatch.setenv("EXPT_DATA_DIR", str(tmp_path / "nothing-here"))
    assert evaluate_checkpoint(plugins, run, device="cpu")["images"] == 40
    second = tmp_path / "second"
    write_cifar10(second, test=30)
    assert evaluate_checkpoint(plugins, run, data_dir=second, device="cpu")["images"] == 30
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a download would fail at once
    with pytest.raises(ExptError) as missing:  # called as a library, eval downloads nothing
        evaluate_checkpoint(plugins, run, data_dir=tmp_path / "empty", device="cpu")
    assert str(missing.value) == (
        f"CIFAR-10 is not in {tmp_path / 'empty'} (no cifar-10-batches-py folder) and "
        "--no-download was given."
    )


def test_eval_loads_a_full_checkpoint_only_when_trusted(tiny_run: Path, tmp_path: Path) -> None:
    plugins = make_plugins()
    ckpt = load_checkpoint(plugins, latest_checkpoint(tiny_run, plugins))
    ckpt.module = build_model(plugins, ckpt)
    full = plugins.get("checkpoint format", "full").factory()
    path = save_checkpoint(full, ckpt, tmp_path / "model.full.pt")
    with pytest.raises(ExptError, match="--trust-checkpoint"):
        evaluate_checkpoint(plugins, path, device="cpu")
    assert evaluate_checkpoint(plugins, path, device="cpu", trust=True)["images"] == 128


def test_text_report_in_full() -> None:
    report = {
        "checkpoint": "runs/a", "epoch": 2, "dataset": "toy", "images": 1234,
        "test_loss": 0.5, "test_accuracy": 0.75, "classes": ["cat", "dog"],
        "per_class": [
            {"class": "cat", "images": 1234, "correct": 925, "accuracy": 925 / 1234},
            {"class": "dog", "images": 0, "correct": 0, "accuracy": None},
        ],
        "confusion_matrix": [[925, 309], [0, 0]],
    }  # fmt: skip
    assert format_report(report) == (
        "runs/a (epoch 2) on toy: 1,234 test images\n"
        "test_loss 0.5000  test_accuracy 75.00%\n"
        "\n"
        "class   images  correct  accuracy\n"
        "cat      1,234      925    74.96%\n"
        "dog          0        0         -\n"
        "\n"
        "confusion matrix (rows: true class, columns: predicted class, by number)\n"
        "              0     1\n"
        " 0 cat      925   309\n"
        " 1 dog        0     0"
    )


def test_eval_takes_the_dataset_from_the_checkpoint_or_asks_for_it(
    tiny_run: Path, tmp_path: Path
) -> None:
    """The model's record (``meta``) names the dataset, and so does the run's configuration;
    either is enough (checkpoints written by other tools may hold one), and without both the
    user is asked for --dataset."""
    plugins = make_plugins()
    saved = torch.load(latest_checkpoint(tiny_run, plugins), weights_only=True)

    def without(*places: str) -> Path:
        data = {**saved, "meta": dict(saved["meta"]), "config": dict(saved["config"])}
        for place in places:
            del data[place]["dataset"]
        path = tmp_path / f"without-{'-'.join(places)}.pt"
        torch.save(data, path)
        return path

    for places in (("meta",), ("config",)):
        report = evaluate_checkpoint(plugins, without(*places), device="cpu")
        assert (report["dataset"], report["images"]) == ("tiny-fashion-mnist", 128)
    path = without("meta", "config")
    with pytest.raises(ExptError) as info:
        evaluate_checkpoint(plugins, path, device="cpu")
    assert str(info.value) == (
        f"{path} does not say which dataset it was trained on; pass --dataset."
    )


def test_eval_on_data_exptorch_cannot_use_names_the_dataset(tiny_run: Path) -> None:
    plugins = make_plugins(("other", OneImage()))
    with pytest.raises(ExptError, match=r"^Dataset 'bad-labels' cannot be used: "):
        evaluate_checkpoint(plugins, tiny_run, dataset="bad-labels", device="cpu")
