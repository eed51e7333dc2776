"""One decoupled step on a hand-sized network, checked against NumPy."""

import keras
import numpy as np
import pytest
from conftest import linear_synth, mlp

import keras_sg
from keras_sg.models import steps

B, D, H, OUT, LR = 5, 3, 4, 2, 0.1


def _setup(sg_target="bootstrap", sg_loss_weight=1.0):
    net = mlp([H, H], D, activation="tanh", out_units=OUT)
    synths = [linear_synth(), linear_synth()]
    model = keras_sg.DecoupledModel(
        net,
        synthesizers=synths,
        method="dni",
        sg_target=sg_target,
        sg_loss_weight=sg_loss_weight,
    )
    rng = np.random.default_rng(7)
    # Non-zero synthesizers, so every path of the step carries a signal.
    for synth in synths:
        synth.head.set_weights(
            [rng.normal(size=(H, H)) * 0.5, rng.normal(size=(H,)) * 0.1]
        )
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    x = rng.normal(size=(B, D)).astype("float32")
    y = rng.normal(size=(B, OUT)).astype("float32")
    return model, synths, x, y


def _numpy_step(w, m, x, y, sg_target, weight):
    """Reference gradients of one dni step; w = stage weights, m = synth weights."""
    (w0, b0), (w1, b1), (w2, b2) = w
    (m1, c1), (m2, c2) = m
    h1 = np.tanh(x @ w0 + b0)
    h2 = np.tanh(h1 @ w1 + b1)
    out = h2 @ w2 + b2
    loss = np.mean((out - y) ** 2)
    d_out = 2 * (out - y) / out.size
    g1, g2 = h1 @ m1 + c1, h2 @ m2 + c2  # synthetic, per-example scale
    true_h2 = d_out @ w2.T
    # Stage 1 pulled back with its synthetic gradient g2 / B.
    dz2 = (g2 / B) * (1 - h2**2)
    boot_h1 = dz2 @ w1.T
    dz1 = (g1 / B) * (1 - h1**2)
    true_h1 = (true_h2 * (1 - h2**2)) @ w1.T
    if sg_target == "bootstrap":
        t1, t2 = B * boot_h1, B * true_h2
    else:
        t1, t2 = B * true_h1, B * true_h2
    grads = {
        "w": [
            (x.T @ dz1, dz1.sum(0)),
            (h1.T @ dz2, dz2.sum(0)),
            (h2.T @ d_out, d_out.sum(0)),
        ],
        "m": [],
    }
    sg_losses = []
    for h, g, t in ((h1, g1, t1), (h2, g2, t2)):
        sg_losses.append(np.mean((g - t) ** 2))
        d = weight * 2 * (g - t) / g.size
        grads["m"].append((h.T @ d, d.sum(0)))
    return loss, sg_losses, grads, (t1, t2)


@pytest.mark.parametrize("sg_target", ["bootstrap", "backprop"])
def test_dni_step_matches_numpy(sg_target):
    weight = 0.5
    model, synths, x, y = _setup(sg_target, sg_loss_weight=weight)
    dense = [
        model.stages[0].layers[0],
        model.stages[1].layers[0],
        model.stages[2].layers[0],
    ]
    w = [[np.array(v, np.float64) for v in layer.get_weights()] for layer in dense]
    m = [[np.array(v, np.float64) for v in s.head.get_weights()] for s in synths]
    loss, sg_losses, grads, _ = _numpy_step(
        w, m, x.astype(np.float64), y, sg_target, weight
    )

    history = model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)

    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-5)
    np.testing.assert_allclose(
        history.history["cut_1_sg_loss"][0], sg_losses[0], rtol=1e-4
    )
    np.testing.assert_allclose(
        history.history["cut_2_sg_loss"][0], sg_losses[1], rtol=1e-4
    )
    for layer, before, grad in zip(dense, w, grads["w"], strict=True):
        for new, old, g in zip(layer.get_weights(), before, grad, strict=True):
            np.testing.assert_allclose(new, old - LR * g, rtol=1e-4, atol=1e-6)
    for synth, before, grad in zip(synths, m, grads["m"], strict=True):
        for new, old, g in zip(synth.head.get_weights(), before, grad, strict=True):
            np.testing.assert_allclose(new, old - LR * g, rtol=1e-4, atol=1e-6)


def test_bootstrapped_target_is_numpy_vjp_of_the_stage_above():
    model, synths, x, _ = _setup()
    stage = model.stages[1]
    rng = np.random.default_rng(3)
    h1 = rng.normal(size=(B, H)).astype("float32")
    g2 = rng.normal(size=(B, H)).astype("float32")  # the stage's synthetic gradient
    (out, _), pullback = steps.vjp(
        lambda a: (stage(a, training=True), None), h1, stage.trainable_variables
    )
    input_grad, _ = pullback((g2 / B, None))
    target = steps.bootstrapped_target(input_grad, B)

    w1, b1 = stage.layers[0].get_weights()
    h2 = np.tanh(h1 @ w1 + b1)
    np.testing.assert_allclose(out, h2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(target, (g2 * (1 - h2**2)) @ w1.T, rtol=1e-5, atol=1e-6)


def test_synthesizer_loss_is_numpy_mse_and_its_gradient():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(4, 3)).astype("float32")
    t = rng.normal(size=(4, 3)).astype("float32")
    loss, grad = steps.synthesizer_loss(g, t)
    np.testing.assert_allclose(loss, np.mean((g - t) ** 2), rtol=1e-6)
    np.testing.assert_allclose(grad, 2 * (g - t) / g.size, rtol=1e-6)


def test_cut_gradients_true_gradient_matches_numpy():
    model, synths, x, y = _setup()
    synthetic, true = model.cut_gradients(x, y)
    dense = [model.stages[k].layers[0] for k in range(3)]
    w = [[np.array(v, np.float64) for v in layer.get_weights()] for layer in dense]
    m = [[np.array(v, np.float64) for v in s.head.get_weights()] for s in synths]
    _, _, _, (t1, t2) = _numpy_step(w, m, x.astype(np.float64), y, "backprop", 1.0)
    np.testing.assert_allclose(true[0], t1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(true[1], t2, rtol=1e-4, atol=1e-6)
    h1 = np.tanh(x @ w[0][0] + w[0][1])
    np.testing.assert_allclose(
        synthetic[0], h1 @ m[0][0] + m[0][1], rtol=1e-4, atol=1e-6
    )


def test_cosine_similarity_matches_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    expected = (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)
    np.testing.assert_allclose(steps.cosine_similarity(a, b), expected, rtol=1e-5)
