"""A digit stream for two networks ticking at different clocks.

The paper's multi-network task (Jaderberg et al. 2016, Section 3.3) could not
be read here; this task is ours, made so that both networks are needed. One
digit image is shown per step, in blocks of `period` steps. The target at a
step of block b is the sum, modulo 10, of the label of the digit shown now
and of the label of the first digit of block b - `lag`; in the first `lag`
blocks it is the label of the digit shown now. The fast network has to read
each digit; what it must remember lies `lag` slow ticks back (at least
`period * lag` steps), which the slow network can carry from one tick to the
next.
"""

import numpy as np

from keras_sg._checks import check_int
from keras_sg.data.synthetic import synthetic_images


def clocked_digits(
    images,
    labels,
    num_sequences: int,
    length: int,
    period: int,
    *,
    lag: int = 2,
    seed: int = 0,
):
    """Sequences of digits and their per-step targets.

    Args:
        images: `(n, ...)` images (uint8 or float); each is flattened and,
            for uint8, scaled to [0, 1].
        labels: `(n,)` integer labels in [0, 10).
        num_sequences: the number of sequences to draw.
        length: steps per sequence, a multiple of `period`, > `lag * period`.
        period: K, the steps per block (the slow network's period).
        lag: how many blocks back the remembered digit lies; >= 1.
        seed: the digits drawn are a function of the seed alone.

    Returns:
        `(x, y)`: float32 `(num_sequences, length, features)` and int64
        `(num_sequences, length)`.
    """
    check_int("num_sequences", num_sequences, 1)
    check_int("period", period, 1)
    check_int("lag", lag, 1)
    check_int("length", length, 1)
    if length % period or length <= lag * period:
        raise ValueError(
            f"`length` must be a multiple of period={period} greater than "
            f"lag * period = {lag * period}. Received: length={length}"
        )
    images = np.asarray(images)
    labels = np.asarray(labels)
    if len(images) != len(labels) or labels.ndim != 1:
        raise ValueError(
            "Expected one label per image. Received: images of shape "
            f"{images.shape} and labels of shape {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= 10:
        raise ValueError(
            f"Labels must lie in [0, 10). Received: labels in "
            f"[{labels.min()}, {labels.max()}]"
        )
    flat = images.reshape(len(images), -1)
    flat = flat.astype(np.float32) / 255.0 if flat.dtype == np.uint8 else flat
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(images), size=(num_sequences, length))
    x = flat[index].astype(np.float32)
    shown = labels[index].astype(np.int64)
    y = shown.copy()
    for t in range(lag * period, length):
        first = (t // period - lag) * period
        y[:, t] = (shown[:, t] + shown[:, first]) % 10
    return x, y


def synthetic_clocked_digits(
    num_sequences: int,
    length: int,
    period: int,
    *,
    lag: int = 2,
    features: int = 16,
    seed: int = 0,
):
    """`clocked_digits` over tiny synthetic images (`synthetic_images`), for tests.

    Returns:
        `(x, y)` as `clocked_digits`, with `features` features per step.
    """
    check_int("features", features, 1)
    images, labels = synthetic_images(256, shape=(features,), seed=seed)
    return clocked_digits(
        images, labels, num_sequences, length, period, lag=lag, seed=seed + 1
    )
