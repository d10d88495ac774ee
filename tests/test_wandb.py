"""Logger ``wandb`` with the real ``wandb`` package, offline, read back from its ``.wandb`` file.

wandb 0.30+ has no public reader for offline runs, so :func:`read_wandb` parses the
record log itself: a 7-byte header, then 32 KiB blocks of chunks (checksum, length,
type: full/first/middle/last) that join into ``wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from exptorch import ExptError
from exptorch.config import RunConfig
from exptorch.plugins import NO_AUTOLOAD_ENV, load_plugins
from exptorch.rundir import read_metrics
from exptorch.train import run_experiment
from exptorch.types import RunContext
from exptorch_plugins.wandb import wandb_program

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32768
HEADER = 7


def read_wandb(path: Path, wait_s: float = 30.0) -> dict[str, Any]:
    """Run id, config, history rows, final summary and exit code from one ``run-ID.wandb``
    file of a finished run. W&B's service process writes the file on its own and may still be
    writing it when ``finish()`` returns (seen on a loaded machine: the header and no records
    yet), so the file is read again until it holds the exit record, for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while (out := parse_wandb(path.read_bytes()))["exit"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return out


def parse_wandb(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"run_id": None, "config": {}, "history": [], "summary": {}, "exit": None}
    if not data:  # not written yet
        return out
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    payloads, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too small for a chunk header is padding
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):  # still being written
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)

    def key(item: Any) -> str:
        return item.key or ".".join(item.nested_key)

    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run_id"] = record.run.run_id
            out["project"] = record.run.project
            out["tags"] = list(record.run.tags)
            for item in record.run.config.update:
                out["config"][key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][key(item)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][key(item)] = json.loads(item.value_json)
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
    return out


def wandb_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/*run-*/run-*.wandb"))


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory: pytest.TempPathFactory):
    """Keep W&B's user-level files out of the home folder and any real key out of the test."""
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_BASE_URL"):
            mp.delenv(name, raising=False)
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            mp.setenv(name, str(home / name.lower()))
        yield mp


def quick_config(root: Path, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = dict(
        dataset="fashion-mnist-sample", device="cpu", epochs=2, seed=0,
        runs_dir=str(root / "runs"), name="w", limit_train_batches=10, limit_eval_batches=2,
        log_every=5, logger=["wandb"],
        options={"wandb_mode": "offline", "wandb_project": "exptorch-tests", "wandb_tags": "a,b"},
    )  # fmt: skip
    values.update(overrides)
    return RunConfig(**values)


@pytest.fixture(scope="module")
def offline_run(wandb_env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real two-epoch run logged offline to W&B, shared by the assertions below."""
    root = tmp_path_factory.mktemp("wandb-run")
    plugins = load_plugins(environ={NO_AUTOLOAD_ENV: "1"})
    return run_experiment(quick_config(root), plugins, echo=lambda _: None)


def test_history_config_and_summary(offline_run: Path) -> None:
    (file,) = wandb_files(offline_run)
    assert file.is_relative_to(offline_run / "wandb")  # W&B's files live in the run folder
    logged = read_wandb(file)
    assert logged["run_id"] == json.loads((offline_run / "wandb.json").read_text())["id"]
    assert logged["tags"] == ["a", "b"]
    assert logged["project"] == "exptorch-tests"

    config = logged["config"]
    assert (config["model"], config["dataset"], config["lr"], config["epochs"]) == (
        "quicknet",
        "fashion-mnist-sample",
        0.01,
        2,
    )
    assert config["dataset_info"]["classes"][0] == "T-shirt/top"

    history = logged["history"]
    steps = [row["_step"] for row in history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one row per step, growing
    train = [(row["_step"], row["train_loss"]) for row in history if "train_loss" in row]
    tests = [row for row in history if "test_accuracy" in row]
    records = read_metrics(offline_run / "metrics.jsonl")
    assert train == [
        (r["step"], pytest.approx(r["train_loss"])) for r in records if "train_loss" in r
    ]
    expected = [r for r in records if "test_accuracy" in r]
    assert [(r["_step"], r["test_accuracy"], r["test_loss"]) for r in tests] == [
        (r["step"], pytest.approx(r["test_accuracy"]), pytest.approx(r["test_loss"]))
        for r in expected
    ]
    assert all(row["test_predictions._type"] == "images/separated" for row in tests)
    assert all(row["test_predictions.count"] == 16 for row in tests)
    images = sorted((file.parent / "files" / "media" / "images").glob("test_predictions_*.png"))
    assert len(images) == 2 * 16

    summary = logged["summary"]
    assert summary["test_accuracy"] == pytest.approx(expected[-1]["test_accuracy"])  # final
    assert summary["best_test_accuracy"] == pytest.approx(max(r["test_accuracy"] for r in expected))
    assert summary["best_test_loss"] == pytest.approx(min(r["test_loss"] for r in expected))
    assert summary["state"] == "finished"
    assert logged["exit"] == 0


def test_resumed_run_keeps_its_wandb_id_and_steps_grow(offline_run: Path) -> None:
    from exptorch_plugins.wandb import WandbLogger

    saved = json.loads((offline_run / "wandb.json").read_text())
    config = RunConfig.from_dict(json.loads((offline_run / "config.json").read_text())["config"])
    resumed = RunContext(run_dir=offline_run, config=config, start_epoch=3, resumed=True)
    logger = WandbLogger(resumed, wandb_mode="offline")
    assert logger.run_id == saved["id"]
    logger.log_metrics({"train_loss": 0.5}, step=15)  # below the last step: must not go back
    logger.log_metrics({"test_accuracy": 0.01, "test_loss": 9.0}, step=30)
    logger.finish("finished")

    files = wandb_files(offline_run)
    assert len(files) == 2
    second = read_wandb(files[-1])
    assert second["run_id"] == saved["id"]
    assert [row["_step"] for row in second["history"]] == [saved["last_step"] + 1, 30]
    assert second["summary"]["best_test_accuracy"] == pytest.approx(saved["best"]["test_accuracy"])
    assert json.loads((offline_run / "wandb.json").read_text())["last_step"] == 30


def test_unreachable_server_falls_back_to_offline(wandb_env, tmp_path: Path, caplog, capsys):
    wandb_env.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    wandb_env.setenv("WANDB_API_KEY", "local-" + "ab12" * 10)
    plugins = load_plugins(environ={NO_AUTOLOAD_ENV: "1"})
    config = quick_config(
        tmp_path, epochs=1, limit_train_batches=3,
        options={"wandb_mode": "online", "wandb_timeout": 5.0},
    )  # fmt: skip
    run = run_experiment(config, plugins, echo=lambda _: None)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    (file,) = wandb_files(run)
    folder = file.parent
    assert "offline-run-" in folder.name
    assert "logging offline instead" in warnings[0].getMessage()
    # the probe's own answer, not a timeout: nothing listens, so the refusal is immediate
    assert "W&B is not reachable (127.0.0.1:9: Connection refused)" in warnings[0].getMessage()
    hint = f"{wandb_program()} sync {folder.resolve()}"  # wandb as this process can run it
    assert hint in warnings[0].getMessage()
    assert hint in capsys.readouterr().err
    assert json.loads((run / "state.json").read_text())["state"] == "finished"
    assert read_wandb(file)["history"]  # the metrics are in the offline run


def test_wandb_init_takes_each_option_then_its_environment_variable_then_the_default(
    wandb_env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from exptorch_plugins.wandb import DEFAULT_PROJECT, DEFAULT_TIMEOUT, WandbLogger

    config = quick_config(tmp_path, name="the-run")

    def started(**options: Any) -> Any:
        run_dir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        run_dir.mkdir()
        logger = WandbLogger(RunContext(run_dir=run_dir, config=config), **options)
        logger.finish("finished")
        return logger

    logger = started(
        wandb_mode="disabled", wandb_project="p", wandb_entity="team", wandb_name="n",
        wandb_tags=" a, ,b ", wandb_group="g", wandb_notes="why", wandb_timeout=3.0,
    )  # fmt: skip
    run = logger.run
    assert (run.project, run.entity, run.name, run.tags, run.group, run.notes, run.id) == (
        "p", "team", "n", ("a", "b"), "g", "why", logger.run_id,
    )  # fmt: skip
    settings = run.settings
    assert settings.init_timeout == 3.0
    # nothing that could hold a secret leaves the machine: the console, sys.argv, git remotes
    assert (settings.console, settings.x_disable_meta, settings.disable_git) == ("off", True, True)
    assert not settings.save_code and settings.silent  # quiet unless exptorch logs at INFO

    wandb_env.setenv("WANDB_MODE", "disabled")
    wandb_env.setenv("WANDB_PROJECT", "env-project")
    wandb_env.setenv("WANDB_NAME", "env-name")
    wandb_env.setenv("WANDB_INIT_TIMEOUT", "7.5")
    caplog.set_level("INFO", logger="exptorch.wandb")
    logger = started()
    run = logger.run
    assert (run.project, run.name, run.settings.init_timeout) == ("env-project", "env-name", 7.5)
    assert not run.settings.silent
    assert f"wandb: run {logger.run_id} (disabled) in " in caplog.text

    for name in ("WANDB_PROJECT", "WANDB_NAME", "WANDB_INIT_TIMEOUT"):
        wandb_env.delenv(name)
    run = started().run
    assert (run.project, run.name, run.tags) == (DEFAULT_PROJECT, "the-run", ())
    assert run.settings.init_timeout == DEFAULT_TIMEOUT


def test_disabled_mode_writes_no_wandb_files(wandb_env, tmp_path: Path) -> None:
    plugins = load_plugins(environ={NO_AUTOLOAD_ENV: "1"})
    config = quick_config(tmp_path, epochs=1, limit_train_batches=2,
                          options={"wandb_mode": "disabled"})  # fmt: skip
    run = run_experiment(config, plugins, echo=lambda _: None)
    assert not wandb_files(run)
    assert json.loads((run / "state.json").read_text())["state"] == "finished"


def test_expt_run_resume_continues_the_same_wandb_run(wandb_env, tmp_path: Path) -> None:
    from exptorch.config import resolve_config
    from exptorch.train import find_resume_point

    plugins = load_plugins(environ={NO_AUTOLOAD_ENV: "1"})
    first = run_experiment(
        quick_config(tmp_path, epochs=1, limit_train_batches=4, log_every=2),
        plugins, echo=lambda _: None,
    )  # fmt: skip
    point = find_resume_point(plugins, first)
    config = resolve_config(
        {"epochs": 2}, explicit=["epochs"], base=point.checkpoint.config,
        plugin_options=[opt for _, opt in plugins.options()],
    )  # fmt: skip
    assert run_experiment(config, plugins, echo=lambda _: None, resume=point) == first

    before, after = (read_wandb(f) for f in wandb_files(first))
    assert before["run_id"] == after["run_id"]
    steps = [row["_step"] for row in before["history"] + after["history"]]
    assert steps == sorted(steps) and steps[-1] == 8
    assert after["summary"]["state"] == "finished"


def test_a_tampered_wandb_json_is_read_as_data_only(wandb_env, tmp_path: Path) -> None:
    from exptorch_plugins.wandb import WandbLogger

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tampered = {
        "id": "../../elsewhere",
        "last_step": "7",
        "best": {"test_accuracy": "high", "test_loss": 0.5, "other": 1.0},
    }
    (run_dir / "wandb.json").write_text(json.dumps(tampered))
    config = quick_config(tmp_path)
    logger = WandbLogger(
        RunContext(run_dir=run_dir, config=config, resumed=True), wandb_mode="disabled"
    )
    assert len(logger.run_id) == 8 and logger.run_id.isalnum()  # a fresh id, not the path
    assert (logger.last_step, logger.best) == (-1, {"test_loss": 0.5})
    assert logger.floor == 0
    logger.log_metrics({"test_accuracy": float("nan"), "test_loss": 0.25}, step=1)
    logger.finish("finished")

    def refuse(token: str):
        raise AssertionError(f"wandb.json is not strict JSON: {token}")

    saved = json.loads((run_dir / "wandb.json").read_text(), parse_constant=refuse)
    assert saved == {"id": logger.run_id, "last_step": 1, "best": {"test_loss": 0.25}}

    # -1 is "nothing logged yet"; below that is no step at all
    for last_step, kept in ((-2, -1), (-1, -1), (0, 0)):
        (run_dir / "wandb.json").write_text(json.dumps({"id": "abcd1234", "last_step": last_step}))
        logger = WandbLogger(
            RunContext(run_dir=run_dir, config=config, resumed=True), wandb_mode="disabled"
        )
        assert (logger.run_id, logger.last_step, logger.floor) == ("abcd1234", kept, kept + 1)
        logger.finish("finished")


def test_the_sync_hint_names_wandb_as_it_can_be_run(monkeypatch) -> None:
    """After a venv install that was not activated, plain `wandb` is not found."""
    beside = Path(sys.executable).parent / "wandb"
    assert beside.is_file()
    monkeypatch.setenv("PATH", "/nonexistent")
    assert wandb_program() == str(beside)
    monkeypatch.setenv("PATH", str(beside.parent))
    assert wandb_program() == "wandb"


def test_image_captions_reach_wandb_on_one_line(wandb_env, tmp_path: Path) -> None:
    """A caption's line breaks become " / " (W&B shows one line under each picture)."""
    import torch

    from exptorch_plugins.wandb import WandbLogger

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = WandbLogger(
        RunContext(run_dir=run_dir, config=quick_config(tmp_path), resumed=False),
        wandb_mode="offline", wandb_project="exptorch-tests",
    )  # fmt: skip
    images = torch.rand(2, 3, 4, 4)
    logger.log_images("samples", images, ["cat\nguess: dog", "ship"], step=3)
    logger.finish("finished")
    (file,) = wandb_files(run_dir)
    (row,) = [row for row in read_wandb(file)["history"] if "samples.captions" in row]
    assert (row["_step"], row["samples.count"]) == (3, 2)
    assert row["samples.captions"] == ["cat / guess: dog", "ship"]


def test_the_sync_hint_names_the_wandb_beside_python_when_path_finds_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "wandb"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert wandb_program() == str(Path(sys.executable).parent / "wandb")


def test_the_reachability_probe_connects_to_the_urls_host_and_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The port is the URL's, else 443 for https and 80 for http; the timeout bounds the
    connection; the answer is None when it connects, else host:port and the reason."""
    import socket

    from exptorch_plugins import wandb as plugin

    calls: list[tuple[Any, ...]] = []

    class Connection:
        def close(self) -> None:
            calls.append(("closed",))

    def connect(address: tuple[str, int], timeout: float) -> Connection:
        calls.append((address, timeout))
        if address[0] == "refusing.example":
            raise ConnectionRefusedError(111, "Connection refused")
        return Connection()

    monkeypatch.setattr(socket, "create_connection", connect)
    assert plugin._unreachable("https://api.example", 2.5) is None
    assert plugin._unreachable("http://api.example", 1.0) is None
    assert plugin._unreachable("https://api.example:8443/x", 1.0) is None
    assert plugin._unreachable("http:///nohost", 1.0) is None
    assert calls == [
        (("api.example", 443), 2.5), ("closed",),
        (("api.example", 80), 1.0), ("closed",),
        (("api.example", 8443), 1.0), ("closed",),
        (("", 80), 1.0), ("closed",),
    ]  # fmt: skip
    assert plugin._unreachable("https://refusing.example", 1.0) == (
        "refusing.example:443: Connection refused"
    )


def test_a_hanging_probe_is_given_up_after_its_timeout_in_a_daemon_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DNS lookup that never answers must neither hold up the run past the timeout nor
    keep the process alive at exit."""
    import socket
    import threading

    from exptorch_plugins import wandb as plugin

    release = threading.Event()
    probes: list[threading.Thread] = []

    def hang(address: tuple[str, int], timeout: float) -> Any:
        probes.append(threading.current_thread())
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hang)
    timer = threading.Timer(5, release.set)  # frees a join() without a timeout, if any
    timer.start()
    try:
        answer = plugin._unreachable("https://api.example", 0.2)
        (probe,) = probes
        assert answer == "api.example:443: no answer in 0.2s"
        assert probe.daemon and probe.is_alive()
    finally:
        release.set()
        timer.cancel()


def test_the_server_is_wandbs_default_unless_wandb_base_url_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exptorch_plugins.wandb import _base_url

    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    default = wandb.Settings().base_url  # W&B's own cloud; its address changes with versions
    assert _base_url() == default and default.startswith("https://")
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.internal:8080")
    assert _base_url() == "http://wandb.internal:8080"


class RecordedRun:
    """What ``wandb.init`` returns in the tests below: it records what the logger sends."""

    def __init__(self, run_dir: Path, **init: Any) -> None:
        self.init = init
        self.dir = str(run_dir / "wandb" / "run-recorded" / "files")
        self.logged: list[tuple[dict[str, Any], int | None]] = []
        self.summary: dict[str, Any] = {}
        self.exit_code: int | None = None

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        self.logged.append((data, step))

    def finish(self, exit_code: int | None = None) -> None:
        self.exit_code = exit_code


@pytest.fixture
def recorded(wandb_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A WandbLogger factory whose ``wandb.init`` records its arguments (online ones too:
    the server is reported reachable) and whose ``wandb.Image`` keeps pixels and caption."""
    from exptorch_plugins import wandb as plugin

    monkeypatch.setattr(plugin, "_unreachable", lambda url, timeout: None)
    monkeypatch.setattr(wandb, "init", lambda **init: RecordedRun(Path(init["dir"]), **init))
    monkeypatch.setattr(wandb, "Image", lambda array, caption: (array, caption))
    wandb_env.delenv("WANDB_MODE", raising=False)

    def make(resumed: bool = False, monitor: str = "test_accuracy", monitor_mode: str = "max",
             **options: Any) -> Any:  # fmt: skip
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)
        context = RunContext(run_dir=run_dir, config=quick_config(tmp_path), resumed=resumed,
                             monitor=monitor, monitor_mode=monitor_mode)  # fmt: skip
        return plugin.WandbLogger(context, **options)

    return make


def test_the_default_mode_is_online_with_exptorchs_settings(
    recorded, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from exptorch_plugins.wandb import DEFAULT_PROJECT, DEFAULT_TIMEOUT

    caplog.set_level("INFO", logger="exptorch.wandb")
    logger = recorded()
    init = logger.run.init
    assert init["mode"] == "online" and not logger.offline
    assert init["settings"].init_timeout == DEFAULT_TIMEOUT and init["settings"].console == "off"
    assert (init["project"], init["name"], init["id"], init["resume"]) == (
        DEFAULT_PROJECT, "w", logger.run_id, None,
    )  # fmt: skip
    folder = Path(logger.run.dir).parent
    said = [r.getMessage() for r in caplog.records if r.name == "exptorch.wandb"]
    assert f"wandb: run {logger.run_id} (online) in {folder}" in said
    logger.finish("finished")
    assert "upload it with" not in capsys.readouterr().err  # online: nothing to upload


def test_modes_and_their_old_names(recorded) -> None:
    from exptorch_plugins.wandb import _mode

    assert [_mode(m) for m in ("online", "run", "offline", "dryrun", "disabled")] == [
        "online", "online", "offline", "offline", "disabled",
    ]  # fmt: skip
    with pytest.raises(ExptError) as error:
        _mode("cloud")
    assert str(error.value) == "W&B mode 'cloud' is not one of online, offline, disabled."
    assert recorded(wandb_mode="dryrun").offline


def test_a_refused_online_start_falls_back_offline_saying_why(
    recorded, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    started: list[dict[str, Any]] = []

    def init(**options: Any) -> RecordedRun:
        started.append(options)
        if options["mode"] == "online":
            raise RuntimeError("api key not configured\n(more detail)")
        return RecordedRun(Path(options["dir"]), **options)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "teardown", lambda: None)
    logger = recorded()
    assert [s["mode"] for s in started] == ["online", "offline"] and logger.offline
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == (
        "W&B is not reachable (RuntimeError: api key not configured); logging offline "
        f"instead. Upload the run later with: {logger.sync_command()}"
    )
    logger.finish("finished")
    assert f"wandb: offline run saved; upload it with: {logger.sync_command()}" in (
        capsys.readouterr().err
    )


def test_a_resumed_run_continues_its_wandb_run_and_steps(recorded, tmp_path: Path) -> None:
    state = tmp_path / "run" / "wandb.json"
    state.parent.mkdir()
    state.write_text('{"id": "abcd1234", "last_step": 9}')
    fresh = recorded()  # a new run never reads the file, and writes its own
    assert fresh.run_id != "abcd1234" and (fresh.floor, fresh.run.init["resume"]) == (0, None)
    fresh.finish("finished")
    state.write_text('{"id": "abcd1234", "last_step": 9}')
    logger = recorded(resumed=True)
    assert (logger.run.init["id"], logger.run.init["resume"]) == ("abcd1234", "allow")
    logger.log_metrics({"loss": 1.0}, step=4)  # W&B drops a step below its last: 10 then
    logger.log_metrics({"loss": 1.0}, step=12)
    logger.log_metrics({"loss": 1.0}, step=11)  # a step back is logged at the last one
    assert [step for _, step in logger.run.logged] == [10, 12, 12]


def test_best_values_follow_the_monitors_direction(recorded) -> None:
    logger = recorded(monitor="test_top5_error", monitor_mode="min")
    for value in (0.5, 0.3, 0.4):
        logger.log_metrics({"test_top5_error": value}, step=1)
    assert logger.best["test_top5_error"] == 0.3


def test_logged_images_are_bytes_of_the_clamped_picture_and_steps_continue(recorded) -> None:
    import torch

    logger = recorded()
    logger.log_metrics({"loss": 1.0}, step=7)
    image = torch.tensor([[[-0.5, 0.0, 0.5, 1.0, 1.5]]]).expand(3, 1, 5)  # channels first
    logger.log_images("samples", image[None], ["a\nb"], step=3)
    (data, step) = logger.run.logged[-1]
    ((pixels, caption),) = data["samples"]
    assert step == 7 and caption == "a / b"
    assert pixels.shape == (1, 5, 3) and pixels.dtype.name == "uint8"
    assert pixels[0, :, 0].tolist() == [0, 0, 127, 255, 255]
    with pytest.raises(ValueError):  # a caption per image, or an error
        logger.log_images("samples", image[None].expand(2, 3, 1, 5), ["only one"], step=8)


@pytest.mark.parametrize(
    ("state", "exit_code"),
    [("finished", 0), ("stopped", 0), ("failed", 1), ("interrupted", 1)],
)
def test_the_wandb_run_ends_with_the_runs_state_and_exit_code(
    recorded, state: str, exit_code: int
) -> None:
    logger = recorded()
    logger.finish(state)
    assert (logger.run.summary["state"], logger.run.exit_code) == (state, exit_code)


def test_no_setting_from_the_environment_turns_code_saving_on(recorded, wandb_env) -> None:
    wandb_env.setenv("WANDB_SAVE_CODE", "true")
    assert recorded().run.init["settings"].save_code is False
