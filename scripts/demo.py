r"""Trains a 3-layer MNIST network with backprop, DNI and cDNI, side by side.

The quick start's main job (README): for each method it trains the same
network from the same initial weights and prints the test accuracy and the
wall time. Run it with

    python3 dev.py demo

or, inside the virtual environment,

    python scripts/demo.py --epochs=3 --mnist_dir=../shared/data/mnist

Without network, `--mnist_dir` (or the environment variable
KERAS_SG_MNIST_DIR) names a folder holding the four original MNIST files.
"""

import os
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "methods", ["backprop", "dni", "cdni"], "Training methods to compare."
)
flags.DEFINE_integer("epochs", 3, "Epochs per method.")
flags.DEFINE_integer("batch_size", 256, "Batch size (the paper's).")
flags.DEFINE_float(
    "learning_rate", 1e-3, "Adam learning rate, the same for every method."
)
flags.DEFINE_integer("depth", 3, "Weight layers of the fully connected net.")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights and of the shuffling.")
flags.DEFINE_string(
    "mnist_dir",
    None,
    "Folder holding the original MNIST files, for offline use "
    "(KERAS_SG_MNIST_DIR if unset).",
)
flags.DEFINE_string(
    "data_dir", None, "tensorflow-datasets data folder (its default if unset)."
)
flags.DEFINE_integer(
    "steps_per_epoch", None, "Cap on steps per epoch, for a quick look."
)
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")


def synthesizers(method, cuts, num_classes):
    import keras_sg

    if method == "dni":  # the paper's DNI synthesizer: 2 x 1024, batch norm
        return [
            keras_sg.DenseSynthesizer(hidden_layers=2, units=1024) for _ in range(cuts)
        ]
    if method == "cdni":  # the paper's cDNI synthesizer: linear in h and the label
        return [
            keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=num_classes)
            for _ in range(cuts)
        ]
    return None


def main(argv):
    del argv
    import keras

    import keras_sg

    manual_dir = FLAGS.mnist_dir or keras_sg.data.manual_dir_from_env("mnist")
    load = dict(data_dir=FLAGS.data_dir, manual_dir=manual_dir)
    x_train, y_train = keras_sg.data.load_split("mnist", "train", **load)
    test = keras_sg.data.image_dataset("mnist", "test", 1000, flatten=True, **load)

    rows = []
    for method in FLAGS.methods:
        keras.utils.set_random_seed(FLAGS.seed)
        net = keras_sg.models.fully_connected((784,), 10, depth=FLAGS.depth)
        model = keras_sg.DecoupledModel(
            net, synthesizers(method, FLAGS.depth - 1, 10), method=method
        )
        model.compile(
            optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        print(f"\n== {method}: FCN-{FLAGS.depth}, {FLAGS.epochs} epochs", flush=True)
        # Every method sees the same batches: the order depends on the seed alone.
        train = keras_sg.data.batches(
            x_train,
            y_train,
            FLAGS.batch_size,
            flatten=True,
            shuffle=True,
            seed=FLAGS.seed,
        )
        start = time.perf_counter()
        model.fit(
            train,
            epochs=FLAGS.epochs,
            steps_per_epoch=FLAGS.steps_per_epoch,  # None: whole epochs
            shuffle=False,  # the dataset shuffles itself, anew each epoch
            verbose=FLAGS.verbose,
        )
        seconds = time.perf_counter() - start
        logs = model.evaluate(test, verbose=0, return_dict=True)
        rows.append((method, logs["accuracy"], seconds))

    print(
        f"\nMNIST, FCN-{FLAGS.depth}, {FLAGS.epochs} epochs, batch {FLAGS.batch_size}"
    )
    print(f"{'method':<10} {'test acc':>9} {'test err':>9} {'train s':>8}")
    for method, accuracy, seconds in rows:
        error = 100 * (1 - accuracy)
        print(f"{method:<10} {accuracy:>9.4f} {error:>8.2f}% {seconds:>8.1f}")


if __name__ == "__main__":
    app.run(main)
