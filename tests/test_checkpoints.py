"""Checkpoint formats on real files: round trips, devices, trust, damage, kills and --keep."""

from __future__ import annotations

import collections
import contextlib
import fractions
import json
import math
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from exptorch import Checkpoint, ExptError, hookimpl
from exptorch.checkpoint import (
    build_model,
    checkpoint_files,
    latest_checkpoint,
    load_checkpoint,
    load_trained,
    prune_checkpoints,
    save_checkpoint,
)
from exptorch.config import RunConfig
from exptorch.train import run_experiment
from exptorch.types import DatasetInfo
from exptorch_plugins.networks import QuickNet

FORMATS = ["state_dict", "safetensors", "full"]
INFO = DatasetInfo(1, 28, 28, tuple(f"c{i}" for i in range(10)), (0.3,), (0.35,))


def trained_checkpoint(optimizer: str = "sgd", epoch: int = 1) -> Checkpoint:
    """A QuickNet after two real optimizer steps, with every kind of state a run saves."""
    torch.manual_seed(0)
    model = QuickNet(1, 28, 28, 10)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    for _ in range(2):
        loss = model(torch.randn(4, 1, 28, 28)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Checkpoint(
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        epoch=epoch,
        step=2 * epoch,
        config={"model": "quicknet", "lr": 0.1, "options": {"x": None}},
        meta={"model": "quicknet", "model_options": {}, "info": INFO.to_dict()},
        extra={
            "torch_rng_state": torch.get_rng_state(),
            "position": {"epoch": 2, "batch": 3, "epoch_loss": 1.5, "seen": 12},
        },
        module=model,
    )


def fmt(plugins, name):
    return plugins.get("checkpoint format", name).factory()


def save(plugins, name: str, checkpoint: Checkpoint, folder: Path, stem: str = "epoch-001") -> Path:
    f = fmt(plugins, name)
    return save_checkpoint(f, checkpoint, folder / f"{stem}{f.suffix}")


def assert_same(a, b) -> None:
    """Equal nested state: tensors bit for bit, everything else by value and type."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_round_trip(plugins, tmp_path: Path, name: str, optimizer: str) -> None:
    original = trained_checkpoint(optimizer)
    path = save(plugins, name, original, tmp_path)
    loaded = load_checkpoint(plugins, path, trust=True)
    assert_same(original.model_state, loaded.model_state)
    assert_same(original.optimizer_state, loaded.optimizer_state)
    assert_same(original.extra, loaded.extra)
    assert (loaded.epoch, loaded.step) == (1, 2)
    assert loaded.config == original.config and loaded.meta == original.meta
    # The loaded state really drives a model and an optimizer.
    model = build_model(plugins, loaded)
    assert_same(model.state_dict(), original.model_state)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(loaded.optimizer_state)
    # Nothing but the checkpoint's own files is left behind (no staging folders).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name] + ([path.name + ".json", path.name + ".state"] if name == "safetensors" else [])
    )


def test_safetensors_files_are_safetensors_and_json(plugins, tmp_path: Path) -> None:
    from safetensors import safe_open

    path = save(plugins, "safetensors", trained_checkpoint(), tmp_path)
    sidecar = json.loads((tmp_path / "epoch-001.safetensors.json").read_text())
    assert sidecar["epoch"] == 1 and sidecar["state"]["file"] == "epoch-001.safetensors.state"
    assert sidecar["meta"]["info"]["classes"][0] == "c0"
    # both headers say what wrote them, for tools that read safetensors files alone
    with safe_open(path, "pt") as fh:
        assert "model.0.weight" in set(fh.keys())
        assert fh.metadata() == {"format": "exptorch.safetensors", "epoch": "1"}
    with safe_open(tmp_path / sidecar["state"]["file"], "pt") as fh:
        assert "optimizer/state/0/momentum_buffer" in set(fh.keys())
        assert "extra/torch_rng_state" in set(fh.keys())
        assert fh.metadata() == {"format": "exptorch.safetensors"}
    assert (sidecar["format"], sidecar["format_version"]) == ("exptorch.safetensors", 1)
    assert sidecar["weights"] == {
        "file": path.name, "bytes": path.stat().st_size,
        "order": list(trained_checkpoint().model_state),
    }  # fmt: skip


def test_safetensors_keeps_state_whose_keys_look_like_its_own_markers(
    plugins, tmp_path: Path
) -> None:
    """A callback's state may use any string keys, "__tensor__" included: it comes back as
    it was, not read as a reference to a tensor."""
    original = trained_checkpoint()
    original.extra["callback"] = {"__tensor__": "mine", "__float__": "nan", "x": [1.5]}
    loaded = fmt(plugins, "safetensors").load(save(plugins, "safetensors", original, tmp_path))
    assert loaded.extra["callback"] == {"__tensor__": "mine", "__float__": "nan", "x": [1.5]}


def test_safetensors_names_the_value_it_cannot_store(plugins, tmp_path: Path) -> None:
    import datetime

    original = trained_checkpoint()
    original.extra["callback"] = {"when": datetime.date(2026, 11, 30)}
    with pytest.raises(TypeError) as error:
        save(plugins, "safetensors", original, tmp_path)
    assert str(error.value) == "extra/callback/when holds a date, which safetensors cannot store"


def test_safetensors_sidecar_is_strict_json_and_keeps_nan(plugins, tmp_path: Path) -> None:
    original = trained_checkpoint()
    original.extra["position"]["epoch_loss"] = float("nan")
    original.extra["scale"] = float("-inf")
    path = save(plugins, "safetensors", original, tmp_path)

    def refuse(token: str):
        raise AssertionError(f"the sidecar is not strict JSON: {token}")

    json.loads((tmp_path / "epoch-001.safetensors.json").read_text(), parse_constant=refuse)
    loaded = load_checkpoint(plugins, path)
    assert math.isnan(loaded.extra["position"]["epoch_loss"])
    assert loaded.extra["scale"] == float("-inf")


def test_safetensors_loads_without_unpickling(plugins, tmp_path: Path, monkeypatch) -> None:
    path = save(plugins, "safetensors", trained_checkpoint(), tmp_path)

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle was used")

    import pickle

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    assert load_checkpoint(plugins, path).epoch == 1


def test_untrusted_full_checkpoint_is_refused(plugins, tmp_path: Path) -> None:
    path = save(plugins, "full", trained_checkpoint(), tmp_path)
    with pytest.raises(ExptError, match="--trust-checkpoint") as info:
        load_checkpoint(plugins, path)
    assert str(path) in str(info.value) and "runs whatever code" in str(info.value)
    with pytest.raises(ExptError, match="--trust-checkpoint"):  # as expt eval and predict load
        load_trained(plugins, path, device="cpu")
    assert load_checkpoint(plugins, path, trust=True).module is not None


def test_the_full_format_is_safe_when_called_without_trust(plugins, tmp_path: Path) -> None:
    """Code that calls the format itself (a third-party tool) gets the refusal by default, in
    full, and a trusted load maps the model onto the CPU."""
    from dataclasses import replace

    from exptorch_plugins.full import FullFormat

    checkpoint = trained_checkpoint()
    path = save(plugins, "full", checkpoint, tmp_path)
    with pytest.raises(ExptError) as info:
        FullFormat().load(path)
    assert str(info.value) == (
        f"{path} is a full checkpoint (a pickled model), and loading it runs whatever code the "
        "file contains; pass --trust-checkpoint if you made it or trust its source, or save "
        "with --checkpoint-format safetensors or state_dict instead."
    )
    loaded = FullFormat().load(path, trust=True)
    assert {p.device.type for p in loaded.module.parameters()} == {"cpu"}
    with pytest.raises(ValueError) as no_module:
        FullFormat().save(replace(checkpoint, module=None), tmp_path / "none.full.pt")
    assert str(no_module.value) == "the full format needs the model object (Checkpoint.module)"


def test_trusted_full_file_without_a_model_is_named_as_such(plugins, tmp_path: Path) -> None:
    """A trusted ``.full.pt`` that unpickles to something else (a list, a dict without a model)
    is refused with the reason, not with the attribute error of whatever it held."""
    for i, payload in enumerate(([1, 2], {"epoch": 3})):
        path = tmp_path / f"other-{i}.full.pt"
        torch.save(payload, path)
        with pytest.raises(ExptError) as info:
            load_checkpoint(plugins, path, trust=True)
        assert str(info.value) == (
            f"{path} is not a readable full checkpoint (truncated or not a checkpoint: "
            "not an exptorch full checkpoint)."
        )


def test_compiled_and_ddp_prefixes_are_stripped(plugins, tmp_path: Path) -> None:
    checkpoint = trained_checkpoint()
    plain = dict(checkpoint.model_state)
    checkpoint.model_state = {
        (f"module._orig_mod.{k}" if i % 2 else f"_orig_mod.{k}"): v
        for i, (k, v) in enumerate(plain.items())
    }
    for name in ("state_dict", "safetensors"):
        folder = tmp_path / name
        folder.mkdir()
        loaded = load_checkpoint(plugins, save(plugins, name, checkpoint, folder))
        assert_same(loaded.model_state, plain)
        QuickNet(1, 28, 28, 10).load_state_dict(loaded.model_state)


_TAG: dict[str, str | None] = {"location": None, "registered": None}


@contextlib.contextmanager
def storages_tagged(location: str):
    """Make ``torch.save`` record every storage as living on ``location`` (e.g. ``cuda:0``).

    This is the tag a GPU run writes into each storage record, set through torch's
    public ``register_package`` hook (registered once per process, active only in
    this block). The bytes are what a GPU save writes; only real GPU memory is
    missing, which is exactly the situation of a CPU-only machine opening a
    GPU-trained checkpoint.
    """
    if _TAG["registered"] is None:
        torch.serialization.register_package(
            -100, lambda obj: _TAG["location"], lambda obj, location: None
        )
        _TAG["registered"] = "yes"
    _TAG["location"] = location
    try:
        yield
    finally:
        _TAG["location"] = None


@pytest.mark.parametrize("name", ["state_dict", "full"])
def test_gpu_checkpoint_loads_on_a_cpu_only_machine(plugins, tmp_path: Path, name: str) -> None:
    original = trained_checkpoint()
    with storages_tagged("cuda:0"):
        path = save(plugins, name, original, tmp_path)
    if not torch.cuda.is_available():  # a plain load fails here, as it does for users
        # torch >= 2.5 raises RuntimeError; 2.4's weights_only loader wraps it in UnpicklingError.
        with pytest.raises((RuntimeError, pickle.UnpicklingError), match=r"(?i)cuda"):
            torch.load(path, weights_only=name == "state_dict")
    loaded = load_checkpoint(plugins, path, trust=True)
    assert all(t.device.type == "cpu" for t in loaded.model_state.values())
    assert_same(original.model_state, loaded.model_state)
    model = build_model(plugins, loaded)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def _truncations(size: int) -> list[int]:
    return sorted({0, 1, 8, 64, size // 3, size // 2, size - 16, size - 1})


@pytest.mark.parametrize("name", FORMATS)
def test_truncated_file_is_one_sentence_naming_it(plugins, tmp_path: Path, name: str) -> None:
    path = save(plugins, name, trained_checkpoint(), tmp_path)
    targets = [path]
    if name == "safetensors":
        targets += [tmp_path / (path.name + ".json"), tmp_path / (path.name + ".state")]
    for target in targets:
        data = target.read_bytes()
        for size in _truncations(len(data.rstrip(b"\n"))):  # (a lost final newline is fine)
            target.write_bytes(data[:size])
            with pytest.raises(ExptError) as info:
                load_checkpoint(plugins, path, trust=True)
            message = str(info.value)
            assert str(path) in message and "\n" not in message, (target.name, size, message)
        target.write_bytes(data)
    load_checkpoint(plugins, path, trust=True)  # intact again


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("epoch-001.pt", b"\x00\x01 not a checkpoint" * 10),
        ("epoch-001.pt", None),  # a safetensors file named .pt
        ("epoch-001.safetensors", b'{"format": "something else"}'),
        ("epoch-001.full.pt", b"PK\x03\x04 broken zip"),
    ],
)
def test_foreign_file_is_one_sentence(plugins, tmp_path: Path, filename, content) -> None:
    path = tmp_path / filename
    if content is None:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ExptError) as info:
        load_checkpoint(plugins, path, trust=True)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        collections.Counter(cats=3),  # any pickled object: not what torch.save of a dict holds
        {"format": "exptorch.state_dict", "epoch": 1, "meta": fractions.Fraction(1, 3)},
    ],
)
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_pickled_object_is_not_a_checkpoint_and_gets_no_unsafe_advice(
    expt, tmp_path: Path, content, command: str
) -> None:
    path = tmp_path / "foreign.pt"
    with open(path, "wb") as fh:
        pickle.dump(content, fh, protocol=4)
    result = expt(command, "--checkpoint", str(path), *(["x.png"] if command == "predict" else []))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: {path} is not an exptorch checkpoint: it holds pickled Python objects that "
        "exptorch does not load (unpickling them could run code)."
    )  # one sentence: neither torch's "weights_only=False" advice nor its protocol warning


class TorchLoadFormat:
    """A third-party format that loads with torch.load(weights_only=True) and lets errors out."""

    suffix = ".tl"

    def save(self, checkpoint, path):  # pragma: no cover - only loading is under test
        raise NotImplementedError

    def load(self, path, *, map_location="cpu", trust=False):
        return torch.load(path, map_location=map_location, weights_only=True)


class RegistersTorchLoad:
    @hookimpl
    def register_checkpoint_formats(self, register) -> None:
        register("torchload", TorchLoadFormat)


def test_no_format_passes_on_torchs_unsafe_advice(make_plugins, tmp_path: Path) -> None:
    plugins = make_plugins(("torchload", RegistersTorchLoad()))
    path = tmp_path / "epoch-001.tl"
    with open(path, "wb") as fh:
        pickle.dump(fractions.Fraction(1, 3), fh, protocol=2)
    with pytest.raises(ExptError) as info:
        load_checkpoint(plugins, path)
    assert str(info.value) == (
        f"{path} is not an exptorch torchload checkpoint: it holds pickled Python objects that "
        "cannot be read safely."
    )


def test_safetensors_weights_without_sidecar(plugins, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(3)}, path)
    with pytest.raises(ExptError, match=r"sidecar model\.safetensors\.json is missing"):
        load_checkpoint(plugins, path)


def test_unknown_suffix_and_missing_file(plugins, tmp_path: Path) -> None:
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(ExptError, match=r"not a checkpoint file this install can read"):
        load_checkpoint(plugins, tmp_path / "weights.onnx")
    with pytest.raises(ExptError, match="does not exist"):
        load_checkpoint(plugins, tmp_path / "epoch-009.pt")


KILLED_WRITER = """
import sys, time
from pathlib import Path
import torch
from exptorch import Checkpoint
from exptorch.checkpoint import save_checkpoint
from exptorch.plugins import load_plugins

name, target, marker = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
inner = load_plugins(environ={"EXPT_DISABLE_PLUGIN_AUTOLOAD": "1"}).get(
    "checkpoint format", name).factory()

class SlowFormat:
    suffix = inner.suffix
    def save(self, checkpoint, path):
        inner.save(checkpoint, path)      # every file of the new checkpoint, complete...
        with open(path, "r+b") as fh:     # ...then the main file only half there, as if
            fh.truncate(path.stat().st_size // 2)  # the kill came mid-write
        marker.write_text(str(path))
        time.sleep(60)

model = torch.nn.Linear(300, 300)
checkpoint = Checkpoint(model_state=model.state_dict(), epoch=2, step=20,
                        config={}, meta={}, optimizer_state=None, module=model)
save_checkpoint(SlowFormat(), checkpoint, target)
"""


@pytest.mark.parametrize(
    ("name", "same_name"),
    [("state_dict", True), ("safetensors", False), ("full", False)],
    ids=["state_dict-overwrite", "safetensors-next-epoch", "full-next-epoch"],
)
def test_sigkill_during_a_write_leaves_the_previous_checkpoint(
    plugins, tmp_path: Path, name: str, same_name: bool
) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    previous = trained_checkpoint()
    first = save(plugins, name, previous, folder)
    target = first if same_name else folder / first.name.replace("epoch-001", "epoch-002")
    before = sorted(p.name for p in folder.iterdir())
    marker = tmp_path / "writing"
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    child = subprocess.Popen([sys.executable, str(script), name, str(target), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the writer died before the kill"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        staged = Path(marker.read_text())
        assert staged.exists() and staged.parent != folder  # mid-write, in a staging folder
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    # The visible checkpoints are exactly the ones before, and the newest is the old one.
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == before
    latest = latest_checkpoint(folder, plugins)
    assert latest == first
    assert_same(load_checkpoint(plugins, latest, trust=True).model_state, previous.model_state)


def test_stale_staging_folders_are_ignored_and_removed(plugins, tmp_path: Path) -> None:
    from exptorch.rundir import remove_stale_staging

    path = save(plugins, "safetensors", trained_checkpoint(), tmp_path)
    stale = tmp_path / ".epoch-002.safetensors.tmp-99999"
    stale.mkdir()
    (stale / "epoch-002.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path, plugins) == path
    remove_stale_staging(tmp_path)
    assert not stale.exists() and path.exists()


def test_a_failing_format_leaves_nothing(plugins, tmp_path: Path) -> None:
    class Broken:
        suffix = ".pt"

        def save(self, checkpoint, path):
            path.write_bytes(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(Broken(), trained_checkpoint(), tmp_path / "epoch-001.pt")
    assert list(tmp_path.iterdir()) == []


def _touch_checkpoints(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).write_bytes(b"x")
        if name.endswith(".safetensors"):
            (folder / (name + ".json")).write_bytes(b"{}")
            (folder / (name + ".state")).write_bytes(b"x")


SUFFIXES = [".pt", ".safetensors", ".full.pt"]


@pytest.mark.parametrize(
    ("keep", "left"),
    [
        ("all", ["epoch-001.pt", "epoch-002.safetensors", "epoch-003.pt", "epoch-004.pt"]),
        ("last", ["epoch-004.pt"]),
        ("best", ["epoch-002.safetensors", "epoch-004.pt"]),
    ],
)
def test_keep_policies(tmp_path: Path, keep: str, left: list[str]) -> None:
    names = ["epoch-001.pt", "epoch-002.safetensors", "epoch-003-step-000050.pt"]
    names += ["epoch-003.pt", "epoch-004.pt"]
    _touch_checkpoints(tmp_path, names)
    newest, best = tmp_path / "epoch-004.pt", tmp_path / "epoch-002.safetensors"
    prune_checkpoints(tmp_path, SUFFIXES, keep, newest, best)
    assert [p.name for p in checkpoint_files(tmp_path, SUFFIXES)] == left
    companions = {p.name for p in tmp_path.iterdir()} - set(left)
    expected = {"epoch-002.safetensors.json", "epoch-002.safetensors.state"}
    assert companions == (expected if "epoch-002.safetensors" in left else set())


def test_removing_a_checkpoint_deleted_by_hand_removes_what_is_left(tmp_path: Path) -> None:
    """A user who deleted a safetensors checkpoint's main file while the run trained: pruning
    it later removes its companions, not an error that would end the run."""
    from exptorch.checkpoint import remove_checkpoint

    _touch_checkpoints(tmp_path, ["epoch-001.safetensors", "epoch-002.pt"])
    (tmp_path / "epoch-001.safetensors").unlink()
    remove_checkpoint(tmp_path / "epoch-001.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-002.pt"]


def test_a_checkpoints_companions_are_found_by_its_literal_name(tmp_path: Path) -> None:
    """A name with glob characters (a third-party format's) matches only its own companions."""
    from exptorch.checkpoint import glob_escape, remove_checkpoint

    assert glob_escape("e[1]*?.pt") == "e[[]1][*][?].pt"
    names = ["e[1].pt", "e[1].pt.json", "e1.pt.json", "e[1].ptx.json"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    remove_checkpoint(tmp_path / "e[1].pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1.pt.json", "e[1].ptx.json"]


def test_checkpoint_order_puts_an_interrupted_epoch_before_its_end(tmp_path: Path) -> None:
    names = ["epoch-010.pt", "epoch-002.pt", "epoch-003-step-000120.pt", "epoch-003.full.pt"]
    _touch_checkpoints(tmp_path, names)
    assert [p.name for p in checkpoint_files(tmp_path, SUFFIXES)] == [
        "epoch-002.pt",
        "epoch-003-step-000120.pt",
        "epoch-003.full.pt",
        "epoch-010.pt",
    ]


@pytest.mark.parametrize("name", ["full"])  # the others are run by test_resume and test_run
def test_run_writes_each_format_and_keeps_the_last(plugins, tmp_path: Path, name: str) -> None:
    config = RunConfig(
        dataset="fashion-mnist-sample", epochs=2, limit_train_batches=3, limit_eval_batches=1,
        device="cpu", runs_dir=str(tmp_path / "runs"), name=name, seed=0,
        checkpoint_format=name, keep="last",
    )  # fmt: skip
    run = run_experiment(config, plugins, echo=lambda _: None)
    files = checkpoint_files(run / "checkpoints", SUFFIXES)
    suffix = fmt(plugins, name).suffix
    assert [p.name for p in files] == [f"epoch-002{suffix}"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    state = json.loads((run / "state.json").read_text())
    assert state["checkpoint"] == files[0].name
    loaded = load_checkpoint(plugins, files[0], trust=True)
    assert loaded.epoch == 2 and loaded.meta["model"] == "quicknet"


def test_safetensors_state_keeps_tensors_at_any_depth_and_strict_json_beside_them() -> None:
    from exptorch_plugins.safetensors import decode, encode

    value = {
        "exp_avg": [torch.ones(2), {"m": (torch.zeros(1), 1.5)}],
        3: "a key that is not a string",
        "best": float("inf"),
    }
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode(value, "state", tensors)
    assert sorted(tensors) == ["state/exp_avg/0", "state/exp_avg/1/m/0"]
    text = json.dumps(encoded, allow_nan=False)  # strict JSON: inf is spelled out
    back = decode(json.loads(text), tensors)
    assert back.keys() == value.keys() and back[3] == value[3] and back["best"] == math.inf
    (ones, nested) = back["exp_avg"]
    assert torch.equal(ones, torch.ones(2)) and isinstance(nested["m"], tuple)
    assert torch.equal(nested["m"][0], torch.zeros(1)) and nested["m"][1] == 1.5


def test_weights_that_do_not_fit_the_model_say_which_keys_differ(tmp_path: Path) -> None:
    import dataclasses

    from exptorch import ExptError
    from exptorch.checkpoint import build_model, latest_checkpoint, load_checkpoint
    from exptorch.testing import make_plugins, run_expt

    plugins = make_plugins()
    run = run_expt(plugins, tmp_path / "runs", echo=lambda _: None, epochs=1,
                   limit_train_batches=1, limit_eval_batches=1)  # fmt: skip
    checkpoint = load_checkpoint(plugins, latest_checkpoint(run, plugins))
    build_model(plugins, checkpoint)  # fits as saved
    first = next(iter(checkpoint.model_state))
    state = {k: v for k, v in checkpoint.model_state.items() if k != first}
    with pytest.raises(ExptError) as info:
        build_model(plugins, dataclasses.replace(checkpoint, model_state=state))
    assert str(info.value) == (
        "The checkpoint's weights do not fit model 'quicknet' as this install builds it "
        f'(Missing key(s) in state_dict: "{first}").'
    )


def test_the_state_dict_format_reads_its_own_payload_only(tmp_path: Path) -> None:
    """Called as a plugin would call it (no map location given): a payload of another format
    is refused by name, and one from before steps were recorded starts at step 0."""
    from exptorch_plugins.state_dict import StateDictFormat

    fmt = StateDictFormat()
    torch.save({"format": "exptorch.safetensors", "epoch": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError) as other:
        fmt.load(tmp_path / "other.pt")
    assert str(other.value) == "not an exptorch state_dict checkpoint"
    weights = {"w": torch.ones(2)}
    old_payload = {"format": "exptorch.state_dict", "epoch": 2, "model_state": weights}
    torch.save(old_payload, tmp_path / "old.pt")
    old = fmt.load(tmp_path / "old.pt")
    assert (old.epoch, old.step, old.config, old.meta) == (2, 0, {}, {})
    assert old.model_state is not None and torch.equal(old.model_state["w"], torch.ones(2))


# -- rebuilding the model a checkpoint names ---------------------------------------------------


class Widths:
    """A model plugin with an architecture option and an initial-weights option."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    @hookimpl
    def register_models(self, register):
        from exptorch import Option

        def build(info, **options):
            self.calls.append(options)
            return torch.nn.Linear(4, options["width"])

        register("widths", build, options=[
            Option("width", default=2, type=int, help="outputs"),
            Option("depth", default=1, type=int, help="unused"),
            Option("start_from", default=None, help="weights", initial_weights=True),
        ])  # fmt: skip


def widths_checkpoint(width: int, **meta: object) -> Checkpoint:
    state = torch.nn.Linear(4, width).state_dict()
    meta = {"model": "widths", "info": INFO.to_dict(), **meta}
    return Checkpoint(model_state=state, epoch=1, step=1, config={}, meta=meta)


def test_the_model_is_rebuilt_with_its_recorded_options_but_not_its_starting_weights(
    make_plugins,
) -> None:
    widths = Widths()
    plugins = make_plugins(("widths", widths))
    recorded = {"width": 3, "start_from": "/elsewhere/imagenet.pth"}
    model = build_model(plugins, widths_checkpoint(3, model_options=recorded))
    assert widths.calls == [{"width": 3, "depth": 1, "start_from": None}]
    assert model.out_features == 3 and not model.training
    build_model(plugins, widths_checkpoint(2))  # a checkpoint that recorded no options
    assert widths.calls[-1] == {"width": 2, "depth": 1, "start_from": None}


def test_prediction_uses_the_weights_the_run_evaluated_with(make_plugins) -> None:
    plugins = make_plugins(("widths", Widths()))
    checkpoint = widths_checkpoint(2)
    evaluated = {k: torch.full_like(v, 0.25) for k, v in checkpoint.model_state.items()}
    checkpoint.extra["eval_model_state"] = evaluated  # e.g. an EMA of the trained weights
    model = build_model(plugins, checkpoint)
    assert all(torch.equal(v, evaluated[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("missing", ["model", "info"])
def test_a_checkpoint_that_does_not_name_its_model_is_one_sentence(make_plugins, missing) -> None:
    checkpoint = widths_checkpoint(2)
    del checkpoint.meta[missing]
    with pytest.raises(ExptError) as info:
        build_model(make_plugins(("widths", Widths())), checkpoint)
    assert str(info.value) == (
        "The checkpoint does not say which model it holds (no model in its meta)."
    )


def test_a_checkpoint_with_bad_dataset_info_is_one_sentence(make_plugins) -> None:
    checkpoint = widths_checkpoint(2, info={"channels": 1})
    with pytest.raises(ExptError, match=r"^The checkpoint has bad metadata: .+\.$"):
        build_model(make_plugins(("widths", Widths())), checkpoint)


def test_what_did_not_fit_is_the_line_that_says_so() -> None:
    from exptorch.checkpoint import fit_error

    torch_says = 'Error(s) in loading state_dict for Linear:\n\tMissing key(s): "bias".\n\tmore'
    assert fit_error(RuntimeError(torch_says)) == 'Missing key(s): "bias"'
    assert fit_error(RuntimeError("shapes differ.\nsecond line")) == "shapes differ"
    assert fit_error(RuntimeError("only line:")) == "only line:"
    assert fit_error(RuntimeError()) == "RuntimeError"
    assert fit_error(RuntimeError("x" * 300)) == "x" * 300
    assert fit_error(RuntimeError("y" * 301)) == "y" * 297 + "..."


# -- weights that are not finite ---------------------------------------------------------------


def test_weights_with_nan_are_refused_from_the_state_or_the_module(tmp_path: Path) -> None:
    from exptorch.checkpoint import check_finite

    checkpoint = widths_checkpoint(2)
    checkpoint.model_state["step"] = torch.tensor(3)  # integers are not checked
    checkpoint.model_state["_extra_state"] = {"version": 2}  # nor a module's extra state
    check_finite(checkpoint, tmp_path / "ok.pt")
    checkpoint.model_state["bias"] = torch.tensor([0.0, math.nan])
    with pytest.raises(ExptError, match=r"\(bias has nan or inf\): the run diverged"):
        check_finite(checkpoint, tmp_path / "nan.pt")
    module = torch.nn.Linear(4, 2)
    with torch.no_grad():
        module.weight[0, 0] = math.inf
    full = Checkpoint(model_state={}, epoch=1, step=1, config={}, meta={}, module=module)
    with pytest.raises(ExptError, match=r"\(weight has nan or inf\)"):
        check_finite(full, tmp_path / "full.pt")


# -- a save that fails: a full disk is named as one -------------------------------------------


class Failing:
    suffix = ".pt"

    def save(self, checkpoint: Checkpoint, path: Path) -> None:
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


@pytest.mark.parametrize(
    ("free", "full"), [(2**20 - 1, True), (2**20, False), (3 * 2**20, False), (None, False)]
)
def test_a_failed_save_is_a_full_disk_only_under_one_mebibyte_free(
    tmp_path: Path, monkeypatch, free: int | None, full: bool
) -> None:
    import os
    from types import SimpleNamespace

    def statvfs(folder):
        if free is None:
            raise OSError("statvfs is not supported here")
        return SimpleNamespace(f_bavail=free // 512, f_frsize=512)

    monkeypatch.setattr(os, "statvfs", statvfs)
    expected = OSError if full else RuntimeError
    with pytest.raises(expected) as info:
        save_checkpoint(Failing(), trained_checkpoint(), tmp_path / "epoch-001.pt")
    if full:
        assert info.value.errno == 28 and info.value.filename == str(tmp_path / "epoch-001.pt")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_latest_checkpoint_of_a_folder_that_is_not_there_is_one_sentence(
    plugins, tmp_path: Path
) -> None:
    with pytest.raises(ExptError, match=r"^.*nope holds no checkpoint\.$"):
        latest_checkpoint(tmp_path / "nope", plugins)
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ExptError, match=r"^.*empty holds no checkpoint\.$"):
        latest_checkpoint(tmp_path / "empty", plugins)


GOOD_META = {"model": "quicknet", "info": INFO.to_dict()}


@pytest.mark.parametrize(
    ("meta", "config", "reason"),
    [
        ([], {}, "its meta or config is not a mapping"),
        (GOOD_META, [], "its meta or config is not a mapping"),
        ({**GOOD_META, "model_options": [1]}, {}, "its model_options are a list, not a mapping"),
        (GOOD_META, {"options": "x"}, "its options are a str, not a mapping"),
        ({**GOOD_META, "dataset": 3}, {}, "its dataset is 3, not a string"),
        (GOOD_META, {"dataset": ["a"]}, "its dataset is ['a'], not a string"),
        (GOOD_META, {"data_dir": 5}, "its data_dir is 5, not a string"),
    ],
)
def test_a_checkpoints_malformed_metadata_is_named(tmp_path: Path, meta, config, reason) -> None:
    from exptorch.checkpoint import checked_meta

    path = tmp_path / "epoch-001.pt"
    checkpoint = Checkpoint(model_state={}, epoch=1, step=1, config=config, meta=meta)
    with pytest.raises(ExptError) as info:
        checked_meta(checkpoint, path)
    assert str(info.value) == f"Checkpoint {path} has bad metadata: {reason}."


def test_checked_meta_returns_the_dataset_info_or_says_it_is_missing(tmp_path: Path) -> None:
    from exptorch.checkpoint import checked_meta

    path = tmp_path / "epoch-001.pt"
    config = {"dataset": "fashion-mnist", "data_dir": "data", "options": None}
    checkpoint = Checkpoint(model_state={}, epoch=1, step=1, config=config, meta=GOOD_META)
    assert checked_meta(checkpoint, path) == INFO
    checkpoint.meta = {"model": "quicknet"}
    with pytest.raises(ExptError) as info:
        checked_meta(checkpoint, path)
    assert str(info.value) == f"{path} does not record its classes and input size."


def test_safetensors_loads_to_the_cpu_by_default_and_takes_only_a_device(
    plugins, tmp_path: Path
) -> None:
    safetensors = fmt(plugins, "safetensors")
    path = save(plugins, "safetensors", trained_checkpoint(), tmp_path)
    loaded = safetensors.load(path, map_location=None)
    assert {t.device.type for t in loaded.model_state.values()} == {"cpu"}
    for mapping in ({"cuda:0": "cpu"}, lambda storage, location: storage):
        with pytest.raises(ValueError) as info:
            safetensors.load(path, map_location=mapping)
        assert str(info.value) == "the safetensors format takes a device as map_location"


def test_safetensors_names_a_sidecar_of_another_kind_and_a_missing_state_file(
    plugins, tmp_path: Path
) -> None:
    safetensors = fmt(plugins, "safetensors")
    path = save(plugins, "safetensors", trained_checkpoint(), tmp_path)
    sidecar_path = path.with_name(path.name + ".json")
    sidecar = json.loads(sidecar_path.read_text())
    state_file = path.with_name(sidecar["state"]["file"])
    state_file.unlink()
    with pytest.raises(ValueError) as info:
        safetensors.load(path)
    assert str(info.value) == (
        f"{state_file.name} has None bytes where the sidecar says {sidecar['state']['bytes']}"
    )
    sidecar_path.write_text(json.dumps({**sidecar, "format": "other"}))
    with pytest.raises(ValueError) as info:
        safetensors.load(path)
    assert str(info.value) == f"{sidecar_path.name} is not an exptorch safetensors sidecar"


def rewrite_sidecar(path: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Replace a safetensors checkpoint's JSON sidecar with ``change`` of it."""
    from exptorch_plugins.safetensors import SIDECAR

    sidecar_path = path.with_name(path.name + SIDECAR)
    sidecar_path.write_text(json.dumps(change(json.loads(sidecar_path.read_text()))))


def test_safetensors_names_weights_other_than_those_its_sidecar_lists(
    plugins, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    path = save(plugins, "safetensors", trained_checkpoint(), tmp_path)
    save_file({"another.weight": torch.zeros(3)}, str(path))  # a whole file, the wrong tensors
    size = path.stat().st_size
    rewrite_sidecar(
        path, lambda sidecar: {**sidecar, "weights": {**sidecar["weights"], "bytes": size}}
    )
    with pytest.raises(ValueError) as info:
        fmt(plugins, "safetensors").load(path)
    assert str(info.value) == f"{path.name} does not hold the tensors its sidecar lists"


def test_safetensors_sidecar_without_config_or_meta_loads_them_empty(
    plugins, tmp_path: Path
) -> None:
    checkpoint = trained_checkpoint()
    path = save(plugins, "safetensors", checkpoint, tmp_path)
    rewrite_sidecar(
        path, lambda sidecar: {k: v for k, v in sidecar.items() if k not in ("config", "meta")}
    )
    loaded = fmt(plugins, "safetensors").load(path)
    assert (loaded.config, loaded.meta) == ({}, {})
    assert loaded.epoch == checkpoint.epoch
