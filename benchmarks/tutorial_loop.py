"""The tutorial's CIFAR-10 training loop, reimplemented faithfully as the speed reference.

Per-sample PIL images through ``torchvision.datasets.CIFAR10`` and ``ToTensor``, a
``DataLoader`` with batch 64, the CIFAR10-quick ``nn.Sequential``, SGD at 0.01, a
TensorBoard scalar every 100 steps, a test pass with ``no_grad`` and a
``torch.save`` per epoch -- as a learner writes it after chapter 8.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter


class LocalCIFAR10(torchvision.datasets.CIFAR10):
    """The stock dataset class, minus the checksum check (the benchmark writes its own files)."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as fh:
            self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def tutorial_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, 1, 2),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5, 1, 2),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, 1, 2),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 64),
        nn.Linear(64, 10),
    )


def run(data_dir: Path, out_dir: Path, epochs: int = 1) -> dict[str, float]:
    """Train as the tutorial does; return training images/s and final test accuracy."""
    transform = torchvision.transforms.ToTensor()
    train_data = LocalCIFAR10(str(data_dir), train=True, transform=transform)
    test_data = LocalCIFAR10(str(data_dir), train=False, transform=transform)
    train_loader = DataLoader(train_data, batch_size=64)
    test_loader = DataLoader(test_data, batch_size=64)

    model = tutorial_model()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    writer = SummaryWriter(str(out_dir / "logs_train"))
    total_train_step = 0
    train_seconds, train_images, accuracy = 0.0, 0, 0.0
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        for imgs, targets in train_loader:
            outputs = model(imgs)
            loss = loss_fn(outputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_train_step += 1
            train_images += len(targets)
            if total_train_step % 100 == 0:
                writer.add_scalar("train_loss", loss.item(), total_train_step)
        train_seconds += time.perf_counter() - start

        model.eval()
        total_test_loss, total_accuracy = 0.0, 0
        with torch.no_grad():
            for imgs, targets in test_loader:
                outputs = model(imgs)
                total_test_loss += loss_fn(outputs, targets).item()
                total_accuracy += (outputs.argmax(1) == targets).sum().item()
        accuracy = total_accuracy / len(test_data)
        writer.add_scalar("test_loss", total_test_loss, epoch)
        writer.add_scalar("test_accuracy", accuracy, epoch)
        torch.save(model, out_dir / f"tudui_{epoch}.pth")
    writer.close()
    return {"images_per_second": train_images / train_seconds, "test_accuracy": accuracy}
