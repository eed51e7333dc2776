"""Input synthesizers: NumPy forward, loss and weight gradients; saving; errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sg
from keras_sg.models import steps
from keras_sg.models.unlocked_steps import input_synthesizer_loss

LR = 0.2


def _randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [rng.normal(size=w.shape).astype("float32") * 0.5 for w in layer.get_weights()]
    )


def _sgd_steps(synth, source, true_h, steps_count):
    """`steps_count` SGD steps of the synthesizer on its regression; the losses."""
    losses = []
    for _ in range(steps_count):
        (predicted,), pullback = steps.vjp(
            lambda s: (synth(s, training=True),),
            source,
            synth.trainable_variables,
            watch_inputs=False,
        )
        loss, d_predicted = input_synthesizer_loss(predicted, true_h)
        _, grads = pullback((d_predicted,))
        for v, g in zip(synth.trainable_variables, grads, strict=True):
            v.assign_sub(LR * g)
        losses.append(float(loss))
    return losses


def test_input_synthesizer_loss_is_numpy_mse_and_its_gradient():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4, 3)).astype("float32")
    h = rng.normal(size=(4, 3)).astype("float32")
    loss, grad = input_synthesizer_loss(p, h)
    np.testing.assert_allclose(loss, np.mean((p - h) ** 2), rtol=1e-6)
    np.testing.assert_allclose(grad, 2 * (p - h) / p.size, rtol=1e-6)


def test_input_synthesizer_loss_stops_the_true_activation():
    p = tf.constant([[1.0, 2.0]])
    h = tf.constant([[0.5, -1.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([p, h])
        loss, _ = input_synthesizer_loss(p, h)
    assert tape.gradient(loss, h) is None
    np.testing.assert_allclose(tape.gradient(loss, p), [[0.5, 3.0]], rtol=1e-6)


def test_input_synthesizer_loss_names_mismatched_shapes():
    with pytest.raises(ValueError, match=r"predicted shape \(2, 3\).*\(2, 4\)"):
        input_synthesizer_loss(tf.zeros((2, 3)), tf.zeros((2, 4)))


def test_dense_input_synthesizer_regression_matches_numpy_over_steps():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 2, 3)).astype("float32")  # flattened to 6 features
    true_h = rng.normal(size=(5, 2, 2)).astype("float32")
    synth = keras_sg.DenseInputSynthesizer(
        target_shape=(2, 2), hidden_layers=1, units=4, use_batch_norm=False
    )
    synth(x)
    _randomize(synth)
    w0, b0, w1, b1 = (np.array(w, np.float64) for w in synth.get_weights())
    xf = x.reshape(5, 6).astype(np.float64)
    t = true_h.reshape(5, 4)
    expected = []
    for _ in range(3):
        z = xf @ w0 + b0
        a = np.maximum(z, 0)
        p = a @ w1 + b1
        expected.append(np.mean((p - t) ** 2))
        d = 2 * (p - t) / p.size
        dz = (d @ w1.T) * (z > 0)
        w1, b1 = w1 - LR * a.T @ d, b1 - LR * d.sum(0)
        w0, b0 = w0 - LR * xf.T @ dz, b0 - LR * dz.sum(0)

    assert synth(x).shape == (5, 2, 2)
    losses = _sgd_steps(synth, x, true_h, 3)

    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    for new, ref in zip(synth.get_weights(), (w0, b0, w1, b1), strict=True):
        np.testing.assert_allclose(new, ref, rtol=1e-4, atol=1e-6)


def test_conv_input_synthesizer_pools_then_convolves_like_numpy_over_steps():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 4, 6, 3)).astype("float32")
    true_h = rng.normal(size=(2, 2, 3, 2)).astype("float32")
    synth = keras_sg.ConvInputSynthesizer(
        target_shape=(2, 3, 2), hidden_layers=0, kernel_size=1
    )
    synth(x)
    _randomize(synth)
    kernel, bias = (np.array(w, np.float64) for w in synth.head.get_weights())
    k = kernel[0, 0]  # a 1x1 conv: a per-pixel affine map
    # 2x2 average pooling of the source.
    pooled = x.astype(np.float64).reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4))
    expected = []
    for _ in range(3):
        p = pooled @ k + bias
        expected.append(np.mean((p - true_h) ** 2))
        d = 2 * (p - true_h) / p.size
        k = k - LR * np.einsum("bhwi,bhwo->io", pooled, d)
        bias = bias - LR * d.sum((0, 1, 2))

    losses = _sgd_steps(synth, x, true_h, 3)

    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    new_kernel, new_bias = synth.head.get_weights()
    np.testing.assert_allclose(new_kernel[0, 0], k, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_bias, bias, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_input_synthesizer_keras_round_trip_inside_a_model(tmp_path, kind):
    if kind == "dense":
        inputs = keras.Input((3, 4))
        layer = keras_sg.DenseInputSynthesizer(
            target_shape=(5,), hidden_layers=1, units=6, name="isynth"
        )
    else:
        inputs = keras.Input((4, 4, 2))
        layer = keras_sg.ConvInputSynthesizer(
            target_shape=(2, 2, 3),
            hidden_layers=1,
            filters=4,
            kernel_size=3,
            name="isynth",
        )
    model = keras.Model(inputs, layer(inputs))
    model.compile("sgd", "mse")
    x = np.random.default_rng(3).normal(size=(8,) + inputs.shape[1:]).astype("float32")
    y = np.random.default_rng(4).normal(size=(8,) + layer.target_shape)
    model.fit(x, y.astype("float32"), epochs=1, verbose=0)  # moves BN statistics
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    clone = loaded.get_layer("isynth")
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    assert clone.target_shape == layer.target_shape
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: keras_sg.DenseInputSynthesizer((4,), units=0), "units=0"),
        (
            lambda: keras_sg.DenseInputSynthesizer((4,), hidden_layers=-1),
            "hidden_layers=-1",
        ),
        (lambda: keras_sg.DenseInputSynthesizer((4, 0)), r"target_shape=\(4, 0\)"),
        (lambda: keras_sg.DenseInputSynthesizer(4), "target_shape=4"),
        (lambda: keras_sg.DenseInputSynthesizer(()), r"target_shape=\(\)"),
        (lambda: keras_sg.ConvInputSynthesizer((4, 4)), r"target_shape=\(4, 4\)"),
        (lambda: keras_sg.ConvInputSynthesizer((4, 4, 2), filters=0), "filters=0"),
        (
            lambda: keras_sg.ConvInputSynthesizer((4, 4, 2), kernel_size=True),
            "kernel_size=True",
        ),
    ],
)
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_sources_are_named():
    conv = keras_sg.ConvInputSynthesizer((3, 3, 2), hidden_layers=0)
    with pytest.raises(ValueError, match=r"integer multiples.*\(2, 4, 4, 1\)"):
        conv(np.zeros((2, 4, 4, 1), "float32"))
    conv = keras_sg.ConvInputSynthesizer((2, 2, 2), hidden_layers=0)
    with pytest.raises(ValueError, match=r"4-D source.*\(2, 8\)"):
        conv(np.zeros((2, 8), "float32"))
    dense = keras_sg.DenseInputSynthesizer((2,), hidden_layers=0)
    with pytest.raises(ValueError, match=r"rank >= 2.*\(3,\)"):
        dense.build((3,))
