"""Gradient diagnostics against NumPy; the monitor and the profiler in TensorBoard."""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from conftest import linear_synth, mlp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import keras_sg

B, D, H, OUT = 6, 3, 4, 2


def _model():
    net = mlp([H], D, activation="tanh", out_units=OUT)
    synth = linear_synth()
    model = keras_sg.DecoupledModel(net, [synth], method="dni")
    rng = np.random.default_rng(11)
    synth.head.set_weights([rng.normal(size=(H, H)), rng.normal(size=(H,))])
    model.compile(optimizer="sgd", loss="mse")
    x = rng.normal(size=(B, D)).astype("float32")
    y = rng.normal(size=(B, OUT)).astype("float32")
    return model, x, y


def test_gradient_diagnostics_match_numpy():
    model, x, y = _model()
    report = keras_sg.callbacks.gradient_diagnostics(model, x, y)

    (w0, b0), (w1, b1) = (
        [np.asarray(v, np.float64) for v in model.stages[k].layers[0].get_weights()]
        for k in (0, 1)
    )
    m, c = (np.asarray(v, np.float64) for v in model.synthesizers[0].head.get_weights())
    h = np.tanh(x @ w0 + b0)
    out = h @ w1 + b1
    d_out = 2 * (out - y) / out.size
    true = B * d_out @ w1.T
    synthetic = h @ m + c
    cosine = (true * synthetic).sum() / np.linalg.norm(true) / np.linalg.norm(synthetic)

    def stage0_norm(g):
        dz = g / B * (1 - h**2)
        return np.sqrt(np.sum((x.T @ dz) ** 2) + np.sum(dz.sum(0) ** 2))

    top = np.sqrt(np.sum((h.T @ d_out) ** 2) + np.sum(d_out.sum(0) ** 2))
    np.testing.assert_allclose(report["cut_1/cosine"], cosine, rtol=1e-4)
    np.testing.assert_allclose(
        report["cut_1/norm_ratio"],
        np.linalg.norm(synthetic) / np.linalg.norm(true),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        report["stage_0/true_grad_norm"], stage0_norm(true), rtol=1e-4
    )
    np.testing.assert_allclose(
        report["stage_0/sg_grad_norm"], stage0_norm(synthetic), rtol=1e-4
    )
    np.testing.assert_allclose(report["stage_1/true_grad_norm"], top, rtol=1e-4)
    assert abs(cosine) < 0.99  # a real comparison, not two equal vectors


def test_monitor_writes_every_n_steps(tmp_path):
    model, x, y = _model()
    monitor = keras_sg.callbacks.SyntheticGradientMonitor(
        str(tmp_path), probe=(x, y), every_n_steps=2
    )
    xs, ys = np.tile(x, (8, 1)), np.tile(y, (8, 1))
    model.fit(xs, ys, batch_size=B, epochs=1, verbose=0, callbacks=[monitor])
    assert [step for step, _ in monitor.history] == [2, 4, 6, 8]
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    events = accumulator.Tensors("sg/cut_1/cosine")
    assert [e.step for e in events] == [2, 4, 6, 8]
    last = float(tf.make_ndarray(events[-1].tensor_proto))
    np.testing.assert_allclose(last, monitor.history[-1][1]["cut_1/cosine"], rtol=1e-6)
    # The monitor's traced measurement, taken after the last step, equals the
    # eager one of the trained model, key by key: it reads the current weights.
    after = keras_sg.callbacks.gradient_diagnostics(model, x, y)
    assert monitor.history[-1][1].keys() == after.keys()
    for key, value in after.items():
        np.testing.assert_allclose(monitor.history[-1][1][key], value, rtol=1e-5)
    assert monitor.history[0][1]["cut_1/cosine"] != after["cut_1/cosine"]


def test_tensorboard_profiler_traces_a_decoupled_model(tmp_path):
    model, x, y = _model()
    xs, ys = np.tile(x, (8, 1)), np.tile(y, (8, 1))
    board = keras.callbacks.TensorBoard(str(tmp_path), profile_batch=(2, 4))
    model.fit(xs, ys, batch_size=B, epochs=1, verbose=0, callbacks=[board])
    traces = list(Path(tmp_path).rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0
