"""After ``pip uninstall exptorch-torchvision-models``: its names are gone from ``expt``.

Run by exptorch's ``tox -e plugin`` with the interpreter the package was removed from.
"""

import json
import subprocess
import sys
import tempfile


def expt(*args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [sys.executable, "-m", "exptorch", *args], cwd=cwd, capture_output=True, text=True
        )


def main() -> int:
    listed = expt("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    info = json.loads(listed.stdout)
    names = {row["name"] for row in info["plugins"]}
    models = {m for row in info["plugins"] for m in row["registered"].get("model", [])}
    leftovers = sorted({"torchvision_models"} & names | {m for m in models if m.startswith("tv-")})
    assert not leftovers, f"still registered after uninstalling: {leftovers}"
    run = expt("run", "--model", "tv-resnet18", "--dataset", "fashion-mnist-sample")
    assert run.returncode != 0 and "Unknown model 'tv-resnet18'" in run.stderr, run.stderr
    print(
        "exptorch-torchvision-models is uninstalled: no plugin, no tv-* model, tv-resnet18 unknown"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
