r"""A short MNIST FCN run that prints the synthetic-gradient diagnostics.

Trains `keras_sg.models.fully_connected` (256 units, batch norm) on MNIST
with batch 256 for a few hundred steps, and prints every `--every` steps the
per-cut cosine and norm ratio of `keras_sg.callbacks.gradient_diagnostics`
on 256 test images; at the end, the participation ratio (sum s^2)^2 / sum s^4
of each cut's activation spectrum on 1,024 test images, and the test error.
`--stage_scale` multiplies every lower stage's synthetic-gradient update (to
see what the norm ratio does under each optimizer). The numbers of
docs/training.md ("Reading the diagnostics", "Choosing DNI settings") come
from it. Reads the four original MNIST files from $KERAS_SG_MNIST_DIR. Run
from the repository root:

    .venv/bin/python scripts/mnist_sg_diagnostics.py --method=dni
    .venv/bin/python scripts/mnist_sg_diagnostics.py --method=dni \
        --sg_target=backprop --stage_scale=0.1
"""

import gzip
import os
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sg  # noqa: E402
from keras_sg.callbacks import gradient_diagnostics  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "dni", ["backprop", "dni", "cdni", "no_bprop"], "Method.")
flags.DEFINE_enum("sg_target", "bootstrap", ["bootstrap", "backprop"], "Targets.")
flags.DEFINE_integer("depth", 4, "Weight layers of the FCN (depth - 1 cuts).")
flags.DEFINE_integer("steps", 300, "Training steps of batch 256.")
flags.DEFINE_integer("every", 50, "Steps between diagnostics.")
flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd"], "Optimizer.")
flags.DEFINE_float("learning_rate", 3e-4, "Learning rate.")
flags.DEFINE_float("sg_loss_weight", 1.0, "Factor on the synthesizer losses.")
flags.DEFINE_float("stage_scale", 1.0, "Factor on the lower stages' updates.")
flags.DEFINE_integer("seed", 0, "Initial weights and data order.")

BATCH = 256


def read_idx(name):
    folder = os.environ.get("KERAS_SG_MNIST_DIR")
    if not folder:
        raise SystemExit("Set KERAS_SG_MNIST_DIR to the folder of the MNIST files.")
    with gzip.open(os.path.join(folder, name)) as f:
        data = f.read()
    if "images" in name:
        images = np.frombuffer(data, np.uint8, offset=16).reshape(-1, 784)
        return images.astype("float32") / 255.0
    return np.frombuffer(data, np.uint8, offset=8).astype("int64")


class ScaledStages(keras_sg.DecoupledModel):
    """A DecoupledModel whose lower stages' updates are scaled by a factor."""

    def __init__(self, *args, stage_scale=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage_scale = stage_scale

    def _decoupled_gradients(self, *args, **kwargs):
        # A private hook: it returns the gradient dict, or (on later versions
        # of DecoupledModel) a tuple that starts with it.
        result = super()._decoupled_gradients(*args, **kwargs)
        grads = result[0] if isinstance(result, tuple) else result
        lower = {id(v) for s in self.stages[:-1] for v in s.trainable_variables}
        scaled = {
            key: g * self.stage_scale if key in lower else g for key, g in grads.items()
        }
        return (scaled, *result[1:]) if isinstance(result, tuple) else scaled


def build():
    keras.utils.set_random_seed(FLAGS.seed)
    net = keras_sg.models.fully_connected((784,), 10, depth=FLAGS.depth)
    cdni = FLAGS.method == "cdni"
    synthesizers = [
        keras_sg.DenseSynthesizer(
            hidden_layers=0 if cdni else 2,
            use_batch_norm=not cdni,
            num_classes=10 if cdni else None,
        )
        for _ in range(FLAGS.depth - 1)
    ]
    model = ScaledStages(
        net,
        synthesizers,
        method=FLAGS.method,
        sg_loss_weight=FLAGS.sg_loss_weight,
        sg_target=FLAGS.sg_target,
        stage_scale=FLAGS.stage_scale,
    )
    optimizer = (
        keras.optimizers.Adam(FLAGS.learning_rate)
        if FLAGS.optimizer == "adam"
        else keras.optimizers.SGD(FLAGS.learning_rate)
    )
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(argv):
    del argv
    x, y = (
        read_idx("train-images-idx3-ubyte.gz"),
        read_idx("train-labels-idx1-ubyte.gz"),
    )
    x_test = read_idx("t10k-images-idx3-ubyte.gz")
    y_test = read_idx("t10k-labels-idx1-ubyte.gz")
    model = build()
    per_epoch = len(x) // BATCH
    rng = np.random.default_rng(FLAGS.seed)
    order = np.concatenate(
        [
            rng.permutation(len(x))[: per_epoch * BATCH]
            for _ in range(-(-FLAGS.steps // per_epoch))
        ]
    )
    start, done = time.time(), 0
    print(
        f"method={FLAGS.method} sg_target={FLAGS.sg_target} depth={FLAGS.depth} "
        f"{FLAGS.optimizer} {FLAGS.learning_rate} sg_loss_weight="
        f"{FLAGS.sg_loss_weight} stage_scale={FLAGS.stage_scale} seed={FLAGS.seed}"
    )
    while done < FLAGS.steps:
        n = min(FLAGS.every, FLAGS.steps - done)
        index = order[done * BATCH : (done + n) * BATCH]
        model.fit(x[index], y[index], batch_size=BATCH, shuffle=False, verbose=0)
        done += n
        if model.uses_synthesizers:
            report = gradient_diagnostics(model, x_test[:256], y_test[:256])
            cos = [report[f"{c}/cosine"] for c in model.cut_names]
            ratio = [report[f"{c}/norm_ratio"] for c in model.cut_names]
            print(
                f"step {done}: cosine {np.round(cos, 3)} norm ratio "
                f"{np.round(ratio, 3)}"
            )
    h = x_test[:1024]
    for name, stage in zip(model.cut_names, model.stages[:-1], strict=True):
        h = stage(h, training=False)
        a = np.asarray(h) - np.asarray(h).mean(0)
        s = np.linalg.svd(a, compute_uv=False)
        print(f"{name}: participation ratio {(s**2).sum() ** 2 / (s**4).sum():.1f}")
    _, accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    print(
        f"test error {100 * (1 - accuracy):.2f}% after {done} steps "
        f"({time.time() - start:.0f} s)"
    )


if __name__ == "__main__":
    app.run(main)
