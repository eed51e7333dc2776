"""The client side of the two-server tests: connects to a running cluster.

Run as a subprocess by test_cluster.py (connecting resets TensorFlow's context,
so it cannot happen inside the test process). Prints one JSON line.

    cluster_worker.py parity ADDRESSES
    cluster_worker.py compare ADDRESSES A.keras B.keras
"""

import json
import os
import sys

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
