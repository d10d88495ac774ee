"""GPU checks for a machine with one CUDA GPU, as one short script (about 1 minute on an H200).

    python benchmarks/gpu_check.py --json gpu.json

1. the ``cuda`` device plugin: ``expt run --device cuda`` picks the GPU and records it;
2. data on the device: a quick-net CIFAR-10 epoch (50,000 CIFAR-10-format images) with
   the dataset resident in GPU memory; the target is under 2 s per epoch;
3. VGG16 with bf16 and channels-last through ``expt run`` against a hand-written loop on
   the same data path, each timed on its second epoch (target: within 10%), and against
   the same loop reading its loss every step, as ``expt run`` does for its step events.

It exits non-zero with one sentence when no CUDA GPU is present.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import expt_run, handwritten, write_cifar10  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--vgg-batches",
        type=int,
        default=300,
        help="VGG16 steps per epoch (two epochs; the second is timed)",
    )
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU here: run this on a machine with one.")
    results: dict[str, object] = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    print(f"GPU: {results['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar10(root / "data", 50_000, 10_000)
        runs = root / "runs"

        # 1 + 2: the cuda plugin, the data resident on the device, quick-net epoch time.
        quick = expt_run(root / "data", runs, "quicknet-cuda", 3,
                         ["--data-on-device", "on"], device="cuda")  # fmt: skip
        config = json.loads((runs / "quicknet-cuda" / "config.json").read_text())
        assert config["device"].startswith("cuda"), config["device"]
        results["quicknet"] = {**quick, "device": config["device"],
                               "precision": config["config"]["precision"]}  # fmt: skip
        best = min(quick["epoch_seconds"][1:])  # the first epoch includes warm-up
        print(
            f"quicknet: epoch {best:.2f} s (target < 2 s), {quick['images_per_second']:,.0f} "
            f"img/s, precision {config['config']['precision']}, device {config['device']}"
        )

        # 3: VGG16, bf16 + channels-last, expt against a hand-written loop. Each side
        # trains two epochs of --vgg-batches steps and times the second: a single short
        # epoch mostly times cuDNN's and the allocator's warm-up.
        flags = ["--model", "vgg16", "--precision", "bf16", "--channels-last", "on",
                 "--batch-size", "128", "--limit-train-batches", str(args.vgg_batches),
                 "--limit-eval-batches", "5", "--data-on-device", "on"]  # fmt: skip
        vgg = expt_run(root / "data", runs, "vgg16-cuda", 2, flags, device="cuda")
        expt_rate = vgg["images_per_second_by_epoch"][-1]
        hand = {
            reads: handwritten(
                root / "data",
                2,
                "bf16",
                True,
                device="cuda",
                model="vgg16",
                batch_size=128,
                limit=args.vgg_batches,
                warmup_epochs=1,
                read_loss_every_step=reads,
            )
            for reads in (False, True)
        }
        ratio = expt_rate / hand[False]
        results["vgg16"] = {
            "expt": vgg,
            "expt_second_epoch_images_per_second": expt_rate,
            "handwritten_images_per_second": hand[False],
            "handwritten_reading_loss_each_step_images_per_second": hand[True],
            "ratio": ratio,
            "ratio_to_loop_reading_loss": expt_rate / hand[True],
        }
        print(
            f"vgg16 bf16+channels-last, second epoch: expt {expt_rate:,.0f} img/s, hand-written "
            f"{hand[False]:,.0f} img/s, ratio {ratio:.3f} (target >= 0.90); the hand-written "
            f"loop reading its loss every step as expt does: {hand[True]:,.0f} img/s, ratio "
            f"{expt_rate / hand[True]:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
