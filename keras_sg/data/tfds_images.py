"""tf.data pipelines for the image classification sets of the DNI paper.

The sets are small (MNIST is 47 MB of pixels), so a split is read once into
memory and batched from there. Shuffled epochs follow a permutation fixed by
the seed and the epoch number alone: a run resumed at epoch k sees the very
batches that an uninterrupted run sees at epoch k.
"""

import math
import os

import numpy as np
import tensorflow as tf

from keras_sg._checks import check_int

SUPPORTED = ("mnist", "fashion_mnist", "cifar10")


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None):
    """Builds a tensorflow-datasets builder, prepared for reading.

    Args:
        name: one of "mnist", "fashion_mnist", "cifar10".
        data_dir: where tfds keeps prepared data (its default when None).
        manual_dir: a folder holding the dataset's original files (for MNIST
            the four `*-ubyte.gz` files). With it, tfds prepares the dataset
            without touching the network.

    Returns:
        The prepared `tfds` builder.
    """
    import tensorflow_datasets as tfds

    if name not in SUPPORTED:
        raise ValueError(
            f"Expected a dataset name in {SUPPORTED}. Received: name={name!r}"
        )
    if manual_dir is not None and not os.path.isdir(manual_dir):
        raise FileNotFoundError(
            f"The folder of original {name} files does not exist. "
            f"Received: manual_dir={manual_dir!r}"
        )
    builder = tfds.builder(name, data_dir=data_dir)
    config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=manual_dir is None
    )
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as error:  # tfds raises many kinds on a failed download
        hint = (
            "check that it holds the original files"
            if manual_dir
            else "without network, give a folder holding the original files "
            "(`manual_dir`: the config field data.manual_dir, the --mnist_dir "
            "flag, or the KERAS_SG_MNIST_DIR environment variable)"
        )
        raise RuntimeError(
            f"Could not prepare the {name} dataset in data_dir={data_dir!r} from "
            f"manual_dir={manual_dir!r}: {hint}. tensorflow-datasets said: {error}"
        ) from error
    return builder


def load_split(
    name: str, split: str, data_dir: str | None = None, manual_dir: str | None = None
):
    """Reads a whole split into memory.

    Returns:
        `(images, labels)`: uint8 images of shape (n, height, width, channels)
        and int64 labels of shape (n,).
    """
    import tensorflow_datasets as tfds

    builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    ds = builder.as_dataset(split=split, as_supervised=True).batch(1 << 16)
    parts = list(tfds.as_numpy(ds))
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    return images, labels.astype(np.int64)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in one epoch: a function of (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch of n examples (the last one may be smaller)."""
    return math.ceil(n / batch_size)


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    flatten: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    first_epoch: int = 0,
) -> tf.data.Dataset:
    """A batched (image, label) dataset from in-memory arrays, pixels in [0, 1].

    Args:
        images: uint8 (or float) images, (n, ...).
        labels: integer labels, (n,).
        batch_size: examples per batch; the last batch of an epoch may be
            smaller.
        flatten: flatten each image to a vector (for fully connected nets).
        shuffle: if True, an endless stream of epochs starting at
            `first_epoch`, epoch e in the order `epoch_permutation(n, seed, e)`;
            fit it with `steps_per_epoch=steps_per_epoch(n, batch_size)`. If
            False, one pass in the stored order.
        seed: the shuffling seed.
        first_epoch: the epoch the stream starts at (a resumed run's).

    Returns:
        A `tf.data.Dataset` of `(float32 images, int64 labels)` batches.
    """
    check_int("batch_size", batch_size, 1)
    if len(images) != len(labels):
        raise ValueError(
            f"Expected as many labels as images. Received: {len(images)} images "
            f"and {len(labels)} labels"
        )
    n = len(images)
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.int64))

    def gather(index):
        x = tf.cast(tf.gather(images_t, index), tf.float32) * scale
        if flatten:
            x = tf.reshape(x, [tf.shape(index)[0], -1])
        return x, tf.gather(labels_t, index)

    if not shuffle:
        order = tf.data.Dataset.range(n).batch(batch_size)
    else:

        def epochs():
            epoch = first_epoch
            while True:
                order = epoch_permutation(n, seed, epoch)
                for start in range(0, n, batch_size):
                    yield order[start : start + batch_size]
                epoch += 1

        order = tf.data.Dataset.from_generator(
            epochs, output_signature=tf.TensorSpec([None], tf.int64)
        )
    return order.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def image_dataset(
    name: str,
    split: str,
    batch_size: int,
    *,
    flatten: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    first_epoch: int = 0,
    data_dir: str | None = None,
    manual_dir: str | None = None,
) -> tf.data.Dataset:
    """`batches` over a tensorflow-datasets split (see `load_split`, `batches`)."""
    check_int("batch_size", batch_size, 1)
    images, labels = load_split(name, split, data_dir=data_dir, manual_dir=manual_dir)
    return batches(
        images,
        labels,
        batch_size,
        flatten=flatten,
        shuffle=shuffle,
        seed=seed,
        first_epoch=first_epoch,
    )
