"""scripts/train.py hands each dataset its own folder of original files."""

import time
from pathlib import Path

import ml_collections
import pytest
from conftest import script_module

from keras_sg.data import tfds_images

TRAIN = Path(__file__).resolve().parents[2] / "scripts" / "train.py"


@pytest.fixture(scope="module")
def train_script():
    with script_module(TRAIN, "keras_sg_train") as module:
        yield module


def _config(name, data_dir):
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(
        {"name": name, "manual_dir": None, "data_dir": data_dir}
    )
    config.data.train_examples = config.data.test_examples = 0
    return config


def test_fashion_mnist_does_not_take_the_mnist_folder(
    train_script, tmp_path, monkeypatch
):
    # MNIST's folder is set, Fashion-MNIST's is not: the error names
    # Fashion-MNIST's variable (and comes at once, without network).
    monkeypatch.setenv("KERAS_SG_MNIST_DIR", str(tmp_path / "mnist"))
    monkeypatch.delenv("KERAS_SG_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(tfds_images, "_reachable", lambda url: False)
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as caught:
        train_script.load_data(_config("fashion_mnist", str(tmp_path / "tfds")))
    assert time.perf_counter() - start < 15
    message = str(caught.value)
    assert "KERAS_SG_FASHION_MNIST_DIR" in message and "fashion_mnist" in message
    assert str(tmp_path / "mnist") not in message


def test_each_dataset_reads_its_own_variable(train_script, tmp_path, monkeypatch):
    # A folder lacking the files is named in the error: which folder each
    # dataset was handed.
    for name, variable in tfds_images.MANUAL_DIR_VARIABLES.items():
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.setenv(variable, str(folder))
    for name in tfds_images.MANUAL_DIR_VARIABLES:
        with pytest.raises(FileNotFoundError, match=f"manual_dir='{tmp_path / name}'"):
            train_script.load_data(_config(name, str(tmp_path / "tfds")))
