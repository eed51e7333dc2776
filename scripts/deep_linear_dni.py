r"""Deep linear regression under DNI: where the synthetic gradients go wrong.

Trains a linear network (input 8, three hidden layers of 8, each followed by
an interface, a linear top layer to 4 outputs) on y = x A, noise-free by
default, with linear synthesizers and SGD, and prints at a few epochs, per
cut: the cosine and the norm ratio of synthetic to true gradient, the
smallest and largest singular value of the activation (over sqrt(n)), and the
share of the true gradient that lies along the activation's principal
directions whose singular value is below 5% of the largest. A linear
synthesizer needs a coefficient of order 1/sigma along such a direction and
its regression learns it at a rate of order (sigma/sigma_max)^2, so that
share is what the synthesizer cannot follow (docs/method.md, "Where
label-free DNI stalls").
Run from the repository root:

    .venv/bin/python scripts/deep_linear_dni.py --seeds=0,1,2
    .venv/bin/python scripts/deep_linear_dni.py --seeds=0,1,2 --init=orthogonal
    .venv/bin/python scripts/deep_linear_dni.py --sg_target=backprop
    .venv/bin/python scripts/deep_linear_dni.py --method=backprop
"""

import os
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sg  # noqa: E402
from keras_sg.models import steps  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("seeds", ["0"], "Seeds: data, initial weights and order.")
flags.DEFINE_enum("method", "dni", ["dni", "cdni", "backprop"], "Training method.")
flags.DEFINE_enum("sg_target", "bootstrap", ["bootstrap", "backprop"], "Targets.")
flags.DEFINE_string("init", "glorot_uniform", "Initializer of the hidden kernels.")
flags.DEFINE_float("noise", 0.0, "Standard deviation of the label noise.")
flags.DEFINE_float("learning_rate", 0.01, "SGD learning rate.")
flags.DEFINE_float("sg_loss_weight", 100.0, "Factor on the synthesizer losses.")
flags.DEFINE_integer("epochs", 30, "Epochs of 32 steps (1024 examples, batch 32).")
flags.DEFINE_list("report_at", ["1", "10", "20", "30"], "Epochs to measure after.")

WIDTH, OUT, CUTS, EXAMPLES = 8, 4, 3, 1024


def problem(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(WIDTH, OUT)) / np.sqrt(WIDTH)
    x = rng.normal(size=(EXAMPLES, WIDTH)).astype("float32")
    y = (x @ a + FLAGS.noise * rng.normal(size=(EXAMPLES, OUT))).astype("float32")
    return x, y


def model_for(seed):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((WIDTH,))]
    for i in range(CUTS):
        layers.append(
            keras.layers.Dense(WIDTH, use_bias=False, kernel_initializer=FLAGS.init)
        )
        layers.append(keras_sg.Interface(name=f"cut_{i + 1}"))
    layers.append(keras.layers.Dense(OUT, use_bias=False))
    classes = OUT if FLAGS.method == "cdni" else None
    synthesizers = [
        keras_sg.DenseSynthesizer(
            hidden_layers=0, use_batch_norm=False, num_classes=classes
        )
        for _ in range(CUTS)
    ]
    model = keras_sg.DecoupledModel(
        keras.Sequential(layers),
        synthesizers,
        method=FLAGS.method,
        sg_loss_weight=FLAGS.sg_loss_weight,
        sg_target=FLAGS.sg_target,
    )
    model.compile(optimizer=keras.optimizers.SGD(FLAGS.learning_rate), loss="mse")
    return model


def measure(model, x, y):
    """Per cut: cosine, norm ratio, smallest and largest singular value, share."""
    synthetic, true = model.cut_gradients(x, y)
    rows = []
    h = x
    for k, stage in enumerate(model.stages[:-1]):
        h = np.asarray(stage(h))
        g = np.asarray(true[k])
        u, s, _ = np.linalg.svd(h - h.mean(0), full_matrices=False)
        small = u[:, s < 0.05 * s[0]]
        share = np.sum((small @ (small.T @ g)) ** 2) / np.sum(g**2)
        sv = np.linalg.svd(h, compute_uv=False) / np.sqrt(len(h))
        if synthetic:
            cosine = float(steps.cosine_similarity(synthetic[k], g))
            ratio = np.linalg.norm(synthetic[k]) / np.linalg.norm(g)
        else:
            cosine = ratio = float("nan")
        rows.append((cosine, ratio, sv.min(), sv.max(), share))
    return rows


def main(argv):
    del argv
    report_at = {int(e) for e in FLAGS.report_at}
    print(
        f"method={FLAGS.method} sg_target={FLAGS.sg_target} init={FLAGS.init} "
        f"noise={FLAGS.noise} lr={FLAGS.learning_rate} "
        f"sg_loss_weight={FLAGS.sg_loss_weight}"
    )
    for seed in map(int, FLAGS.seeds):
        x, y = problem(seed)
        model = model_for(seed)
        start = time.time()
        print(f"seed {seed}: initial mse {model.evaluate(x, y, verbose=0):.4f}")
        for epoch in range(1, FLAGS.epochs + 1):
            model.fit(x, y, batch_size=32, epochs=1, verbose=0)
            if epoch not in report_at:
                continue
            mse = model.evaluate(x, y, verbose=0)
            rows = measure(model, x[:512], y[:512])
            cuts = "  ".join(
                f"[cos {c:5.2f} ratio {r:4.2f} sv {lo:.1e}/{hi:.1f} small {sh:.2f}]"
                for c, r, lo, hi, sh in rows
            )
            print(f"  epoch {epoch:3d} mse {mse:.4f}  {cuts}")
        print(f"  ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    app.run(main)
