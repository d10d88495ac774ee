"""Time exptorch against the tutorial's loop on one machine, in one run.

    python benchmarks/bench.py                 # about 4 minutes on 2 CPU cores
    python benchmarks/bench.py --train-images 10000 --json results.json

Measures training throughput (images/s, training phase only, every variant on the
same CIFAR-10-format data, batch 64, SGD lr 0.01, CPU) for:

* ``tutorial``     -- the tutorial's loop as a learner writes it (``tutorial_loop.py``)
* ``handwritten``  -- a bare loop over exptorch's data path (uint8 tensors, per-batch
                      normalisation) with expt's default CPU settings (fp32, channels-last):
                      the floor for framework overhead; ``handwritten-fast`` adds bf16
* ``expt``         -- ``expt run`` with default settings
* ``expt-fast``    -- ``expt run`` with the fastest settings for this machine
* ``lightning``    -- the same model, data path and settings (fp32, channels-last) under
                      PyTorch Lightning, if installed

plus each ``expt run``'s peak resident memory and the start-up time of ``expt --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXPT = [sys.executable, "-m", "exptorch"]
FAST_FLAGS = ["--precision", "bf16", "--channels-last", "on"]
RSS_WRAPPER = (
    "import resource, subprocess, sys;"
    "code = subprocess.run(sys.argv[1:]).returncode;"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
    "sys.exit(code)"
)


def write_cifar10(root: Path, train: int, test: int) -> None:
    """CIFAR-10-format batches of random images (speed does not depend on the pixels)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per_file = -(-train // 5)
    for i in range(5):
        n = min(per_file, train - i * per_file)
        if n <= 0:
            break
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}  # fmt: skip
        with open(folder / f"data_batch_{i + 1}", "wb") as fh:
            pickle.dump(entry, fh)
    entry = {"data": rng.integers(0, 256, (test, 3072), dtype=np.uint8),
             "labels": rng.integers(0, 10, test).tolist()}  # fmt: skip
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(entry, fh)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]  # fmt: skip
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names}, fh)


def handwritten(
    data_dir: Path,
    epochs: int,
    precision: str,
    channels_last: bool,
    *,
    device: str = "cpu",
    model: str = "quicknet",
    batch_size: int = 64,
    limit: int | None = None,
    warmup_epochs: int = 0,
    read_loss_every_step: bool = False,
) -> float:
    """A bare loop over exptorch's own data path: the framework-overhead reference.

    The model comes from the same plugin factory ``expt run`` uses, so both time the
    same network; everything around it is the shortest correct loop. The first
    ``warmup_epochs`` of the ``epochs`` train but are not timed. With
    ``read_loss_every_step`` the loop copies each step's loss to the host, as ``expt run``
    does to hand step listeners a float, which waits for the device every step.
    """
    import torch
    import torch.nn.functional as F

    from exptorch.data import Batches
    from exptorch.plugins import load_plugins
    from exptorch_plugins.cifar10 import load

    torch.manual_seed(0)
    target = torch.device(device)
    splits = load(data_dir=data_dir, download=False)
    info = splits.info
    batches = Batches(splits.train_images, splits.train_labels, batch_size=batch_size,
                      device=target, mean=info.mean, std=info.std, shuffle=True,
                      channels_last=channels_last, limit=limit)  # fmt: skip
    plugins = load_plugins(environ={"EXPT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    net = plugins.get("model", model).factory(info).to(target)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    seconds, images = 0.0, 0
    for epoch in range(1, epochs + 1):
        batches.set_epoch(epoch)
        net.train()
        start, seen = time.perf_counter(), 0
        for x, y in batches:
            with torch.autocast(target.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if read_loss_every_step:
                loss.item()
            seen += len(y)
        loss.item()  # wait for the device before stopping the clock
        if epoch > warmup_epochs:
            seconds += time.perf_counter() - start
            images += seen
    return images / seconds


def lightning(data_dir: Path, epochs: int) -> float | None:
    try:
        import lightning as L
    except ImportError:
        try:
            import pytorch_lightning as L  # type: ignore[no-redef]
        except ImportError:
            return None
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from exptorch_plugins.cifar10 import MEAN, STD, load
    from exptorch_plugins.networks import QuickNet

    splits = load(data_dir=data_dir, download=False)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = QuickNet().to(memory_format=torch.channels_last)

        def training_step(self, batch, _):
            x, y = batch
            x = ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(self.net(x), y)
            if self.global_step % 100 == 0:
                self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = DataLoader(TensorDataset(splits.train_images, splits.train_labels), batch_size=64,
                        shuffle=True)  # fmt: skip
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(Module(), loader)
    return epochs * len(splits.train_labels) / (time.perf_counter() - start)


def expt_run(
    data_dir: Path, runs: Path, name: str, epochs: int, extra: list[str], device: str = "cpu"
) -> dict:
    args = [*EXPT, "run", "--dataset", "cifar10", "--data-dir", str(data_dir), "--device", device,
            "--epochs", str(epochs), "--seed", "0", "--runs-dir", str(runs), "--name", name,
            "--no-download", *extra]  # fmt: skip
    result = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *args], capture_output=True,
                            text=True)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"expt run {name} failed:\n{result.stderr}")
    rss_kb = int(result.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0])
    records = [json.loads(line) for line in (runs / name / "metrics.jsonl").open()]
    epochs_done = [r for r in records if "images_per_second" in r]
    return {
        "images_per_second": statistics.fmean(r["images_per_second"] for r in epochs_done),
        "images_per_second_by_epoch": [r["images_per_second"] for r in epochs_done],
        "epoch_seconds": [r["epoch_time"] for r in epochs_done],
        "test_accuracy": epochs_done[-1]["test_accuracy"],
        "peak_rss_mb": rss_kb / 1024,
    }


def help_startup(repeats: int = 10) -> float:
    expt = shutil.which("expt") or str(Path(sys.executable).with_name("expt"))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([expt, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_description() -> dict[str, object]:
    """What the figures depend on: the CPU's model name (``lscpu``), torch's CPU capability,
    and whether bf16/fp16 are native (AVX512-BF16/AMX) or emulated."""
    import subprocess

    import torch

    from exptorch.assemble import NATIVE_LOW_PRECISION, cpu_features

    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(
            (line.partition(":")[2].strip() for line in lscpu.splitlines()
             if line.startswith("Model name")), model,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass
    features = cpu_features()
    return {
        "model_name": model,
        "cpus": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native": {
            precision: sorted(f for f in flags if f in features)
            for precision, flags in NATIVE_LOW_PRECISION.items()
        },
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=50_000)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar10(root / "data", args.train_images, args.test_images)
        print(
            f"data: {args.train_images} train / {args.test_images} test CIFAR-10-format images,"
            f" {args.epochs} epoch(s), batch 64, {torch.get_num_threads()} threads",
            flush=True,
        )

        sys.path.insert(0, str(HERE))
        from tutorial_loop import run as tutorial

        results["tutorial"] = tutorial(root / "data", root, epochs=args.epochs)
        results["handwritten"] = {
            "images_per_second": handwritten(root / "data", args.epochs, "fp32", True)
        }
        results["handwritten-contiguous"] = {
            "images_per_second": handwritten(root / "data", args.epochs, "fp32", False)
        }
        results["handwritten-fast"] = {
            "images_per_second": handwritten(root / "data", args.epochs, "bf16", True)
        }
        results["expt"] = expt_run(root / "data", root / "runs", "default", args.epochs, [])
        results["expt-fast"] = expt_run(root / "data", root / "runs", "fast", args.epochs,
                                        FAST_FLAGS)  # fmt: skip
        lightning_ips = lightning(root / "data", args.epochs)
        if lightning_ips is not None:
            results["lightning"] = {"images_per_second": lightning_ips}
    results["expt --help"] = {"seconds": help_startup()}

    base = results["tutorial"]["images_per_second"]
    print(f"\n{'variant':18} {'images/s':>10} {'x tutorial':>11} {'peak RSS':>10}")
    for name, r in results.items():
        if "images_per_second" not in r:
            continue
        rss = f"{r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
        print(f"{name:18} {r['images_per_second']:10,.0f} {r['images_per_second'] / base:10.2f}x"
              f" {rss:>10}")  # fmt: skip
    overhead = (
        1 - results["expt"]["images_per_second"] / results["handwritten"]["images_per_second"]
    )
    overhead_fast = 1 - (results["expt-fast"]["images_per_second"]
                         / results["handwritten-fast"]["images_per_second"])  # fmt: skip
    print(
        f"framework overhead vs hand-written loop: {100 * overhead:.1f}% (fp32), "
        f"{100 * overhead_fast:.1f}% (fast settings)"
    )
    print(f"expt --help: {results['expt --help']['seconds'] * 1000:.0f} ms (median of 10)")
    cpu = cpu_description()
    results["machine"] = cpu
    native = {k: ", ".join(v) or "emulated" for k, v in cpu["native"].items()}  # type: ignore[attr-defined]
    print(
        f"machine: {cpu['model_name']}, {cpu['cpus']} CPUs, torch CPU capability "
        f"{cpu['torch_cpu_capability']}, bf16: {native['bf16']}, fp16: {native['fp16']}, "
        f"torch {torch.__version__}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
