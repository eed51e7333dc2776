"""BP(lambda): the limits lambda = 1 (backprop) and 0 (DNI), NumPy at 0.5, saving."""

import keras
import numpy as np
import pytest
from conftest import linear_synth, mlp, weights_of

import keras_sg

B, D, H, OUT, LR = 5, 3, 4, 2, 0.1


def _synths(seed=7, num_classes=None):
    synths = [linear_synth(num_classes=num_classes) for _ in range(2)]
    rng = np.random.default_rng(seed)
    width = H + (num_classes or 0)
    for synth in synths:
        synth.build((None, H))
        # Non-zero synthesizers, so the synthetic term of every mixture counts.
        synth.head.set_weights(
            [rng.normal(size=(width, H)) * 0.5, rng.normal(size=(H,)) * 0.1]
        )
    return synths


def _pair(optimizer, method_b="dni", num_classes=None, loss="mse", **kwargs):
    """A BPLambdaModel and a twin network with identical weights."""
    net = mlp([H, H], D, activation="tanh", out_units=OUT)
    twin = keras.models.clone_model(net)
    twin.set_weights(net.get_weights())
    model = keras_sg.BPLambdaModel(
        net, synthesizers=_synths(num_classes=num_classes), method=method_b, **kwargs
    )
    model.compile(optimizer=optimizer(), loss=loss)
    return model, twin


def _data(n=4 * B, seed=0, classes=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    if classes:
        return x, rng.integers(0, classes, size=n)
    return x, rng.normal(size=(n, OUT)).astype("float32")


def _stage_dense(model):
    return [model.stages[k].layers[0] for k in range(3)]


@pytest.mark.parametrize(
    "optimizer",
    [lambda: keras.optimizers.SGD(LR), lambda: keras.optimizers.Adam(0.05)],
    ids=["sgd", "adam"],
)
def test_lambda_one_equals_backprop_updates(optimizer):
    model, twin = _pair(optimizer, bp_lambda=1.0)
    reference = keras_sg.DecoupledModel(twin, method="backprop")
    reference.compile(optimizer=optimizer(), loss="mse")
    x, y = _data()
    start = weights_of(_stage_dense(model))

    model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)

    moved = weights_of(_stage_dense(model))
    assert max(np.abs(a - b).max() for a, b in zip(moved, start, strict=True)) > 1e-2
    for a, b in zip(moved, weights_of(_stage_dense(reference)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_lambda_one_equals_backprop_with_a_penalty_in_a_lower_stage():
    def network():
        return keras.Sequential(
            [
                keras.Input((D,)),
                keras.layers.Dense(
                    H,
                    activation="tanh",
                    kernel_regularizer=keras.regularizers.L2(0.3),
                    name="dense_0",
                ),
                keras_sg.Interface(name="cut_1"),
                keras.layers.Dense(H, activation="tanh", name="dense_1"),
                keras_sg.Interface(name="cut_2"),
                keras.layers.Dense(OUT, name="top"),
            ]
        )

    net, twin = network(), network()
    twin.set_weights(net.get_weights())
    model = keras_sg.BPLambdaModel(net, synthesizers=_synths(), bp_lambda=1.0)
    reference = keras_sg.DecoupledModel(twin, method="backprop")
    for m in (model, reference):
        m.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    x, y = _data()
    h_a = model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    h_b = reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(h_a.history["loss"], h_b.history["loss"], rtol=1e-5)
    for a, b in zip(
        weights_of(_stage_dense(model)),
        weights_of(_stage_dense(reference)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["dni", "cdni"])
def test_lambda_zero_equals_dni(method):
    classes = OUT if method == "cdni" else None
    loss = (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if classes
        else "mse"
    )
    model, twin = _pair(
        lambda: keras.optimizers.SGD(LR),
        method,
        num_classes=classes,
        loss=loss,
        bp_lambda=0.0,
    )
    reference = keras_sg.DecoupledModel(
        twin, synthesizers=_synths(num_classes=classes), method=method
    )
    reference.compile(optimizer=keras.optimizers.SGD(LR), loss=loss)
    x, y = _data(classes=classes)

    h_a = model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    h_b = reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)

    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(
        weights_of(model.synthesizers), weights_of(reference.synthesizers), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for key in ("loss", "cut_1_sg_loss", "cut_2_sg_loss"):
        np.testing.assert_allclose(h_a.history[key], h_b.history[key], rtol=1e-5)


def _numpy_bp_lambda_step(w, m, x, y, lam):
    """One BP(lambda) step by hand: the loss, the sg losses and every gradient.

    w = [(W, b)] of the three tanh/tanh/linear stages, m = [(M, c)] of the two
    linear synthesizers; mse loss; synthesizers predict B * dL/dh.
    """
    (w0, b0), (w1, b1), (w2, b2) = w
    (m1, c1), (m2, c2) = m
    n = len(x)
    h1 = np.tanh(x @ w0 + b0)
    h2 = np.tanh(h1 @ w1 + b1)
    out = h2 @ w2 + b2
    loss = np.mean((out - y) ** 2)
    d_out = 2 * (out - y) / out.size
    g1, g2 = h1 @ m1 + c1, h2 @ m2 + c2
    b_h2 = d_out @ w2.T  # the true gradient at the top cut
    mix2 = lam * b_h2 + (1 - lam) * g2 / n
    dz2 = mix2 * (1 - h2**2)
    b_h1 = dz2 @ w1.T  # what stage 1, pulled back with its mixture, sends down
    mix1 = lam * b_h1 + (1 - lam) * g1 / n
    dz1 = mix1 * (1 - h1**2)
    grads_w = [
        (x.T @ dz1, dz1.sum(0)),
        (h1.T @ dz2, dz2.sum(0)),
        (h2.T @ d_out, d_out.sum(0)),
    ]
    grads_m, sg_losses = [], []
    for h, g, t in ((h1, g1, n * b_h1), (h2, g2, n * b_h2)):
        sg_losses.append(np.mean((g - t) ** 2))
        d = 2 * (g - t) / g.size
        grads_m.append((h.T @ d, d.sum(0)))
    return loss, sg_losses, grads_w, grads_m


# 0.3 too: at 0.5 a swap of the two weights would go unseen.
@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_lambda_between_matches_numpy_over_several_steps(lam):
    model, _ = _pair(lambda: keras.optimizers.SGD(LR), bp_lambda=lam)
    x, y = _data(n=3 * B, seed=1)
    dense = _stage_dense(model)
    w = [[np.array(v, np.float64) for v in layer.get_weights()] for layer in dense]
    m = [
        [np.array(v, np.float64) for v in s.head.get_weights()]
        for s in model.synthesizers
    ]
    for step in range(3):
        xb, yb = x[step * B : (step + 1) * B], y[step * B : (step + 1) * B]
        loss, sg_losses, grads_w, grads_m = _numpy_bp_lambda_step(
            w, m, xb.astype(np.float64), yb.astype(np.float64), lam
        )
        logs = model.fit(xb, yb, batch_size=B, epochs=1, verbose=0).history
        np.testing.assert_allclose(logs["loss"][0], loss, rtol=1e-5)
        np.testing.assert_allclose(logs["cut_1_sg_loss"][0], sg_losses[0], rtol=1e-4)
        np.testing.assert_allclose(logs["cut_2_sg_loss"][0], sg_losses[1], rtol=1e-4)
        w = [
            [p - LR * g for p, g in zip(*pair, strict=True)]
            for pair in zip(w, grads_w, strict=True)
        ]
        m = [
            [p - LR * g for p, g in zip(*pair, strict=True)]
            for pair in zip(m, grads_m, strict=True)
        ]

    for layer, ref in zip(dense, w, strict=True):
        for new, expected in zip(layer.get_weights(), ref, strict=True):
            np.testing.assert_allclose(new, expected, rtol=1e-4, atol=1e-6)
    for synth, ref in zip(model.synthesizers, m, strict=True):
        for new, expected in zip(synth.head.get_weights(), ref, strict=True):
            np.testing.assert_allclose(new, expected, rtol=1e-4, atol=1e-6)


def test_keras_round_trip_keeps_bp_lambda_and_resumes(tmp_path):
    model, _ = _pair(lambda: keras.optimizers.Adam(0.01), bp_lambda=0.25)
    x, y = _data()
    model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert model.get_config()["bp_lambda"] == 0.25
    clone = keras_sg.BPLambdaModel.from_config(model.get_config())
    assert isinstance(clone, keras_sg.BPLambdaModel) and clone.bp_lambda == 0.25

    path = tmp_path / "bp_lambda.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_sg.BPLambdaModel)
    assert loaded.bp_lambda == 0.25 and loaded.method == "dni"
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 4
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        weights_of(loaded.synthesizers), weights_of(model.synthesizers), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bp_lambda": 1.5}, "bp_lambda=1.5"),
        ({"bp_lambda": -0.1}, "bp_lambda=-0.1"),
        ({"bp_lambda": "half"}, "bp_lambda='half'"),
        ({"bp_lambda": True}, "bp_lambda=True"),
        ({"method": "backprop"}, "method='backprop'"),
        ({"sg_target": "backprop"}, "sg_target='backprop'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    net = mlp([H, H], D, activation="tanh", out_units=OUT)
    with pytest.raises(ValueError, match=message):
        keras_sg.BPLambdaModel(net, synthesizers=_synths(), **kwargs)
