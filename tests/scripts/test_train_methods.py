"""scripts/train.py with the feed-forward section's methods: BP(lambda),
stochastic updates, the complete unlock; the paper's learning-rate schedule;
each cut's final cosine in metrics.json."""

import importlib
import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import run_train, set_field, train_in_process

import keras_sg
from keras_sg.callbacks.sg_monitor import gradient_diagnostics

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from configs import common  # noqa: E402


def _config(variant, name="mnist_fcn"):
    return importlib.import_module(f"configs.{name}").get_config(variant)


# (variant, model class, attribute checked on the trained model, its value)
KINDS = [
    ("bp_lambda,bp_lambda=0.25", keras_sg.BPLambdaModel, "bp_lambda", 0.25),
    ("dni,update_probability=0.2", keras_sg.StochasticUpdateModel, "method", "dni"),
    ("cdni,update_probability=0.05", keras_sg.StochasticUpdateModel, "method", "cdni"),
    ("unlocked", keras_sg.UnlockedModel, "method", "cdni"),
]


@pytest.mark.parametrize(
    "variant, cls, attribute, value", KINDS, ids=[k[0] for k in KINDS]
)
def test_smoke_new_method_trains_and_reports_final_cosines(
    tmp_path, variant, cls, attribute, value
):
    done = train_in_process(
        [f"--config=configs/mnist_fcn.py:{variant},smoke", f"--workdir={tmp_path}"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    config = _config(f"{variant},smoke")
    assert metrics["method"] == config.method and metrics["steps"] == 16
    assert metrics["cut_names"] == ["cut_1", "cut_2"]
    assert len(metrics["final_cut_cosines"]) == 2
    assert all(-1.0 <= c <= 1.0 for c in metrics["final_cut_cosines"])
    model = keras.models.load_model(tmp_path / "ckpt" / "epoch-0002.keras")
    assert type(model) is cls
    assert getattr(model, attribute) == value
    if cls is keras_sg.StochasticUpdateModel:
        assert model.update_probability == config.update_probability
        assert model.seed == config.seed
    if cls is keras_sg.UnlockedModel:
        assert len(metrics["final_input_relative_error"]) == 2
        header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
        assert {"cut_1_input_loss", "cut_2_input_loss"} <= set(header)


def test_final_cosines_are_those_of_the_final_model_on_the_probe(tmp_path):
    """metrics.json's cosines equal gradient_diagnostics recomputed from the
    last checkpoint on the same probe batch."""
    done = train_in_process(
        ["--config=configs/mnist_fcn.py:dni,smoke", f"--workdir={tmp_path}"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    config = _config("dni,smoke")
    x, y = keras_sg.data.synthetic_images(
        config.data.train_examples + config.data.test_examples, (28, 28, 1), seed=1
    )
    x_test = x[config.data.train_examples :][: config.log.probe_examples]
    y_test = y[config.data.train_examples :][: config.log.probe_examples]
    probe_x = (x_test.astype("float32") / 255.0).reshape(len(x_test), -1)
    model = keras.models.load_model(tmp_path / "ckpt" / "epoch-0002.keras")
    report = gradient_diagnostics(model, probe_x, y_test)
    want = [report["cut_1/cosine"], report["cut_2/cosine"]]
    np.testing.assert_allclose(metrics["final_cut_cosines"], want, rtol=1e-4, atol=1e-6)
    assert max(abs(c) for c in want) > 1e-3  # a real measurement, not zeros


def test_paper_schedule_divides_by_ten_at_60_and_80_percent(tmp_path):
    """The checkpoint's optimizer holds the schedule: rate, rate/10, rate/100
    at 60% and 80% of epochs * steps per epoch (2 * 8 = 16 steps here)."""
    done = train_in_process(
        [
            "--config=configs/mnist_fcn.py:backprop,smoke",
            f"--workdir={tmp_path}",
            "--config.epochs=5",
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["learning_rate_schedule"] == {
        "kind": "paper",
        "values": [1e-3, 1e-4, 1e-5],
        "boundaries": [24, 32],  # 60% and 80% of 40 steps
    }
    model = keras.models.load_model(tmp_path / "ckpt" / "epoch-0005.keras")
    schedule = model.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.PiecewiseConstantDecay)
    rates = [float(schedule(step)) for step in (0, 24, 25, 32, 33, 40)]
    np.testing.assert_allclose(rates, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)


def test_constant_schedule_keeps_the_rate(tmp_path):
    done = train_in_process(
        [
            "--config=configs/mnist_fcn.py:backprop,smoke",
            f"--workdir={tmp_path}",
            "--config.optimizer.schedule=constant",
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["learning_rate_schedule"]["values"] == [1e-3]
    model = keras.models.load_model(tmp_path / "ckpt" / "epoch-0002.keras")
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("bp_lambda,bp_lambda=1.5", "Received: bp_lambda=1.5"),
        ("dni,update_probability=0", "Received: update_probability=0.0"),
        ("cdni,update_probability=1.5", "Received: update_probability=1.5"),
        ("backprop,update_probability=0.5", "Received: update_probability=0.5"),
    ],
)
def test_bad_method_value_is_named_before_training(tmp_path, variant, message):
    workdir = tmp_path / "run"
    done = run_train(
        [f"--config=configs/mnist_fcn.py:{variant},smoke", f"--workdir={workdir}"]
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert done.stderr.strip().count("\n") == 0  # one line
    assert not workdir.exists()


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("bp_lambda", 1.5, "`bp_lambda` must be a number in [0, 1]"),
        ("bp_lambda", -0.1, "`bp_lambda` must be a number in [0, 1]"),
        ("update_probability", 0.0, "`update_probability` must be a number in (0, 1]"),
        ("optimizer.schedule", "cosine", "`optimizer.schedule` must be one of"),
    ],
)
def test_validate_names_bad_method_values(field, value, expected):
    config = _config("dni,smoke")
    set_field(config, field, value)
    with pytest.raises(ValueError) as caught:
        common.validate(config)
    assert str(caught.value).startswith(expected)
    assert f"Received: {field}={value!r}" in str(caught.value)


@pytest.mark.parametrize("name", ["mnist_fcn", "mnist_cnn"])
def test_variants_set_the_method_fields(name):
    config = _config("bp_lambda,bp_lambda=0.75,depth=6", name)
    assert (config.method, config.bp_lambda, config.model.depth) == (
        "bp_lambda",
        0.75,
        6,
    )
    assert config.synthesizer.hidden_layers == 2  # DNI's synthesizers
    config = _config("unlocked,depth=4", name)
    assert config.synthesizer.hidden_layers == 0  # cDNI's, linear
    config = _config("cdni,update_probability=0.05", name)
    assert config.update_probability == 0.05 and config.method == "cdni"
    assert config.optimizer.schedule == "paper"
    for variant in ("bp_lambda", "unlocked", "dni,update_probability=0.2"):
        common.validate(_config(variant, name))
