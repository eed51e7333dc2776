"""Choosing the table's learning rates without the test set: train.py's
validation split, scripts/tune_table.py's choice, and reproduce_table.py's
per-method rates."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import script_module

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _seed():
    """No Keras model here: skip conftest's seeding and its slow clear_session."""
    yield


@pytest.fixture
def train_script():
    with script_module(ROOT / "scripts" / "train.py", "keras_sg_train_t") as module:
        yield module


@pytest.fixture
def tune():
    with script_module(ROOT / "scripts" / "tune_table.py", "keras_sg_tune_t") as m:
        yield m


@pytest.fixture
def table():
    path = ROOT / "scripts" / "reproduce_table.py"
    with script_module(path, "keras_sg_table_t") as module:
        yield module


def _smoke_config(**data):
    from configs import mnist_fcn

    config = mnist_fcn.get_config("dni,smoke")
    for key, value in data.items():
        config.data[key] = value
    return config


def test_validation_split_is_the_training_splits_tail(train_script):
    (x_all, y_all), (x_test, _) = train_script.load_data(_smoke_config())
    config = _smoke_config(validation_examples=100)
    (x_train, y_train), (x_held, y_held) = train_script.load_data(config)
    assert len(x_all) == 512 and len(x_train) == 412 and len(x_held) == 100
    np.testing.assert_array_equal(x_train, x_all[:412])
    np.testing.assert_array_equal(x_held, x_all[412:])
    np.testing.assert_array_equal(y_held, y_all[412:])
    # Not the test split.
    assert not np.array_equal(x_held, x_test[:100])
    assert train_script.evaluated_split(config) == "validation"
    assert train_script.evaluated_split(_smoke_config()) == "test"


def test_validation_split_must_leave_training_examples(train_script):
    with pytest.raises(ValueError, match="validation_examples=512"):
        train_script.load_data(_smoke_config(validation_examples=512))


def test_negative_validation_split_is_refused():
    from configs import common

    with pytest.raises(ValueError, match="validation_examples"):
        common.validate(_smoke_config(validation_examples=-1))


def _tune_settings(workdir, **overrides):
    values = dict(
        workdir=str(workdir),
        nets=["fcn3", "fcn6"],
        methods=["backprop", "dni"],
        rates=["3e-4", "1e-3", "3e-3"],
        epochs=5,
        validation_examples=10000,
        seed=0,
        schedule="paper",
        only=[],
        override=[],
    )
    values.update(overrides)
    return types.SimpleNamespace(**values)


def _fabricate(workdir, name, error=None, split="validation", status="finished"):
    run = Path(workdir) / name
    run.mkdir(parents=True)
    metrics = {"status": status, "epochs": 5, "evaluated_on": split}
    if error is not None:
        metrics[f"{split}_error_percent"] = error
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_tuning_chooses_the_lowest_mean_validation_error(tune, tmp_path):
    s = _tune_settings(tmp_path)
    errors = {
        # backprop: 1e-3 wins on the mean (2.0) though 3e-3 wins on fcn3.
        "fcn3_backprop_lr0.0003": 3.0,
        "fcn6_backprop_lr0.0003": 3.0,
        "fcn3_backprop_lr0.001": 2.2,
        "fcn6_backprop_lr0.001": 1.8,
        "fcn3_backprop_lr0.003": 1.5,
        "fcn6_backprop_lr0.003": 4.0,
        # dni: 3e-3 would win but diverged at fcn6; 1e-3 misses fcn6.
        "fcn3_dni_lr0.0003": 5.0,
        "fcn6_dni_lr0.0003": 9.0,
        "fcn3_dni_lr0.001": 4.0,
        "fcn3_dni_lr0.003": 1.0,
    }
    for name, error in errors.items():
        _fabricate(tmp_path, name, error)
    _fabricate(tmp_path, "fcn6_dni_lr0.003", status="diverged")
    runs = tune.runs(s)
    assert len(runs) == 12
    found = tune.collect(runs, s)
    assert found["fcn6_dni_lr0.003"] is None and "fcn6_dni_lr0.001" not in found
    chosen = tune.choose(runs, found)
    assert chosen == {("fcn", "backprop"): 1e-3, ("fcn", "dni"): 3e-4}
    assert tune.flag_value(chosen) == "fcn_backprop:0.001,fcn_dni:0.0003"
    text = tune.report(runs, found, chosen, s, load=1.5)
    assert "| FCN6 | dni | 9.00 | – | diverged |" in text
    assert "| FCN3 | backprop | 3.00 | 2.20 | 1.50 |" in text
    assert "--learning_rates=fcn_backprop:0.001,fcn_dni:0.0003" in text
    assert "first 50,000" in text and "last 10,000" in text
    assert (
        "- FCN backprop: 0.001 (lowest mean validation error over FCN3, FCN6)" in text
    )
    assert (
        "- FCN dni: 0.0003 (lowest mean validation error over FCN3, FCN6; the " in text
    )
    assert "lowest rate tried" in text and "highest rate tried" not in text


def test_tuning_refuses_a_run_scored_on_the_test_split(tune, tmp_path):
    s = _tune_settings(tmp_path, nets=["fcn3"], methods=["dni"], rates=["1e-3"])
    _fabricate(tmp_path, "fcn3_dni_lr0.001", 2.0, split="test")
    with pytest.raises(ValueError, match="evaluated_on='test'"):
        tune.collect(tune.runs(s), s)


def test_tuning_names_a_bad_net(tune, tmp_path):
    with pytest.raises(ValueError, match="'mlp3'"):
        tune.runs(_tune_settings(tmp_path, nets=["mlp3"]))


def test_table_rates_take_the_most_specific_key(table):
    s = types.SimpleNamespace(
        learning_rate=3e-4,
        learning_rates=["dni:1e-4", "cnn:3e-3", "cnn_dni:2e-3", "unlocked:5e-4"],
    )

    def rate(family, method):
        return table.learning_rate(table.Cell(family, 3, method, 0, "row"), s)

    assert rate("fcn", "dni") == 1e-4
    assert rate("cnn", "dni") == 2e-3
    assert rate("cnn", "backprop") == 3e-3
    assert rate("fcn", "backprop") == 3e-4
    assert rate("fcn", "unlocked") == 5e-4


@pytest.mark.parametrize("item", ["dni=1e-3", "dnii:1e-3", "dni:-1", "dni:fast"])
def test_table_rates_name_a_bad_item(table, item):
    with pytest.raises(ValueError, match=repr(item).replace("(", r"\(")):
        table.parse_rates([item])


def test_table_refuses_a_workdir_run_at_another_rate(table, tmp_path):
    s = types.SimpleNamespace(
        workdir=str(tmp_path),
        learning_rate=3e-4,
        learning_rates=["backprop:1e-3"],
        fcn_epochs=10,
    )
    cell = table.Cell("fcn", 3, "backprop", 0, "fcn3_backprop")
    run = tmp_path / cell.name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"optimizer": {"learning_rate": 3e-4}}))
    with pytest.raises(ValueError, match="learning rate 0.0003.*asks 0.001"):
        table.train(cell, s)


def test_table_refuses_a_tuning_run(table, tmp_path):
    s = types.SimpleNamespace(workdir=str(tmp_path))
    cell = table.Cell("fcn", 3, "dni", 0, "fcn3_dni")
    _fabricate(tmp_path, cell.name, 2.0)
    with pytest.raises(ValueError, match="evaluated_on='validation'"):
        table.collect([cell], s)
