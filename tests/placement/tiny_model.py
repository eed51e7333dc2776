"""The tiny DNI model and data that the placement worker scripts train.

Imported by placement_worker.py and cluster_worker.py (run as scripts, so
this folder is on their path) after their devices exist.
"""

import keras
import numpy as np

import keras_sg


def build(devices=None):
    """A two-stage DNI model, the same weights on every call; Adam 0.01."""
    keras.utils.set_random_seed(5)
    net = keras_sg.models.fully_connected((6,), 3, depth=2, units=8, batch_norm=False)
    synth = keras_sg.DenseSynthesizer(hidden_layers=1, units=8, use_batch_norm=False)
    model = keras_sg.DecoupledModel(net, [synth], method="dni", devices=devices)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def data():
    """64 examples of 6 features, 3 classes."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, size=64)
