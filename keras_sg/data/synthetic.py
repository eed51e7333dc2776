"""Tiny learnable image sets for smoke runs and tests: no files, no network."""

import numpy as np

from keras_sg._checks import check_int


def synthetic_images(
    n: int, shape: tuple = (28, 28, 1), num_classes: int = 10, seed: int = 0
):
    """Random uint8 images whose labels a linear classifier can learn.

    Each label is the argmax of a fixed random projection of the pixels, so
    accuracy rises above chance within a few steps.

    Returns:
        `(images, labels)`: uint8 (n, *shape) and int64 (n,).
    """
    check_int("n", n, 1)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    projection = rng.normal(size=(int(np.prod(shape)), num_classes))
    centred = images.reshape(n, -1).astype(np.float64) / 255.0 - 0.5
    labels = np.argmax(centred @ projection, axis=1).astype(np.int64)
    return images, labels
