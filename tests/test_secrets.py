"""Secrets never land on disk: planted keys are searched for in every file a run writes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from exptorch import Logger, Option, hookimpl
from exptorch.config import RunConfig
from exptorch.plugins import NO_AUTOLOAD_ENV, load_plugins
from exptorch.secrets import MASK, is_secret_name, redact
from exptorch.train import run_experiment

WANDB_KEY = "local-" + "5ec7e7" * 7  # the shape of a real W&B key
ENV_TOKEN = "envtoken-3f9a1c77e0"
CONFIG_TOKEN = "cfgtoken-b41d09aa52"


def test_secret_names() -> None:
    for name in ("WANDB_API_KEY", "hub_token", "--db-password", "AWS_SECRET_ACCESS_KEY", "auth"):
        assert is_secret_name(name), name
    for name in ("lr", "batch_size", "author", "wandb_project", "checkpoint_format"):
        assert not is_secret_name(name), name


def test_redact_mappings_command_lines_and_values() -> None:
    env = {"MY_TOKEN": ENV_TOKEN, "HOME": "/root"}
    data = {
        "config": {"lr": 0.1, "options": {"vault_token": CONFIG_TOKEN, "vault_url": "https://x"}},
        "command": ["expt", "run", "--vault-token", CONFIG_TOKEN, "--x-api-key=abc", "--lr", "1"],
        "notes": f"the token is {ENV_TOKEN}",
    }
    assert redact(data, env) == {
        "config": {"lr": 0.1, "options": {"vault_token": MASK, "vault_url": "https://x"}},
        "command": ["expt", "run", "--vault-token", MASK, f"--x-api-key={MASK}", "--lr", "1"],
        "notes": f"the token is {MASK}",
    }


def test_redact_masks_only_what_is_secret() -> None:
    # secret-named variables of 6 characters or more are secret values, longest masked first;
    # a long value under an ordinary name is not
    env = {"A_TOKEN": "abc123", "B_TOKEN": "0-abc123", "SHORT_TOKEN": "abc12"}
    env["HOME"] = "/home/alice"
    text = "0-abc123 abc123 /home/alice abc12"
    assert redact(text, env) == f"{MASK} {MASK} /home/alice abc12"
    # an empty or unset secret option is left as it is; tuples stay tuples
    assert redact({"hub_token": None, "db_password": "", "pair": ("a", "b")}, env) == {
        "hub_token": None, "db_password": "", "pair": ("a", "b"),
    }  # fmt: skip
    # in a command line only the value right after a secret flag, or after its "=", is masked:
    # not a following flag, not a later argument, not a positional that mentions a token
    argv = ["expt", "--hub-token", "--lr", "1", "--db-password", "pw", "tokenizer.json", "x"]
    assert redact(argv, env) == [
        "expt", "--hub-token", "--lr", "1", "--db-password", MASK, "tokenizer.json", "x",
    ]  # fmt: skip
    assert redact(["--api-key=a=b"], env) == [f"--api-key={MASK}"]


class Vault(Logger):
    """A logger plugin whose option is a token, as a real tracking service's would be."""

    def __init__(self, run: Any, vault_token: str | None = None) -> None:
        assert vault_token == CONFIG_TOKEN  # the plugin itself still gets the real value


class VaultPlugin:
    @hookimpl
    def register_loggers(self, register: Any) -> None:
        register("vault", Vault, options=[Option("vault_token", help="API token")])


def test_planted_keys_never_reach_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", ENV_TOKEN)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # online fails, falls back
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    argv = ["expt", "run", "--vault-token", CONFIG_TOKEN, "--wandb-notes", ENV_TOKEN]
    monkeypatch.setattr(sys, "argv", argv)
    plugins = load_plugins(extra=[("vault", VaultPlugin())], environ={NO_AUTOLOAD_ENV: "1"})
    config = RunConfig(
        dataset="fashion-mnist-sample", device="cpu", epochs=1, seed=0,
        runs_dir=str(tmp_path / "runs"), name="s", limit_train_batches=3, limit_eval_batches=1,
        log_every=1, logger=["vault", "tensorboard", "wandb"],
        options={"vault_token": CONFIG_TOKEN, "wandb_notes": ENV_TOKEN, "wandb_mode": "online"},
    )  # fmt: skip
    run = run_experiment(config, plugins, echo=print)

    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.json", "metrics.jsonl", "state.json"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert any(n.endswith(".wandb") for n in names) and "debug.log" in names
    assert any(p.parent.name == "checkpoints" for p in files)
    for path in files:
        content = path.read_bytes()
        for secret in (WANDB_KEY, ENV_TOKEN, CONFIG_TOKEN):
            assert secret.encode() not in content, f"{secret} in {path.relative_to(run)}"
    assert MASK in (run / "config.json").read_text()
    output = capsys.readouterr()
    for secret in (WANDB_KEY, ENV_TOKEN, CONFIG_TOKEN):
        assert secret not in output.out and secret not in output.err


def test_a_resumed_run_takes_its_saved_settings_but_not_the_masks_of_its_secrets() -> None:
    """`expt run --resume` starts from the run's saved config.json, where secrets were
    masked: a masked setting is dropped (given again, or from the environment), never
    passed on as the mask itself; every other setting and plugin option is kept."""
    from exptorch.cli import _unmasked

    saved = {
        "lr": 0.1,
        "db_password": MASK,
        "options": {"vault_token": MASK, "crop_flip_padding": 2, "wandb_notes": None},
    }
    assert _unmasked(saved) == {
        "lr": 0.1,
        "options": {"crop_flip_padding": 2, "wandb_notes": None},
    }
    assert _unmasked({"lr": 0.1}) == {"lr": 0.1, "options": {}}
