"""Image pipelines: shapes, ranges, counts, per-epoch order; offline MNIST."""

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

import keras_sg
from keras_sg import data

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
MNIST_DIR = Path(os.environ.get("KERAS_SG_MNIST_DIR", SHARED_MNIST))


def _take(ds, count=None):
    out = []
    for x, y in ds:
        out.append((x.numpy(), y.numpy()))
        if count is not None and len(out) == count:
            break
    return out


def _arrays(n=10):
    images = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2, 1) * 6
    labels = np.arange(n) % 3
    return images, labels


def test_mock_mnist_shapes_ranges_and_counts():
    with tfds.testing.mock_data(num_examples=20):
        flat = _take(data.image_dataset("mnist", "train", 8, flatten=True))
        images = _take(data.image_dataset("mnist", "train", 8))
    assert [x.shape for x, _ in flat] == [(8, 784), (8, 784), (4, 784)]
    assert [x.shape for x, _ in images] == [(8, 28, 28, 1)] * 2 + [(4, 28, 28, 1)]
    pixels = np.concatenate([x for x, _ in flat])
    assert pixels.dtype == np.float32 and pixels.min() >= 0.0 and pixels.max() <= 1.0
    labels = np.concatenate([y for _, y in flat])
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < 10


def test_batches_scale_and_keep_pairs():
    images, labels = _arrays()
    (x, y), (x2, y2) = _take(data.batches(images, labels, 6, flatten=True))
    assert x.shape == (6, 4) and x2.shape == (4, 4)
    np.testing.assert_allclose(x, images[:6].reshape(6, 4) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([y, y2]), labels)


def test_each_epoch_order_depends_only_on_seed_and_epoch():
    images, labels = _arrays(10)
    ds = data.batches(images, labels, 4, shuffle=True, seed=7)
    steps = data.steps_per_epoch(10, 4)
    assert steps == 3
    stream = _take(ds, 3 * steps)
    epochs = [
        np.concatenate([y for _, y in stream[e * steps : (e + 1) * steps]])
        for e in range(3)
    ]
    pixels = [
        np.concatenate([x for x, _ in stream[e * steps : (e + 1) * steps]])
        for e in range(3)
    ]
    for e in range(3):
        order = data.epoch_permutation(10, 7, e)
        np.testing.assert_array_equal(epochs[e], labels[order])
        np.testing.assert_allclose(pixels[e], images[order] / 255.0, rtol=1e-6)
    assert not np.array_equal(
        data.epoch_permutation(10, 7, 0), data.epoch_permutation(10, 7, 1)
    )
    # A stream resumed at epoch 2 starts with exactly the batches of epoch 2.
    resumed = _take(
        data.batches(images, labels, 4, shuffle=True, seed=7, first_epoch=2), steps
    )
    for (x, y), (x_ref, y_ref) in zip(resumed, stream[2 * steps :], strict=True):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(x, x_ref)
    other_seed = _take(data.batches(images, labels, 10, shuffle=True, seed=8), 1)[0][1]
    assert not np.array_equal(other_seed, epochs[0])


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


def test_mismatched_arrays_are_named():
    images, labels = _arrays(10)
    with pytest.raises(ValueError, match="10 images and 9 labels"):
        data.batches(images, labels[:9], 4)


@pytest.mark.skipif(
    not MNIST_DIR.is_dir(),
    reason=f"no folder of original MNIST files at {MNIST_DIR} (set KERAS_SG_MNIST_DIR)",
)
def test_offline_mnist_from_the_original_files(tmp_path):
    load = {"data_dir": str(tmp_path), "manual_dir": str(MNIST_DIR)}
    builder = data.prepare("mnist", **load)
    assert builder.info.splits["train"].num_examples == 60000
    images, labels = data.load_split("mnist", "test", **load)
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    # The known MNIST test label counts of digits 0..9.
    np.testing.assert_array_equal(
        np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
