"""scripts/train.py helpers in process: strict metrics JSON, config diffs."""

import json
import math
from pathlib import Path

import ml_collections
import pytest
from conftest import script_module

TRAIN = Path(__file__).resolve().parents[2] / "scripts" / "train.py"


@pytest.fixture(scope="module")
def train():
    """The script as a module; its required absl flags are removed afterwards,
    so that other scripts' tests can parse their own flags."""
    with script_module(TRAIN, "keras_sg_train") as module:
        yield module


def test_metrics_json_is_strict_with_null_for_nan_and_inf(train, tmp_path):
    metrics = {
        "test_loss": math.nan,
        "curve": [1.5, math.inf, (-math.inf, 2)],
        "nested": {"a": math.nan, "b": 3},
        "steps": 16,
    }
    train.write_metrics(tmp_path, metrics)
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "test_loss": None,
        "curve": [1.5, None, [None, 2]],
        "nested": {"a": None, "b": 3},
        "steps": 16,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no partial


def _workdir(tmp_path, recorded):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "epoch-0001.keras").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    return tmp_path


def test_changed_config_lists_every_unsafe_field(train, tmp_path):
    recorded = {"method": "dni", "epochs": 2, "model": {"depth": 3}, "log": {"x": 1}}
    workdir = _workdir(tmp_path, recorded)
    config = ml_collections.ConfigDict(
        {"method": "cdni", "epochs": 9, "model": {"depth": 4}, "log": {"x": 2}}
    )
    with pytest.raises(SystemExit) as caught:
        train.check_same_config(workdir, config)
    message = str(caught.value)
    assert "(recorded -> now): method='dni' -> 'cdni', model.depth=3 -> 4. " in message
    assert "epochs=" not in message and "log.x" not in message
    # Only safe fields differ: accepted.
    config.method, config.model.depth = "dni", 3
    train.check_same_config(workdir, config)
    # No checkpoint yet: nothing was trained with the old config.
    (workdir / "ckpt" / "epoch-0001.keras").unlink()
    train.check_same_config(workdir, ml_collections.ConfigDict({"method": "x"}))
