r"""How well can a linear conv synthesizer predict the true gradient at each cut?

For CNNs of `--depths` on real MNIST, at initialisation and after `--steps`
steps of backprop (Adam, batch 256), this script takes the true gradient
dL/dh at every cut on `--probe` test images, and fits to it by least squares
the best linear `k x k` convolution ('same' zero padding, plus a bias) over
[h, one-hot label planes] (optionally also two position planes, the
row and column coordinates): the synthesizer of cDNI, given the
answer. The cosine between that fit and the true gradient (flattened over
examples, pixels and channels) is an upper bound on what such a synthesizer
can reach; a fit that needs position-dependent weights stays far below 1.

Candidates (`--candidates`), each a network head, pooling and synthesizer input:

- `flatten`: Flatten -> Dense, as before; [h, labels].
- `flatten_coords`: the same network; [h, labels, position planes].
- `gap`: global average pooling -> Dense, full-resolution maps; [h, labels].
- `gap_max`, `gap_avg`: global average pooling head, and a 2x2 max (or
  average) pooling of stride 2 closing every stage before its cut.

For each candidate the script also prints its backprop test accuracy on the
10,000 test images after the same training, with batch norm on its moving
statistics and on each test batch's own (see `batch_stat_accuracy`). The
fit uses at most `--max_rows` random (example, pixel) rows of the first
half of the probe batch ("fit" column: the in-sample cosine, the upper
bound proper) and is scored on at most `--max_rows` rows of the other half
("held-out").
Gradients are taken with batch norm in training mode (the statistics of the
probe batch), as a training step sees them. Reads MNIST from
$KERAS_SG_MNIST_DIR, checked as `scripts/train.py` checks it. Run from the
repository root:

    .venv/bin/python scripts/conv_synth_upper_bound.py --depths=3,4 --steps=200
"""

import os
import sys
import time
from pathlib import Path

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One BLAS thread: on a loaded machine OpenBLAS's threads make a 1,000 x 1,000
# solve ten times slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's keras_sg

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sg  # noqa: E402

CANDIDATES = {  # name: (head, pooling, position planes)
    "flatten": ("flatten", None, False),
    "flatten_coords": ("flatten", None, True),
    "gap": ("global_average", None, False),
    "gap_max": ("global_average", "max", False),
    "gap_avg": ("global_average", "average", False),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("depths", ["3", "4"], "CNN depths (weight layers).")
flags.DEFINE_list("candidates", list(CANDIDATES), "Candidates to measure.")
flags.DEFINE_integer("steps", 200, "Backprop steps of batch 256 before the probe.")
flags.DEFINE_integer("filters", 32, "Filters of the network's convolutions.")
flags.DEFINE_integer("kernel_size", 5, "Kernel side of the network's convolutions.")
flags.DEFINE_integer("synth_kernel_size", 5, "Kernel side of the fitted conv.")
flags.DEFINE_list(
    "synth_dilation_rates", ["1"], "Dilation rates of the fitted conv, each measured."
)
flags.DEFINE_float("norm_momentum", 0.99, "The network's batch norm momentum.")
flags.DEFINE_integer("probe", 256, "Test images whose gradients are fitted.")
flags.DEFINE_integer("max_rows", 16384, "Most (example, pixel) rows per fit.")
flags.DEFINE_float("learning_rate", 3e-4, "Adam's learning rate.")
flags.DEFINE_integer("seed", 0, "Initial weights, data order and row choice.")

BATCH = 256


def position_planes(batch: int, height: int, width: int) -> np.ndarray:
    """The row and column coordinates, each from -1 (first) to 1 (last), as
    (batch, height, width, 2); a side of one pixel is at 0."""
    rows = np.linspace(-1.0, 1.0, height) if height > 1 else np.zeros(1)
    cols = np.linspace(-1.0, 1.0, width) if width > 1 else np.zeros(1)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1)
    return np.broadcast_to(grid.astype("float32"), (batch, height, width, 2))


def label_planes(labels: np.ndarray, num_classes: int, height: int, width: int):
    """One-hot labels broadcast over height and width: (batch, h, w, classes)."""
    one_hot = np.eye(num_classes, dtype="float32")[np.asarray(labels)]
    return np.broadcast_to(
        one_hot[:, None, None, :], (len(labels), height, width, num_classes)
    )


def patch_rows(
    inputs: np.ndarray, kernel_size: int, index, dilation_rate: int = 1
) -> np.ndarray:
    """Rows of the design matrix of a 'same' k x k conv with a bias.

    Args:
        inputs: (batch, height, width, channels).
        kernel_size: odd side k of the kernel.
        index: a triple of integer arrays (example, row, column), one per row.
        dilation_rate: spacing of the kernel's taps, as in a Keras `Conv2D`.

    Returns:
        (rows, k * k * channels + 1) float64: the zero-padded k x k patch
        around each pixel, in the order (kernel row, kernel column, channel)
        of a Keras `Conv2D` kernel, then a 1 for the bias.
    """
    if kernel_size % 2 != 1:
        raise ValueError(
            f"Expected an odd kernel side, so that 'same' is centred. "
            f"Received: kernel_size={kernel_size}"
        )
    r = (kernel_size // 2) * dilation_rate
    padded = np.pad(inputs, ((0, 0), (r, r), (r, r), (0, 0)))
    b, i, j = (np.asarray(a)[:, None, None] for a in index)
    taps = np.arange(kernel_size) * dilation_rate
    patches = padded[b, i + taps[:, None], j + taps[None, :]]  # (rows, k, k, channels)
    b = b[:, 0, 0]
    rows = patches.reshape(len(b), -1).astype("float64")
    return np.concatenate([rows, np.ones((len(b), 1))], axis=1)


def _pixels(examples, height, width, max_rows, rng):
    """(example, row, column) of every pixel of `examples`, or a random
    `max_rows` of them."""
    b, i, j = np.meshgrid(examples, np.arange(height), np.arange(width), indexing="ij")
    b, i, j = b.ravel(), i.ravel(), j.ravel()
    if max_rows and len(b) > max_rows:
        keep = np.sort(rng.choice(len(b), max_rows, replace=False))
        b, i, j = b[keep], i[keep], j[keep]
    return b, i, j


def fit_linear_conv(inputs, target, kernel_size, index, chunk=4096, dilation_rate=1):
    """Least-squares weights of a linear 'same' conv (with bias) from
    `inputs` to `target` at the pixels `index`.

    Solves the normal equations, accumulated in float64 over chunks of rows.
    A ridge of 1e-9 times the mean diagonal of X^T X keeps them solvable when
    columns are collinear or zero (a dead channel) and changes a well-posed
    fit by about that relative amount; it is `numpy.linalg.lstsq` on the
    design matrix, at the cost of one 1,000 x 1,000 solve instead of an SVD.

    Returns:
        (k * k * in_channels + 1, out_channels) weights, in `patch_rows` order.
    """
    b, i, j = index
    gram = xty = None
    for start in range(0, len(b), chunk):
        part = slice(start, start + chunk)
        x = patch_rows(inputs, kernel_size, (b[part], i[part], j[part]), dilation_rate)
        y = np.asarray(target[b[part], i[part], j[part]], "float64")
        gram = x.T @ x if gram is None else gram + x.T @ x
        xty = x.T @ y if xty is None else xty + x.T @ y
    ridge = 1e-9 * max(np.trace(gram) / len(gram), 1e-300)
    return np.linalg.solve(gram + ridge * np.eye(len(gram)), xty)


def conv_cosine(
    inputs, target, weights, kernel_size, index, chunk=4096, dilation_rate=1
):
    """Cosine between the conv's prediction and `target` at the pixels `index`,
    over every row and channel."""
    b, i, j = index
    dot = pred_sq = true_sq = 0.0
    for start in range(0, len(b), chunk):
        part = slice(start, start + chunk)
        rows = patch_rows(
            inputs, kernel_size, (b[part], i[part], j[part]), dilation_rate
        )
        pred = rows @ weights
        true = np.asarray(target[b[part], i[part], j[part]], "float64")
        dot += float(np.sum(pred * true))
        pred_sq += float(np.sum(pred**2))
        true_sq += float(np.sum(true**2))
    return dot / max(np.sqrt(pred_sq * true_sq), 1e-300)


def upper_bound_cosine(
    inputs, target, kernel_size, max_rows=None, seed=0, dilation_rate=1
):
    """The best linear conv from `inputs` to `target`: its in-sample cosine.

    Args:
        inputs: (batch, height, width, in_channels), everything the
            synthesizer sees (activation, label planes, position planes).
        target: (batch, height, width, out_channels), the true gradient.
        kernel_size: odd side of the conv.
        max_rows: most (example, pixel) rows to fit on (None: all).
        seed: which rows, when there are more.
        dilation_rate: spacing of the conv's taps.

    Returns:
        `(fit, held_out)`: the cosine on the rows fitted, from the first half
        of the examples, and on rows of the second half (None for a batch of
        one example).
    """
    inputs, target = np.asarray(inputs), np.asarray(target)
    if inputs.ndim != 4 or target.shape[:3] != inputs.shape[:3]:
        raise ValueError(
            "Expected inputs and target of shape (batch, height, width, "
            f"channels) with the same first three axes. Received: "
            f"inputs.shape={inputs.shape}, target.shape={target.shape}"
        )
    batch, height, width = inputs.shape[:3]
    rng = np.random.default_rng(seed)
    half = max(batch // 2, 1)
    fit_index = _pixels(np.arange(half), height, width, max_rows, rng)
    conv = dict(kernel_size=kernel_size, dilation_rate=dilation_rate)
    weights = fit_linear_conv(inputs, target, index=fit_index, **conv)
    fit = conv_cosine(inputs, target, weights, index=fit_index, **conv)
    if half == batch:
        return fit, None
    test_index = _pixels(np.arange(half, batch), height, width, max_rows, rng)
    return fit, conv_cosine(inputs, target, weights, index=test_index, **conv)


def cut_gradients(net, x, y):
    """The activation and the true gradient dL/dh at every cut of `net`
    (batch norm in training mode; the weights, moving statistics included,
    are left as they were)."""
    saved = net.get_weights()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    acts = []
    with tf.GradientTape() as tape:
        h = tf.convert_to_tensor(x)
        for layer in net.layers:
            h = layer(h, training=True)
            if isinstance(layer, keras_sg.Interface):
                tape.watch(h)
                acts.append(h)
        loss = loss_fn(y, h)
    grads = tape.gradient(loss, acts)
    net.set_weights(saved)
    return [a.numpy() for a in acts], [g.numpy() for g in grads]


def measure(net, x, y, coords, dilation_rate=1):
    """(fit, held-out) cosines at every cut, lowest cut first."""
    acts, grads = cut_gradients(net, x, y)
    out = []
    for h, g in zip(acts, grads, strict=True):
        batch, height, width, _ = h.shape
        planes = [h, label_planes(y, 10, height, width)]
        if coords:
            planes.append(position_planes(batch, height, width))
        inputs = np.concatenate(planes, axis=-1)
        out.append(
            upper_bound_cosine(
                inputs,
                g,
                FLAGS.synth_kernel_size,
                FLAGS.max_rows,
                FLAGS.seed,
                dilation_rate,
            )
        )
    return out


def measure_rates(net, x, y, coords):
    """`measure` for each of `--synth_dilation_rates`: {rate: cosines}."""
    return {
        rate: measure(net, x, y, coords, rate)
        for rate in map(int, FLAGS.synth_dilation_rates)
    }


def batch_stat_accuracy(net, x, y, batch=1000):
    """Test accuracy with batch norm on each test batch's own statistics.

    After a few hundred steps the moving statistics (momentum 0.99) still
    hold a good part of their start (mean 0, variance 1), which hides what
    the weights have learned; the batch's statistics do not. The weights,
    moving statistics included, are left as they were.
    """
    saved = net.get_weights()
    hits = 0
    for start in range(0, len(x), batch):
        logits = net(x[start : start + batch], training=True)
        hits += int(np.sum(np.argmax(logits, axis=-1) == y[start : start + batch]))
    net.set_weights(saved)
    return hits / len(x)


def load_mnist():
    """Float images in [0, 1] and int labels, checked against the originals."""
    folder = keras_sg.data.manual_dir_from_env("mnist")
    if not folder:
        raise SystemExit("Set KERAS_SG_MNIST_DIR to the folder of the MNIST files.")
    (x, y), (xt, yt) = (
        keras_sg.data.load_split("mnist", split, manual_dir=folder)
        for split in ("train", "test")
    )
    return (x.astype("float32") / 255.0, y), (xt.astype("float32") / 255.0, yt)


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.candidates) - set(CANDIDATES))
    if unknown:
        raise SystemExit(
            f"Unknown candidates {unknown}; expected some of {list(CANDIDATES)}"
        )
    (x, y), (xt, yt) = load_mnist()
    xp, yp = xt[: FLAGS.probe], yt[: FLAGS.probe]
    rng = np.random.default_rng(FLAGS.seed)
    order = rng.permutation(len(x))[: FLAGS.steps * BATCH]
    print(
        f"steps={FLAGS.steps} (batch {BATCH}, Adam {FLAGS.learning_rate}), "
        f"filters={FLAGS.filters}, network kernel {FLAGS.kernel_size}, fitted "
        f"kernel {FLAGS.synth_kernel_size} (dilation rates "
        f"{','.join(FLAGS.synth_dilation_rates)}), norm momentum "
        f"{FLAGS.norm_momentum}, probe={FLAGS.probe} test images, "
        f"max_rows={FLAGS.max_rows}"
    )
    print(
        "candidate | depth | when | test acc (moving / batch statistics) | "
        "cosine per cut (fit / held-out)"
    )
    nets = {}
    for depth in map(int, FLAGS.depths):
        for name in FLAGS.candidates:
            head, pooling, coords = CANDIDATES[name]
            key = (depth, head, pooling)
            start = time.perf_counter()
            if key not in nets:
                keras.utils.set_random_seed(FLAGS.seed)
                net = keras_sg.models.convolutional(
                    (28, 28, 1),
                    10,
                    depth=depth,
                    filters=FLAGS.filters,
                    kernel_size=FLAGS.kernel_size,
                    head=head,
                    pooling=pooling,
                    norm_momentum=FLAGS.norm_momentum,
                )
                net.compile(
                    keras.optimizers.Adam(FLAGS.learning_rate),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"],
                )
                at_init = measure_rates(net, xp, yp, coords)
                net.fit(
                    x[order], y[order], batch_size=BATCH, epochs=1, shuffle=False,
                    verbose=0,
                )  # fmt: skip
                acc = (
                    net.evaluate(xt, yt, batch_size=1000, verbose=0)[1],
                    batch_stat_accuracy(net, xt, yt),
                )
                nets[key] = (net, acc)
            else:
                net, acc = nets[key]
                keras.utils.set_random_seed(FLAGS.seed)
                init = keras_sg.models.convolutional(
                    (28, 28, 1),
                    10,
                    depth=depth,
                    filters=FLAGS.filters,
                    kernel_size=FLAGS.kernel_size,
                    head=head,
                    pooling=pooling,
                    norm_momentum=FLAGS.norm_momentum,
                )
                at_init = measure_rates(init, xp, yp, coords)
            trained = measure_rates(net, xp, yp, coords)
            for rate in at_init:
                label = name if rate == 1 else f"{name} (dilation {rate})"
                for when, cos, shown in (
                    ("init", at_init[rate], "-"),
                    ("trained", trained[rate], acc),
                ):
                    cells = "  ".join(
                        f"cut_{k + 1} {f:.3f} / {h:.3f}" for k, (f, h) in enumerate(cos)
                    )
                    acc_text = (
                        shown if shown == "-" else "{:.4f} / {:.4f}".format(*shown)
                    )
                    print(
                        f"{label} | {depth} | {when} | {acc_text} | {cells}", flush=True
                    )
            print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    app.run(main)
