"""Pipelined DNI: which batch each stage sees, the buffers, the masked warm-up."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_synth, weights_of

import keras_sg

B, D, H, OUT = 2, 3, 4, 2


def _model(learning_rate, method="dni", optimizer=None):
    net = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(H, name="d0"),
            keras_sg.Interface(name="cut_1"),
            keras.layers.Dense(H, name="d1"),
            keras_sg.Interface(name="cut_2"),
            keras.layers.Dense(OUT, name="d2"),
        ]
    )
    classes = OUT if method == "cdni" else None
    synths = [linear_synth(num_classes=classes) for _ in range(2)]
    model = keras_sg.PipelinedModel(net, synths, method=method)
    rng = np.random.default_rng(4)
    for synth in synths:
        kernel, bias = synth.head.get_weights()
        synth.head.set_weights(
            [rng.normal(size=kernel.shape), rng.normal(size=bias.shape)]
        )
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(learning_rate), loss="mse"
    )
    return model


def _batches(n):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(B, D)).astype("float32") for _ in range(n)]
    ys = [rng.normal(size=(B, OUT)).astype("float32") for _ in range(n)]
    return xs, ys


def test_buffers_follow_a_hand_written_reference():
    """With weights held fixed (lr 0), step t's buffers are known in closed form."""
    model = _model(learning_rate=0.0)
    (w0, b0), (w1, b1), (w2, b2) = (
        model.stages[k].layers[0].get_weights() for k in range(3)
    )
    f0 = lambda x: x @ w0 + b0  # noqa: E731
    f1 = lambda h: h @ w1 + b1  # noqa: E731
    f2 = lambda h: h @ w2 + b2  # noqa: E731
    xs, ys = _batches(6)
    state = model.pipeline_state

    def read(buffer, width):
        return np.asarray(buffer.numpy()).reshape(-1, width)

    for t, (x, y) in enumerate(zip(xs, ys, strict=True)):
        logs = model.train_on_batch(x, y, return_dict=True)
        # Stage 0 always runs the new batch; stage 1 the previous one.
        np.testing.assert_allclose(read(state.activation[0], H), f0(xs[t]), rtol=1e-5)
        np.testing.assert_allclose(read(state.labels[0], OUT), ys[t], rtol=1e-6)
        if t >= 1:
            h1 = f1(f0(xs[t - 1]))
            np.testing.assert_allclose(read(state.activation[1], H), h1, rtol=1e-5)
            np.testing.assert_allclose(read(state.labels[1], OUT), ys[t - 1], rtol=1e-6)
            # The synthesizer at cut 1 will regress on what stage 1 consumed.
            np.testing.assert_allclose(
                read(state.sg_input[0], H), f0(xs[t - 1]), rtol=1e-5
            )
            g2 = f1(f0(xs[t - 1])) @ model.synthesizers[1].head.get_weights()[0]
            g2 = g2 + model.synthesizers[1].head.get_weights()[1]
            np.testing.assert_allclose(
                read(state.sg_target[0], H), g2 @ w1.T, rtol=1e-4
            )
        else:
            assert read(state.activation[1], H).shape == (0, H)
            assert read(state.sg_target[0], H).shape == (0, H)
        if t >= 2:
            # The top stage saw batch t - 2: the loss and the target it sends back.
            out = f2(f1(f0(xs[t - 2])))
            np.testing.assert_allclose(
                logs["loss"], np.mean((out - ys[t - 2]) ** 2), rtol=1e-5
            )
            d_out = 2 * (out - ys[t - 2]) / out.size
            np.testing.assert_allclose(
                read(state.sg_target[1], H), B * d_out @ w2.T, rtol=1e-4, atol=1e-6
            )
            np.testing.assert_allclose(
                read(state.sg_input[1], H), f1(f0(xs[t - 2])), rtol=1e-5
            )
        else:
            assert logs["loss"] == 0.0  # no batch has reached the top yet
            assert read(state.sg_target[1], H).shape == (0, H)
    assert int(state.step.numpy()) == 6


def test_warm_up_is_masked_not_trained_on_empty_buffers():
    model = _model(learning_rate=0.1)
    xs, ys = _batches(4)
    stages = lambda: [weights_of([s]) for s in model.stages]  # noqa: E731
    synths = lambda: [weights_of([s]) for s in model.synthesizers]  # noqa: E731

    def moved(before, after):
        return [
            max(float(np.abs(a - b).max()) for a, b in zip(x, y, strict=True)) > 0
            for x, y in zip(before, after, strict=True)
        ]

    # Step t: stage k learns from t >= k, the synthesizer at cut k from t >= k + 2.
    expected_stages = [[True, False, False], [True, True, False], [True, True, True]]
    expected_synths = [[False, False], [False, False], [True, False], [True, True]]
    for t in range(4):
        s0, z0 = stages(), synths()
        model.train_on_batch(xs[t], ys[t])
        if t < 3:
            assert moved(s0, stages()) == expected_stages[t]
        assert moved(z0, synths()) == expected_synths[t]


def test_weight_decay_spares_what_has_not_worked_yet():
    """AdamW decays every variable it is given: warm-up hands it only the
    stages (from step k) and synthesizers (from step k + 2) that worked."""
    optimizer = keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.5)
    model = _model(learning_rate=None, optimizer=optimizer)
    xs, ys = _batches(4)
    stages0 = [weights_of([s]) for s in model.stages]
    synths0 = [weights_of([s]) for s in model.synthesizers]

    def moved(layer, before):
        after = weights_of([layer])
        return max(
            float(np.abs(a - b).max()) for a, b in zip(after, before, strict=True)
        )

    for t in range(4):
        model.train_on_batch(xs[t], ys[t])
        for k, stage in enumerate(model.stages):
            if t < k:
                assert moved(stage, stages0[k]) == 0.0, (t, k)
            else:
                # Adam moves every weight by about the learning rate.
                assert moved(stage, stages0[k]) > 0.01, (t, k)
        for k, synth in enumerate(model.synthesizers):
            if t < k + 2:
                assert moved(synth, synths0[k]) == 0.0, (t, k)
            else:
                assert moved(synth, synths0[k]) > 0.01, (t, k)
    assert int(model.optimizer.iterations.numpy()) == 4  # one update per step


def test_jit_compile_is_turned_off_with_keras_warning_and_changes_nothing():
    """The buffers change shape, which XLA cannot compile: Keras warns and
    runs the step without it, with the same updates."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, D)).astype("float32")
    y = rng.normal(size=(10, OUT)).astype("float32")
    weights, initial = [], None
    for jit_compile in (True, False):
        model = _model(learning_rate=0.1)
        initial = initial or model.get_weights()
        model.set_weights(initial)
        if jit_compile:
            with pytest.warns(UserWarning, match="jit_compile=False"):
                model.compile(optimizer="sgd", loss="mse", jit_compile=True)
        else:
            model.compile(optimizer="sgd", loss="mse", jit_compile=False)
        assert model.jit_compile is False
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_pipelined_cdni_with_batch_norm_trains_without_nans():
    net = keras_sg.models.fully_connected((6,), 3, depth=4, units=8)
    synths = [
        keras_sg.DenseSynthesizer(hidden_layers=1, units=8, num_classes=3)
        for _ in range(3)
    ]
    model = keras_sg.PipelinedModel(net, synths, method="cdni")
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(128, 6)).astype("float32")
    y = rng.integers(0, 3, size=128)
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert set(history.history) == {
        "loss",
        "accuracy",
        "cut_1_sg_loss",
        "cut_2_sg_loss",
        "cut_3_sg_loss",
    }
    assert all(
        np.isfinite(v).all() and v[-1] > 0
        for v in map(np.array, history.history.values())
    )


def test_pipelined_model_round_trips_through_keras_files(tmp_path):
    model = _model(learning_rate=0.1)
    xs, ys = _batches(3)
    for x, y in zip(xs, ys, strict=True):
        model.train_on_batch(x, y)
    model.save(tmp_path / "pipe.keras")
    loaded = keras.models.load_model(tmp_path / "pipe.keras")
    assert isinstance(loaded, keras_sg.PipelinedModel)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.pipeline_state.step.numpy()) == 0  # buffers start empty


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "backprop"}, "method='backprop'"),
        ({"sg_target": "backprop"}, "sg_target='backprop'"),
    ],
)
def test_pipelined_model_rejects_what_it_cannot_do(kwargs, message):
    net = keras_sg.models.fully_connected((6,), 3, depth=2, units=4)
    with pytest.raises(ValueError, match=message):
        keras_sg.PipelinedModel(net, [linear_synth()], **kwargs)


def test_weight_decay_under_a_strategy_is_refused():
    """Under tf.distribute the optimizer cannot run inside a warm-up branch,
    so the warm-up hands it zero gradients: weight decay would then shrink
    the idle stages, and is refused rather than applied."""
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        optimizer = keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.5)
        model = _model(learning_rate=None, optimizer=optimizer)
    xs, ys = _batches(1)
    with pytest.raises(ValueError, match="weight_decay=0.5"):
        model.train_on_batch(xs[0], ys[0])
