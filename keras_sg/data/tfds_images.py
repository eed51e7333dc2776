"""tf.data pipelines for the image classification sets of the DNI paper.

The sets are small (MNIST is 47 MB of pixels), so a split is read once into
memory and batched from there. Shuffled epochs follow a permutation fixed by
the seed and the epoch number alone: a run resumed at epoch k sees the very
batches that an uninterrupted run sees at epoch k.

Each dataset is prepared apart from the others (tensorflow-datasets keys its
extraction cache by file name, and MNIST and Fashion-MNIST use the same file
names), and a whole train or test split is checked against the known label
counts and content digest of the original files when it is read.
"""

import hashlib
import math
import os
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import tensorflow as tf

from keras_sg._checks import check_int

SUPPORTED = ("mnist", "fashion_mnist", "cifar10")

# The environment variable that names each dataset's folder of original files.
MANUAL_DIR_VARIABLES = {
    "mnist": "KERAS_SG_MNIST_DIR",
    "fashion_mnist": "KERAS_SG_FASHION_MNIST_DIR",
    "cifar10": "KERAS_SG_CIFAR10_DIR",
}

# What a whole split must hold: examples per class and `content_digest`
# (None where we had no original files to compute it from). MNIST and
# Fashion-MNIST were computed from the original IDX files (their md5 sums are
# the published ones); CIFAR-10 has 5,000 training and 1,000 test images per
# class by construction.
KNOWN_SPLITS = {
    ("mnist", "train"): (
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        "efb0d4dfb3297d29f03ba77d302dff657724c12a047eff65d851f7e0b82be3d2",
    ),
    ("mnist", "test"): (
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        "b9d8afc58662c554f12eb062f1e3c67665718b60a68f611724060ad7d960b28f",
    ),
    ("fashion_mnist", "train"): (
        [6000] * 10,
        "9f7da7ceb688fec5ac60646c65c6921c0c7911f41856541d1951ba8bcd08187d",
    ),
    ("fashion_mnist", "test"): (
        [1000] * 10,
        "cead68de77266d4360ca898b5e1cafd68df0d2723f9e735fc69bc545978de19d",
    ),
    ("cifar10", "train"): ([5000] * 10, None),
    ("cifar10", "test"): ([1000] * 10, None),
}

_PROBE_SECONDS = 3.0  # how long to wait for the download server to answer


def _check_name(name: str):
    if name not in SUPPORTED:
        raise ValueError(
            f"Expected a dataset name in {SUPPORTED}. Received: name={name!r}"
        )


def manual_dir_variable(name: str) -> str:
    """The environment variable naming `name`'s folder of original files.

    `"mnist"` -> `"KERAS_SG_MNIST_DIR"`, `"fashion_mnist"` ->
    `"KERAS_SG_FASHION_MNIST_DIR"`, `"cifar10"` -> `"KERAS_SG_CIFAR10_DIR"`.
    """
    _check_name(name)
    return MANUAL_DIR_VARIABLES[name]


def manual_dir_from_env(name: str) -> str | None:
    """The folder of `name`'s original files that its environment variable
    names (see `manual_dir_variable`), or None when it is unset or empty."""
    return os.environ.get(manual_dir_variable(name)) or None


def expected_files(name: str) -> list[str]:
    """The original files that a `manual_dir` for `name` must hold."""
    import tensorflow_datasets as tfds

    _check_name(name)
    infos = tfds.builder_cls(name).url_infos or {}
    return sorted(info.filename for info in infos.values() if info.filename)


def _where_to_put_files(name: str, files: list[str]) -> str:
    return (
        f"give a folder holding the original {name} files {files} as `manual_dir` "
        f"(train.py: the config field data.manual_dir or the environment variable "
        f"{MANUAL_DIR_VARIABLES[name]})"
    )


def _reachable(url: str, timeout: float = _PROBE_SECONDS) -> bool:
    """Whether the server of `url` answers at all within `timeout` seconds."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered, if only with an error status
    except (OSError, ValueError):  # no DNS, no route, refused, timed out
        return False
    return True


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None):
    """Builds a tensorflow-datasets builder, prepared for reading.

    Each dataset extracts its files into its own folder
    (`<data_dir>/downloads/extracted/<name>`): tensorflow-datasets' shared
    extraction cache is keyed by file name, so Fashion-MNIST prepared after
    MNIST would otherwise be MNIST.

    Before handing an unprepared dataset to tensorflow-datasets, the files
    are looked for: a `manual_dir` that lacks some of them, or (without
    `manual_dir`) a download server that does not answer within seconds,
    raises an error naming the files, instead of minutes of download retries.

    Args:
        name: one of "mnist", "fashion_mnist", "cifar10".
        data_dir: where tfds keeps prepared data (its default when None).
        manual_dir: a folder holding the dataset's original files (for MNIST
            the four `*-ubyte.gz` files; see `expected_files`). With it, tfds
            prepares the dataset without touching the network.

    Returns:
        The prepared `tfds` builder.

    Raises:
        FileNotFoundError: `manual_dir` is missing or lacks some of the files.
        ConnectionError: no `manual_dir` (and not all the files in tfds' own
            `<data_dir>/downloads/manual`), and the download server does not
            answer.
        RuntimeError: tensorflow-datasets failed (e.g. a file's checksum).
    """
    import tensorflow_datasets as tfds

    _check_name(name)
    if manual_dir is not None and not os.path.isdir(manual_dir):
        raise FileNotFoundError(
            f"The folder of original {name} files does not exist. "
            f"Received: manual_dir={manual_dir!r}"
        )
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    downloads = builder.data_dir_root / "downloads"
    files = expected_files(name)
    if manual_dir is not None:
        missing = [f for f in files if not os.path.isfile(os.path.join(manual_dir, f))]
        if missing:
            raise FileNotFoundError(
                f"The folder of original {name} files lacks {missing}: it must hold "
                f"{files}. Received: manual_dir={manual_dir!r}"
            )
    elif not all((downloads / "manual" / f).is_file() for f in files):
        urls = sorted(builder.url_infos or {})
        if urls and not _reachable(urls[0]):
            raise ConnectionError(
                f"Could not prepare the {name} dataset in "
                f"data_dir={str(builder.data_dir_root)!r}: it is not prepared there "
                f"and its download server does not answer ({urls[0]}). Without "
                f"network, {_where_to_put_files(name, files)}. Received: "
                f"manual_dir=None"
            )
    config = tfds.download.DownloadConfig(
        extract_dir=downloads / "extracted" / name,
        manual_dir=manual_dir,
        try_download_gcs=manual_dir is None,
    )
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as error:  # tfds raises many kinds on a failed download
        hint = (
            f"check that it holds the original {name} files {files}"
            if manual_dir
            else f"without network, {_where_to_put_files(name, files)}"
        )
        raise RuntimeError(
            f"Could not prepare the {name} dataset in data_dir={data_dir!r} from "
            f"manual_dir={manual_dir!r}: {hint}. tensorflow-datasets said: {error}"
        ) from error
    return builder


def content_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """A sha256 of a split's (image, label) pairs that ignores their order.

    Each pair (the image's bytes and the label as one byte) is hashed on its
    own; the sorted hashes are hashed together. Two splits have the same
    digest exactly when they hold the same pairs (up to hash collisions),
    whatever order tensorflow-datasets stored them in.
    """
    if len(images) != len(labels):
        raise ValueError(
            f"Expected as many labels as images. Received: {len(images)} images "
            f"and {len(labels)} labels"
        )
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"Expected uint8 images (as stored). Received: dtype={images.dtype}"
        )
    rows = np.concatenate(
        [images.reshape(len(images), -1), np.asarray(labels, np.uint8)[:, None]],
        axis=1,
    )
    pairs = sorted(
        hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows
    )
    return hashlib.sha256(b"".join(pairs)).hexdigest()


def verify_split(
    name: str, split: str, images: np.ndarray, labels: np.ndarray, where: str = ""
):
    """Checks a whole split against its known label counts and digest.

    Args:
        name: the dataset it should be.
        split: "train" or "test"; any other split (e.g. a slice such as
            "train[:10%]") has no known values and is not checked.
        images: uint8 images as stored, (n, ...).
        labels: integer labels, (n,).
        where: where the split was read from, for the error message.

    Raises:
        ValueError: naming the dataset, the split and what differed.
    """
    _check_name(name)
    if (name, split) not in KNOWN_SPLITS:
        return
    counts, digest = KNOWN_SPLITS[name, split]
    labels = np.asarray(labels)
    got_counts = np.bincount(labels, minlength=len(counts)).tolist()
    problem = None
    if got_counts != counts:
        problem = (
            f"its examples per class are {got_counts} ({len(labels)} in all), "
            f"expected {counts} ({sum(counts)} in all)"
        )
    elif digest is not None and (got := content_digest(images, labels)) != digest:
        problem = (
            f"its images and labels have the content digest {got}, expected "
            f"{digest} (keras_sg.data.content_digest of the original files)"
        )
    if problem:
        raise ValueError(
            f"The {split} split of {name}{where} is not {name}: {problem}. Its "
            f"prepared folder holds other data (for example another dataset's, "
            f"from a cache shared between datasets): delete that folder and "
            f"prepare it again from the original files."
        )


def load_split(
    name: str,
    split: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    *,
    verify: bool = True,
):
    """Reads a whole split into memory, checked against the known values.

    Args:
        name, data_dir, manual_dir: as for `prepare`.
        split: a tfds split, e.g. "train", "test" or "train[:10%]".
        verify: check a whole "train" or "test" split with `verify_split`
            (turn it off for `tfds.testing.mock_data`, whose examples are
            random).

    Returns:
        `(images, labels)`: uint8 images of shape (n, height, width, channels)
        and int64 labels of shape (n,).
    """
    import tensorflow_datasets as tfds

    builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    ds = builder.as_dataset(split=split, as_supervised=True).batch(1 << 16)
    parts = list(tfds.as_numpy(ds))
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts]).astype(np.int64)
    if verify:
        verify_split(name, split, images, labels, f" read from {builder.data_dir}")
    return images, labels


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

    One iteration of the dataset is one epoch, of `steps_per_epoch(n,
    batch_size)` batches (its cardinality), so `model.fit(ds, epochs=...)`
    ends each epoch by itself, as with any finite dataset.

    Args:
        images: uint8 (or float) images, (n, ...).
        labels: integer labels, (n,).
        batch_size: examples per batch; the last batch of an epoch may be
            smaller.
        flatten: flatten each image to a vector (for fully connected nets).
        shuffle: if True, each iteration of the dataset is the next epoch:
            the first in the order `epoch_permutation(n, seed, first_epoch)`,
            the next in that of `first_epoch + 1`, and so on (Keras iterates
            the dataset anew each epoch). An epoch counts once all its
            batches were taken: an iteration abandoned part way is begun
            again at the next one. If False, every iteration is one pass in
            the stored order.
        seed: the shuffling seed.
        first_epoch: the epoch of the first iteration (a resumed run's
            initial epoch).

    Returns:
        A `tf.data.Dataset` of `(float32 images, int64 labels)` batches.
    """
    check_int("batch_size", batch_size, 1)
    check_int("first_epoch", first_epoch, 0)
    _check_pairs(images, labels)
    n = len(images)
    gather = _gather(images, labels, flatten)
    if not shuffle:
        order = tf.data.Dataset.range(n).batch(batch_size)
        return order.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE
        )

    steps = steps_per_epoch(n, batch_size)
    # The epoch to serve next, and the batches of it taken so far. Batches are
    # counted where they leave the pipeline, after the prefetch buffer, so
    # that reading ahead does not count.
    state = {"epoch": first_epoch, "taken": 0}

    def one_epoch():  # called by tf.data at the start of each iteration
        state["taken"] = 0
        order = epoch_permutation(n, seed, state["epoch"])
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]

    def take():
        state["taken"] += 1
        if state["taken"] == steps:
            state["epoch"] += 1
        return state["taken"]

    def count(x, y):
        taken = tf.py_function(take, [], tf.int64)
        with tf.control_dependencies([taken]):
            return tf.identity(x), tf.identity(y)

    order = tf.data.Dataset.from_generator(
        one_epoch, output_signature=tf.TensorSpec([None], tf.int64)
    )
    ds = order.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE).map(count)
    # tf.data would otherwise put a prefetch after the counting map, which
    # then counts batches read ahead (an abandoned iteration would count).
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    ds = ds.with_options(options)
    return ds.apply(tf.data.experimental.assert_cardinality(steps))


def shuffled_epochs(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    epochs: int,
    *,
    flatten: bool = False,
    seed: int = 0,
    first_epoch: int = 0,
) -> tf.data.Dataset:
    """`epochs` shuffled epochs of batches back to back, of TensorFlow ops only.

    The batches of `batches(..., shuffle=True)` for epochs `first_epoch` to
    `first_epoch + epochs - 1`, in the same orders (`epoch_permutation`),
    but as one dataset without Python in it: the orders are computed here
    and held as a tensor. So the dataset can be made under `tf.device` of
    another task, a TensorFlow server's, and is read there (for example by
    `AsyncPipelinedModel`'s stage 0, with no batch through this process).
    Pass `steps_per_epoch=steps_per_epoch(n, batch_size)` to `fit`: the
    epochs are not iterations of the dataset, so Keras goes on where the
    last epoch ended (`batches` counts epochs in Python instead).

    Args:
        images, labels, batch_size, flatten, seed, first_epoch: as for
            `batches`.
        epochs: epochs in the dataset (a `fit` of `epochs=first_epoch +
            epochs` from `initial_epoch=first_epoch` reads it to its end).

    Returns:
        A `tf.data.Dataset` of `(float32 images, int64 labels)` batches, of
        cardinality `epochs * steps_per_epoch(n, batch_size)`.
    """
    check_int("batch_size", batch_size, 1)
    check_int("epochs", epochs, 1)
    check_int("first_epoch", first_epoch, 0)
    _check_pairs(images, labels)
    n = len(images)
    orders = np.stack(
        [
            epoch_permutation(n, seed, e)
            for e in range(first_epoch, first_epoch + epochs)
        ]
    )
    gather = _gather(images, labels, flatten)
    ds = tf.data.Dataset.from_tensor_slices(orders).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
    )
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.apply(
        tf.data.experimental.assert_cardinality(epochs * steps_per_epoch(n, batch_size))
    )


def _check_pairs(images, labels):
    if len(images) != len(labels):
        raise ValueError(
            f"Expected as many labels as images. Received: {len(images)} images "
            f"and {len(labels)} labels"
        )


def _gather(images, labels, flatten):
    """A function of a batch of indices: its (float32 images, int64 labels),
    pixels of uint8 images scaled to [0, 1]."""
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    images_t = tf.constant(images)
    labels_t = tf.constant(labels.astype(np.int64))

    def gather(index):
        x = tf.cast(tf.gather(images_t, index), tf.float32) * scale
        if flatten:
            x = tf.reshape(x, [tf.shape(index)[0], -1])
        return x, tf.gather(labels_t, index)

    return gather


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
    verify: bool = True,
) -> tf.data.Dataset:
    """`batches` over a tensorflow-datasets split (see `load_split`, `batches`)."""
    check_int("batch_size", batch_size, 1)
    images, labels = load_split(
        name, split, data_dir=data_dir, manual_dir=manual_dir, verify=verify
    )
    return batches(
        images,
        labels,
        batch_size,
        flatten=flatten,
        shuffle=shuffle,
        seed=seed,
        first_epoch=first_epoch,
    )
