"""configs.common.validate: every out-of-range value named, every shipped
variant accepted."""

import importlib
import math
import sys
from pathlib import Path

import pytest
from conftest import set_field

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from configs import common  # noqa: E402

nan, inf = math.nan, math.inf

BAD = [
    # (config file, variant, field, value)
    ("mnist_fcn", "dni,smoke", "keep_checkpoints", -1),
    ("mnist_fcn", "dni,smoke", "keep_checkpoints", 0),
    ("mnist_fcn", "dni,smoke", "max_loss_growth", 1),
    ("mnist_fcn", "dni,smoke", "max_loss_growth", 0.5),
    ("mnist_fcn", "dni,smoke", "max_loss_growth", -10.0),
    ("mnist_fcn", "dni,smoke", "max_loss_growth", inf),
    ("mnist_fcn", "dni,smoke", "max_loss_growth", nan),
    ("mnist_fcn", "dni,smoke", "epochs", 0),
    ("mnist_fcn", "dni,smoke", "epochs", -3),
    ("mnist_fcn", "dni,smoke", "batch_size", 0),
    ("mnist_fcn", "dni", "batch_size", -256),
    ("mnist_fcn", "dni,smoke", "optimizer.learning_rate", 0.0),
    ("mnist_fcn", "dni,smoke", "optimizer.learning_rate", -0.1),
    ("mnist_fcn", "dni,smoke", "optimizer.learning_rate", nan),
    ("mnist_fcn", "dni,smoke", "optimizer.learning_rate", inf),
    ("mnist_fcn", "dni,smoke", "optimizer.name", ""),
    ("mnist_fcn", "cdni,smoke", "sg_loss_weight", -1.0),
    ("mnist_fcn", "cdni,smoke", "sg_loss_weight", inf),
    ("mnist_fcn", "cdni,smoke", "sg_loss_weight", nan),
    ("mnist_fcn", "dni,smoke", "model.depth", 1),  # no cut for a synthesizer
    ("mnist_fcn", "backprop,smoke", "model.depth", 0),
    ("mnist_cnn", "backprop,smoke", "model.depth", 1),
    ("mnist_fcn", "dni,smoke", "model.units", 0),
    ("mnist_cnn", "dni,smoke", "model.filters", -8),
    ("mnist_cnn", "dni,smoke", "model.kernel_size", 0),
    ("mnist_cnn", "dni,smoke", "model.head", "gap"),
    ("mnist_cnn", "dni,smoke", "model.pooling", "min"),
    ("mnist_fcn", "dni,smoke", "seed", -1),
    ("mnist_fcn", "dni,smoke", "method", "dnii"),
    ("mnist_fcn", "dni,smoke", "data.name", "mnst"),
    ("mnist_fcn", "dni,smoke", "data.train_examples", 0),  # synthetic needs some
    ("mnist_fcn", "dni", "data.train_examples", -5),
    ("mnist_fcn", "dni", "data.test_examples", -1),
    ("mnist_fcn", "dni,smoke", "model.kind", "rnn"),
    ("mnist_fcn", "dni,smoke", "synthesizer.kind", "conv"),  # conv on an FCN
    ("mnist_fcn", "dni,smoke", "synthesizer.hidden_layers", -1),
    ("mnist_fcn", "dni,smoke", "synthesizer.units", 0),
    ("mnist_cnn", "dni,smoke", "synthesizer.filters", 0),
    ("mnist_cnn", "dni,smoke", "synthesizer.kernel_size", -3),
    ("mnist_cnn", "cdni,smoke", "synthesizer.dilation_rate", 0),
    ("mnist_fcn", "dni,smoke", "log.diagnostics_every_steps", -1),
    ("mnist_fcn", "dni,smoke", "log.probe_examples", 0),
    ("mnist_fcn", "dni,smoke", "log.profile_batch", "-1"),
    ("mnist_fcn", "dni,smoke", "log.profile_batch", "ten"),
    ("mnist_fcn", "dni,smoke", "log.profile_batch", "20,10"),
    ("mnist_fcn", "dni,smoke", "log.profile_batch", "1,2,3"),
    ("mnist_fcn", "dni,smoke", "log.update_freq", "weekly"),
    ("mnist_fcn", "dni,smoke", "log.update_freq", "0"),
]


@pytest.fixture(autouse=True)
def _seed():
    """No Keras here: skip conftest's seeding and its slow clear_session."""
    yield


def _config(name, variant):
    return importlib.import_module(f"configs.{name}").get_config(variant)


@pytest.mark.parametrize(
    "name, variant, field, value", BAD, ids=[f"{c[2]}={c[3]!r}" for c in BAD]
)
def test_out_of_range_value_is_named(name, variant, field, value):
    config = _config(name, variant)
    set_field(config, field, value)
    with pytest.raises(ValueError) as caught:
        common.validate(config)
    assert f"Received: {field}={value!r}" in str(caught.value)
    assert str(caught.value).startswith(f"`{field}` must be")


@pytest.mark.parametrize("name", ["mnist_fcn", "mnist_cnn"])
@pytest.mark.parametrize("method", common.METHODS)
@pytest.mark.parametrize("extra", ["", ",smoke", ",depth=4"])
def test_every_shipped_variant_passes(name, method, extra):
    config = _config(name, method + extra)
    assert common.validate(config) is config
    config.log.update_freq = "100"  # a step count, as the command line gives it
    common.validate(config)
