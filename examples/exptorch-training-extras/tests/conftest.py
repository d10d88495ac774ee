"""The plugin under test, for exptorch.testing's fixtures (expt_plugins, expt_run, ...)."""

import pytest

import exptorch_training_extras


@pytest.fixture
def expt_plugin():
    return exptorch_training_extras
