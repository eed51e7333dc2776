"""Decoupled and GPipe models where Keras itself is the reference.

Backprop through a cut network must be plain Keras `fit`: penalties counted
as Keras counts them (kernel penalties once per step, activity penalties as a
batch mean), batch norm's statistics, partial batches. And XLA must not
change a single update.
"""

import keras
import numpy as np
import pytest
from conftest import linear_synth

import keras_sg

N, BATCH, D, H, C = 10, 4, 3, 5, 3
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _network(regularized=True, batch_norm=True):
    l2 = keras.regularizers.L2(0.05) if regularized else None
    layers = [keras.Input((D,)), keras.layers.Dense(H, kernel_regularizer=l2)]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization())
    layers += [
        keras.layers.Activation("tanh", activity_regularizer=l2),
        keras_sg.Interface(name="cut_1"),
        keras.layers.Dense(H, activation="tanh", activity_regularizer=l2),
        keras_sg.Interface(name="cut_2"),
        keras.layers.Dense(C, kernel_regularizer=l2),
    ]
    return keras.Sequential(layers)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, D)).astype("float32"), rng.integers(0, C, size=N)


def _keras_reference(net, x, y, epochs):
    """Plain Keras fit on a copy of the undivided network."""
    copy = keras.models.clone_model(net)
    copy.set_weights(net.get_weights())
    copy.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    history = copy.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    return copy.get_weights(), history.history["loss"]


@pytest.mark.parametrize(
    "make, batch_norm",
    [
        (lambda net: keras_sg.DecoupledModel(net, method="backprop"), True),
        (lambda net: keras_sg.GPipeModel(net, micro_batches=1), True),
        # Batch norm sees one micro-batch at a time, so only penalties here.
        (lambda net: keras_sg.GPipeModel(net, micro_batches=2), False),
    ],
    ids=["decoupled", "gpipe_1", "gpipe_2"],
)
def test_backprop_with_penalties_and_batch_norm_is_keras_fit(make, batch_norm):
    x, y = _data()
    net = _network(batch_norm=batch_norm)
    expected, expected_loss = _keras_reference(net, x, y, epochs=2)
    model = make(net)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"], expected_loss, rtol=1e-5)
    # The penalties are large enough to matter.
    unregularized, _ = _keras_reference(
        _copy_weights(net, _network(regularized=False, batch_norm=batch_norm)),
        x,
        y,
        epochs=2,
    )
    assert (
        max(np.abs(a - b).max() for a, b in zip(expected, unregularized, strict=True))
        > 1e-3
    )


def _copy_weights(source, target):
    target.set_weights(source.get_weights())
    return target


def _fit(make, jit_compile, x, y, initial):
    model = make()
    model.set_weights(initial)
    # SGD, not Adam: Adam would blow the rounding noise in the zero gradient
    # of the bias before batch norm up to full steps.
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=LOSS, jit_compile=jit_compile
    )
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    assert model.jit_compile is jit_compile
    return model.get_weights()


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras_sg.DecoupledModel(
            _network(),
            [linear_synth(num_classes=C) for _ in range(2)],
            method="cdni",
        ),
        lambda: keras_sg.GPipeModel(_network(batch_norm=False), micro_batches=2),
    ],
    ids=["decoupled_cdni", "gpipe"],
)
def test_xla_changes_no_update(make):
    """jit_compile=True and False give the same weights, partial batches included."""
    x, y = _data()
    keras.utils.set_random_seed(3)
    initial = make().get_weights()
    rng = np.random.default_rng(5)
    initial = [
        w + 0.3 * rng.normal(size=w.shape) if w.ndim == 2 else w for w in initial
    ]
    with_xla = _fit(make, True, x, y, initial)
    without = _fit(make, False, x, y, initial)
    moved = max(np.abs(a - b).max() for a, b in zip(without, initial, strict=True))
    assert moved > 1e-2
    for a, b in zip(with_xla, without, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
