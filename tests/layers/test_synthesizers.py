"""Synthesizers and the interface: shapes, zero start, conditioning, modes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sg


def _randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()]
    )


@pytest.mark.parametrize("hidden_layers", [0, 1, 2])
@pytest.mark.parametrize("shape", [(4, 7), (4, 3, 7)])
def test_dense_synthesizer_starts_at_exactly_zero(hidden_layers, shape):
    synth = keras_sg.DenseSynthesizer(hidden_layers=hidden_layers, units=9)
    h = np.random.default_rng(0).normal(size=shape).astype("float32")
    g = synth(h, training=True)
    assert g.shape == shape
    assert np.all(np.asarray(g) == 0.0)
    n_dense = hidden_layers + 1
    n_norm = hidden_layers
    assert len(synth.trainable_weights) == 2 * n_dense - hidden_layers + 2 * n_norm


def test_linear_dense_synthesizer_is_an_affine_map():
    synth = keras_sg.DenseSynthesizer(hidden_layers=0)
    h = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    synth(h)
    _randomize(synth)
    kernel, bias = synth.head.get_weights()
    np.testing.assert_allclose(synth(h), h @ kernel + bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden_layers", [0, 2])
def test_conv_synthesizer_preserves_shape_and_starts_at_zero(hidden_layers):
    synth = keras_sg.ConvSynthesizer(
        hidden_layers=hidden_layers, filters=6, kernel_size=3
    )
    h = np.random.default_rng(0).normal(size=(2, 7, 5, 3)).astype("float32")
    g = synth(h, training=True)
    assert g.shape == h.shape
    assert np.all(np.asarray(g) == 0.0)
    assert synth.head.kernel.shape == (3, 3, 6 if hidden_layers else 3, 3)


def test_dense_conditioning_concatenates_one_hot_labels():
    synth = keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=3)
    h = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    labels = np.array([0, 2, 1, 2])
    synth(h, context=labels)
    _randomize(synth)
    kernel, bias = synth.head.get_weights()
    assert kernel.shape == (5 + 3, 5)
    expected = np.concatenate([h, np.eye(3)[labels]], axis=1) @ kernel + bias
    np.testing.assert_allclose(synth(h, context=labels), expected, rtol=1e-5, atol=1e-6)
    one_hot = keras.utils.to_categorical(labels, 3)
    np.testing.assert_allclose(
        synth(h, context=one_hot), expected, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        synth(h, context=labels[:, None]), expected, rtol=1e-5, atol=1e-6
    )


def test_conv_conditioning_broadcasts_labels_over_height_and_width():
    synth = keras_sg.ConvSynthesizer(hidden_layers=0, kernel_size=1, num_classes=3)
    h = np.random.default_rng(3).normal(size=(2, 4, 4, 2)).astype("float32")
    labels = np.array([1, 2])
    synth(h, context=labels)
    _randomize(synth)
    kernel, bias = synth.head.get_weights()  # 1x1 conv: a per-pixel affine map
    planes = np.broadcast_to(np.eye(3)[labels][:, None, None, :], (2, 4, 4, 3))
    expected = np.concatenate([h, planes], axis=-1) @ kernel[0, 0] + bias
    np.testing.assert_allclose(synth(h, context=labels), expected, rtol=1e-5, atol=1e-5)


def _dilated_same_conv(x, kernel, bias, rate):
    """NumPy reference: a 'same' zero-padded conv with taps `rate` apart."""
    k = kernel.shape[0]
    r = (k // 2) * rate
    padded = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    height, width = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],)) + bias
    for a in range(k):
        for b in range(k):
            window = padded[
                :, a * rate : a * rate + height, b * rate : b * rate + width
            ]
            out += window @ kernel[a, b]
    return out


def test_dilated_linear_conv_synthesizer_matches_numpy_and_round_trips():
    synth = keras_sg.ConvSynthesizer(
        hidden_layers=0, kernel_size=3, dilation_rate=2, num_classes=3
    )
    rng = np.random.default_rng(4)
    h = rng.normal(size=(2, 7, 6, 2)).astype("float32")
    labels = np.array([2, 0])
    synth(h, context=labels)
    _randomize(synth)
    kernel, bias = synth.head.get_weights()
    planes = np.broadcast_to(np.eye(3)[labels][:, None, None, :], (2, 7, 6, 3))
    x = np.concatenate([h, planes], axis=-1)
    expected = _dilated_same_conv(x, kernel, bias, rate=2)
    got = synth(h, context=labels)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Rate 2 differs from a plain 3x3 kernel: the test sees the dilation.
    assert np.max(np.abs(expected - _dilated_same_conv(x, kernel, bias, 1))) > 0.5

    clone = keras_sg.ConvSynthesizer.from_config(synth.get_config())
    assert clone.dilation_rate == 2
    clone(h, context=labels)
    clone.set_weights(synth.get_weights())
    np.testing.assert_allclose(clone(h, context=labels), got, rtol=1e-6)


def test_batch_norm_follows_training_flag():
    synth = keras_sg.DenseSynthesizer(hidden_layers=1, units=4)
    h = np.random.default_rng(4).normal(size=(8, 3)).astype("float32") * 5 + 2
    synth(h)
    _randomize(synth)
    # Moving statistics start at mean 0, variance 1: inference ignores the batch.
    assert not np.allclose(synth(h, training=True), synth(h, training=False))


def test_eager_and_compiled_calls_agree():
    synth = keras_sg.DenseSynthesizer(hidden_layers=2, units=6, num_classes=3)
    h = np.random.default_rng(5).normal(size=(4, 5)).astype("float32")
    labels = np.array([0, 1, 2, 0])
    synth(h, context=labels)
    _randomize(synth)
    compiled = tf.function(lambda a, c: synth(a, context=c, training=False))
    np.testing.assert_allclose(
        compiled(h, labels), synth(h, context=labels, training=False), rtol=1e-5
    )


def test_interface_is_the_identity():
    h = np.random.default_rng(6).normal(size=(3, 4, 2)).astype("float32")
    np.testing.assert_array_equal(keras_sg.Interface()(h), h)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_layers": -1}, "hidden_layers=-1"),
        ({"hidden_layers": 1.5}, "hidden_layers=1.5"),
        ({"units": 0}, "units=0"),
        ({"num_classes": 0}, "num_classes=0"),
    ],
)
def test_dense_synthesizer_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sg.DenseSynthesizer(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filters": 0}, "filters=0"),
        ({"kernel_size": 0}, "kernel_size=0"),
        ({"dilation_rate": 0}, "dilation_rate=0"),
    ],
)
def test_conv_synthesizer_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sg.ConvSynthesizer(**kwargs)


def test_conv_synthesizer_rejects_a_flat_activation():
    with pytest.raises(ValueError, match=r"4-D activation.*\(None, 8\)"):
        keras_sg.ConvSynthesizer().build((None, 8))


def test_context_errors_name_what_was_received():
    h = np.zeros((4, 5), "float32")
    conditioned = keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=3)
    with pytest.raises(ValueError, match="context=None"):
        conditioned(h)
    with pytest.raises(ValueError, match=r"num_classes=3.*shape \(4, 2\)"):
        conditioned(h, context=np.zeros((4, 2), "float32"))
    plain = keras_sg.DenseSynthesizer(hidden_layers=0)
    with pytest.raises(ValueError, match=r"takes no context.*\(4,\)"):
        plain(h, context=np.zeros((4,), "int32"))


def test_low_rank_synthesizer_is_a_rank_r_affine_map_starting_at_zero():
    synth = keras_sg.LowRankSynthesizer(rank=2, num_classes=3)
    h = np.random.default_rng(7).normal(size=(5, 6)).astype("float32")
    labels = np.array([0, 1, 2, 1, 0])
    assert np.all(np.asarray(synth(h, context=labels)) == 0.0)
    _randomize(synth)
    (u,) = synth.down.get_weights()
    v, b = synth.up.get_weights()
    assert u.shape == (6 + 3, 2) and v.shape == (2, 6)
    expected = np.concatenate([h, np.eye(3)[labels]], axis=1) @ u @ v + b
    np.testing.assert_allclose(synth(h, context=labels), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="rank=0"):
        keras_sg.LowRankSynthesizer(rank=0)


def test_per_position_output_scale_divides_by_height_times_width():
    """A 1x1 linear conv synthesizer with output_scale='per_position', against
    NumPy: the per-pixel affine map over [h, label planes], over H * W."""
    synth = keras_sg.ConvSynthesizer(
        hidden_layers=0, kernel_size=1, num_classes=3, output_scale="per_position"
    )
    h = np.random.default_rng(6).normal(size=(2, 4, 5, 2)).astype("float32")
    labels = np.array([2, 0])
    synth(h, context=labels)
    _randomize(synth)
    kernel, bias = synth.head.get_weights()
    planes = np.broadcast_to(np.eye(3)[labels][:, None, None, :], (2, 4, 5, 3))
    expected = (np.concatenate([h, planes], axis=-1) @ kernel[0, 0] + bias) / 20
    np.testing.assert_allclose(synth(h, context=labels), expected, rtol=1e-5, atol=1e-6)


def test_numeric_output_scale_and_its_round_trip(tmp_path):
    synth = keras_sg.DenseSynthesizer(hidden_layers=0, output_scale=0.25)
    h = np.random.default_rng(7).normal(size=(5, 4)).astype("float32")
    synth(h)
    _randomize(synth)
    kernel, bias = synth.head.get_weights()
    np.testing.assert_allclose(
        synth(h), 0.25 * (h @ kernel + bias), rtol=1e-5, atol=1e-6
    )
    inputs = keras.Input((4,))
    model = keras.Model(inputs, synth(inputs))
    model.save(tmp_path / "s.keras")
    loaded = keras.models.load_model(tmp_path / "s.keras")
    assert loaded.layers[-1].output_scale == 0.25
    np.testing.assert_allclose(loaded(h), synth(h), rtol=1e-6)


@pytest.mark.parametrize("value", [0, -1.0, "per_pixel", True, float("inf")])
def test_bad_output_scale_is_named(value):
    with pytest.raises(ValueError, match="output_scale="):
        keras_sg.ConvSynthesizer(output_scale=value)
