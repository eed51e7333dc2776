r"""Trains ClockedPairModel by full BPTT and by DNI on clocked digits: numbers.

    python scripts/clocks_benchmark.py --data=mnist --epochs=40
    python scripts/clocks_benchmark.py --data=synthetic --sequences=8192 --epochs=30

The task is `keras_sg.data.clocked_digits` (T = --length steps, a slow tick
every --period steps, the remembered digit --lag blocks back). Both methods
start from the same seed: a fast LSTM cell of 64 units, a slow LSTM cell of
32, a Dense(10) head, Adam(3e-3), batch 64; DNI joins the two cells with
linear synthesizers. It prints, on 1024 test sequences, the accuracy over
every step, over the first --lag blocks (reading the digit shown now) and
over the later steps (which need the digit --lag slow ticks back; chance is
0.1). MNIST is read from KERAS_SG_MNIST_DIR.
"""

import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "mnist", ["mnist", "synthetic"], "Digit images.")
flags.DEFINE_integer("sequences", 8192, "Training sequences.")
flags.DEFINE_integer("length", 16, "Steps per sequence.")
flags.DEFINE_integer("period", 4, "Fast steps per slow tick.")
flags.DEFINE_integer("lag", 2, "Blocks back to the remembered digit.")
flags.DEFINE_integer("epochs", 40, "Epochs per method.")
flags.DEFINE_list("methods", ["bptt", "dni"], "Methods to train.")


def main(_):
    import keras

    import keras_sg
    from keras_sg.data import (
        clocked_digits,
        load_split,
        manual_dir_from_env,
        synthetic_clocked_digits,
    )

    n, t, k, lag = FLAGS.sequences, FLAGS.length, FLAGS.period, FLAGS.lag
    if FLAGS.data == "mnist":
        folder = manual_dir_from_env("mnist")
        images, labels = load_split("mnist", "train", manual_dir=folder)
        x, y = clocked_digits(images, labels, n, t, k, lag=lag, seed=0)
        images, labels = load_split("mnist", "test", manual_dir=folder)
        xt, yt = clocked_digits(images, labels, 1024, t, k, lag=lag, seed=1)
    else:
        x, y = synthetic_clocked_digits(n + 1024, t, k, lag=lag, seed=0)
        x, y, xt, yt = x[:n], y[:n], x[n:], y[n:]
    for method in FLAGS.methods:
        keras.utils.set_random_seed(0)
        synths = {}
        if method == "dni":
            synths = {
                "message_synthesizer": keras_sg.DenseSynthesizer(hidden_layers=0),
                "state_synthesizer": keras_sg.DenseSynthesizer(hidden_layers=0),
            }
        model = keras_sg.ClockedPairModel(
            keras.layers.LSTMCell(64),
            keras.layers.LSTMCell(32),
            period=k,
            output=keras.layers.Dense(10),
            method=method,
            **synths,
        )
        model.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        start = time.time()
        history = model.fit(x, y, batch_size=64, epochs=FLAGS.epochs, verbose=0)
        pred = model.predict(xt, verbose=0).argmax(-1)
        right = pred == yt
        print(
            f"{method}: epochs {FLAGS.epochs}, train loss "
            f"{history.history['loss'][-1]:.3f}, test accuracy {right.mean():.3f}, "
            f"first {lag} blocks {right[:, : lag * k].mean():.3f}, "
            f"later steps {right[:, lag * k :].mean():.3f}, "
            f"{time.time() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
