"""keras_sg.models.convolutional's heads and pooling, against NumPy."""

import keras
import numpy as np
import pytest

import keras_sg


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(size=w.shape).astype("float32") for w in model.get_weights()]
    )


def _conv_same(x, kernel, bias):
    """A 'same', stride-1 Conv2D written out: (b, h, w, c) -> (b, h, w, f)."""
    k = kernel.shape[0]
    r = k // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for di in range(k):
        for dj in range(k):
            window = padded[:, di : di + x.shape[1], dj : dj + x.shape[2], :]
            out += np.einsum("bhwc,cf->bhwf", window, kernel[di, dj])
    return out + bias


def _pool(x, how):
    b, h, w, c = x.shape
    blocks = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return blocks.max(axis=(2, 4)) if how == "max" else blocks.mean(axis=(2, 4))


@pytest.mark.parametrize(
    "head, pooling",
    [
        ("global_average", None),
        ("global_average", "max"),
        ("global_average", "average"),
        ("flatten", "max"),
    ],
)
def test_convolutional_head_and_pooling_equal_numpy(head, pooling):
    net = keras_sg.models.convolutional(
        (9, 7, 2),
        4,
        depth=3,
        filters=3,
        kernel_size=3,
        batch_norm=False,
        head=head,
        pooling=pooling,
    )
    _randomize(net)
    x = np.random.default_rng(1).normal(size=(5, 9, 7, 2)).astype("float32")
    weights = net.get_weights()  # conv_0 k, b, conv_1 k, b, logits k, b
    h = x.astype("float64")
    for i in range(2):
        h = np.maximum(_conv_same(h, weights[2 * i], weights[2 * i + 1]), 0.0)
        if pooling:
            h = _pool(h, pooling)
    features = h.mean(axis=(1, 2)) if head == "global_average" else h.reshape(5, -1)
    expected = features @ weights[4] + weights[5]
    np.testing.assert_allclose(net(x), expected, rtol=1e-4, atol=1e-4)
    # Two cuts, each after its stage's pooling: 9x7 -> 4x3 -> 2x1 maps.
    stages = keras_sg.split_stages(net)
    assert len(stages) == 3
    side = (4, 3) if pooling else (9, 7)
    assert tuple(stages[0](x).shape) == (5, *side, 3)


def test_global_average_head_gives_the_same_gradient_at_every_pixel():
    net = keras_sg.models.convolutional(
        (6, 6, 1), 3, depth=2, filters=4, kernel_size=3, head="global_average"
    )
    _randomize(net)
    lower, top = keras_sg.split_stages(net)
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 1)).astype("float32")
    import tensorflow as tf

    h = tf.convert_to_tensor(lower(x))
    with tf.GradientTape() as tape:
        tape.watch(h)
        loss = keras.ops.sum(top(h) * np.array([1.0, -2.0, 0.5], "float32"))
    g = tape.gradient(loss, h).numpy()
    kernel = net.get_layer("logits").get_weights()[0]  # (4, 3)
    expected = (kernel @ np.array([1.0, -2.0, 0.5])) / 36.0
    np.testing.assert_allclose(
        g, np.broadcast_to(expected, g.shape), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head": "gap"}, "head='gap'"),
        ({"pooling": "min"}, "pooling='min'"),
        ({"depth": 5, "pooling": "max"}, r"input_shape=\(6, 6, 1\), depth=5"),
    ],
)
def test_convolutional_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sg.models.convolutional((6, 6, 1), 3, **kwargs)


def test_convolutional_with_global_average_head_survives_a_keras_round_trip(
    tmp_path,
):
    net = keras_sg.models.convolutional(
        (8, 8, 1), 3, depth=3, filters=2, head="global_average", pooling="max"
    )
    _randomize(net)
    path = tmp_path / "net.keras"
    net.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(loaded(x), net(x), rtol=1e-6)
    names = [layer.name for layer in loaded.layers]
    assert "global_average" in names and "pool_1" in names


@pytest.mark.parametrize("kind", ["fcn", "cnn"])
def test_norm_momentum_sets_how_fast_moving_statistics_follow(kind):
    """One training-mode call moves the first batch norm's moving mean from 0
    to (1 - momentum) times the batch mean of its input."""
    rng = np.random.default_rng(0)
    if kind == "fcn":
        net = keras_sg.models.fully_connected((6,), 3, depth=2, norm_momentum=0.9)
        x = rng.normal(size=(8, 6)).astype("float32")
    else:
        net = keras_sg.models.convolutional(
            (4, 4, 1), 3, depth=2, filters=2, kernel_size=3, norm_momentum=0.9
        )
        x = rng.normal(size=(8, 4, 4, 1)).astype("float32")
    pre = net.layers[0](x)  # the first dense or conv, before its batch norm
    net(x, training=True)
    norm = net.get_layer("norm_0")
    axes = tuple(range(len(pre.shape) - 1))
    expected = 0.1 * np.mean(np.asarray(pre), axis=axes)
    np.testing.assert_allclose(np.asarray(norm.moving_mean), expected, rtol=1e-5)


@pytest.mark.parametrize("value", [1.0, -0.1, "0.9", True])
def test_norm_momentum_out_of_range_is_named(value):
    with pytest.raises(ValueError, match="norm_momentum="):
        keras_sg.models.convolutional((8, 8, 1), 3, depth=2, norm_momentum=value)
