"""Real image files for the folder dataset, predict and eval tests: one colour per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def picture(colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB picture of mostly ``colour`` with noise, ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 40, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8), "RGB")


def make_class_folders(root: Path, per_class: int = 10, grey: bool = False) -> Path:
    """``root/<class>/NNN.png|jpg`` with different sizes and formats; returns ``root``."""
    for c, (name, colour) in enumerate(COLOURS.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = picture(colour, (20 + 3 * i, 24 + 2 * (i % 3)), seed=100 * c + i)
            if grey:
                img = img.convert("L")
            img.save(folder / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))
    return root


_TRAINED: dict[str, Path] = {}


def colour_run(tmp_path_factory) -> Path:
    """One trained colour run per test session, shared by the predict and eval tests."""
    if "run" not in _TRAINED:
        _TRAINED["run"] = train_colour_model(tmp_path_factory.mktemp("colours"))
    return _TRAINED["run"]


def train_colour_model(tmp: Path, checkpoint_format: str = "safetensors") -> Path:
    """Train quicknet on 16x16 colour classes until it knows them; return the run folder."""
    from exptorch.config import RunConfig
    from exptorch.plugins import NO_AUTOLOAD_ENV, load_plugins
    from exptorch.train import run_experiment

    data = make_class_folders(tmp / "colours", per_class=12)
    config = RunConfig(
        model="quicknet", dataset="folder", device="cpu", epochs=12, batch_size=8, lr=0.05,
        momentum=0.9, seed=0, runs_dir=str(tmp / "runs"), name="colours", log_every=1000,
        checkpoint_format=checkpoint_format, keep="last",
        options={"folder_train": str(data), "folder_image_size": 16, "folder_test_fraction": 0.25},
    )  # fmt: skip
    plugins = load_plugins(environ={NO_AUTOLOAD_ENV: "1"})
    return run_experiment(config, plugins, echo=lambda _: None)
