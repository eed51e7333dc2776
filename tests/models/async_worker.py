"""Runs AsyncPipelinedModel on two logical CPUs and reports what it saw.

Run as a subprocess by test_async_pipelined.py: logical devices must exist
before TensorFlow initialises. Prints one JSON line.
"""

import json
import os
import sys
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_sg  # noqa: E402

MODE = sys.argv[1]  # logical
devices = keras_sg.placement.split_cpu(2, intra_op_threads=1, inter_op_threads=2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from conftest import linear_synth, weights_of  # noqa: E402

from keras_sg.models.async_pipelined_model import _Runtime  # noqa: E402

D, H, OUT, B = 3, 4, 2, 2


def build(cls, **kwargs):
    keras.utils.set_random_seed(5)
    net = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(H, activation="tanh"),
            keras_sg.Interface(name="cut_1"),
            keras.layers.Dense(OUT),
        ]
    )
    synths = [linear_synth(num_classes=OUT)]
    model = cls(net, synths, method="cdni", devices=devices, **kwargs)
    rng = np.random.default_rng(4)
    kernel, bias = synths[0].head.get_weights()
    synths[0].head.set_weights(
        [rng.normal(size=kernel.shape), rng.normal(size=bias.shape)]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(0.05), loss)
    return model


def parts(model):
    return model.stages + model.synthesizers


def short(device):
    return device.split("/")[-1]


rng = np.random.default_rng(0)
x = rng.normal(size=(10, D)).astype("float32")
y = rng.integers(0, OUT, size=10)

threads_before = threading.active_count()
reference = build(keras_sg.PipelinedModel)
start = weights_of(parts(reference))
reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
model = build(keras_sg.AsyncPipelinedModel, lock_step=True)
model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, drain=False)
want, got = weights_of(parts(reference)), weights_of(parts(model))

optimizers = model.stage_optimizers()
variable_devices = [
    sorted({short(v.value.device) for v in model.stage_variables(k)}) for k in range(2)
]
slot_devices = [
    sorted(
        {
            short(v.value.device)
            for v in optimizer.variables
            if "momentum" in v.path or "velocity" in v.path
        }
    )
    for optimizer in optimizers
]

free = build(keras_sg.AsyncPipelinedModel, capacity=2)
free.fit(x, y, batch_size=B, epochs=4, verbose=0)

dataset, _ = free._dataset(x, y, B, False, None)
runtime = _Runtime(free, dataset)
queue_devices = {
    "activations_0": short(runtime.forward[0].queue_ref.device),
    "targets_0": short(runtime.backward[0].queue_ref.device),
}
runtime.shutdown()

print(
    json.dumps(
        {
            "devices": devices,
            "variable_devices": variable_devices,
            "slot_devices": slot_devices,
            "queue_devices": queue_devices,
            "moved": float(
                min(np.abs(w - s).max() for w, s in zip(want, start, strict=True))
            ),
            "max_weight_diff": float(
                max(np.abs(w - g).max() for w, g in zip(want, got, strict=True))
            ),
            "iterations": [int(o.iterations) for o in optimizers],
            "free_batches": [log["batch"].tolist() for log in free.stage_log],
            "free_lag": free.stage_log[0]["lag"].tolist(),
            "free_staleness": [
                int(b - t)
                for b, t in zip(
                    free.stage_log[0]["batch"],
                    free.stage_log[0]["target_batch"],
                    strict=True,
                )
                if t >= 0
            ],
            "threads_before": threads_before,
            "threads_after": threading.active_count(),
        }
    )
)
