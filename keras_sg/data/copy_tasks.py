"""The Copy and Repeat Copy tasks of the Neural Turing Machine (Graves et al.
2014, arXiv:1410.5401), as the DNI paper uses them to measure how long a
dependency a recurrent network learns under truncated BPTT (Jaderberg et al.
2016, arXiv:1608.05343, Section 3.2).

Every batch is `(x, y, sample_weight)`, time-major within each example
(`(batch, time, channels)`), float32. `sample_weight` is 1 on the steps whose
output is scored and 0 elsewhere, so a loss or a metric given to Keras as a
*weighted* metric (`compile(weighted_metrics=[...])`) averages over the scored
steps alone. A batch is a function of its seed and its arguments alone.

The error is measured in bits per character: a character is one output step
(one target vector), its error the binary cross-entropy summed over the
vector's channels, in bits (`bits_per_character`). The DNI paper grows the
sequence length N by a curriculum whenever the average error falls below a
threshold (0.15 bits per character in the issue this follows); whether the
paper's error is this cross-entropy or the count of wrong bits could not be
checked here (n/c), so both are given (`bit_errors_per_character`).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_sg._checks import check_int

TASKS = ("copy", "repeat_copy")


def _rng(seed):
    return np.random.default_rng(seed)


def copy_task(batch_size: int, length: int, *, bits: int = 8, seed=0):
    """A batch of the Copy task: read N random bit vectors, then write them.

    Layout of one example, with N = `length` and B = `bits` (2N + 1 steps):

    - steps 0 .. N-1: x holds pattern[t] on channels 0..B-1; y is 0;
      not scored;
    - step N: x holds 1 on channel B (the delimiter), 0 elsewhere; y is 0;
      not scored;
    - steps N+1 .. 2N: x is 0; y is pattern[t - N - 1]; scored (weight 1).

    Each bit of the pattern is 0 or 1 with probability 1/2, independently.

    Args:
        batch_size: examples in the batch.
        length: N, the number of bit vectors to copy.
        bits: B, the width of each vector (8 in the paper).
        seed: anything `numpy.random.default_rng` accepts (an int, or a list
            of ints such as `[seed, epoch, batch]`).

    Returns:
        `(x, y, sample_weight)`: float32 arrays of shapes
        `(batch_size, 2N + 1, B + 1)`, `(batch_size, 2N + 1, B)` and
        `(batch_size, 2N + 1)`.
    """
    check_int("batch_size", batch_size, 1)
    check_int("length", length, 1)
    check_int("bits", bits, 1)
    n = length
    pattern = _rng(seed).integers(0, 2, size=(batch_size, n, bits))
    steps = 2 * n + 1
    x = np.zeros((batch_size, steps, bits + 1), np.float32)
    y = np.zeros((batch_size, steps, bits), np.float32)
    weight = np.zeros((batch_size, steps), np.float32)
    x[:, :n, :bits] = pattern
    x[:, n, bits] = 1.0
    y[:, n + 1 :] = pattern
    weight[:, n + 1 :] = 1.0
    return x, y, weight


def repeat_copy_task(
    batch_size: int, length: int, *, max_repeats: int = 5, bits: int = 8, seed=0
):
    """A batch of the Repeat Copy task: read N bit vectors and a repeat count
    R, then write the N vectors R times and an end marker.

    R is drawn uniformly from 1..`max_repeats` for each example. Layout of
    one example, with N = `length`, B = `bits`, M = `max_repeats`:

    - steps 0 .. N-1: x holds pattern[t] on channels 0..B-1; y is 0; not
      scored;
    - step N: x holds 1 on channel B (the delimiter) and R / M on channel
      B+1 (the repeat count); y is 0; not scored;
    - steps N+1 .. N+RN: x is 0; y holds pattern[(t - N - 1) mod N] on
      channels 0..B-1 and 0 on channel B; scored;
    - step N+RN+1: x is 0; y holds 1 on channel B (the end marker), 0 on
      channels 0..B-1; scored;
    - steps N+RN+2 .. N+MN+1: all 0; not scored (padding).

    Every example is padded to the longest possible one, N + MN + 2 steps;
    the padding is not scored. The repeat count is given once, on the
    delimiter step, scaled into (0, 1] (the NTM normalised it too; its exact
    encoding in the DNI paper is n/c).

    Args:
        batch_size, length, bits, seed: as for `copy_task`.
        max_repeats: M, the largest repeat count.

    Returns:
        `(x, y, sample_weight)`: float32 arrays of shapes
        `(batch_size, N + MN + 2, B + 2)`, `(batch_size, N + MN + 2, B + 1)`
        and `(batch_size, N + MN + 2)`.
    """
    check_int("batch_size", batch_size, 1)
    check_int("length", length, 1)
    check_int("max_repeats", max_repeats, 1)
    check_int("bits", bits, 1)
    n, m = length, max_repeats
    rng = _rng(seed)
    pattern = rng.integers(0, 2, size=(batch_size, n, bits))
    repeats = rng.integers(1, m + 1, size=batch_size)
    steps = n + m * n + 2
    x = np.zeros((batch_size, steps, bits + 2), np.float32)
    y = np.zeros((batch_size, steps, bits + 1), np.float32)
    weight = np.zeros((batch_size, steps), np.float32)
    x[:, :n, :bits] = pattern
    x[:, n, bits] = 1.0
    x[:, n, bits + 1] = repeats / m
    for i, r in enumerate(repeats):
        y[i, n + 1 : n + 1 + r * n, :bits] = np.tile(pattern[i], (r, 1))
        y[i, n + 1 + r * n, bits] = 1.0
        weight[i, n + 1 : n + 2 + r * n] = 1.0
    return x, y, weight


def task_batch(task: str, batch_size: int, length: int, *, seed=0, **kwargs):
    """`copy_task` or `repeat_copy_task` by name ("copy", "repeat_copy")."""
    if task == "copy":
        return copy_task(batch_size, length, seed=seed, **kwargs)
    if task == "repeat_copy":
        return repeat_copy_task(batch_size, length, seed=seed, **kwargs)
    raise ValueError(f"Expected a task in {TASKS}. Received: task={task!r}")


def task_channels(task: str, bits: int = 8) -> tuple[int, int]:
    """`(input channels, target channels)` of a task's batches."""
    if task == "copy":
        return bits + 1, bits
    if task == "repeat_copy":
        return bits + 2, bits + 1
    raise ValueError(f"Expected a task in {TASKS}. Received: task={task!r}")


def copy_task_dataset(
    task: str,
    batch_size: int,
    batches_per_epoch: int,
    *,
    length: int | None = None,
    curriculum=None,
    seed: int = 0,
    first_epoch: int = 0,
    bits: int = 8,
    max_repeats: int | None = None,
) -> tf.data.Dataset:
    """A tf.data pipeline of Copy or Repeat Copy batches, one epoch per pass.

    Batch b of epoch e is `task_batch(task, batch_size, N, seed=[seed, e, b])`,
    so a run resumed at epoch e (`first_epoch=e`) sees the batches an
    uninterrupted run sees. Iteration i of the dataset is epoch
    `first_epoch + i` (Keras iterates a finite dataset anew each epoch).

    The sequence length N is `length`, or, with a `curriculum`
    (`LengthCurriculum`), its `length` read when each pass begins: used as a
    callback of the same `fit`, it grows N between epochs, and every batch
    of an epoch has the same N. The time axis of the element spec is None.
    Give `fit` no `steps_per_epoch`: with it, Keras keeps one iterator across
    epochs and neither the epoch nor N would change. A pass counts as an
    epoch once begun, even if abandoned part way. A validation set is a
    second dataset with the same curriculum and another seed.

    Args:
        task: "copy" or "repeat_copy".
        batch_size: examples per batch.
        batches_per_epoch: batches in one pass (the dataset's cardinality).
        length: a fixed N (give this or `curriculum`).
        curriculum: an object with an integer `length` attribute.
        seed: the data seed.
        first_epoch: the epoch of the first pass (a resumed run's initial
            epoch).
        bits: as for `copy_task`.
        max_repeats: as for `repeat_copy_task` (5 when None); only for
            "repeat_copy".

    Returns:
        A `tf.data.Dataset` of float32 `(x, y, sample_weight)` batches.
    """
    in_channels, out_channels = task_channels(task, bits)
    check_int("batch_size", batch_size, 1)
    check_int("batches_per_epoch", batches_per_epoch, 1)
    check_int("first_epoch", first_epoch, 0)
    if (length is None) == (curriculum is None):
        raise ValueError(
            "Give either a fixed `length` or a `curriculum`, not both or neither. "
            f"Received: length={length!r}, curriculum={curriculum!r}"
        )
    if length is not None:
        check_int("length", length, 1)
    extra = {"bits": bits}
    if task == "repeat_copy":
        extra["max_repeats"] = 5 if max_repeats is None else max_repeats
    elif max_repeats is not None:
        raise ValueError(
            "`max_repeats` is a setting of the repeat_copy task only. Received: "
            f"task={task!r}, max_repeats={max_repeats!r}"
        )
    state = {"epoch": first_epoch}

    def one_epoch():  # called by tf.data at the start of each pass
        epoch = state["epoch"]
        state["epoch"] += 1
        n = length if curriculum is None else curriculum.length
        for b in range(batches_per_epoch):
            yield task_batch(task, batch_size, n, seed=[seed, epoch, b], **extra)

    signature = (
        tf.TensorSpec([batch_size, None, in_channels], tf.float32),
        tf.TensorSpec([batch_size, None, out_channels], tf.float32),
        tf.TensorSpec([batch_size, None], tf.float32),
    )
    ds = tf.data.Dataset.from_generator(one_epoch, output_signature=signature)
    return ds.apply(tf.data.experimental.assert_cardinality(batches_per_epoch))


def bits_per_character(y_true, y_pred, from_logits: bool = False):
    """The error of each output step in bits: the binary cross-entropy of
    the predicted bits, summed over the channels, divided by ln 2.

    Args:
        y_true: target bits, `(..., channels)`.
        y_pred: predicted probabilities of a 1 (or logits with
            `from_logits=True`), same shape.
        from_logits: whether `y_pred` are logits.

    Returns:
        The bits of each step, `(...)` (the channel axis summed). As a Keras
        metric, give it (or `BitsPerCharacter`) in `weighted_metrics`, so the
        mean runs over the steps that `sample_weight` scores.
    """
    y_true = keras.ops.convert_to_tensor(y_true, "float32")
    y_pred = keras.ops.convert_to_tensor(y_pred, "float32")
    if tuple(y_true.shape) != tuple(y_pred.shape):
        raise ValueError(
            "Expected targets and predictions of the same shape. Received: "
            f"y_true.shape={tuple(y_true.shape)}, y_pred.shape={tuple(y_pred.shape)}"
        )
    nats = keras.ops.binary_crossentropy(y_true, y_pred, from_logits=from_logits)
    return keras.ops.sum(nats, axis=-1) / math.log(2.0)


def bit_errors_per_character(y_true, y_pred, from_logits: bool = False):
    """The wrong bits of each output step: a bit is predicted 1 when its
    probability exceeds 1/2 (its logit exceeds 0). Shapes as for
    `bits_per_character`."""
    y_true = keras.ops.convert_to_tensor(y_true, "float32")
    y_pred = keras.ops.convert_to_tensor(y_pred, "float32")
    cut = 0.0 if from_logits else 0.5
    wrong = keras.ops.not_equal(y_pred > cut, y_true > 0.5)
    return keras.ops.sum(keras.ops.cast(wrong, "float32"), axis=-1)


def scored_mean(values, sample_weight):
    """The mean of per-step `values` over the steps that `sample_weight`
    scores: sum(values * weight) / sum(weight).

    `scored_mean(bits_per_character(y, p), w)` is the average error in bits
    per character of a batch, the number the curriculum compares with its
    threshold.
    """
    values = keras.ops.convert_to_tensor(values, "float32")
    weight = keras.ops.convert_to_tensor(sample_weight, "float32")
    if tuple(values.shape) != tuple(weight.shape):
        raise ValueError(
            "Expected one weight per step. Received: "
            f"values.shape={tuple(values.shape)}, "
            f"sample_weight.shape={tuple(weight.shape)}"
        )
    return keras.ops.sum(values * weight) / keras.ops.sum(weight)


@keras.saving.register_keras_serializable(package="keras_sg")
class BitsPerCharacter(keras.metrics.MeanMetricWrapper):
    """The mean of `bits_per_character` over the scored steps, as a Keras
    metric. Give it in `compile(weighted_metrics=[...])`: Keras passes the
    dataset's `sample_weight` to weighted metrics only.

    Args:
        from_logits: whether the model outputs logits.
        name: the name in the logs (the curriculum's default `monitor`).
    """

    def __init__(
        self, from_logits: bool = False, name: str = "bits_per_character", dtype=None
    ):
        super().__init__(
            bits_per_character, name=name, dtype=dtype, from_logits=from_logits
        )
        self.from_logits = from_logits

    def get_config(self):
        return {"from_logits": self.from_logits, "name": self.name, "dtype": self.dtype}
