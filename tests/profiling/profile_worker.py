"""Profiles tiny placed models on two logical CPUs and prints the results.

Run as a subprocess by test_profiler.py: logical devices and thread pools
must exist before TensorFlow initialises (and AsyncPipelinedModel's stage
threads are best kept out of the test process). Prints one JSON line: per
model, its ProfileResult as a dict and examples/s; and the PNG of the first.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_sg  # noqa: E402

devices = keras_sg.placement.split_cpu(2, intra_op_threads=1, inter_op_threads=2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

FOLDER = sys.argv[1]
STEPS = 3


def build(kind):
    """A two-stage model of two dense layers of 32 units per stage."""
    keras.utils.set_random_seed(0)
    net = keras_sg.models.fully_connected((16,), 4, depth=2, units=32, batch_norm=False)
    synth = [keras_sg.DenseSynthesizer(hidden_layers=0, use_batch_norm=False)]
    if kind == "backprop":
        model = keras_sg.DecoupledModel(net, method="backprop", devices=devices)
    elif kind == "gpipe":
        model = keras_sg.GPipeModel(net, micro_batches=2, devices=devices)
    elif kind == "pipelined":
        model = keras_sg.PipelinedModel(net, synth, devices=devices)
    elif kind == "unlocked":
        inputs = [
            keras_sg.DenseInputSynthesizer(
                target_shape=(32,), hidden_layers=0, use_batch_norm=False
            )
        ]
        model = keras_sg.UnlockedModel(
            net, synth, input_synthesizers=inputs, devices=devices
        )
    elif kind.startswith("async"):
        model = keras_sg.AsyncPipelinedModel(net, synth, devices=devices, capacity=2)
    else:
        model = keras_sg.DecoupledModel(net, synth, method="dni", devices=devices)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # async_spe: two steps per call of each stage's function.
        steps_per_execution=2 if kind == "async_spe" else 1,
    )
    return model


rng = np.random.default_rng(0)
x = rng.normal(size=(128, 16)).astype("float32")
y = rng.integers(0, 4, size=128)
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()

results = {}
for kind in sys.argv[2:]:
    model = build(kind)
    result = keras_sg.profiling.profile(model, data, steps=STEPS, skip=2)
    results[kind] = dict(
        result.to_dict(), examples_per_second=result.examples_per_second
    )
    if kind.startswith("async"):
        # The window is of stage 0's steps, the profile() run longer.
        results[kind]["stage_0_batches"] = len(model.stage_log[0]["batch"])
        results[kind]["hook_left"] = model.stage_step_hook is not None
    if len(results) == 1:
        path = os.path.join(FOLDER, "timeline.png")
        result.draw(path, title=kind)
print(json.dumps({"results": results, "png": path, "steps": STEPS}))
