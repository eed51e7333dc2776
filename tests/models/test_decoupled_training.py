"""What each training method updates, against backprop and against itself."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import classification_data, linear_synth, mlp, weights_of

import keras_sg

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class OracleSynthesizer(keras_sg.Synthesizer):
    """Returns the true per-example gradient: runs the stages above the cut.

    It reads the labels as its context, so it runs under method='cdni'.
    """

    def __init__(self, above, loss_fn, num_classes):
        super().__init__(num_classes=num_classes)
        # A closure, so Keras does not track the stages as the oracle's own.
        self.run_above = lambda h, training: _run(above, h, training)
        self.loss_fn = loss_fn

    def build(self, inputs_shape):
        pass

    def call(self, inputs, context=None, training=None):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = self.loss_fn(context, self.run_above(inputs, training))
        batch = tf.cast(tf.shape(inputs)[0], inputs.dtype)
        return tf.stop_gradient(tape.gradient(loss, inputs)) * batch


def _run(stages, h, training):
    for stage in stages:
        h = stage(h, training=training)
    return h


def _model(method, net=None, synths=None, **kwargs):
    net = net or mlp([8, 8], 6, out_units=3)
    model = keras_sg.DecoupledModel(net, synthesizers=synths, method=method, **kwargs)
    return model


def _stage_weights(model):
    return [weights_of([stage]) for stage in model.stages]


# Adam with Keras's epsilon (1e-7) moves a weight whose gradient is ~1e-7
# by about the learning rate on the gradient's sign alone, so float32
# round-off in the oracle's second backward pass moved weights by 4e-5 on
# the CI machine. With epsilon 1e-3 an update moves by at most lr / epsilon
# = 1 per unit of gradient: round-off stays round-off.
OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.01),
    "adam": lambda: keras.optimizers.Adam(1e-3, epsilon=1e-3),
}


@contextlib.contextmanager
def _without_dependency_optimizer():
    """Grappler's dependency optimizer off for the functions traced inside.

    With it on, the oracles' second reads of the stages above sometimes ran
    after the step's optimizer had written those stages (the graph before
    Grappler orders every read before the writes): stage 0 moved by up to
    1e-5 in the first step of SGD, in 11 of 24 runs of `train_on_batch` on
    a loaded machine, and in 0 of 11 with `dependency_optimization` off.
    Real synthesizers read only their own weights, and in 50 runs of 16
    steps of linear cDNI (SGD and Adam) every run was identical.
    """
    saved = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"dependency_optimization": False})
    try:
        yield
    finally:
        restored = saved.get("dependency_optimization", True)
        tf.config.optimizer.set_experimental_options(
            {"dependency_optimization": restored}
        )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_oracle_synthesizer_makes_dni_equal_backprop(optimizer):
    x, y = classification_data()
    net = mlp([8, 8], 6, out_units=3)
    initial = net.get_weights()
    reference = _model("backprop", net)
    reference.compile(optimizer=OPTIMIZERS[optimizer](), loss=LOSS)
    reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    expected = _stage_weights(reference)

    net.set_weights(initial)
    stages = keras_sg.split_stages(net)
    oracles = [
        OracleSynthesizer(stages[1:], LOSS, 3),
        OracleSynthesizer(stages[2:], LOSS, 3),
    ]
    model = keras_sg.DecoupledModel(stages, synthesizers=oracles, method="cdni")
    model.compile(optimizer=OPTIMIZERS[optimizer](), loss=LOSS)
    with _without_dependency_optimizer():
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    # The synthetic gradient scaled by 1.01 inside DecoupledModel moves the
    # weights by 7.7e-5 (SGD) and 1.8e-5 (Adam): both fail.
    for got, want in zip(_stage_weights(model), expected, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert np.abs(expected[0][0] - initial[0]).max() > 1e-3  # it did train


def test_backprop_method_equals_plain_keras_fit():
    x, y = classification_data(n=96)
    net = mlp([8, 8], 6, out_units=3)
    plain = keras.models.clone_model(net)
    plain.set_weights(net.get_weights())
    plain.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    h_plain = plain.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)

    model = _model("backprop", net)
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    h_model = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
    for a, b in zip(net.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(
        h_model.history["loss"], h_plain.history["loss"], rtol=1e-5
    )
    np.testing.assert_allclose(
        h_model.history["accuracy"], h_plain.history["accuracy"], rtol=1e-6
    )
    assert "cut_1_sg_loss" not in h_model.history


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_zero_synthesizers_freeze_lower_stages_on_the_first_step(optimizer):
    x, y = classification_data(n=16)
    model = _model("dni", synths=[linear_synth(), linear_synth()])
    model.compile(optimizer=optimizer, loss=LOSS)
    synthetic, _ = model.cut_gradients(x, y)
    for g in synthetic:
        assert np.all(np.asarray(g) == 0.0)
    before = _stage_weights(model)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after = _stage_weights(model)
    for k in (0, 1):
        for a, b in zip(after[k], before[k], strict=True):
            np.testing.assert_array_equal(a, b)
    assert (
        max(np.abs(a - b).max() for a, b in zip(after[2], before[2], strict=True))
        > 1e-4
    )
    # The synthesizers learnt from their first target, so the second step moves
    # the stage just below the top.
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert (
        max(
            np.abs(a - b).max()
            for a, b in zip(_stage_weights(model)[1], before[1], strict=True)
        )
        > 0
    )


def _nonzero_synths(model, seed=0):
    rng = np.random.default_rng(seed)
    for synth in model.synthesizers:
        kernel, bias = synth.head.get_weights()
        synth.head.set_weights(
            [rng.normal(size=kernel.shape), rng.normal(size=bias.shape)]
        )


def test_no_gradient_crosses_a_cut():
    """Changing the loss above the cuts leaves the stages below unchanged."""
    x, y = classification_data(n=32)
    net = mlp([8, 8], 6, out_units=3)
    initial = net.get_weights()
    results = {}
    for method in ("dni", "backprop"):
        for loss in ("ce", "squared_hinge"):
            net.set_weights(initial)
            model = _model(method, net, synths=[linear_synth(), linear_synth()])
            _nonzero_synths(model)
            loss_fn = LOSS if loss == "ce" else keras.losses.SquaredHinge()
            y_fit = y if loss == "ce" else keras.utils.to_categorical(y, 3)
            model.compile(optimizer="sgd", loss=loss_fn)
            model.fit(x, y_fit, batch_size=32, epochs=1, verbose=0)
            results[method, loss] = _stage_weights(model)
    for k in (0, 1):  # below the cuts: the same update whatever the loss
        for a, b in zip(
            results["dni", "ce"][k], results["dni", "squared_hinge"][k], strict=True
        ):
            np.testing.assert_array_equal(a, b)
    # Control: the top stage and every backprop stage do see the loss.
    top_diff = np.abs(
        results["dni", "ce"][2][0] - results["dni", "squared_hinge"][2][0]
    )
    assert top_diff.max() > 1e-4
    bp_diff = np.abs(
        results["backprop", "ce"][0][0] - results["backprop", "squared_hinge"][0][0]
    )
    assert bp_diff.max() > 1e-6


def test_no_bprop_trains_only_the_top_stage():
    x, y = classification_data(n=64)
    model = _model("no_bprop")
    before = _stage_weights(model)
    model.compile(optimizer="adam", loss=LOSS)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    after = _stage_weights(model)
    for k in (0, 1):
        for a, b in zip(after[k], before[k], strict=True):
            np.testing.assert_array_equal(a, b)
    assert np.abs(after[2][0] - before[2][0]).max() > 1e-3
    assert model.optimizer.iterations.numpy() == 8


def test_one_optimizer_update_per_step_and_schedules_count_steps():
    x, y = classification_data(n=64)
    schedule = keras.optimizers.schedules.ExponentialDecay(
        0.1, decay_steps=1, decay_rate=0.5
    )
    model = _model(
        "cdni", synths=[linear_synth(num_classes=3), linear_synth(num_classes=3)]
    )
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss=LOSS)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert model.optimizer.iterations.numpy() == 8
    np.testing.assert_allclose(
        model.optimizer.learning_rate.numpy(), 0.1 * 0.5**8, rtol=1e-6
    )


def test_logs_hold_each_interface_sg_loss_and_evaluate_runs_forward():
    x, y = classification_data(n=64)
    model = _model("dni", synths=[linear_synth(), linear_synth()])
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert set(history.history) == {
        "loss",
        "accuracy",
        "cut_1_sg_loss",
        "cut_2_sg_loss",
    }
    assert history.history["cut_2_sg_loss"][0] > 0
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}
    logits = model.predict(x, verbose=0)
    h = x
    for stage in model.stages:
        h = stage(h, training=False)
    np.testing.assert_allclose(logits, h, rtol=1e-5, atol=1e-6)
    expected = LOSS(y, logits).numpy()
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y))


def test_sg_loss_weight_zero_keeps_synthesizers_fixed():
    x, y = classification_data(n=32)
    model = _model("dni", synths=[linear_synth(), linear_synth()], sg_loss_weight=0.0)
    model.compile(optimizer="sgd", loss=LOSS)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for synth in model.synthesizers:
        assert not np.any(synth.head.get_weights()[0])


def test_functional_network_is_cut_at_its_interfaces():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    h = keras_sg.Interface(name="low")(h)
    h = keras.layers.Dense(8, activation="relu")(h)
    h = keras_sg.Interface(name="high")(h)
    outputs = keras.layers.Dense(3)(h)
    net = keras.Model(inputs, outputs)
    model = _model("dni", net, synths=[linear_synth(), linear_synth()])
    assert model.cut_names == ["low", "high"]
    x, y = classification_data(n=32)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), net.predict(x, verbose=0), rtol=1e-6
    )
    model.compile(optimizer="adam", loss=LOSS)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert {"low_sg_loss", "high_sg_loss"} <= set(history.history)


def test_conv_network_with_cdni_trains():
    """Smoke test of a CNN with conv synthesizers conditioned on labels."""
    net = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras_sg.Interface(name="conv_cut"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    synth = keras_sg.ConvSynthesizer(
        hidden_layers=1, filters=4, kernel_size=3, num_classes=3
    )
    model = keras_sg.DecoupledModel(net, synthesizers=[synth], method="cdni")
    model.compile(optimizer="adam", loss=LOSS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, size=32)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["conv_cut_sg_loss"]))
    assert history.history["conv_cut_sg_loss"][-1] > 0


def test_xla_compiled_step_matches_the_graph_step():
    x, y = classification_data(n=64)
    net = mlp([8, 8], 6, out_units=3)
    initial = net.get_weights()
    results = []
    for jit in (False, True):
        net.set_weights(initial)
        model = _model(
            "cdni", net, synths=[linear_synth(num_classes=3) for _ in range(2)]
        )
        _nonzero_synths(model)
        model.compile(optimizer="adam", loss=LOSS, jit_compile=jit)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append(model.get_weights())
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
