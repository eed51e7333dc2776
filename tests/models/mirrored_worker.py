"""Trains models under MirroredStrategy on two logical CPUs and once without.

Run as a subprocess by test_distribution.py: logical devices must be set up
before TensorFlow initialises. Each argument is a case,
`method:model[:synthesizer_optimizer]` (model "decoupled" or "pipelined";
with the third part the synthesizers train with their own SGD); one process
runs them all, since starting TensorFlow costs seconds. Prints one JSON line:
each case's results under its argument.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sg  # noqa: E402

# One strategy for every case: with a new strategy per case, the second
# case's first all-reduce failed ("another member in the group expected
# shape [443]"), meeting the first strategy's collectives.
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
MODELS = {"decoupled": keras_sg.DecoupledModel, "pipelined": keras_sg.PipelinedModel}


def build(method, model_class, synth_optimizer):
    keras.utils.set_random_seed(3)
    net = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="tanh"),
            keras_sg.Interface(name="cut_1"),
            keras.layers.Dense(8, activation="tanh"),
            keras_sg.Interface(name="cut_2"),
            keras.layers.Dense(3),
        ]
    )
    classes = 3 if method == "cdni" else None
    synths = [
        keras_sg.DenseSynthesizer(
            hidden_layers=1, units=8, use_batch_norm=False, num_classes=classes
        )
        for _ in range(2)
    ]
    model = model_class(net, synths, method=method)
    extra = {"synthesizer_optimizer": keras.optimizers.SGD(0.1)}
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **(extra if synth_optimizer else {}),
    )
    return model


def run(case):
    method, model_name, *extra = case.split(":")
    if model_name not in MODELS or extra not in ([], ["synthesizer_optimizer"]):
        raise SystemExit(f"mirrored_worker.py: bad case {case!r}")
    args = (method, MODELS[model_name], bool(extra))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, size=64)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    with STRATEGY.scope():
        mirrored = build(*args)
    initial = [w.copy() for w in mirrored.get_weights()]
    h_mirrored = mirrored.fit(data, epochs=2, verbose=0)
    single = build(*args)
    h_single = single.fit(data, epochs=2, verbose=0)

    diff = max(
        float(np.abs(a - b).max())
        for a, b in zip(mirrored.get_weights(), single.get_weights(), strict=True)
    )
    moved = max(
        float(np.abs(a - b).max())
        for a, b in zip(single.get_weights(), initial, strict=True)
    )
    return {
        "replicas": STRATEGY.num_replicas_in_sync,
        "max_weight_diff": diff,
        "max_weight_change": moved,
        "loss_mirrored": h_mirrored.history["loss"],
        "loss_single": h_single.history["loss"],
        "sg_mirrored": h_mirrored.history["cut_1_sg_loss"],
        "sg_single": h_single.history["cut_1_sg_loss"],
        # Variables of the model optimizer (its iterations, rate and slots):
        # the same on one device and under the strategy.
        "optimizer_variables": [
            len(mirrored.optimizer.variables),
            len(single.optimizer.variables),
        ],
        "synth_iterations": int(
            keras.ops.convert_to_numpy(mirrored.synthesizer_optimizer.iterations)
        )
        if extra
        else None,
    }


print(json.dumps({case: run(case) for case in sys.argv[1:]}))
