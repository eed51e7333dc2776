"""Synthetic-gradient training converges where theory says it should."""

import keras
import numpy as np
from conftest import linear_synth

import keras_sg
from keras_sg.models import steps


def test_deep_linear_regression_converges_and_synthetic_gradients_align():
    """Deep linear regression, the setting of Czarnecki et al. 2017 (arXiv:1703.00522).

    Below the top layer of a linear network under squared error, the true
    gradient is linear in the activation and the target, so a linear
    synthesizer that sees the target (cDNI, with the target as context) can
    represent it exactly, and the bootstrapped regression can track it.
    """
    rng = np.random.default_rng(0)
    n, d, out = 1024, 8, 4
    a = rng.normal(size=(d, out)) / np.sqrt(d)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ a + 0.1 * rng.normal(size=(n, out))).astype("float32")
    noise_floor = 0.01  # the variance of the label noise

    net = keras.Sequential(
        [
            keras.Input((d,)),
            keras.layers.Dense(d, use_bias=False),
            keras.layers.Dense(d, use_bias=False),
            keras_sg.Interface(name="cut"),
            keras.layers.Dense(out, use_bias=False),
        ]
    )
    model = keras_sg.DecoupledModel(
        net, [linear_synth(num_classes=out)], method="cdni", sg_loss_weight=100.0
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    initial = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=32, epochs=30, verbose=0)
    final = model.evaluate(x, y, verbose=0)

    synthetic, true = model.cut_gradients(x[:256], y[:256])
    cosine = float(steps.cosine_similarity(synthetic[0], true[0]))
    print(f"mse {initial:.4f} -> {final:.4f}, cosine {cosine:.3f}")
    assert final < initial / 10
    assert final < 3 * noise_floor
    assert cosine > 0.9
