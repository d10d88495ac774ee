"""``expt eval``: a saved model's test loss and accuracy, per class and as a confusion matrix.

The dataset, its options and the normalisation come from the checkpoint unless
given; the class names of the data must match the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.errors import ExptError

if TYPE_CHECKING:
    from exptorch.plugins import Plugins


def evaluate_checkpoint(
    plugins: Plugins,
    checkpoint_path: Path,
    *,
    dataset: str | None = None,
    data_dir: Path | None = None,
    options: Mapping[str, Any] | None = None,
    device: str = "auto",
    batch_size: int = 256,
    download: bool = False,
    trust: bool = False,
) -> dict[str, Any]:
    """Test a checkpoint on a dataset's test split; return a JSON-ready report."""
    from exptorch.checkpoint import load_trained
    from exptorch.data import Batches

    trained = load_trained(plugins, checkpoint_path, device=device, trust=trust)
    checkpoint, info = trained.checkpoint, trained.info
    name, splits = load_test_split(
        plugins, checkpoint, checkpoint_path, info, dataset, data_dir, options, download
    )
    batches = Batches(
        splits.test_images, splits.test_labels, batch_size=batch_size, device=trained.device,
        mean=info.mean, std=info.std, shuffle=False,
    )  # fmt: skip
    confusion, total_loss = confusion_and_loss(trained.model, batches, info.num_classes)
    seen = int(confusion.sum())
    correct = confusion.diagonal()
    per_class = confusion.sum(dim=1)
    return {
        "checkpoint": str(checkpoint_path),
        "epoch": checkpoint.epoch,
        "dataset": name,
        "images": seen,
        "test_loss": total_loss / max(seen, 1),
        "test_accuracy": int(correct.sum()) / max(seen, 1),
        "classes": list(info.classes),
        "per_class": [
            {
                "class": c,
                "images": int(n),
                "correct": int(r),
                "accuracy": int(r) / int(n) if n else None,
            }
            for c, n, r in zip(info.classes, per_class.tolist(), correct.tolist(), strict=True)
        ],
        "confusion_matrix": confusion.tolist(),
    }


def load_test_split(
    plugins: Plugins,
    checkpoint: Any,
    checkpoint_path: Path,
    info: Any,
    dataset: str | None,
    data_dir: Path | None,
    options: Mapping[str, Any] | None,
    download: bool,
) -> tuple[str, Any]:
    """The dataset's name and splits (the checkpoint's unless given), checked against the model."""
    from exptorch.train import default_data_dir

    saved = checkpoint.config
    name = dataset or checkpoint.meta.get("dataset") or saved.get("dataset")
    if not name:
        raise ExptError(
            f"{checkpoint_path} does not say which dataset it was trained on; pass --dataset."
        )
    reg = plugins.get("dataset", name)
    chosen = {**(saved.get("options") or {}), **(options or {})}
    kwargs = {opt.name: chosen.get(opt.name, opt.default) for opt in reg.options}
    folder = data_dir or (Path(saved["data_dir"]) if saved.get("data_dir") else default_data_dir())
    splits = reg.factory(data_dir=folder, download=download, **kwargs)
    splits.validate(name)
    if tuple(splits.classes) != info.classes:
        raise ExptError(
            f"Dataset {name!r} has classes {', '.join(splits.classes)}, but the model was "
            f"trained on {', '.join(info.classes)}."
        )
    shape = tuple(splits.test_images.shape[1:])
    if shape != (info.channels, info.height, info.width):
        raise ExptError(
            f"Dataset {name!r} has {shape[0]}x{shape[1]}x{shape[2]} images (channels x height "
            f"x width), but the model takes {info.channels}x{info.height}x{info.width}."
        )
    return name, splits


def confusion_and_loss(model: Any, batches: Any, classes: int) -> tuple[Any, float]:
    """The confusion matrix (true class by row, predicted by column) and the summed loss."""
    import torch
    import torch.nn.functional as F

    confusion = torch.zeros(classes, classes, dtype=torch.int64)
    total_loss = 0.0
    with torch.no_grad():
        for images, labels in batches:
            logits = model(images).float()
            total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
            pairs = labels.cpu() * classes + logits.argmax(dim=1).cpu()
            confusion += torch.bincount(pairs, minlength=classes * classes).view(classes, classes)
    return confusion, total_loss


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text: totals, a per-class table, and the confusion matrix."""
    lines = [
        f"{report['checkpoint']} (epoch {report['epoch']}) on {report['dataset']}: "
        f"{report['images']:,} test images",
        f"test_loss {report['test_loss']:.4f}  test_accuracy {100 * report['test_accuracy']:.2f}%",
        "",
    ]
    width = max(len("class"), *(len(c) for c in report["classes"]))
    lines.append(f"{'class':<{width}}  {'images':>7}  {'correct':>7}  {'accuracy':>8}")
    for row in report["per_class"]:
        accuracy = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}%"
        lines.append(
            f"{row['class']:<{width}}  {row['images']:>7,}  {row['correct']:>7,}  {accuracy:>8}"
        )
    matrix = report["confusion_matrix"]
    cell = max(5, *(len(f"{v:,}") for row in matrix for v in row))
    lines += ["", "confusion matrix (rows: true class, columns: predicted class, by number)"]
    header = " " * (width + 5) + " ".join(f"{i:>{cell}}" for i in range(len(matrix)))
    lines.append(header)
    for i, (name, row) in enumerate(zip(report["classes"], matrix, strict=True)):
        lines.append(f"{i:>2} {name:<{width}}  " + " ".join(f"{v:>{cell},}" for v in row))
    return "\n".join(lines)
