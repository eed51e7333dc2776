"""Shared helpers for the keras_sg tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_sg  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


def mlp(widths, input_dim, activation="tanh", out_units=None, interfaces=True):
    """A Sequential MLP with an interface after every hidden layer."""
    layers = [keras.Input((input_dim,))]
    for i, width in enumerate(widths):
        layers.append(
            keras.layers.Dense(width, activation=activation, name=f"dense_{i}")
        )
        if interfaces:
            layers.append(keras_sg.Interface(name=f"cut_{i + 1}"))
    if out_units is not None:
        layers.append(keras.layers.Dense(out_units, name="top"))
    return keras.Sequential(layers)


def linear_synth(**kwargs):
    return keras_sg.DenseSynthesizer(hidden_layers=0, use_batch_norm=False, **kwargs)


def classification_data(n=64, dim=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    y = rng.integers(0, classes, size=n)
    return x, y


def weights_of(layers):
    return [np.array(w) for layer in layers for w in layer.get_weights()]
