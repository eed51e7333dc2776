"""tf.data pipelines for the image classification sets of the DNI paper."""

import os

import tensorflow as tf

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
            "(`manual_dir`; the scripts' --mnist_dir flag or the "
            "KERAS_SG_MNIST_DIR environment variable)"
        )
        raise RuntimeError(
            f"Could not prepare the {name} dataset in data_dir={data_dir!r} from "
            f"manual_dir={manual_dir!r}: {hint}. tensorflow-datasets said: {error}"
        ) from error
    return builder


def image_dataset(
    name: str,
    split: str,
    batch_size: int,
    *,
    flatten: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    data_dir: str | None = None,
    manual_dir: str | None = None,
) -> tf.data.Dataset:
    """A batched (image, label) dataset with pixels scaled to [0, 1].

    Args:
        name: one of "mnist", "fashion_mnist", "cifar10".
        split: a tfds split string, such as "train" or "test[:1000]".
        batch_size: examples per batch; the last batch may be smaller.
        flatten: flatten each image to a vector (for fully connected nets).
        shuffle: shuffle the whole split, anew each epoch, from `seed`.
        seed: the shuffling seed.
        data_dir, manual_dir: see `prepare`.

    Returns:
        A `tf.data.Dataset` of `(float32 images, int64 labels)` batches.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)

    def scale(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        if flatten:
            image = tf.reshape(image, [-1])
        return image, label

    ds = ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        # A buffer as large as the split shuffles it uniformly.
        size = int(ds.cardinality())
        buffer = size if size > 0 else 100_000
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
