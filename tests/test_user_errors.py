"""Every user mistake: one sentence on stderr, a non-zero exit, no traceback, nothing left."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLE = ["--dataset", "fashion-mnist-sample", "--epochs", "1", "--limit-train-batches", "2"]


def assert_one_sentence(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "resnet9"], ["Unknown model 'resnet9'", "available: quicknet"]),
        (["--dataset", "imagenet"], ["Unknown dataset 'imagenet'", "cifar10", "fashion-mnist"]),
        (["--logger", "mlflow"], ["Unknown logger 'mlflow'", "tensorboard"]),
        (["--device", "tpu"], ["Unknown device 'tpu'", "auto, cpu, cuda, mps"]),
        (["--device", "cuda"], ["CUDA is not available"]),
        (["--device", "cuda:1"], ["CUDA is not available"]),
        (["--device", "mps"], ["MPS is not available"]),
        (["--device", "cuda:x"], ["bad index"]),
        (["--device", "auto:1"], ["--device auto takes no index; name the device, as in cuda:1."]),
        (["--checkpoint-format", "onnx"], ["Unknown checkpoint format 'onnx'", "state_dict"]),
        (["--name", "../escape"], ["must be a plain folder name"]),
        (["--name", ".hidden"], ["must be a plain folder name"]),
        (["--name", "trail\n"], ["must be a plain folder name"]),  # "$" matched before "\n"
        (["--epochs", "0"], ["--epochs must be at least 1"]),
        (["--lr", "-1"], ["--lr must be positive"]),
        (["--lr", "nan"], ["--lr must be a finite number, not nan"]),
        (["--lr", "inf"], ["--lr must be a finite number, not inf"]),
        (["--momentum", "nan"], ["--momentum must be a finite number"]),
        (["--weight-decay", "inf"], ["--weight-decay must be a finite number"]),
        (["--label-smoothing", "nan"], ["--label-smoothing must be a finite number"]),
        (["--label-smoothing", "5"], ["--label-smoothing must be at least 0 and below 1"]),
        (["--label-smoothing", "1"], ["--label-smoothing must be at least 0 and below 1"]),
        (["--seed", "99999999999999999999"], ["--seed must be between 0 and 4294967295"]),
        (["--seed", "-1"], ["--seed must be between 0 and 4294967295"]),
    ],
)
def test_bad_option_values(expt, tmp_path: Path, args, fragments) -> None:
    result = expt("run", *SAMPLE, *args)
    assert_one_sentence(result, *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_dataset_offline(expt, tmp_path: Path) -> None:
    result = expt("run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"))
    assert_one_sentence(result, "CIFAR-10 is not in", "could not be downloaded")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("epochs = ", "is not valid TOML"),
        ("epoch = 3", "Unknown key 'epoch'"),
        ('epochs = "ten"', "Config key 'epochs' must be an integer"),
        ('optimizer = "rmsprop"', "Unknown optimizer 'rmsprop'"),
    ],
)
def test_bad_config_file(expt, tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "bad.toml").write_text(content + "\n")
    assert_one_sentence(expt("run", *SAMPLE, "--config", "bad.toml"), fragment)


def test_nan_in_config_file_is_refused_before_anything_is_written(expt, tmp_path: Path) -> None:
    (tmp_path / "nan.toml").write_text("lr = nan\n")  # TOML has nan and inf literals
    assert_one_sentence(expt("run", *SAMPLE, "--config", "nan.toml"), "--lr must be a finite")
    assert not (tmp_path / "runs").exists()


def test_config_file_missing(expt) -> None:
    assert_one_sentence(
        expt("run", "--config", "nope.toml"), "Config file nope.toml does not exist"
    )


def test_existing_run_is_never_overwritten(expt, tmp_path: Path) -> None:
    first = expt("run", *SAMPLE, "--name", "keep", "--device", "cpu")
    assert first.returncode == 0, first.stderr
    metrics = (tmp_path / "runs" / "keep" / "metrics.jsonl").read_bytes()
    second = expt("run", *SAMPLE, "--name", "keep", "--epochs", "3")
    assert_one_sentence(second, "already exists", "--name")
    assert (tmp_path / "runs" / "keep" / "metrics.jsonl").read_bytes() == metrics


def test_unknown_flag_is_a_usage_error(expt) -> None:
    result = expt("run", "--epoch", "3")
    assert result.returncode == 2 and "No such option '--epoch'" in result.stderr


# In-process, so that `tox -e mutation` sees which tests call exptorch.config (it cannot see
# inside an `expt` subprocess): each config-file mistake's whole sentence.
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('epochs = "ten"', "Config key 'epochs' must be an integer, not 'ten'."),
        ("lr = true", "Config key 'lr' must be a number, not True."),
        ("seed = 1.5", "Config key 'seed' must be an integer, not 1.5."),
        ('keep = "some"', "Config key 'keep' must be one of all, last, best, not 'some'."),
        ("augment = 1", "Config key 'augment' must be true or false, not 1."),
        ("logger = 5", "Config key 'logger' must be a list, not 5."),
        # options that plugins declare: a flag, and one whose type is not a number
        ("demo-fast = 1", "Config key 'demo_fast' must be true or false, not 1."),
        ("demo-root = 5", "Config key 'demo_root' must be a string, not 5."),
    ],
)
def test_config_file_values_of_the_wrong_kind(tmp_path: Path, content: str, message: str) -> None:
    from exptorch import ExptError, Option
    from exptorch.config import resolve_config

    declared = [Option("demo_fast", default=False, is_flag=True), Option("demo_root", type=Path)]
    (tmp_path / "bad.toml").write_text(content + "\n")
    with pytest.raises(ExptError) as caught:
        resolve_config({}, config_file=tmp_path / "bad.toml", plugin_options=declared)
    assert str(caught.value) == message


def test_config_file_that_cannot_be_read(tmp_path: Path) -> None:
    from exptorch import ExptError
    from exptorch.config import read_config_file

    with pytest.raises(ExptError, match=r"^Config file .*nope\.toml does not exist\.$"):
        read_config_file(tmp_path / "nope.toml")
    with pytest.raises(ExptError, match=r"^Cannot read config file .*: Is a directory\.$"):
        read_config_file(tmp_path)
    (tmp_path / "bad.toml").write_text("epochs = \n")
    with pytest.raises(ExptError, match=r"^Config file .*bad\.toml is not valid TOML: "):
        read_config_file(tmp_path / "bad.toml")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("off", (None, None)), (" OFF ", (None, None)), ("0", (None, None)),
        ("None", (None, None)), ("", (None, None)), ("500", (None, 500)), ("1", (None, 1)),
        ("30s", (30.0, None)), (" 10M ", (600.0, None)), ("1.5m", (90.0, None)),
        ("2h", (7200.0, None)),
    ],
)  # fmt: skip
def test_checkpoint_every_reads_a_duration_a_number_of_steps_or_off(
    text: str, parsed: tuple[float | None, int | None]
) -> None:
    from exptorch.config import parse_every

    assert parse_every(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("soon", "--checkpoint-every must be a duration (30s, 10m, 2h), a number of steps (500) "
                 "or off, not 'soon'."),
        ("0s", "--checkpoint-every must be a duration (30s, 10m, 2h), a number of steps (500) "
               "or off, not '0s'."),
        ("2.5", "--checkpoint-every 2.5 steps must be a whole number."),
    ],
)  # fmt: skip
def test_checkpoint_every_refuses_anything_else_in_one_sentence(text: str, message: str) -> None:
    from exptorch import ExptError
    from exptorch.config import parse_every

    with pytest.raises(ExptError) as caught:
        parse_every(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"limit_train_batches": 0}, "--limit-train-batches must be at least 1, not 0."),
        ({"lr": 0.0}, "--lr must be positive, not 0.0."),
        ({"batch_size": 10, "nproc_per_node": 4},
         "--batch-size 10 is the global batch and must divide evenly among 4 processes."),
        ({"name": "."}, "Run name '.' must be a plain folder name (letters, digits, '.', '_' "
                        "and '-', not starting with '.' or '-')."),
        ({"name": ".."}, "Run name '..' must be a plain folder name (letters, digits, '.', '_' "
                         "and '-', not starting with '.' or '-')."),
        ({"name": "a" * 201}, "Run name is 201 characters long; use at most 200 (--name)."),
    ],
)  # fmt: skip
def test_settings_out_of_range_are_refused_in_one_sentence(
    settings: dict[str, object], message: str
) -> None:
    from exptorch import ExptError
    from exptorch.config import RunConfig, validate

    with pytest.raises(ExptError) as caught:
        validate(RunConfig(**settings))
    assert str(caught.value) == message


def test_settings_at_their_bounds_are_accepted() -> None:
    from exptorch.config import SEED_RANGE, RunConfig, validate

    validate(RunConfig(limit_train_batches=1, lr=1e-9, batch_size=12, nproc_per_node=4,
                       seed=SEED_RANGE[1], name="a" * 200))  # fmt: skip


def test_plugin_options_are_checked_against_their_declared_bounds() -> None:
    """A plugin's number outside its bounds, or not finite, is refused; its bounds themselves,
    a value it did not set (its default is checked) and a value of another type are not."""
    from exptorch import ExptError, Option
    from exptorch.config import RunConfig, check_plugin_options

    declared = [
        Option("demo_mode", default="fast"),
        Option("demo_rate", default=0.5, minimum=0.0, maximum=1.0),
        Option("demo_steps", default=0, minimum=1),
    ]

    def refusal(**options: object) -> str:
        with pytest.raises(ExptError) as caught:
            check_plugin_options(RunConfig(options=options), declared)
        return str(caught.value)

    check_plugin_options(RunConfig(options={"demo_rate": 1.0, "demo_steps": 1}), declared)
    check_plugin_options(RunConfig(options={"demo_rate": 0.0, "demo_steps": True}), declared)
    assert refusal(demo_rate=0.5) == "--demo-steps must be at least 1, not 0."
    assert refusal(demo_rate=-0.1, demo_steps=1) == "--demo-rate must be at least 0.0, not -0.1."
    assert refusal(demo_rate=1.5, demo_steps=1) == "--demo-rate must be at most 1.0, not 1.5."
    assert refusal(demo_rate=float("nan")) == "--demo-rate must be a finite number, not nan."


def test_an_exception_without_a_message_is_named_by_its_type() -> None:
    """What a report says about an error: its type, and its message's first line if any."""
    from exptorch.errors import describe, first_line

    assert describe(ValueError()) == "ValueError"
    assert describe(ValueError("  \n")) == "ValueError"
    assert first_line(OSError()) == "OSError"
    assert describe(OSError("disk full\nsecond line")) == "OSError: disk full"


def test_cuda_and_mps_as_machines_with_and_without_them_see_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch answers for the hardware (is_available, device_count): played here by hand, as
    this machine has neither an NVIDIA GPU nor Apple silicon."""
    import torch

    from exptorch import ExptError
    from exptorch_plugins import devices

    def says(device, index=None) -> str:
        with pytest.raises(ExptError) as info:
            device(index)
        return str(info.value)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert says(devices.cuda) == (
        "CUDA is not available on this machine (no NVIDIA GPU or driver, or a CPU-only torch "
        "build); use --device cpu or --device auto."
    )
    assert says(devices.mps) == (
        "Apple's MPS is not available here (it needs an Apple-silicon Mac with macOS 12.3+); use "
        "--device cpu or --device auto."
    )
    assert devices.auto() == torch.device("cpu")
    assert says(devices.auto, 1) == "--device auto takes no index; name the device, as in cuda:1."
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert devices.mps() == devices.mps(0) == devices.auto() == torch.device("mps")
    assert says(devices.mps, 1) == "There is only one MPS device; use --device mps."
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.cuda() == devices.auto() == torch.device("cuda", 0)  # cuda before mps
    assert devices.cuda(1) == torch.device("cuda", 1)
    assert says(devices.cuda, 2) == (
        "There is no cuda:2; this machine has 2 CUDA device(s), cuda:0 to cuda:1."
    )
