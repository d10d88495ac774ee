"""``expt plugins show optimizers``: the built-in optimizers and their options as a user reads
them, each flag with its default and the sentence that explains it."""

from __future__ import annotations

from click.testing import CliRunner

from exptorch.cli import cli

NO_DECAY = "No weight decay on biases and normalisation weights."


def test_the_optimizers_and_their_options_are_described() -> None:
    result = CliRunner().invoke(cli, ["plugins", "show", "optimizers"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1:] == [
        "  optimizer sgd: stochastic gradient descent, with --momentum and optional Nesterov",
        "  --sgd-nesterov [default: False]",
        "        Nesterov momentum (needs --momentum). (config key: sgd_nesterov)",
        "  --sgd-no-decay-norm-bias [default: False]",
        f"        {NO_DECAY} (config key: sgd_no_decay_norm_bias)",
        "  optimizer adamw: Adam with decoupled weight decay",
        "  --adamw-beta1 FLOAT [default: 0.9]",
        "        Decay of the gradient average. (config key: adamw_beta1)",
        "  --adamw-beta2 FLOAT [default: 0.999]",
        "        Decay of the squared-gradient average. (config key: adamw_beta2)",
        "  --adamw-no-decay-norm-bias [default: False]",
        f"        {NO_DECAY} (config key: adamw_no_decay_norm_bias)",
        "  optimizer adam: Adam (weight decay added to the gradient)",
        "  --adam-beta1 FLOAT [default: 0.9]",
        "        Decay of the gradient average. (config key: adam_beta1)",
        "  --adam-beta2 FLOAT [default: 0.999]",
        "        Decay of the squared-gradient average. (config key: adam_beta2)",
        "  --adam-no-decay-norm-bias [default: False]",
        f"        {NO_DECAY} (config key: adam_no_decay_norm_bias)",
    ]
    assert lines[0].startswith("optimizers (exptorch ")
