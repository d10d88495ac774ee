"""``expt predict``: classify image files with a saved model, needing nothing but the checkpoint.

The checkpoint's ``meta`` says which model to build (and with which options),
the class names, the input size and channels, and the normalisation used in
training. Each image is read with :func:`exptorch.load_image` (the same code the
``folder`` dataset decodes with), then normalised by the same per-batch code the
training loop uses, so a file is seen exactly as training would have seen it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.errors import ExptError
from exptorch.images import is_image_file, load_image

if TYPE_CHECKING:
    from exptorch.plugins import Plugins


@dataclass
class Prediction:
    """The ``top`` classes for one image file, most probable first."""

    file: str
    top: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "class": self.top[0][0],
            "probability": self.top[0][1],
            "top": [{"class": c, "probability": p} for c, p in self.top],
        }


@dataclass
class Predictions:
    """What ``expt predict`` prints: predictions, files that failed, and the checkpoint's facts."""

    checkpoint: str
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "input": self.input,
            "predictions": [p.to_dict() for p in self.predictions],
            "errors": [{"file": f, "error": e} for f, e in self.failures],
        }

    def format(self) -> str:
        lines = []
        for p in self.predictions:
            best, probability = p.top[0]
            lines.append(f"{p.file}: {best} ({100 * probability:.1f}%)")
            lines += [f"    {c} ({100 * q:.1f}%)" for c, q in p.top[1:]]
        return "\n".join(lines)


def collect_files(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, and the image files inside folders (recursively, sorted)."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_image_file(p))
            if not found:
                problems.append((str(path), f"{path} holds no image files."))
            files += found
        else:
            files.append(path)
    return files, problems


def predict_files(
    plugins: Plugins,
    checkpoint_path: Path,
    paths: Sequence[Path],
    *,
    top: int = 1,
    device: str = "auto",
    trust: bool = False,
    batch_size: int = 64,
) -> Predictions:
    """Classify every image in ``paths``; unreadable files are reported, not fatal."""
    import torch

    from exptorch.checkpoint import load_trained
    from exptorch.data import Batches

    if top < 1:
        raise ExptError(f"--top must be at least 1, not {top}.")
    trained = load_trained(plugins, checkpoint_path, device=device, trust=trust)
    info, model, target = trained.info, trained.model, trained.device

    result = Predictions(
        checkpoint=str(checkpoint_path),
        input={"channels": info.channels, "height": info.height, "width": info.width},
    )
    files, result.failures = collect_files(paths)
    loaded: list[tuple[Path, torch.Tensor]] = []
    for path in files:
        try:
            image = load_image(path, channels=info.channels, height=info.height, width=info.width)
        except ExptError as exc:
            result.failures.append((str(path), str(exc)))
            continue
        loaded.append((path, image))
    if not loaded:
        return result
    images = torch.stack([image for _, image in loaded])
    batches = Batches(
        images, torch.zeros(len(images), dtype=torch.int64), batch_size=batch_size,
        device=target, mean=info.mean, std=info.std, shuffle=False, data_on_device="off",
    )  # fmt: skip
    k = min(top, info.num_classes)
    probabilities = []
    with torch.no_grad():
        for batch, _ in batches:
            probabilities.append(torch.softmax(model(batch).float(), dim=1).cpu())
    values, indices = torch.cat(probabilities).topk(k, dim=1)
    for (path, _), vs, ix in zip(loaded, values.tolist(), indices.tolist(), strict=True):
        top_k = [(info.classes[i], round(v, 6)) for v, i in zip(vs, ix, strict=True)]
        result.predictions.append(Prediction(str(path), top_k))
    return result
