"""Image pipelines: shapes, ranges, counts, order; offline MNIST from files."""

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

import keras_sg

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
MNIST_DIR = Path(os.environ.get("KERAS_SG_MNIST_DIR", SHARED_MNIST))


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_mock_mnist_shapes_ranges_and_counts():
    with tfds.testing.mock_data(num_examples=20):
        flat = _batches(keras_sg.data.image_dataset("mnist", "train", 8, flatten=True))
        images = _batches(keras_sg.data.image_dataset("mnist", "train", 8))
    assert [x.shape for x, _ in flat] == [(8, 784), (8, 784), (4, 784)]
    assert [x.shape for x, _ in images] == [
        (8, 28, 28, 1),
        (8, 28, 28, 1),
        (4, 28, 28, 1),
    ]
    pixels = np.concatenate([x for x, _ in flat])
    assert pixels.dtype == np.float32 and pixels.min() >= 0.0 and pixels.max() <= 1.0
    labels = np.concatenate([y for _, y in flat])
    assert labels.min() >= 0 and labels.max() < 10


def test_shuffled_epochs_differ_but_hold_the_same_examples_and_follow_the_seed():
    with tfds.testing.mock_data(num_examples=40):
        plain = np.concatenate(
            [y for _, y in _batches(keras_sg.data.image_dataset("mnist", "train", 40))]
        )
        ds = keras_sg.data.image_dataset("mnist", "train", 40, shuffle=True, seed=5)
        again = keras_sg.data.image_dataset("mnist", "train", 40, shuffle=True, seed=5)
        first, second = _batches(ds)[0][1], _batches(ds)[0][1]
        replay = _batches(again)[0][1]
    assert sorted(first) == sorted(second) == sorted(plain)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, replay)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"name": "imagenet"}, ValueError, "name='imagenet'"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"manual_dir": "/no/such/folder"}, FileNotFoundError, "/no/such/folder"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    args = {"name": "mnist", "split": "train", "batch_size": 8} | kwargs
    with pytest.raises(error, match=message):
        keras_sg.data.image_dataset(**args)


@pytest.mark.skipif(
    not MNIST_DIR.is_dir(),
    reason=f"no folder of original MNIST files at {MNIST_DIR} (set KERAS_SG_MNIST_DIR)",
)
def test_offline_mnist_from_the_original_files(tmp_path):
    builder = keras_sg.data.prepare(
        "mnist", data_dir=str(tmp_path), manual_dir=str(MNIST_DIR)
    )
    assert builder.info.splits["train"].num_examples == 60000
    assert builder.info.splits["test"].num_examples == 10000
    test = keras_sg.data.image_dataset(
        "mnist",
        "test",
        1000,
        flatten=True,
        data_dir=str(tmp_path),
        manual_dir=str(MNIST_DIR),
    )
    labels = np.concatenate([y for _, y in _batches(test)])
    # The known MNIST test label counts of digits 0..9.
    np.testing.assert_array_equal(
        np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
