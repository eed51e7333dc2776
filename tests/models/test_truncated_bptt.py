"""TruncatedBPTTModel: cuts in time, against independent tape and NumPy loops."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_synth

import keras_sg

B, F, OUT, LR = 4, 2, 2, 0.1


def _net(steps, kind="lstm_gru"):
    """A tiny recurrent network over `steps` steps of F features."""
    rnn = {
        "lstm": [keras.layers.LSTM(3, return_sequences=True, name="lstm")],
        "lstm_gru": [
            keras.layers.LSTM(3, return_sequences=True, name="lstm"),
            keras.layers.GRU(2, return_sequences=True, name="gru"),
        ],
        "simple": [keras.layers.SimpleRNN(3, return_sequences=True, name="rnn")],
        "stacked_cells": [
            keras.layers.RNN(
                keras.layers.StackedRNNCells(
                    [keras.layers.LSTMCell(3), keras.layers.GRUCell(2)]
                ),
                return_sequences=True,
                name="stacked",
            )
        ],
    }[kind]
    return keras.Sequential(
        [keras.Input((steps, F)), *rnn, keras.layers.Dense(OUT, name="head")]
    )


def _twin(net):
    twin = keras.models.clone_model(net)
    twin.set_weights(net.get_weights())
    return twin


def _data(n, steps, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, steps, F)).astype("float32")
    y = rng.normal(size=(n, steps, OUT)).astype("float32")
    return x, y


def _random_synth(state_size, seed):
    synth = linear_synth()
    synth.build((None, state_size))
    rng = np.random.default_rng(seed)
    synth.head.set_weights(
        [
            rng.normal(size=(state_size, state_size)).astype("float32") * 0.5,
            rng.normal(size=(state_size,)).astype("float32") * 0.1,
        ]
    )
    return synth


# ------------------------------------------------------- an independent loop


class _Reference:
    """Runs a network chunk by chunk with twin RNN layers of its own.

    Each twin is a plain `keras.layers.RNN` around the network's cell (the
    same weights) made with `return_state=True`, so nothing of the model
    under test runs here.
    """

    def __init__(self, net):
        self.layers = net.layers
        self.twins = {
            layer.name: keras.layers.RNN(
                layer.cell, return_sequences=True, return_state=True
            )
            for layer in net.layers
            if isinstance(layer, keras.layers.RNN)
        }

    def zeros(self, batch):
        return [
            [tf.zeros((batch, s)) for s in keras.tree.flatten(layer.cell.state_size)]
            for layer in self.layers
            if layer.name in self.twins
        ]

    def chunk(self, x, states):
        h, finals, k = x, [], 0
        for layer in self.layers:
            if layer.name not in self.twins:
                h = layer(h)
                continue
            initial = keras.tree.pack_sequence_as(layer.cell.state_size, states[k])
            h, *final = self.twins[layer.name](h, initial_state=initial)
            finals.append(keras.tree.flatten(final))
            k += 1
        return h, finals


def _flat(states):
    return tf.concat([t for layer in states for t in layer], axis=-1)


def _unflat(vector, like):
    sizes = [t.shape[-1] for layer in like for t in layer]
    parts = iter(tf.split(vector, sizes, axis=-1))
    return [[next(parts) for _ in layer] for layer in like]


def _mse(y, y_pred):
    return tf.reduce_mean(tf.square(y - y_pred))


# ------------------------------------------------------------------- oracle


class _Oracle(keras.layers.Layer):
    """Returns the true future gradient at a boundary, B * J * dL/ds.

    It finds the boundary by recomputing the boundary states of its batch
    (the only batch of the test) and takes the gradient of the loss of the
    remaining chunks with a GradientTape of its own. Eager only.
    """

    def __init__(self, net, x, y, truncation):
        super().__init__()
        self._ref = lambda: (_Reference(net), x, y, truncation)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, s):
        ref, x, y, t = self._ref()
        x, y = tf.constant(x), tf.constant(y)
        count = x.shape[1] // t
        states, boundary = ref.zeros(x.shape[0]), []
        for j in range(count - 1):
            _, states = ref.chunk(x[:, j * t : (j + 1) * t], states)
            boundary.append(_flat(states))
        j = int(np.argmin([np.abs(b - s).max() for b in boundary]))
        assert np.abs(boundary[j] - s).max() < 1e-6
        with tf.GradientTape() as tape:
            tape.watch(s)
            states = _unflat(s, ref.zeros(x.shape[0]))
            loss = 0.0
            for i in range(j + 1, count):
                y_pred, states = ref.chunk(x[:, i * t : (i + 1) * t], states)
                loss += _mse(y[:, i * t : (i + 1) * t], y_pred) / count
        return tape.gradient(loss, s) * x.shape[0] * count


def test_oracle_synthesizer_makes_dni_equal_full_bptt():
    steps, t = 4, 2  # two chunks, one boundary
    x, y = _data(B, steps)
    net = _net(steps, "lstm")
    twin = _twin(net)
    model = keras_sg.TruncatedBPTTModel(
        net, truncation=t, method="dni", synthesizer=_Oracle(net, x, y, t)
    )
    model.compile(keras.optimizers.SGD(LR), "mse", run_eagerly=True)
    twin.compile(keras.optimizers.SGD(LR), "mse", run_eagerly=True)
    start = [w.copy() for w in net.get_weights()]
    model.fit(x, y, batch_size=B, epochs=4, shuffle=False, verbose=0)
    twin.fit(x, y, batch_size=B, epochs=4, shuffle=False, verbose=0)
    moved = max(
        np.abs(a - b).max() for a, b in zip(net.get_weights(), start, strict=True)
    )
    assert moved > 1e-2
    for got, want in zip(net.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_boundary_gradients_are_full_bptts_at_every_boundary():
    steps, t = 6, 2  # three chunks, two boundaries
    x, y = _data(B, steps, seed=13)
    net = _net(steps)
    synth = _random_synth(8, seed=14)
    model = keras_sg.TruncatedBPTTModel(
        net, truncation=t, method="dni", synthesizer=synth
    )
    model.compile(keras.optimizers.SGD(LR), "mse")
    synthetic, true = model.boundary_gradients(x, y)
    oracle = _Oracle(net, x, y, t)
    states = model.chunked_gradients(tf.constant(x), tf.constant(y))["states"]
    assert len(true) == len(synthetic) == 2
    for j in range(2):
        np.testing.assert_allclose(true[j], oracle(states[j]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(synthetic[j], synth(states[j]), atol=1e-6)
        assert np.abs(true[j]).max() > 1e-2


# --------------------------------------------------------- bootstrapped target


def test_bootstrapped_targets_equal_a_tape_of_the_next_chunk():
    steps, t = 6, 2  # three chunks: a middle boundary and one before the last
    x, y = _data(B, steps, seed=1)
    net = _net(steps)
    model = keras_sg.TruncatedBPTTModel(
        net, truncation=t, method="dni", synthesizer=_random_synth(8, seed=2)
    )
    model.compile(keras.optimizers.SGD(LR), "mse")
    out = model.chunked_gradients(tf.constant(x), tf.constant(y))

    ref, count = _Reference(net), steps // t
    xs = [x[:, j * t : (j + 1) * t] for j in range(count)]
    ys = [y[:, j * t : (j + 1) * t] for j in range(count)]
    states, boundary = ref.zeros(B), []
    for j in range(count - 1):
        _, states = ref.chunk(xs[j], states)
        boundary.append(_flat(states))
    synth = model.synthesizer
    for j in range(count - 1):
        # The target at boundary j: chunk j+1's loss and, unless it is the
        # last, its own synthetic gradient on its final state, pulled back.
        s = tf.identity(boundary[j])
        with tf.GradientTape() as tape:
            tape.watch(s)
            y_pred, final = ref.chunk(xs[j + 1], _unflat(s, ref.zeros(B)))
            objective = _mse(ys[j + 1], y_pred) / count
            if j + 1 < count - 1:
                g = tf.stop_gradient(synth(boundary[j + 1]))
                objective += tf.reduce_sum(g * _flat(final)) / (B * count)
        want = tape.gradient(objective, s) * B * count
        np.testing.assert_allclose(out["states"][j], boundary[j], atol=1e-6)
        np.testing.assert_allclose(out["synthetic"][j], synth(boundary[j]), atol=1e-6)
        np.testing.assert_allclose(out["targets"][j], want, rtol=1e-5, atol=1e-6)
        assert np.abs(want).max() > 1e-2


# ------------------------------------------------- DNI and DNI + Aux, per step


def _dni_reference_step(net, synth, aux, x, y, t, sg_weight, aux_weight, sg_scale=1.0):
    """One DNI (+ Aux) step as one surrogate objective on one GradientTape.

    Chunk j starts from the stopped state s_{j-1}. The network's gradient is
    that of sum_j L_j / J + sum_j <stop(c g_j), s_j> / (B J) (+ the aux
    loss), with c = `sg_scale`;
    the target at boundary j-1 is B J times the gradient of chunk j's terms
    at s_{j-1}; the synthesizer regresses it, the aux synthesizer regresses
    stop(g_{j+1}) from s_j.
    """
    ref = _Reference(net)
    count = x.shape[1] // t
    xs = [x[:, j * t : (j + 1) * t] for j in range(count)]
    ys = [y[:, j * t : (j + 1) * t] for j in range(count)]
    with tf.GradientTape(persistent=True) as tape:
        states, starts, finals, chunk_terms = ref.zeros(B), [], [], []
        for j in range(count):
            start = tf.stop_gradient(_flat(states)) if j else None
            if start is not None:
                tape.watch(start)
                states = _unflat(start, states)
            y_pred, states = ref.chunk(xs[j], states)
            starts.append(start)
            finals.append(_flat(states))
            chunk_terms.append(_mse(ys[j], y_pred) / count)
        synthetic = [synth(finals[j]) for j in range(count - 1)]
        for j in range(count - 1):
            chunk_terms[j] += tf.reduce_sum(
                tf.stop_gradient(sg_scale * synthetic[j]) * finals[j]
            ) / (B * count)
        surrogate = tf.add_n(chunk_terms)
        aux_losses = []
        if aux is not None:
            aux_losses = [
                _mse(tf.stop_gradient(synthetic[j + 1]), aux(finals[j]))
                for j in range(count - 2)
            ]
            aux_loss = tf.add_n(aux_losses) / len(aux_losses)
            weighted_aux_loss = aux_weight * aux_loss
            surrogate += weighted_aux_loss
    targets = [
        tape.gradient(chunk_terms[j], starts[j]) * B * count for j in range(1, count)
    ]
    with tf.GradientTape() as synth_tape:
        sg_losses = [
            _mse(tf.stop_gradient(targets[j]), synth(finals[j]))
            for j in range(count - 1)
        ]
        sg_loss = tf.add_n(sg_losses) / len(sg_losses)
        weighted_sg_loss = sg_weight * sg_loss
    network_vars = net.trainable_variables
    updates = list(
        zip(tape.gradient(surrogate, network_vars), network_vars, strict=True)
    )
    updates += zip(
        synth_tape.gradient(weighted_sg_loss, synth.trainable_variables),
        synth.trainable_variables,
        strict=True,
    )
    if aux is not None:
        updates += zip(
            tape.gradient(weighted_aux_loss, aux.trainable_variables),
            aux.trainable_variables,
            strict=True,
        )
    for g, v in updates:
        assert g is not None, v.path
        v.assign_sub(LR * g)
    return float(sg_loss), float(aux_loss) if aux is not None else None


@pytest.mark.parametrize(
    "method, sg_scale", [("dni", 1.0), ("dni_aux", 1.0), ("dni", 0.4), ("dni_aux", 0.4)]
)
def test_dni_equals_a_tape_reference_over_several_steps(method, sg_scale):
    # sg_scale < 1 scales the synthetic gradient where a chunk uses it, and
    # so discounts the bootstrapped target (not the aux target).
    steps, t, epochs = 8, 2, 3  # four chunks: two aux terms per step
    x, y = _data(B, steps, seed=3)
    net = _net(steps)
    twin = _twin(net)
    aux = method == "dni_aux"
    kwargs = dict(sg_loss_weight=0.5, aux_weight=2.0, sg_scale=sg_scale)
    model = keras_sg.TruncatedBPTTModel(
        net,
        truncation=t,
        method=method,
        synthesizer=_random_synth(8, seed=4),
        aux_synthesizer=_random_synth(8, seed=5) if aux else None,
        **kwargs,
    )
    ref_synth = _random_synth(8, seed=4)
    ref_aux = _random_synth(8, seed=5) if aux else None
    model.compile(keras.optimizers.SGD(LR), "mse", run_eagerly=True)
    history = model.fit(x, y, batch_size=B, epochs=epochs, verbose=0).history
    for epoch in range(epochs):
        sg_loss, aux_loss = _dni_reference_step(
            twin,
            ref_synth,
            ref_aux,
            x,
            y,
            t,
            kwargs["sg_loss_weight"],
            kwargs["aux_weight"],
            sg_scale,
        )
        np.testing.assert_allclose(history["sg_loss"][epoch], sg_loss, rtol=1e-5)
        if aux:
            np.testing.assert_allclose(history["aux_loss"][epoch], aux_loss, rtol=1e-5)
    pairs = [(net, twin), (model.synthesizer, ref_synth)]
    if aux:
        pairs.append((model.aux_synthesizer, ref_aux))
    for got, want in pairs:
        for a, b in zip(got.get_weights(), want.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if aux:  # the aux synthesizer learned
        start = _random_synth(8, seed=5).get_weights()[0]
        assert np.abs(ref_aux.get_weights()[0] - start).max() > 1e-4


# ------------------------------------------------------------ truncated BPTT


def _tape_bptt(twin, x, y, t, batches):
    """Truncated BPTT by hand: one tape per batch, the state stopped between
    chunks, SGD on the mean of the chunks' losses. Returns the losses."""
    ref, count, losses = _Reference(twin), x.shape[1] // t, []
    for b in range(batches):
        xb, yb = x[b * B : (b + 1) * B], y[b * B : (b + 1) * B]
        with tf.GradientTape() as tape:
            states, loss = ref.zeros(B), 0.0
            for j in range(count):
                states = [[tf.stop_gradient(s) for s in layer] for layer in states]
                y_pred, states = ref.chunk(xb[:, j * t : (j + 1) * t], states)
                loss += _mse(yb[:, j * t : (j + 1) * t], y_pred) / count
        grads = tape.gradient(loss, twin.trainable_variables)
        for g, v in zip(grads, twin.trainable_variables, strict=True):
            v.assign_sub(LR * tf.convert_to_tensor(g))
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("truncation", [2, None], ids=["T2", "full"])
def test_bptt_equals_a_tape_truncated_loop_over_several_steps(truncation):
    steps = 6
    x, y = _data(3 * B, steps, seed=5)
    net = _net(steps)
    twin = _twin(net)
    model = keras_sg.TruncatedBPTTModel(net, truncation=truncation, method="bptt")
    model.compile(keras.optimizers.SGD(LR), "mse", run_eagerly=True)
    history = model.fit(x, y, batch_size=B, shuffle=False, verbose=0).history
    losses = _tape_bptt(twin, x, y, truncation or steps, batches=3)
    for a, b in zip(net.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history["loss"][0], np.mean(losses), rtol=1e-5)


def test_fit_on_sequences_of_a_new_length_traces_a_step_for_it():
    # Keras would relax a reused step's time axis to None; fit gives each
    # length its own step. The one test in a tf.function, as fit runs by
    # default (the others run eagerly, several times faster).
    net = keras.Sequential(
        [
            keras.Input((None, F)),
            keras.layers.LSTM(3, return_sequences=True),
            keras.layers.Dense(OUT),
        ]
    )
    twin = _twin(net)
    model = keras_sg.TruncatedBPTTModel(net, truncation=2, method="bptt")
    model.compile(keras.optimizers.SGD(LR), "mse", jit_compile=False)
    for steps in (4, 6):
        x, y = _data(B, steps, seed=steps)
        loss = model.fit(x, y, batch_size=B, verbose=0).history["loss"][0]
        (want,) = _tape_bptt(twin, x, y, 2, batches=1)
        np.testing.assert_allclose(loss, want, rtol=1e-5)
    for a, b in zip(net.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_embedding_below_the_rnn_trains_as_in_the_tape_loop():
    # Its gradients are IndexedSlices, added up over chunks.
    steps = 6
    x = np.random.default_rng(15).integers(0, 5, size=(2 * B, steps))
    _, y = _data(2 * B, steps, seed=15)
    net = keras.Sequential(
        [
            keras.Input((steps,), dtype="int32"),
            keras.layers.Embedding(5, F),
            keras.layers.LSTM(3, return_sequences=True),
            keras.layers.Dense(OUT),
        ]
    )
    twin = _twin(net)
    model = keras_sg.TruncatedBPTTModel(net, truncation=2, method="bptt")
    model.compile(keras.optimizers.SGD(LR), "mse", run_eagerly=True)
    model.fit(x, y, batch_size=B, shuffle=False, verbose=0)
    _tape_bptt(twin, tf.constant(x), y, 2, batches=2)
    for a, b in zip(net.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_zero_synthesizer_makes_the_first_update_truncated_bptts():
    steps, t = 6, 2
    x, y = _data(B, steps, seed=6)
    net = _net(steps)
    twin = _twin(net)
    synth = keras_sg.DenseSynthesizer(hidden_layers=1, units=8, use_batch_norm=False)
    dni = keras_sg.TruncatedBPTTModel(
        net, truncation=t, method="dni", synthesizer=synth
    )
    bptt = keras_sg.TruncatedBPTTModel(twin, truncation=t, method="bptt")
    start = [w.copy() for w in net.get_weights()]
    for model in (dni, bptt):
        model.compile(keras.optimizers.SGD(LR), "mse", run_eagerly=True)
        model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    for a, b in zip(net.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-7)
    assert (
        max(np.abs(a - b).max() for a, b in zip(net.get_weights(), start, strict=True))
        > 1e-3
    )
    assert np.abs(synth.head.get_weights()[0]).max() > 1e-4  # the synthesizer learned


# ---------------------------------------------------------------- the state


def _numpy_lstm(x, kernel, recurrent, bias, h, c):
    """Keras's LSTM, step by step: gates i, f, c, o; sigmoid and tanh."""

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    outputs = []
    for step in range(x.shape[1]):
        z = x[:, step] @ kernel + h @ recurrent + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1), h, c


def test_state_is_carried_across_chunks_and_reset_at_each_sequence():
    steps, t = 6, 2
    net = _net(steps, "lstm")
    model = keras_sg.TruncatedBPTTModel(net, truncation=t, method="bptt")
    model.compile(keras.optimizers.SGD(LR), "mse")
    kernel, recurrent, bias, w, b = net.get_weights()
    for seed in (7, 8):  # a second batch starts from zeros, not from the first's end
        x, y = _data(B, steps, seed=seed)
        out = model.chunked_gradients(tf.constant(x), tf.constant(y))
        h = c = np.zeros((B, 3), "float32")
        for j in range(steps // t):
            seq, h, c = _numpy_lstm(
                x[:, j * t : (j + 1) * t], kernel, recurrent, bias, h, c
            )
            np.testing.assert_allclose(out["y_pred"][j], seq @ w + b, atol=1e-5)
            if j < steps // t - 1:
                np.testing.assert_allclose(
                    out["states"][j], np.concatenate([h, c], axis=-1), atol=1e-5
                )
        whole, _, _ = _numpy_lstm(x, kernel, recurrent, bias, *[np.zeros((B, 3))] * 2)
        np.testing.assert_allclose(
            model.predict(x, verbose=0), whole @ w + b, atol=1e-5
        )


@pytest.mark.parametrize("kind", ["lstm_gru", "simple", "stacked_cells"])
def test_chunks_compose_to_the_whole_network(kind):
    steps = 6
    net = _net(steps, kind)
    model = keras_sg.TruncatedBPTTModel(net, truncation=3, method="bptt")
    model.compile(keras.optimizers.SGD(LR), "mse")
    x, y = _data(B, steps, seed=9)
    out = model.chunked_gradients(tf.constant(x), tf.constant(y))
    chunked = np.concatenate(out["y_pred"], axis=1)
    np.testing.assert_allclose(chunked, net(x), atol=1e-6)
    assert out["states"][0].shape == (B, model.state_size)


# ------------------------------------------------------------------- saving


def test_save_load_round_trip_resumes(tmp_path):
    steps, t = 6, 2
    x, y = _data(2 * B, steps, seed=10)
    model = keras_sg.TruncatedBPTTModel(
        _net(steps),
        truncation=t,
        method="dni_aux",
        synthesizer=_random_synth(8, seed=11),
        aux_synthesizer=_random_synth(8, seed=12),
        sg_loss_weight=0.5,
        aux_weight=0.25,
    )
    model.compile(keras.optimizers.Adam(0.01), "mse", run_eagerly=True)
    model.fit(x, y, batch_size=B, verbose=0)
    path = tmp_path / "rnn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_sg.TruncatedBPTTModel)
    assert (loaded.method, loaded.truncation) == ("dni_aux", t)
    assert (loaded.sg_loss_weight, loaded.aux_weight) == (0.5, 0.25)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    for m in (model, loaded):
        m.fit(x, y, batch_size=B, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert int(loaded.optimizer.iterations) == 4


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "layers, match",
    [
        ([keras.layers.LSTM(3)], "return_sequences=True"),
        (
            [keras.layers.LSTM(3, return_sequences=True, go_backwards=True)],
            "go_backwards",
        ),
        (
            [keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True))],
            "holds the RNN layers",
        ),
        (
            [keras.layers.Masking(), keras.layers.LSTM(3, return_sequences=True)],
            "masks",
        ),
        ([keras.layers.Dense(3)], "at least one keras.layers.RNN"),
    ],
)
def test_networks_that_cannot_be_cut_in_time_are_refused(layers, match):
    with pytest.raises(ValueError, match=match):
        keras_sg.TruncatedBPTTModel(layers, truncation=2, method="bptt")


def test_bad_arguments_name_the_value():
    net = _net(4)
    with pytest.raises(ValueError, match="Received: truncation=0"):
        keras_sg.TruncatedBPTTModel(net, truncation=0, method="bptt")
    with pytest.raises(ValueError, match="Received: method='cdni'"):
        keras_sg.TruncatedBPTTModel(net, truncation=2, method="cdni")
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=f"Received: sg_scale={bad}"):
            keras_sg.TruncatedBPTTModel(net, truncation=2, method="bptt", sg_scale=bad)
    with pytest.raises(ValueError, match="Received: synthesizer=None"):
        keras_sg.TruncatedBPTTModel(net, truncation=2, method="dni")
    with pytest.raises(ValueError, match="Received: aux_synthesizer=None"):
        keras_sg.TruncatedBPTTModel(
            net, truncation=2, method="dni_aux", synthesizer=linear_synth()
        )
    with pytest.raises(ValueError, match="num_classes=3"):
        keras_sg.TruncatedBPTTModel(
            net, truncation=2, method="dni", synthesizer=linear_synth(num_classes=3)
        )
    with pytest.raises(ValueError, match="must return a gradient of the state"):
        keras_sg.TruncatedBPTTModel(
            net, truncation=2, method="dni", synthesizer=keras.layers.Dense(2)
        )
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with pytest.raises(ValueError, match="'float32' dtype policy only"):
            keras_sg.TruncatedBPTTModel(_net(4), truncation=2, method="bptt")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    inputs = keras.Input((4, F))
    functional = keras.Model(
        inputs, keras.layers.LSTM(2, return_sequences=True)(inputs)
    )
    with pytest.raises(ValueError, match="Received: network of type Functional"):
        keras_sg.TruncatedBPTTModel(functional, truncation=2, method="bptt")


def test_sequences_that_do_not_divide_into_chunks_are_refused():
    model = keras_sg.TruncatedBPTTModel(_net(5), truncation=2, method="bptt")
    model.compile("sgd", "mse", run_eagerly=True)
    x, y = _data(B, 5)
    with pytest.raises(ValueError, match="truncation=2. Received: sequences of 5"):
        model.fit(x, y, batch_size=B, verbose=0)
    model = keras_sg.TruncatedBPTTModel(_net(6), truncation=2, method="bptt")
    model.compile("sgd", "mse", run_eagerly=True)
    x, y = _data(B, 6)
    with pytest.raises(ValueError, match=r"one target per step.*Received: y of shape"):
        model.fit(x, y[:, :4], batch_size=B, verbose=0)
