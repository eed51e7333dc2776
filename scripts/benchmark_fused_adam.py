r"""One optimizer update on one thread: Keras's Adam against FusedAdam.

The variables are the benchmark model's stage (two dense layers of --width
units and their biases); each update runs in a `tf.function` with one
intra-op and one inter-op thread, like a server pinned to one core. The two
optimizers are timed in turn, --repeats times --calls calls each, and the
script prints each one's median milliseconds per update and the machine's
load.

    taskset -c 0 python scripts/benchmark_fused_adam.py --repeats=5
"""

import os
import statistics
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 1024, "Units of each of the two dense layers.")
flags.DEFINE_integer("repeats", 5, "Timed rounds of each optimizer, in turn.")
flags.DEFINE_integer("calls", 50, "Updates per round.")


def update(optimizer, variables, grads):
    """A function of no arguments that applies `grads` (tf.function would
    take default arguments for inputs)."""

    def apply():
        optimizer.apply(grads, variables)

    return apply


def main(argv):
    del argv
    load_start = os.getloadavg()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_sg

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    w = FLAGS.width
    shapes = [(w, w), (w,), (w, w), (w,)]
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(size=s).astype("float32")) for s in shapes]
    steps = {}
    for name, make in (
        ("keras Adam", keras.optimizers.Adam),
        ("FusedAdam", keras_sg.optimizers.FusedAdam),
    ):
        variables = [
            keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes
        ]
        optimizer = make(1e-3)
        optimizer.build(variables)
        step = tf.function(update(optimizer, variables, grads))
        for _ in range(5):  # trace and warm up
            step()
        steps[name] = step
    times = {name: [] for name in steps}
    for _ in range(FLAGS.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(FLAGS.calls):
                step()
            times[name].append((time.perf_counter() - start) / FLAGS.calls * 1e3)
    for name, each in times.items():
        runs = ", ".join(f"{t:.2f}" for t in each)
        print(f"{name}: {statistics.median(each):.2f} ms per update ({runs})")
    ratio = statistics.median(times["keras Adam"]) / statistics.median(
        times["FusedAdam"]
    )
    print(f"FusedAdam is {ratio:.1f}x as fast")
    load_end = os.getloadavg()
    print(
        f"Load average (1 min) at the start {load_start[0]:.2f}, "
        f"at the end {load_end[0]:.2f}, on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    app.run(main)
