"""What step events cost the training loop: no listener vs one no-op listener.

    python benchmarks/events_overhead.py                # about 2 minutes on 2 CPU cores
    python benchmarks/events_overhead.py --repeats 9 --images 20000 --json out.json

Trains the quick net at batch 64 on CIFAR-sized random images (speed does not depend on
the pixels) through ``expt run``'s own code, in this process, and reads each run's
``images_per_second`` (training phase only) from its metrics. The two variants alternate,
so a machine that gets busier or quieter affects both alike; the overhead is computed
from the medians. Target: within 1% (issue "the training loop as plugins").

* ``none``  -- no plugin listens to a step event (exptorch's own callbacks still do: the
               progress bar, the training-loss log and the non-finite check)
* ``noop``  -- one more callback overriding ``on_before_optimizer_step`` and
               ``on_step_end`` with bodies that do nothing
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def cpu_description() -> dict[str, str]:
    """The CPU, as `lscpu` names it, and what torch can use on it."""
    import torch

    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line),
            model,
        )
    except OSError:
        pass
    return {
        "cpu": model,
        "capability": str(torch.backends.cpu.get_cpu_capability()),
        "threads": str(torch.get_num_threads()),
        "torch": str(torch.__version__),
    }


def make_plugins(images: int, listen: bool) -> Any:
    import torch

    from exptorch import Callback, Splits, hookimpl
    from exptorch.testing import make_plugins as isolated

    class NoOp(Callback):
        def on_before_optimizer_step(self, run: Any, step: int) -> None:
            pass

        def on_step_end(self, run: Any, step: int, loss: float) -> None:
            pass

    class Bench:
        @hookimpl
        def register_datasets(self, register: Any) -> None:
            def load(**_: Any) -> Splits:
                g = torch.Generator().manual_seed(0)
                return Splits(
                    train_images=torch.randint(0, 256, (images, 3, 32, 32), generator=g).byte(),
                    train_labels=torch.randint(0, 10, (images,), generator=g),
                    test_images=torch.randint(0, 256, (256, 3, 32, 32), generator=g).byte(),
                    test_labels=torch.arange(256) % 10,
                    classes=[str(i) for i in range(10)],
                    mean=[0.5] * 3,
                    std=[0.25] * 3,
                )

            register("bench-random", load)

        @hookimpl
        def register_callbacks(self, register: Any) -> None:
            register("noop", lambda run: NoOp() if listen else None)

    return isolated(("bench", Bench()), tiny_dataset=False)


def images_per_second(images: int, listen: bool, root: Path, name: str) -> float:
    from exptorch.rundir import read_metrics
    from exptorch.testing import run_expt

    run = run_expt(
        make_plugins(images, listen), root, name=name, dataset="bench-random",
        batch_size=64, epochs=1, limit_eval_batches=1, log_every=100, echo=lambda _: None,
    )  # fmt: skip
    record = next(r for r in read_metrics(run / "metrics.jsonl") if "images_per_second" in r)
    return float(record["images_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="training images per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each variant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"none": [], "noop": []}
    with tempfile.TemporaryDirectory() as tmp:
        images_per_second(2_000, False, Path(tmp), "warm-up")
        for i in range(args.repeats):
            for variant in ("none", "noop"):
                rate = images_per_second(
                    args.images, variant == "noop", Path(tmp), f"{variant}-{i}"
                )
                rates[variant].append(rate)
                print(f"{variant:5} run {i + 1}: {rate:,.0f} img/s", flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    overhead = 1 - medians["noop"] / medians["none"]
    result = {**cpu_description(), "rates": rates, "medians": medians, "overhead": overhead}
    print(f"CPU: {result['cpu']} ({result['capability']}, {result['threads']} threads)")
    print(
        f"median images/s: none {medians['none']:,.0f}, one no-op listener {medians['noop']:,.0f}"
    )
    print(f"overhead of one no-op step-event listener: {100 * overhead:+.2f}% (target <= 1%)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
