"""Networks whose input shape comes from the data train like built ones.

A list of unbuilt stages (a usage the docs show), a Sequential without
`keras.Input` and a model of two inputs are built from the first batch; each
must end with the weights that the built (or one-input) twin ends with, and
backprop with those of plain `keras.Model.fit`.
"""

import keras
import numpy as np
import pytest
from conftest import classification_data, linear_synth

import keras_sg

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def dense(units, seed, activation=None):
    """A Dense layer whose initial weights depend on `seed` alone."""
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 50),
    )


def _fit(model, x, y, optimizer):
    model.compile(optimizer=optimizer, loss=LOSS)
    return model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)


def _assert_same_weights(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_list_of_unbuilt_stages_trains_like_plain_keras():
    x, y = classification_data()
    model = keras_sg.DecoupledModel(
        [dense(8, 1, "tanh"), dense(3, 2)], method="backprop"
    )
    assert not model.built
    history = _fit(model, x, y, keras.optimizers.SGD(0.1))

    plain = keras.Sequential([keras.Input((6,)), dense(8, 1, "tanh"), dense(3, 2)])
    initial = plain.get_weights()
    plain_history = _fit(plain, x, y, keras.optimizers.SGD(0.1))
    _assert_same_weights(model.get_weights(), plain.get_weights())
    np.testing.assert_allclose(
        history.history["loss"], plain_history.history["loss"], rtol=1e-6
    )
    assert np.abs(plain.get_weights()[0] - initial[0]).max() > 1e-2  # it trained


def _built_net():
    return keras.Sequential(
        [
            keras.Input((6,)),
            dense(8, 1, "tanh"),
            keras_sg.Interface(name="cut_1"),
            dense(3, 2),
        ]
    )


UNBUILT = {
    "list_of_stages": lambda: [dense(8, 1, "tanh"), dense(3, 2)],
    "sequential_without_input": lambda: keras.Sequential(
        [dense(8, 1, "tanh"), keras_sg.Interface(name="cut_1"), dense(3, 2)]
    ),
}
MODELS = {
    "dni": lambda net: keras_sg.DecoupledModel(net, [linear_synth()], method="dni"),
    "cdni": lambda net: keras_sg.DecoupledModel(
        net, [linear_synth(num_classes=3)], method="cdni"
    ),
    "pipelined": lambda net: keras_sg.PipelinedModel(net, [linear_synth()]),
    "gpipe": lambda net: keras_sg.GPipeModel(net, micro_batches=2),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("network", sorted(UNBUILT))
def test_unbuilt_network_trains_like_the_built_one(network, kind):
    x, y = classification_data()
    reference = MODELS[kind](_built_net())
    initial = reference.get_weights()
    _fit(reference, x, y, keras.optimizers.Adam(0.01))

    model = MODELS[kind](UNBUILT[network]())
    _fit(model, x, y, keras.optimizers.Adam(0.01))
    _assert_same_weights(model.get_weights(), reference.get_weights())
    # The lower stage moved: a synthetic (or true) gradient reached it.
    assert np.abs(reference.get_weights()[0] - initial[0]).max() > 1e-3


def _two_inputs():
    a, b = keras.Input((2,)), keras.Input((4,))
    h = dense(8, 1, "tanh")(keras.layers.Concatenate()([a, b]))
    h = keras_sg.Interface(name="cut_1")(h)
    return keras.Model([a, b], dense(3, 2)(h))


def _one_input():
    inputs = keras.Input((6,))
    h = keras_sg.Interface(name="cut_1")(dense(8, 1, "tanh")(inputs))
    return keras.Model(inputs, dense(3, 2)(h))


@pytest.mark.parametrize("method", ["dni", "backprop"])
def test_two_input_model_trains_like_its_one_input_twin(method, tmp_path):
    x, y = classification_data()
    synths = [linear_synth()] if method == "dni" else None
    twin = keras_sg.DecoupledModel(_one_input(), synths, method=method)
    initial = twin.get_weights()
    _fit(twin, x, y, keras.optimizers.Adam(0.01))

    synths = [linear_synth()] if method == "dni" else None
    model = keras_sg.DecoupledModel(_two_inputs(), synths, method=method)
    pair = (x[:, :2], x[:, 2:])
    _fit(model, pair, y, keras.optimizers.Adam(0.01))
    _assert_same_weights(model.get_weights(), twin.get_weights())
    assert np.abs(twin.get_weights()[0] - initial[0]).max() > 1e-3
    if method == "backprop":  # and like plain Keras
        plain = _two_inputs()
        _fit(plain, pair, y, keras.optimizers.Adam(0.01))
        _assert_same_weights(model.get_weights(), plain.get_weights())

    # It saves and loads: the build config holds two input shapes.
    path = tmp_path / "two.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(pair, verbose=0), model.predict(pair, verbose=0), atol=1e-6
    )
