"""The client side of the two-server tests: connects to a running cluster.

Run as a subprocess by test_cluster.py (connecting resets TensorFlow's context,
so it cannot happen inside the test process). Prints one JSON line.

    cluster_worker.py parity ADDRESSES
    cluster_worker.py compare ADDRESSES A.keras B.keras
    cluster_worker.py freeze ADDRESSES  (prints "training", then trains on)
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_sg  # noqa: E402

MODE, ADDRESSES = sys.argv[1], sys.argv[2].split(",")
devices = keras_sg.placement.connect_to_cluster({"worker": ADDRESSES})

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tiny_model  # noqa: E402


def max_diff(a, b):
    return max(
        float(np.abs(u - v).max())
        for u, v in zip(a.get_weights(), b.get_weights(), strict=True)
    )


if MODE == "compare":
    a, b = (keras.models.load_model(p) for p in sys.argv[3:5])
    steps = [int(m.optimizer.iterations.numpy()) for m in (a, b)]
    print(json.dumps({"max_weight_diff": max_diff(a, b), "steps": steps}))
    sys.exit(0)


if MODE == "freeze":
    # Trains far longer than the test waits; says "training" once steps run,
    # so that the test can stop a server in the middle of a step.
    class Started(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                print("training", flush=True)

    model = tiny_model.build(devices)
    x, y = tiny_model.data()
    try:
        model.fit(
            x.repeat(2000, 0),
            y.repeat(2000, 0),
            batch_size=16,
            verbose=0,
            callbacks=[Started()],
        )
        result = {"error": None}
    except Exception as error:  # the test reads which error it was
        result = {"error": type(error).__name__, "message": str(error)}
    result["at"] = time.time()
    print(json.dumps(result), flush=True)
    # Skip the interpreter's exit: TensorFlow would try to reach the stopped
    # task again while tearing down its context.
    os._exit(0)


def build(placed):
    return tiny_model.build(devices if placed else None)


x, y = tiny_model.data()

placed = build(True)
step = tf.function(placed.train_step)
graph = step.get_concrete_function((tf.constant(x[:16]), tf.constant(y[:16]))).graph
placed.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
local = build(False)
local.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
print(
    json.dumps(
        {
            "devices": devices,
            "variables": [
                sorted({v.value.device for v in part.weights})
                for part in (*placed.stages, *placed.synthesizers)
            ],
            "matmul_devices": sorted(
                {op.device for op in graph.get_operations() if op.type == "MatMul"}
            ),
            "steps": int(placed.optimizer.iterations.numpy()),
            "max_weight_diff": max_diff(placed, local),
        }
    )
)
