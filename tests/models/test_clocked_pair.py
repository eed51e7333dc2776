"""ClockedPairModel: two RNN cells at different clocks, against tape loops."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_synth

from keras_sg.data import clocked_digits, synthetic_clocked_digits
from keras_sg.models import ClockedPairModel, tick_schedule, update_dependencies

B, F, K, T, LR = 4, 3, 2, 6, 0.5


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, F)).astype("float32")
    y = rng.integers(0, 4, size=(B, T))
    return x, y


def _model(method="dni", seed=0, **kwargs):
    init = {"kernel_initializer": keras.initializers.GlorotUniform(seed)}
    if method == "dni" and "message_synthesizer" not in kwargs:
        kwargs["message_synthesizer"] = linear_synth()
        kwargs["state_synthesizer"] = linear_synth()
    model = ClockedPairModel(
        keras.layers.LSTMCell(3, **init),
        keras.layers.GRUCell(2, **init),
        period=K,
        output=keras.layers.Dense(4, **init),
        method=method,
        **kwargs,
    )
    model.build((B, T, F))
    return model


def _twin(model):
    """A `"bptt"` model with `model`'s network weights."""
    twin = _model("bptt", seed=99)
    for a, b in (
        (twin.fast_cell, model.fast_cell),
        (twin.slow_cell, model.slow_cell),
        (twin.output_layer, model.output_layer),
    ):
        a.set_weights(b.get_weights())
    return twin


def _randomized(model, seed=5):
    """`model` with random (not zero) synthesizer weights."""
    rng = np.random.default_rng(seed)
    for synth in (model.message_synthesizer, model.state_synthesizer):
        synth.set_weights([rng.normal(size=w.shape) for w in synth.get_weights()])
    return model


def _network_weights(model):
    return [
        np.array(w)
        for part in (model.fast_cell, model.slow_cell, model.output_layer)
        for w in part.get_weights()
    ]


# ------------------------------------------------- an independent tape loop


def _reference(model, x, y):
    """Full BPTT of the pair, written out step by step; with the true gradients
    at both interfaces (B * N * dL/dm_b, B * N * dL/dh_bK through the slow
    network) and the gradients of every network variable."""
    fast, slow, out = model.fast_cell, model.slow_cell, model.output_layer
    x = tf.constant(x)
    batch, time = x.shape[:2]
    variables = (
        fast.trainable_variables + out.trainable_variables + slow.trainable_variables
    )
    with tf.GradientTape(persistent=True) as tape:
        fs = [tf.zeros((batch, 3)), tf.zeros((batch, 3))]  # LSTM h, c
        ss = [tf.zeros((batch, 2))]  # GRU h
        message = tf.zeros((batch, 2))
        hs, ticks, messages = [], [], []
        for t in range(time):
            h, fs = fast(tf.concat([x[:, t], message], -1), fs)
            hs.append(h)
            if (t + 1) % K == 0 and t + 1 < time:
                tick = tf.identity(h)
                tape.watch(tick)
                m, ss = slow(tick, ss)
                message = tf.identity(m)
                tape.watch(message)
                ticks.append(tick)
                messages.append(message)
        loss = _loss()(y, out(tf.stack(hs, 1)))
    scale = batch * (time // K)
    return {
        "messages": [m.numpy() for m in messages],
        "ticks": [h.numpy() for h in ticks],
        "true_messages": [g.numpy() * scale for g in tape.gradient(loss, messages)],
        "true_ticks": [g.numpy() * scale for g in tape.gradient(loss, ticks)],
        "gradients": [g.numpy() for g in tape.gradient(loss, variables)],
        "variables": variables,
    }


class _Oracle(keras.layers.Layer):
    """Returns the true interface gradient of the row-block it is called on,
    from a table set before each step (eager only)."""

    def __init__(self):
        super().__init__()
        self.table = []

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, s):
        s = np.asarray(s)
        for key, value in self.table:
            if key.shape == s.shape and np.abs(key - s).max() < 1e-6:
                return tf.constant(value)
        raise AssertionError("the oracle was called on an input it does not know")


# ----------------------------------------------------------------- schedule


def test_tick_schedule_value_by_value():
    fast, both = ("fast",), ("fast", "slow")
    assert tick_schedule(6, 2) == [fast, both, fast, both, fast, fast]
    assert tick_schedule(9, 3) == [fast, fast, both, fast, fast, both, fast, fast, fast]
    assert tick_schedule(3, 1) == [both, both, fast]
    assert tick_schedule(4, 4) == [fast] * 4
    with pytest.raises(ValueError, match="time=5"):
        tick_schedule(5, 2)


def test_unroll_follows_the_schedule():
    x, _ = _data()
    model = _model("bptt")
    out = model.unroll(tf.constant(x))
    assert len(out["fast_outputs"]) == T
    assert len(out["ticks"]) == len(out["messages"]) == T // K - 1
    ref = _reference(model, x, _data()[1])
    for got, want in zip(out["ticks"], ref["ticks"], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # The slow network reads the fast output at the last step of each block.
    for b, tick in enumerate(out["ticks"]):
        np.testing.assert_allclose(tick, out["fast_outputs"][(b + 1) * K - 1])


# --------------------------------------------------------------- the math


def test_bptt_gradients_equal_an_independent_tape_loop():
    x, y = _data(seed=1)
    model = _model("bptt")
    model.compile(keras.optimizers.SGD(LR), _loss())
    got = model.bptt_gradients(tf.constant(x), tf.constant(y))["gradients"]
    ref = _reference(model, x, y)
    assert max(np.abs(g).max() for g in ref["gradients"]) > 1e-2
    for v, want in zip(ref["variables"], ref["gradients"], strict=True):
        np.testing.assert_allclose(got[id(v)], want, rtol=1e-5, atol=1e-7)


def test_oracle_synthesizers_make_dni_equal_bptt_over_sgd_steps():
    x, y = _data(seed=2)
    model = _model("dni", message_synthesizer=_Oracle(), state_synthesizer=_Oracle())
    twin = _twin(model)
    model.compile(keras.optimizers.SGD(LR), _loss(), run_eagerly=True)
    twin.compile(keras.optimizers.SGD(LR), _loss())
    start = _network_weights(model)
    for _ in range(4):
        ref = _reference(model, x, y)
        model.message_synthesizer.table = list(
            zip(ref["messages"], ref["true_messages"], strict=True)
        )
        model.state_synthesizer.table = list(
            zip(ref["ticks"], ref["true_ticks"], strict=True)
        )
        model.train_on_batch(x, y)
        twin.train_on_batch(x, y)
        for got, want in zip(
            _network_weights(model), _network_weights(twin), strict=True
        ):
            np.testing.assert_allclose(got, want, atol=1e-5)
    moved = max(
        np.abs(a - b).max() for a, b in zip(_network_weights(model), start, strict=True)
    )
    assert moved > 1e-2


def test_interface_gradients_are_the_tape_loops():
    x, y = _data(seed=3)
    model = _model("dni")
    model.compile(keras.optimizers.SGD(LR), _loss())
    messages, states = model.interface_gradients(x, y)
    ref = _reference(model, x, y)
    for got, want in zip(messages, ref["true_messages"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for got, want in zip(states, ref["true_ticks"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.abs(messages[0]).max() > 1e-2 and np.abs(states[0]).max() > 1e-3


def test_bootstrapped_targets_are_the_other_networks_pullbacks():
    """The message synthesizer regresses the fast network's pullback to m_b
    (with L and the state synthesizer's S(h_bK)), the state synthesizer the
    slow network's pullback to h_bK (with M(m_b)): both by tape loops."""
    x, y = _data(seed=4)
    model = _randomized(_model("dni"))
    model.compile(keras.optimizers.SGD(LR), _loss())
    result = model.dni_gradients(tf.constant(x), tf.constant(y))
    fast, slow, out = model.fast_cell, model.slow_cell, model.output_layer
    scale = B * (T // K)
    ticks, messages = [], []
    with tf.GradientTape(persistent=True) as tape:
        fs, ss = [tf.zeros((B, 3))] * 2, [tf.zeros((B, 2))]
        message, hs = tf.zeros((B, 2)), []
        for t in range(T):
            h, fs = fast(tf.concat([x[:, t], message], -1), fs)
            hs.append(h)
            if (t + 1) % K == 0 and t + 1 < T:
                tick = tf.constant(h.numpy())
                tape.watch(tick)
                m, ss = slow(tick, ss)
                message = tf.constant(m.numpy())
                tape.watch(message)
                ticks.append((h, tick))
                messages.append((m, message))
        fast_objective = _loss()(y, out(tf.stack(hs, 1))) + sum(
            tf.reduce_sum(h * tf.stop_gradient(model.state_synthesizer(h)) / scale)
            for h, _ in ticks
        )
        slow_objective = sum(
            tf.reduce_sum(m * tf.stop_gradient(model.message_synthesizer(m)) / scale)
            for m, _ in messages
        )
    for b, (_, read) in enumerate(messages):
        want = tape.gradient(fast_objective, read) * scale
        np.testing.assert_allclose(
            result["message_targets"][b], want, rtol=1e-5, atol=1e-6
        )
        assert np.abs(want).max() > 1e-2
    for b, (_, tick) in enumerate(ticks):
        want = tape.gradient(slow_objective, tick) * scale
        np.testing.assert_allclose(
            result["state_targets"][b], want, rtol=1e-5, atol=1e-6
        )
        assert np.abs(want).max() > 1e-2


def test_slow_update_reads_no_fast_backward_pass_under_dni():
    """Another loss (other targets) changes the fast network's dni gradient
    and, under bptt, the slow one's; under dni the slow gradient is the same
    to the bit: it is computed from a tape that never records the loss."""
    x, y = _data(seed=7)
    other = (y + 1) % 4
    dni = _randomized(_model("dni"))
    bptt = _twin(dni)
    for m in (dni, bptt):
        m.compile(keras.optimizers.SGD(LR), _loss())
    a = dni.dni_gradients(tf.constant(x), tf.constant(y))
    b = dni.dni_gradients(tf.constant(x), tf.constant(other))
    for ga, gb in zip(a["slow_gradients"], b["slow_gradients"], strict=True):
        np.testing.assert_array_equal(ga, gb)
    assert max(np.abs(g).max() for g in a["slow_gradients"]) > 1e-4
    fast_change = max(
        np.abs(ga - gb).max()
        for ga, gb in zip(a["fast_gradients"], b["fast_gradients"], strict=True)
    )
    assert fast_change > 1e-3
    ga = bptt.bptt_gradients(tf.constant(x), tf.constant(y))["gradients"]
    gb = bptt.bptt_gradients(tf.constant(x), tf.constant(other))["gradients"]
    slow_change = max(np.abs(ga[id(v)] - gb[id(v)]).max() for v in bptt.slow_variables)
    assert slow_change > 1e-4
    deps = update_dependencies("dni")
    assert "fast_backward" not in deps["slow"] and "fast_loss" not in deps["slow"]
    assert "slow_backward" not in deps["fast"]
    assert "fast_backward" in update_dependencies("bptt")["slow"]


# ------------------------------------------------------------ Keras front


def test_save_load_round_trip(tmp_path):
    x, y = _data(seed=8)
    model = _model("dni")
    model.compile(keras.optimizers.SGD(LR), _loss())
    logs = model.train_on_batch(x, y, return_dict=True)
    assert {"loss", "message_sg_loss", "state_sg_loss"} <= set(logs)
    path = str(tmp_path / "pair.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ClockedPairModel)
    assert (loaded.period, loaded.method) == (K, "dni")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_fit_evaluate_predict_smoke():
    x, y = synthetic_clocked_digits(8, T, K, features=F)
    y = y % 4  # the tiny model has 4 classes
    model = _model("dni")
    model.compile("adam", _loss(), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert set(history.history) == {
        "loss",
        "accuracy",
        "message_sg_loss",
        "state_sg_loss",
    }
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}
    assert model.predict(x, verbose=0).shape == (8, T, 4)
    # A second length gets a traced step of its own.
    x, y = synthetic_clocked_digits(8, 2 * T, K, features=F)
    history = model.fit(x, y % 4, batch_size=B, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize("period", [0, -1, True, 2.0])
def test_bad_period_is_named(period):
    with pytest.raises(ValueError, match=f"period={period!r}"):
        ClockedPairModel(
            keras.layers.LSTMCell(3),
            keras.layers.GRUCell(2),
            period=period,
            output=keras.layers.Dense(4),
            method="bptt",
        )


def test_bad_arguments_are_named():
    cells = (keras.layers.LSTMCell(3), keras.layers.GRUCell(2))
    dense = keras.layers.Dense(4)
    with pytest.raises(ValueError, match="method='tbptt'"):
        ClockedPairModel(*cells, period=2, output=dense, method="tbptt")
    with pytest.raises(ValueError, match="message_synthesizer=None"):
        ClockedPairModel(*cells, period=2, output=dense, method="dni")
    with pytest.raises(TypeError, match="LSTM"):
        ClockedPairModel(
            keras.layers.LSTM(3), cells[1], period=2, output=dense, method="bptt"
        )
    with pytest.raises(ValueError, match="sg_loss_weight=-1"):
        ClockedPairModel(
            *cells, period=2, output=dense, method="bptt", sg_loss_weight=-1
        )
    with pytest.raises(ValueError, match=r"output shape \(4, 5\)"):
        _model(
            "dni",
            message_synthesizer=keras.layers.Dense(5),
            state_synthesizer=linear_synth(),
        )


def test_wrong_shapes_are_named():
    model = _model("bptt")
    model.compile(keras.optimizers.SGD(LR), _loss())
    with pytest.raises(ValueError, match="time=5"):
        model(np.zeros((B, 5, F), "float32"))
    with pytest.raises(ValueError, match="time=2"):  # no tick the fast side reads
        model(np.zeros((B, 2, F), "float32"))
    with pytest.raises(ValueError, match=r"shape \(4, 6, 7\)"):
        model(np.zeros((B, T, 7), "float32"))
    with pytest.raises(ValueError, match=r"shape \(4, 6\)"):
        model(np.zeros((B, T), "float32"))


# --------------------------------------------------------------------- data


def test_clocked_digits_targets_value_by_value():
    images = np.eye(10, dtype=np.float32)  # image i is one-hot i
    labels = np.arange(10)
    x, y = clocked_digits(images, labels, 3, 8, 2, lag=2, seed=4)
    shown = np.argmax(x, axis=-1)
    assert x.shape == (3, 8, 10) and y.shape == (3, 8)
    for n in range(3):
        for t in range(8):
            want = shown[n, t]
            if t >= 4:  # blocks 2 and 3 add the first digit of block b - 2
                want = (want + shown[n, (t // 2 - 2) * 2]) % 10
            assert y[n, t] == want
    again = clocked_digits(images, labels, 3, 8, 2, lag=2, seed=4)
    np.testing.assert_array_equal(again[1], y)
    with pytest.raises(ValueError, match="length=4"):
        clocked_digits(images, labels, 3, 4, 2, lag=2)


def test_traced_dni_step_equals_the_eager_one():
    x, y = _data(seed=9)
    eager, traced = _randomized(_model("dni")), _randomized(_model("dni"))
    traced.set_weights(eager.get_weights())
    eager.compile(keras.optimizers.SGD(LR), _loss(), run_eagerly=True)
    traced.compile(keras.optimizers.SGD(LR), _loss())
    for _ in range(2):
        a = eager.train_on_batch(x, y, return_dict=True)
        b = traced.train_on_batch(x, y, return_dict=True)
        np.testing.assert_allclose(a["state_sg_loss"], b["state_sg_loss"], rtol=1e-5)
    assert a["message_sg_loss"] > 0
    for got, want in zip(traced.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
