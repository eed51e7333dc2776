"""Image pipelines: shapes, ranges, counts, per-epoch order, Keras epochs;
offline MNIST and Fashion-MNIST, kept apart and checked; fast offline errors."""

import functools
import gzip
import os
import shutil
import socket
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

import keras_sg
from keras_sg import data
from keras_sg.data import tfds_images

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
MNIST_DIR = Path(os.environ.get("KERAS_SG_MNIST_DIR", SHARED / "mnist"))
FASHION_DIR = Path(
    os.environ.get("KERAS_SG_FASHION_MNIST_DIR", SHARED / "fashion-mnist")
)
MNIST_FILES = [
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
]
needs_originals = pytest.mark.skipif(
    not (MNIST_DIR.is_dir() and FASHION_DIR.is_dir()),
    reason=f"no folders of original MNIST and Fashion-MNIST files at {MNIST_DIR} "
    f"and {FASHION_DIR} (set KERAS_SG_MNIST_DIR and KERAS_SG_FASHION_MNIST_DIR)",
)


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


def _idx(folder: Path, prefix: str):
    """A split read straight from the original IDX files, with NumPy."""
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels.astype(np.int64)


def test_mock_mnist_shapes_ranges_and_counts(monkeypatch):
    # Mock data is random, so it is not checked against the real MNIST; and
    # it needs no download server.
    monkeypatch.setattr(tfds_images, "_reachable", lambda url: True)
    with tfds.testing.mock_data(num_examples=20):
        flat = _take(
            data.image_dataset("mnist", "train", 8, flatten=True, verify=False)
        )
        images = _take(data.image_dataset("mnist", "train", 8, verify=False))
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


def test_each_iteration_is_the_next_epoch_in_its_own_order():
    images, labels = _arrays(10)
    ds = data.batches(images, labels, 4, shuffle=True, seed=7)
    steps = data.steps_per_epoch(10, 4)
    assert steps == 3 and int(ds.cardinality()) == 3
    epochs = [_take(ds) for _ in range(3)]  # each a finite pass
    for e, batches in enumerate(epochs):
        assert [len(y) for _, y in batches] == [4, 4, 2]
        order = data.epoch_permutation(10, 7, e)
        np.testing.assert_array_equal(
            np.concatenate([y for _, y in batches]), labels[order]
        )
        np.testing.assert_allclose(
            np.concatenate([x for x, _ in batches]), images[order] / 255.0, rtol=1e-6
        )
    assert not np.array_equal(
        data.epoch_permutation(10, 7, 0), data.epoch_permutation(10, 7, 1)
    )
    # A dataset resumed at epoch 2 starts with exactly the batches of epoch 2.
    resumed = data.batches(images, labels, 4, shuffle=True, seed=7, first_epoch=2)
    for (x, y), (x_ref, y_ref) in zip(_take(resumed), epochs[2], strict=True):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(x, x_ref)
    # An iteration abandoned part way is not an epoch: the next one repeats it.
    again = data.batches(images, labels, 4, shuffle=True, seed=7)
    assert len(_take(again, 2)) == 2
    np.testing.assert_array_equal(_take(again)[0][1], epochs[0][0][1])
    np.testing.assert_array_equal(_take(again)[0][1], epochs[1][0][1])
    other_seed = _take(data.batches(images, labels, 10, shuffle=True, seed=8))[0][1]
    assert not np.array_equal(other_seed, labels[data.epoch_permutation(10, 7, 0)])


class _Recorder(keras.Sequential):
    """A Sequential model that keeps the labels of every batch it trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def train_step(self, batch):
        self.seen.append(batch[1].numpy())
        return super().train_step(batch)


def _fit(ds, epochs, initial_epoch=0, steps_per_epoch=None):
    keras.utils.set_random_seed(0)
    model = _Recorder([keras.Input((2,)), keras.layers.Dense(10)])
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,  # so that train_step can read the labels
    )
    ends = []
    done = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: ends.append(
            int(model.optimizer.iterations.numpy())
        )
    )
    model.fit(
        ds,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=[done],
        shuffle=False,
        verbose=0,
    )
    return model.seen, ends


def test_fit_ends_each_epoch_and_sees_the_epoch_orders():
    n, batch_size, seed = 10, 4, 3
    images = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    labels = np.arange(n)  # each label names its example
    ds = data.batches(images, labels, batch_size, shuffle=True, seed=seed)
    assert int(ds.cardinality()) == 3  # (an endless dataset would never end fit)
    # No steps_per_epoch: each epoch ends after its 3 batches.
    seen, ends = _fit(ds, epochs=3)
    assert ends == [3, 6, 9] and [len(y) for y in seen] == [4, 4, 2] * 3
    for e in range(3):
        np.testing.assert_array_equal(
            np.concatenate(seen[3 * e : 3 * e + 3]),
            data.epoch_permutation(n, seed, e),
        )
    # A run resumed at epoch 1 sees the very batches of epochs 1 and 2.
    resumed = data.batches(
        images, labels, batch_size, shuffle=True, seed=seed, first_epoch=1
    )
    seen_resumed, ends_resumed = _fit(resumed, epochs=3, initial_epoch=1)
    assert ends_resumed == [3, 6]
    for got, want in zip(seen_resumed, seen[3:], strict=True):
        np.testing.assert_array_equal(got, want)


def test_shuffled_epochs_are_the_epochs_of_batches_back_to_back():
    images, labels = _arrays(10)
    steps = data.steps_per_epoch(10, 4)
    shuffled = data.batches(images, labels, 4, shuffle=True, seed=7)
    want = [batch for _ in range(4) for batch in _take(shuffled)]
    ds = data.shuffled_epochs(images, labels, 4, 3, seed=7)
    assert int(ds.cardinality()) == 3 * steps
    got = _take(ds)
    assert [len(y) for _, y in got] == [4, 4, 2] * 3
    for (x, y), (x_ref, y_ref) in zip(got, want[: 3 * steps], strict=True):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(x, x_ref)
    # From epoch 1 on: epochs 1 to 3 of `batches`.
    later = _take(data.shuffled_epochs(images, labels, 4, 3, seed=7, first_epoch=1))
    for (x, y), (x_ref, y_ref) in zip(later, want[steps:], strict=True):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(x, x_ref)
    flat = _take(data.shuffled_epochs(images, labels, 10, 1, flatten=True, seed=7))
    np.testing.assert_allclose(
        flat[0][0], images[data.epoch_permutation(10, 7, 0)].reshape(10, 4) / 255.0
    )


def test_fit_reads_shuffled_epochs_one_after_another():
    n, batch_size, seed = 10, 4, 3
    images = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    labels = np.arange(n)
    ds = data.shuffled_epochs(images, labels, batch_size, 3, seed=seed)
    seen, ends = _fit(ds, epochs=3, steps_per_epoch=3)
    assert ends == [3, 6, 9] and [len(y) for y in seen] == [4, 4, 2] * 3
    for e in range(3):
        np.testing.assert_array_equal(
            np.concatenate(seen[3 * e : 3 * e + 3]),
            data.epoch_permutation(n, seed, e),
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"epochs": 0}, "epochs=0"),
        ({"first_epoch": -1}, "first_epoch=-1"),
        ({"labels": np.arange(9)}, "10 images and 9 labels"),
    ],
)
def test_shuffled_epochs_names_bad_arguments(kwargs, message):
    images, labels = _arrays(10)
    args = {"images": images, "labels": labels, "batch_size": 4, "epochs": 2}
    with pytest.raises(ValueError, match=message):
        data.shuffled_epochs(**(args | kwargs))


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
    with pytest.raises(ValueError, match="first_epoch=-1"):
        data.batches(images, labels, 4, shuffle=True, first_epoch=-1)


def test_each_dataset_has_its_own_variable():
    assert [data.manual_dir_variable(name) for name in data.SUPPORTED] == [
        "KERAS_SG_MNIST_DIR",
        "KERAS_SG_FASHION_MNIST_DIR",
        "KERAS_SG_CIFAR10_DIR",
    ]
    with pytest.raises(ValueError, match="name='emnist'"):
        data.manual_dir_variable("emnist")


def test_manual_dir_comes_from_the_dataset_s_own_variable(monkeypatch):
    monkeypatch.setenv("KERAS_SG_MNIST_DIR", "/m")
    monkeypatch.delenv("KERAS_SG_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setenv("KERAS_SG_CIFAR10_DIR", "")
    assert data.manual_dir_from_env("mnist") == "/m"
    assert data.manual_dir_from_env("fashion_mnist") is None
    assert data.manual_dir_from_env("cifar10") is None


# Offline without the files: errors within seconds that name the files.


def test_a_folder_lacking_files_is_named_at_once(tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as caught:
        data.prepare("mnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(folder))
    assert time.perf_counter() - start < 10
    message = str(caught.value)
    assert f"lacks {MNIST_FILES[:3]}" in message
    assert str(MNIST_FILES) in message and str(folder) in message
    assert data.expected_files("mnist") == MNIST_FILES
    assert data.expected_files("cifar10") == ["cifar-10-binary.tar.gz"]


def test_no_folder_and_no_network_fails_in_seconds_naming_files_and_variable(
    tmp_path, monkeypatch
):
    # The download server is not asked: the test stands for a machine where
    # it does not answer (what `_reachable` reports is tested on loopback).
    monkeypatch.setattr(tfds_images, "_reachable", lambda url: False)
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as caught:
        data.load_split("fashion_mnist", "test", data_dir=str(tmp_path))
    seconds = time.perf_counter() - start
    assert seconds < 15, seconds
    message = str(caught.value)
    assert str(MNIST_FILES) in message  # Fashion-MNIST uses MNIST's file names
    assert "KERAS_SG_FASHION_MNIST_DIR" in message and "fashion_mnist" in message


# Checking what was loaded.


def test_verify_split_names_dataset_split_and_difference():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 1000)
    images = rng.integers(0, 256, size=(10000, 28, 28, 1), dtype=np.uint8)
    with pytest.raises(ValueError) as caught:
        data.verify_split("mnist", "test", images, labels, " read from /x")
    message = str(caught.value)
    assert message.startswith("The test split of mnist read from /x is not mnist")
    assert "[1000, 1000," in message and "[980, 1135, 1032," in message
    # Right label counts, wrong images: the digest tells.
    with pytest.raises(ValueError, match="fashion_mnist.*content digest"):
        data.verify_split("fashion_mnist", "test", images, labels)
    # Slices and CIFAR-10's pixels have no known values to compare with.
    data.verify_split("mnist", "test[:10]", images[:10], labels[:10])
    data.verify_split("cifar10", "test", images, labels)
    with pytest.raises(ValueError, match="per class are \\[1000"):
        data.verify_split("cifar10", "train", images, labels)


def test_content_digest_ignores_order_but_not_content():
    images, labels = _arrays(10)
    digest = data.content_digest(images, labels)
    order = np.random.default_rng(1).permutation(10)
    assert data.content_digest(images[order], labels[order]) == digest
    changed = images.copy()
    changed[3, 1, 1, 0] += 1
    assert data.content_digest(changed, labels) != digest
    relabelled = labels.copy()
    relabelled[[0, 1]] = relabelled[[1, 0]]  # same labels, paired otherwise
    assert data.content_digest(images, relabelled) != digest


@needs_originals
def test_known_values_are_those_of_the_original_files():
    for name, folder in (("mnist", MNIST_DIR), ("fashion_mnist", FASHION_DIR)):
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images, labels = _idx(folder, prefix)
            counts, digest = data.KNOWN_SPLITS[name, split]
            assert np.bincount(labels).tolist() == counts
            assert data.content_digest(images, labels) == digest
            data.verify_split(name, split, images, labels)


SMALL = 1000  # examples per split of the Fashion-MNIST prepared in the tests


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One tfds folder in which the whole MNIST, then Fashion-MNIST, were
    prepared from the original files. Fashion-MNIST keeps only the first
    `SMALL` examples of each split: enough to tell it from MNIST, in seconds."""
    if not (MNIST_DIR.is_dir() and FASHION_DIR.is_dir()):
        pytest.skip(f"no original files at {MNIST_DIR} and {FASHION_DIR}")
    data_dir = tmp_path_factory.mktemp("tfds")
    data.prepare("mnist", data_dir=str(data_dir), manual_dir=str(MNIST_DIR))
    small = functools.partial(
        tfds.download.DownloadConfig, max_examples_per_split=SMALL
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tfds.download, "DownloadConfig", small)
        data.prepare(
            "fashion_mnist", data_dir=str(data_dir), manual_dir=str(FASHION_DIR)
        )
    return data_dir


@needs_originals
def test_offline_mnist_from_the_original_files(prepared):
    builder = data.prepare("mnist", data_dir=str(prepared))
    assert builder.info.splits["train"].num_examples == 60000
    # Checked on loading against the known counts and digest.
    images, labels = data.load_split("mnist", "test", data_dir=str(prepared))
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    # The known MNIST test label counts of digits 0..9.
    np.testing.assert_array_equal(
        np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    assert data.content_digest(images, labels) == data.content_digest(
        *_idx(MNIST_DIR, "t10k")
    )


@needs_originals
def test_fashion_mnist_prepared_after_mnist_is_fashion_mnist(prepared):
    for split, prefix in (("train", "train"), ("test", "t10k")):
        # Only the first SMALL examples were prepared: no whole split to verify.
        fashion = data.load_split(
            "fashion_mnist", split, data_dir=str(prepared), verify=False
        )
        assert len(fashion[0]) == SMALL
        # The same pairs as the original files' first ones, read with NumPy.
        want = [a[:SMALL] for a in _idx(FASHION_DIR, prefix)]
        mnist = [a[:SMALL] for a in _idx(MNIST_DIR, prefix)]
        assert data.content_digest(*fashion) == data.content_digest(*want)
        assert data.content_digest(*fashion) != data.content_digest(*mnist)
    assert sorted(p.name for p in (prepared / "downloads" / "extracted").iterdir()) == [
        "fashion_mnist",
        "mnist",
    ]


@needs_originals
def test_a_folder_prepared_with_other_data_is_refused(prepared, tmp_path):
    # What a shared extraction cache made before each dataset had its own
    # folder: a fashion_mnist folder holding MNIST's records.
    target = tmp_path / "fashion_mnist" / "3.0.1"
    shutil.copytree(prepared / "mnist" / "3.0.1", target)
    for split in ("train", "test"):
        (target / f"mnist-{split}.tfrecord-00000-of-00001").rename(
            target / f"fashion_mnist-{split}.tfrecord-00000-of-00001"
        )
    info = target / "dataset_info.json"
    info.write_text(
        info.read_text().replace('"name": "mnist"', '"name": "fashion_mnist"')
    )
    with pytest.raises(ValueError) as caught:
        data.load_split("fashion_mnist", "test", data_dir=str(tmp_path))
    message = str(caught.value)
    assert message.startswith(
        f"The test split of fashion_mnist read from {target} is not fashion_mnist"
    )
    assert "[980, 1135," in message and "[1000, 1000," in message


@needs_originals
def test_mnist_files_given_as_fashion_mnist_are_refused(tmp_path):
    with pytest.raises(RuntimeError) as caught:
        data.prepare("fashion_mnist", data_dir=str(tmp_path), manual_dir=str(MNIST_DIR))
    message = str(caught.value)
    assert "Could not prepare the fashion_mnist dataset" in message
    assert "wrong checksum" in message and str(MNIST_DIR) in message


def test_reachable_is_false_where_nothing_listens():
    with socket.socket() as probe:  # a loopback port that is free, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    assert not tfds_images._reachable(f"http://127.0.0.1:{port}/x", timeout=2.0)
    assert time.perf_counter() - start < 5
