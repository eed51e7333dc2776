"""The fully unlocked model: oracle inputs give DNI; the synthetic-input step
against GradientTape and, with inputs from lower cuts, against NumPy; fit's
logs (the composed network, the synthetic loss, the drift) against NumPy and
evaluate; evaluation on the composed network; saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_synth, mlp, weights_of

import keras_sg
from keras_sg.models import unlocked_steps

B, D, H, OUT, LR = 5, 3, 4, 2, 0.1
STEPS_PER_EPOCH = 4


class _Oracle(keras.layers.Layer):
    """Returns the true activation at cut k: the model's own stages below it.

    The stages are reached through a closure, so the oracle owns no weights
    and every step sees the stages' current ones.
    """

    def __init__(self, holder, k, **kwargs):
        super().__init__(**kwargs)
        self._holder = holder
        self._k = k

    def call(self, x, training=None):
        for stage in self._holder()[: self._k]:
            x = stage(x, training=training)
        return x

    def compute_output_spec(self, x):
        return keras.KerasTensor((x.shape[0], H))


def _synths(seed=7, num_classes=None, cuts=2):
    synths = [linear_synth(num_classes=num_classes) for _ in range(cuts)]
    rng = np.random.default_rng(seed)
    width = H + (num_classes or 0)
    for synth in synths:
        synth.build((None, H))
        synth.head.set_weights(
            [rng.normal(size=(width, H)) * 0.5, rng.normal(size=(H,)) * 0.3]
        )
    return synths


def _input_synths(seed=3, scale=1.0, sources=(0, 0)):
    synths = [
        keras_sg.DenseInputSynthesizer(
            target_shape=(H,), hidden_layers=0, use_batch_norm=False
        )
        for _ in sources
    ]
    rng = np.random.default_rng(seed)
    for synth, j in zip(synths, sources, strict=True):
        width = D if j == 0 else H
        synth.build((None, width))
        synth.head.set_weights(
            [rng.normal(size=(width, H)) * scale, rng.normal(size=(H,)) * 0.1]
        )
    return synths


def _data(n=STEPS_PER_EPOCH * B, seed=0, classes=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    if classes:
        return x, rng.integers(0, classes, size=n)
    return x, rng.normal(size=(n, OUT)).astype("float32")


def _loss(classes):
    if classes:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return "mse"


@pytest.mark.parametrize(
    "method, optimizer",
    [
        ("dni", lambda: keras.optimizers.SGD(LR)),
        ("dni", lambda: keras.optimizers.Adam(0.05)),
        ("cdni", lambda: keras.optimizers.SGD(LR)),
    ],
    ids=["dni-sgd", "dni-adam", "cdni-sgd"],
)
def test_oracle_input_synthesizers_give_dni_updates(method, optimizer):
    classes = OUT if method == "cdni" else None
    net = mlp([H, H], D, activation="tanh", out_units=OUT)
    twin = keras.models.clone_model(net)
    twin.set_weights(net.get_weights())
    holder = {}
    oracles = [_Oracle(lambda: holder["model"].stages, k) for k in (1, 2)]
    model = keras_sg.UnlockedModel(
        net,
        synthesizers=_synths(num_classes=classes),
        input_synthesizers=oracles,
        method=method,
    )
    holder["model"] = model
    reference = keras_sg.DecoupledModel(
        twin, synthesizers=_synths(num_classes=classes), method=method
    )
    for m in (model, reference):
        m.compile(optimizer=optimizer(), loss=_loss(classes))
    x, y = _data(classes=classes)
    start = weights_of(model.stages)

    h_a = model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    h_b = reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)

    moved = weights_of(model.stages)
    assert max(np.abs(a - b).max() for a, b in zip(moved, start, strict=True)) > 1e-2
    for a, b in zip(moved, weights_of(reference.stages), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    for a, b in zip(
        weights_of(model.synthesizers), weights_of(reference.synthesizers), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    for key in ("loss", "cut_1_sg_loss", "cut_2_sg_loss"):
        np.testing.assert_allclose(h_a.history[key], h_b.history[key], rtol=1e-6)
    for key in ("cut_1_input_loss", "cut_2_input_loss"):
        # Zero but for the last bit: the oracle's forward pass is a separate
        # (identically computed, differently fused) copy of the stages'.
        np.testing.assert_array_less(h_a.history[key], 1e-12)


def _model(input_scale=1.0, **kwargs):
    net = mlp([H, H], D, activation="tanh", out_units=OUT)
    model = keras_sg.UnlockedModel(
        net,
        synthesizers=_synths(),
        input_synthesizers=_input_synths(scale=input_scale),
        **kwargs,
    )
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    return model


def _reference_step(model, x, y):
    """One SGD step of every part, by GradientTape on the weights before it.

    Returns the expected new weights (stages, gradient synthesizers, input
    synthesizers) and the expected input-synthesizer losses.
    """
    stages, synths, inputs = model.stages, model.synthesizers, model.input_synthesizers
    x = tf.constant(x)
    n = float(x.shape[0])
    h_hat = [synth(x) for synth in inputs]  # synthetic inputs of stages 1 and 2
    stage_in = [x, *h_hat]
    new = {}
    outputs, targets = [], [None, None]
    for k in range(2):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(stage_in[k])
            out = stages[k](stage_in[k])
            g = synths[k](out)  # per-example synthetic gradient at cut k+1
            surrogate = tf.reduce_sum(tf.stop_gradient(g) / n * out)
        grads = tape.gradient(surrogate, stages[k].trainable_variables)
        new[id(stages[k])] = [
            v.numpy() - LR * gr.numpy()
            for v, gr in zip(stages[k].trainable_variables, grads, strict=True)
        ]
        if k == 1:
            targets[0] = tape.gradient(surrogate, stage_in[1]) * n
        outputs.append((out, g))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(stage_in[2])
        loss = tf.reduce_mean(tf.square(stages[2](stage_in[2]) - y))
    grads = tape.gradient(loss, stages[2].trainable_variables)
    new[id(stages[2])] = [
        v.numpy() - LR * gr.numpy()
        for v, gr in zip(stages[2].trainable_variables, grads, strict=True)
    ]
    targets[1] = tape.gradient(loss, stage_in[2]) * n
    for k in range(2):
        with tf.GradientTape() as tape:
            sg_loss = tf.reduce_mean(tf.square(synths[k](outputs[k][0]) - targets[k]))
        grads = tape.gradient(sg_loss, synths[k].trainable_variables)
        new[id(synths[k])] = [
            v.numpy() - LR * gr.numpy()
            for v, gr in zip(synths[k].trainable_variables, grads, strict=True)
        ]
    input_losses = []
    for k in range(2):
        true_h = outputs[k][0]  # what stage k produced on its own input
        with tf.GradientTape() as tape:
            input_loss = tf.reduce_mean(tf.square(inputs[k](x) - true_h))
        grads = tape.gradient(input_loss, inputs[k].trainable_variables)
        new[id(inputs[k])] = [
            v.numpy() - LR * gr.numpy()
            for v, gr in zip(inputs[k].trainable_variables, grads, strict=True)
        ]
        input_losses.append(float(input_loss))
    return new, input_losses


def test_step_matches_gradient_tape_over_several_steps():
    model = _model()
    x, y = _data()
    parts = [*model.stages, *model.synthesizers, *model.input_synthesizers]
    moved = 0.0
    for t in range(STEPS_PER_EPOCH):
        xb, yb = x[t * B : (t + 1) * B], y[t * B : (t + 1) * B]
        expected, input_losses = _reference_step(model, xb, yb)
        for tracker in model.input_loss_trackers:
            tracker.reset_state()
        logs = model.train_on_batch(xb, yb, return_dict=True)
        for part in parts:
            got = [v.numpy() for v in part.trainable_variables]
            for a, b in zip(got, expected[id(part)], strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            [logs["cut_1_input_loss"], logs["cut_2_input_loss"]],
            input_losses,
            rtol=1e-5,
        )
        assert min(input_losses) > 1e-2
        moved = max(moved, *(np.abs(np.array(w)).max() for w in weights_of(parts)))
    assert moved > 0


def test_evaluate_and_predict_run_the_composed_network():
    model = _model()
    x, y = _data()
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    h = tf.constant(x)
    for stage in model.stages:
        h = stage(h)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), h.numpy(), rtol=1e-5, atol=1e-6
    )
    logs = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    assert set(logs) == {"loss"}
    np.testing.assert_allclose(logs["loss"], np.mean((h.numpy() - y) ** 2), rtol=1e-5)


# ------------------------------------------------------ fit's logs, drift


C = 3  # classes of the classification tests


def _classifier(seed=11):
    """A tanh MLP classifier (logits) with linear synthesizers, as NumPy
    reads it: weights made from `seed`, so two calls give the same model."""
    keras.utils.set_random_seed(seed)
    net = mlp([H, H], D, activation="tanh", out_units=C)
    model = keras_sg.UnlockedModel(
        net, synthesizers=_synths(), input_synthesizers=_input_synths()
    )
    model.compile(
        optimizer=keras.optimizers.SGD(LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _cross_entropy(logits, y):
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean()


def _numpy_logs(model, x, y):
    """What fit should log for one batch, from the weights before the step."""
    (w0, b0), (w1, b1), (w2, b2) = [s.get_weights() for s in model.stages]
    h1 = np.tanh(x @ w0 + b0)
    h2 = np.tanh(h1 @ w1 + b1)
    logits = h2 @ w2 + b2
    h_hat = [
        x @ s.head.kernel.numpy() + s.head.bias.numpy()
        for s in model.input_synthesizers
    ]
    drift = [
        np.sum((hh - h) ** 2) / np.sum(h**2)
        for hh, h in zip(h_hat, (h1, h2), strict=True)
    ]
    synthetic_logits = h_hat[1] @ w2 + b2
    return {
        "loss": _cross_entropy(logits, y),
        "accuracy": np.mean(logits.argmax(axis=1) == y),
        "synthetic_loss": _cross_entropy(synthetic_logits, y),
        "synthetic_accuracy": np.mean(synthetic_logits.argmax(axis=1) == y),
        "cut_1_input_drift": drift[0],
        "cut_2_input_drift": drift[1],
    }


def test_fit_logs_the_composed_network_and_drift_like_numpy_over_steps():
    """Step by step, fit's `loss` and `accuracy` are the composed network's
    on the weights before the step, `synthetic_loss` the top stage's on its
    synthetic input and each drift the relative squared error, all from
    NumPy; an epoch of `fit` logs their means."""
    model, twin = _classifier(), _classifier()
    for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x, y = _data(n=STEPS_PER_EPOCH * 8, classes=C)
    keys = (
        "loss",
        "accuracy",
        "synthetic_loss",
        "cut_1_input_drift",
        "cut_2_input_drift",
    )
    expected = []
    for t in range(STEPS_PER_EPOCH):
        xb, yb = x[t * 8 : (t + 1) * 8], y[t * 8 : (t + 1) * 8]
        want = _numpy_logs(model, xb, yb)
        model.reset_metrics()
        logs = model.train_on_batch(xb, yb, return_dict=True)
        for key in keys:
            np.testing.assert_allclose(logs[key], want[key], rtol=1e-5, err_msg=key)
        expected.append(want)
    # The synthetic path gives other numbers: the test tells the two apart.
    assert min(abs(e["loss"] - e["synthetic_loss"]) for e in expected) > 0.05
    assert any(e["accuracy"] != e["synthetic_accuracy"] for e in expected)
    assert min(e["cut_2_input_drift"] for e in expected) > 0.1

    history = twin.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for key in keys:
        np.testing.assert_allclose(
            history.history[key][0],
            np.mean([e[key] for e in expected]),
            rtol=1e-5,
            err_msg=key,
        )
    for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_fit_loss_and_metrics_equal_evaluate_before_each_step():
    """With batch normalisation, dropout and a weight penalty, fit's `loss`
    and `accuracy` for a batch are what `evaluate` reports on it just before
    the step: inference mode, moving statistics and weights not yet updated."""
    keras.utils.set_random_seed(3)
    net = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(H, kernel_regularizer=keras.regularizers.L2(0.1)),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.Activation("relu"),
            keras_sg.Interface(name="cut_1"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(C),
        ]
    )
    model = keras_sg.UnlockedModel(
        net,
        synthesizers=[linear_synth()],
        input_synthesizers=[
            keras_sg.DenseInputSynthesizer(target_shape=(H,), hidden_layers=1, units=8)
        ],
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = _data(n=4 * 16, classes=C)
    moving = model.stages[0].layers[1].moving_mean
    gaps = []
    for t in range(4):
        xb, yb = x[t * 16 : (t + 1) * 16], y[t * 16 : (t + 1) * 16]
        before = moving.numpy().copy()
        want = model.evaluate(xb, yb, verbose=0, return_dict=True)
        model.reset_metrics()
        logs = model.train_on_batch(xb, yb, return_dict=True)
        assert np.abs(moving.numpy() - before).max() > 1e-3  # the step moved it
        np.testing.assert_allclose(logs["loss"], want["loss"], rtol=1e-5)
        np.testing.assert_allclose(logs["accuracy"], want["accuracy"], rtol=1e-6)
        gaps.append(abs(logs["synthetic_loss"] - logs["loss"]))
    assert min(gaps) > 0.05


def test_input_drift_is_the_relative_squared_error_of_numpy():
    rng = np.random.default_rng(4)
    h = rng.normal(size=(6, 2, 3)).astype("float32")
    h_hat = h + 0.3 * rng.normal(size=h.shape).astype("float32")
    np.testing.assert_allclose(
        unlocked_steps.input_drift(h_hat, h),
        np.sum((h_hat - h) ** 2) / np.sum(h**2),
        rtol=1e-6,
    )
    assert float(unlocked_steps.input_drift(h, h)) == 0.0
    # A zero activation shows any error as a huge drift, never as 0.
    assert float(unlocked_steps.input_drift(h, np.zeros_like(h))) > 1e20
    with pytest.raises(ValueError, match=r"synthetic shape \(6, 2, 3\)"):
        unlocked_steps.input_drift(h, h[:, :1])


def test_evaluate_logs_neither_synthetic_loss_nor_drift():
    model = _classifier()
    x, y = _data(classes=C)
    history = model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert set(history.history) == {
        "loss",
        "accuracy",
        "synthetic_loss",
        "cut_1_sg_loss",
        "cut_2_sg_loss",
        "cut_1_input_loss",
        "cut_2_input_loss",
        "cut_1_input_drift",
        "cut_2_input_drift",
    }
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}


# ------------------------------------------------- sources at lower cuts


def _numpy_step(parts, sources, x, y):
    """One SGD step of the unlocked DNI model with tanh stages, a linear top,
    linear synthesizers and linear input synthesizers, in NumPy.

    `parts` holds lists of [kernel, bias]: stages, gradient synthesizers and
    input synthesizers. Returns the new parts and the input losses.
    """
    stages, synths, inputs = parts
    cuts, n = len(synths), x.shape[0]
    acts, ins, srcs = [], [x], []
    for k in range(cuts + 1):
        if k > 0:
            j = sources[k - 1]
            src = x if j == 0 else acts[j - 1]  # what stage j-1 made, in step
            srcs.append(src)
            ins.append(src @ inputs[k - 1][0] + inputs[k - 1][1])
        if k < cuts:
            acts.append(np.tanh(ins[k] @ stages[k][0] + stages[k][1]))
    pred = ins[cuts] @ stages[cuts][0] + stages[cuts][1]
    d_pred = 2 * (pred - y) / pred.size
    new_stages = [None] * (cuts + 1)
    new_stages[cuts] = _sgd(stages[cuts], ins[cuts], d_pred)
    g = [a @ s[0] + s[1] for a, s in zip(acts, synths, strict=True)]
    targets = [None] * cuts
    targets[-1] = n * d_pred @ stages[cuts][0].T
    for k in reversed(range(cuts)):
        d_pre = g[k] / n * (1 - acts[k] ** 2)
        new_stages[k] = _sgd(stages[k], ins[k], d_pre)
        if k > 0:
            targets[k - 1] = n * d_pre @ stages[k][0].T
    new_synths = [
        _sgd(synths[k], acts[k], 2 * (g[k] - targets[k]) / g[k].size)
        for k in range(cuts)
    ]
    new_inputs, input_losses = [], []
    for k in range(cuts):
        error = ins[k + 1] - acts[k]
        new_inputs.append(_sgd(inputs[k], srcs[k], 2 * error / error.size))
        input_losses.append(np.mean(error**2))
    return (new_stages, new_synths, new_inputs), input_losses


def _sgd(kernel_bias, inputs, d_out):
    kernel, bias = kernel_bias
    return [kernel - LR * inputs.T @ d_out, bias - LR * d_out.sum(axis=0)]


@pytest.mark.parametrize("sources", [[0, 0, 2], [0, 1, 1]])
def test_inputs_from_lower_cuts_match_numpy_over_several_steps(sources):
    """Three cuts; each input synthesizer reads x or the activation at a
    lower cut as the stage below produced it in the step (on its own
    synthetic input), and every part moves as NumPy says."""
    net = mlp([H, H, H], D, activation="tanh", out_units=OUT)
    model = keras_sg.UnlockedModel(
        net,
        synthesizers=_synths(cuts=3),
        input_synthesizers=_input_synths(scale=0.7, sources=sources),
        input_sources=sources,
    )
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    assert model.input_sources == sources
    x, y = _data()
    groups = (model.stages, model.synthesizers, model.input_synthesizers)
    parts = tuple(
        [[w.astype("float64") for w in layer.get_weights()] for layer in group]
        for group in groups
    )
    start = weights_of([*model.stages, *model.input_synthesizers])
    for t in range(STEPS_PER_EPOCH):
        xb, yb = x[t * B : (t + 1) * B], y[t * B : (t + 1) * B]
        parts, input_losses = _numpy_step(parts, sources, xb, yb)
        model.reset_metrics()
        logs = model.train_on_batch(xb, yb, return_dict=True)
        for group, expected in zip(groups, parts, strict=True):
            for layer, want in zip(group, expected, strict=True):
                for got, w in zip(layer.get_weights(), want, strict=True):
                    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            [logs[f"cut_{k}_input_loss"] for k in (1, 2, 3)], input_losses, rtol=1e-5
        )
    moved = weights_of([*model.stages, *model.input_synthesizers])
    assert min(np.abs(a - b).max() for a, b in zip(moved, start, strict=True)) > 1e-3


def test_keras_round_trip_keeps_input_synthesizers_and_resumes(tmp_path):
    """Saved and loaded after an epoch of Adam, with an input synthesizer
    reading cut 1: same predictions, and the next epoch moves every part as
    in the original, with the same logs."""
    net = mlp([H, H], D, activation="tanh", out_units=OUT)
    model = keras_sg.UnlockedModel(
        net,
        synthesizers=_synths(),
        input_synthesizers=_input_synths(sources=(0, 1)),
        input_sources=[0, 1],
    )
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    x, y = _data()
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "unlocked.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    def parts(m):
        return [*m.stages, *m.synthesizers, *m.input_synthesizers]

    assert isinstance(loaded, keras_sg.UnlockedModel)
    assert loaded.input_sources == [0, 1]
    assert [type(s) for s in loaded.input_synthesizers] == [
        keras_sg.DenseInputSynthesizer
    ] * 2
    assert int(loaded.optimizer.iterations) == STEPS_PER_EPOCH
    for a, b in zip(weights_of(parts(model)), weights_of(parts(loaded)), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    h_a = model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    h_b = loaded.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    assert set(h_a.history) == set(h_b.history)
    for key in h_a.history:
        np.testing.assert_allclose(h_a.history[key], h_b.history[key], rtol=1e-6)
    for a, b in zip(weights_of(parts(model)), weights_of(parts(loaded)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _bad_shape():
    return [
        keras_sg.DenseInputSynthesizer(target_shape=(H + 1,), hidden_layers=0),
        keras_sg.DenseInputSynthesizer(target_shape=(H,), hidden_layers=0),
    ]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"input_synthesizers": None}, ValueError, "input_synthesizers=None"),
        (
            {"input_synthesizers": lambda: _input_synths()[:1]},
            ValueError,
            "Received: 1 input synthesizers",
        ),
        (
            {"input_synthesizers": lambda: [_input_synths()[0], "dense"]},
            TypeError,
            "Received: str",
        ),
        ({"input_synthesizers": _bad_shape}, ValueError, r"output shape \(None, 5\)"),
        ({"method": "backprop"}, ValueError, "method='backprop'"),
        ({"sg_target": "backprop"}, ValueError, "sg_target='backprop'"),
        ({"input_sources": [0]}, ValueError, r"input_sources=\[0\]"),
        ({"input_sources": "01"}, ValueError, "input_sources='01'"),
        ({"input_sources": [0, 2]}, ValueError, r"1 <= j < 2.*input_sources\[1\]=2"),
        ({"input_sources": [1, 0]}, ValueError, r"input_sources\[0\]=1"),
        ({"input_sources": [0, -1]}, ValueError, r"input_sources\[1\]=-1"),
        ({"input_sources": [0, True]}, ValueError, r"input_sources\[1\]=True"),
        ({"input_sources": [0, 1.0]}, ValueError, r"input_sources\[1\]=1.0"),
        (
            {"input_sources": [0, 1]},  # the second reads x's shape, not h_1's
            ValueError,
            r"'cut_2' \(input source 1, of shape \(None, 4\)\).*built for "
            r"sources of shape \(None, 3\)",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    kwargs = {k: v() if callable(v) else v for k, v in kwargs.items()}
    kwargs.setdefault("input_synthesizers", _input_synths())
    net = mlp([H, H], D, out_units=OUT)
    with pytest.raises(error, match=message):
        keras_sg.UnlockedModel(net, synthesizers=_synths(), **kwargs)


def test_one_layer_at_two_cuts_is_refused():
    synth = _input_synths()[0]
    net = mlp([H, H], D, out_units=OUT)
    with pytest.raises(ValueError, match="used twice"):
        keras_sg.UnlockedModel(
            net, synthesizers=_synths(), input_synthesizers=[synth, synth]
        )


def test_mixed_float16_updates_match_float32():
    """Under mixed_float16 (loss-scaled), the updates of every part agree with
    float32's within 8 float16 unit roundoffs of each variable's update.

    Input synthesizers start small: with weights of unit scale their float16
    kernel gradients overflow at the first loss scale (32768), and Keras then
    skips the step (as it should), which float32 does not.
    """
    x, y = _data()
    runs = []
    for policy in ("float32", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(5)
            model = _model(input_scale=0.3)
            parts = [*model.stages, *model.synthesizers, *model.input_synthesizers]
            start = weights_of(parts)
            model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
            runs.append((start, weights_of(parts), model.optimizer))
        finally:
            keras.mixed_precision.set_global_policy("float32")
    (start_a, end_a, _), (start_b, end_b, optimizer) = runs
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.dynamic_scale) == 2.0**15  # no step was skipped
    for s_a, s_b in zip(start_a, start_b, strict=True):
        np.testing.assert_array_equal(s_a, s_b)
    for s, a, b in zip(start_a, end_a, end_b, strict=True):
        update = np.abs(a - s).max()
        assert update > 1e-4
        np.testing.assert_allclose(b, a, rtol=0, atol=8 * 2.0**-11 * update)


def test_an_input_synthesizer_in_another_dtype_is_refused():
    synths = _input_synths()
    synths[1] = keras_sg.DenseInputSynthesizer(
        target_shape=(H,), hidden_layers=0, dtype="mixed_float16"
    )
    net = mlp([H, H], D, out_units=OUT)
    with pytest.raises(ValueError, match="dtype policy 'mixed_float16'"):
        keras_sg.UnlockedModel(net, synthesizers=_synths(), input_synthesizers=synths)
