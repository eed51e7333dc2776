"""Mixed precision: every model class trains as Keras does under a mixed policy.

Under `"mixed_float16"` Keras's `compile` wraps the optimizer in a
`LossScaleOptimizer`, which divides the gradients it receives by its loss
scale (2**15 at first). The losses must therefore be scaled on every tape the
gradients come from: unscaled, updates are 32768 times too small.

Tolerances. Where the computation is the one plain Keras runs (backprop in
`DecoupledModel`), the weights agree to the last bit; the tests allow 1e-3 of
the largest update, about two float16 roundings (unit roundoff 2**-11 = 4.9e-4).
Where the float16 computation differs from the reference (micro-batches summed
separately, or a float32 run), the tests allow 8 unit roundoffs of the policy's
compute dtype relative to each variable's largest update: 3.9e-3 for float16,
3.1e-2 for bfloat16 (unit roundoff 2**-8). Over 8 SGD steps the measured
differences are at most 1.5e-3 (float16) and 7e-3 (bfloat16). A loss that is
not scaled, or scaled twice, moves the updates by a factor of 2 or more.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import classification_data

import keras_sg
from keras_sg.models import steps

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
POLICIES = ["mixed_float16", "mixed_bfloat16"]
COMPUTE = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
UNIT_ROUNDOFF = {"mixed_float16": 2.0**-11, "mixed_bfloat16": 2.0**-8}


@pytest.fixture
def set_policy():
    """Sets the global dtype policy; float32 again after the test, whatever happens."""
    try:
        yield keras.mixed_precision.set_global_policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _net(interfaces=True):
    """Two tanh layers (the lower one L2-regularized) and a linear top."""
    layers = [keras.Input((6,))]
    for i in range(2):
        regularizer = keras.regularizers.L2(0.05) if i == 0 else None
        layers.append(
            keras.layers.Dense(
                16, activation="tanh", kernel_regularizer=regularizer, name=f"d{i}"
            )
        )
        if interfaces:
            layers.append(keras_sg.Interface(name=f"cut_{i + 1}"))
    layers.append(keras.layers.Dense(3, name="top"))
    return keras.Sequential(layers)


def _synths(method, hidden_layers=0):
    classes = 3 if method == "cdni" else None
    return [
        keras_sg.DenseSynthesizer(
            hidden_layers=hidden_layers,
            units=8,
            use_batch_norm=hidden_layers > 0,
            num_classes=classes,
        )
        for _ in range(2)
    ]


def _optimizer(name):
    return keras.optimizers.SGD(0.1) if name == "sgd" else keras.optimizers.Adam(0.01)


def _fit(model, optimizer, epochs=2):
    """8 steps: 64 examples in batches of 16, in order."""
    x, y = classification_data(n=64)
    model.compile(optimizer=optimizer, loss=LOSS)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model


def _assert_updates_close(weights, reference, initial, tolerance):
    """Each variable's update within `tolerance` of the reference's largest update."""
    for w, r, w0 in zip(weights, reference, initial, strict=True):
        update = np.abs(r - w0).max()
        assert update > 1e-3  # every variable moved: the comparison means something
        np.testing.assert_allclose(w - w0, r - w0, rtol=0, atol=tolerance * update)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("policy", POLICIES)
def test_backprop_matches_plain_keras_fit(set_policy, policy, optimizer):
    """`method="backprop"` is plain Keras's mixed-precision fit, update for update."""
    initial = _net(interfaces=False).get_weights()  # float32, the shared start
    set_policy(policy)
    plain = _net(interfaces=False)
    plain.set_weights(initial)
    _fit(plain, _optimizer(optimizer))
    net = _net()
    net.set_weights(initial)
    model = _fit(keras_sg.DecoupledModel(net, method="backprop"), _optimizer(optimizer))

    assert net.layers[0].compute_dtype == COMPUTE[policy]
    scaled = policy == "mixed_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == scaled
    if scaled:  # no step skipped: every update is in the comparison
        assert model.optimizer.dynamic_scale.numpy() == 2.0**15
    _assert_updates_close(model.get_weights(), plain.get_weights(), initial, 1e-3)


@pytest.mark.parametrize("policy", POLICIES)
def test_gpipe_matches_plain_keras_fit(set_policy, policy):
    """GPipe's accumulated micro-batch gradients, scaled, give Keras's update.

    SGD only: Adam divides by the root of its second moment, which turns the
    float16 rounding of near-zero gradients into updates of full size.
    """
    initial = _net(interfaces=False).get_weights()
    set_policy(policy)
    plain = _net(interfaces=False)
    plain.set_weights(initial)
    _fit(plain, _optimizer("sgd"))
    net = _net()
    net.set_weights(initial)
    model = _fit(keras_sg.GPipeModel(net, micro_batches=4), _optimizer("sgd"))
    tolerance = 8 * UNIT_ROUNDOFF[policy]
    _assert_updates_close(model.get_weights(), plain.get_weights(), initial, tolerance)


def _decoupled_run(model_class, method, policy, initial, hidden_layers=0):
    """A dni/cdni run under `policy` from the given float32 weights."""
    keras.mixed_precision.set_global_policy(policy)
    net = _net()
    synths = _synths(method, hidden_layers)
    model = model_class(net, synths, method=method)
    model.set_weights(initial)
    return _fit(model, _optimizer("sgd"))


def _start(model_class, method, hidden_layers=0):
    """Float32 starting weights, with synthesizer heads that are not zero.

    A zero head gives zero synthetic gradients, so the stages below would
    not move on the first step; random heads make every step count.
    """
    model = model_class(_net(), _synths(method, hidden_layers), method=method)
    rng = np.random.default_rng(3)
    for synth in model.synthesizers:
        synth.head.set_weights(
            [0.3 * rng.normal(size=w.shape) for w in synth.head.get_weights()]
        )
    return model.get_weights()


@pytest.mark.parametrize("method", ["dni", "cdni"])
@pytest.mark.parametrize(
    "model_class", [keras_sg.DecoupledModel, keras_sg.PipelinedModel]
)
@pytest.mark.parametrize("policy", POLICIES)
def test_synthetic_gradient_updates_match_float32(
    set_policy, policy, model_class, method
):
    """A mixed run of dni/cdni updates every stage and synthesizer as float32 does."""
    initial = _start(model_class, method)
    reference = _decoupled_run(model_class, method, "float32", initial)
    model = _decoupled_run(model_class, method, policy, initial)

    assert model.synthesizers[0].head.compute_dtype == COMPUTE[policy]
    assert model.synthesizers[0].head.kernel.dtype == "float32"
    if policy == "mixed_float16":
        assert model.optimizer.dynamic_scale.numpy() == 2.0**15  # nothing skipped
    tolerance = 8 * UNIT_ROUNDOFF[policy]
    _assert_updates_close(
        model.get_weights(), reference.get_weights(), initial, tolerance
    )
    logs = model.history.history
    for name in ("cut_1_sg_loss", "cut_2_sg_loss"):
        np.testing.assert_allclose(
            logs[name], reference.history.history[name], rtol=tolerance
        )
    if model_class is keras_sg.PipelinedModel:
        for buffer in model.pipeline_state.sg_target:
            assert buffer.dtype == "float32"


def test_batch_norm_synthesizers_compute_in_float16(set_policy):
    """Hidden layers and batch normalisation of a synthesizer follow its policy."""
    initial = _start(keras_sg.DecoupledModel, "dni", hidden_layers=1)
    reference = _decoupled_run(
        keras_sg.DecoupledModel, "dni", "float32", initial, hidden_layers=1
    )
    model = _decoupled_run(
        keras_sg.DecoupledModel, "dni", "mixed_float16", initial, hidden_layers=1
    )
    synth = model.synthesizers[0]
    assert synth.hidden[0].compute_dtype == "float16"
    assert synth.norms[0].dtype_policy.name == "mixed_float16"
    # Built under another global policy, the sub-layers still follow the layer's.
    set_policy("float32")
    synth = keras_sg.DenseSynthesizer(hidden_layers=1, units=8, dtype="mixed_float16")
    synth.build((None, 16))
    assert [layer.compute_dtype for layer in synth._flatten_layers()] == ["float16"] * 4
    tolerance = 8 * UNIT_ROUNDOFF["mixed_float16"]
    _assert_updates_close(
        model.get_weights(), reference.get_weights(), initial, tolerance
    )


def test_synthesizer_loss_of_a_float16_prediction_is_float32():
    """The regression error and its derivative are float32, as NumPy computes them.

    With 64 x 512 elements and errors near 1e-3, the derivative 2 e / n is
    about 6e-8: the smallest float16 subnormal, nothing left of its value.
    """
    rng = np.random.default_rng(0)
    synthetic = rng.normal(size=(64, 512)).astype(np.float16)
    target = synthetic.astype(np.float64) + 1e-3 * rng.normal(size=synthetic.shape)
    loss, derivative = steps.synthesizer_loss(
        tf.constant(synthetic), tf.constant(target, tf.float32)
    )
    error = synthetic.astype(np.float64) - target.astype(np.float32)
    assert loss.dtype == derivative.dtype == tf.float32
    np.testing.assert_allclose(loss, np.mean(error**2), rtol=1e-4)
    np.testing.assert_allclose(derivative, 2 * error / error.size, rtol=1e-4)


def test_cut_gradients_are_float32_and_unscaled(set_policy):
    initial = _start(keras_sg.DecoupledModel, "dni")
    x, y = classification_data(n=16)
    gradients = {}
    for policy in ("float32", "mixed_float16"):
        set_policy(policy)
        model = keras_sg.DecoupledModel(_net(), _synths("dni"), method="dni")
        model.set_weights(initial)
        model.compile(optimizer="sgd", loss=LOSS)
        gradients[policy] = model.cut_gradients(x, y)
    mixed, full = gradients["mixed_float16"], gradients["float32"]
    for kind in (0, 1):  # synthetic, true
        for a, b in zip(mixed[kind], full[kind], strict=True):
            assert a.dtype == "float32"
            np.testing.assert_allclose(a, b, atol=4e-3 * np.abs(b).max())


@pytest.mark.parametrize("method", ["backprop", "dni"])
def test_overflowing_steps_are_skipped_as_keras_skips_them(set_policy, method):
    """A loss scale that overflows float16 skips the step and halves the scale."""
    set_policy("mixed_float16")
    synths = _synths("dni") if method == "dni" else None
    model = keras_sg.DecoupledModel(_net(), synths, method=method)
    initial = model.get_weights()
    scale = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=2.0**40
    )
    _fit(model, scale, epochs=1)
    # 2**40 overflows every float16 gradient: four steps skipped, nothing moved.
    assert scale.dynamic_scale.numpy() == 2.0**36
    assert scale.iterations.numpy() == 0
    for w, w0 in zip(model.get_weights(), initial, strict=True):
        np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize(
    "model_class", [keras_sg.DecoupledModel, keras_sg.PipelinedModel]
)
def test_skipped_steps_are_left_out_of_the_logged_synthesizer_loss(
    set_policy, model_class
):
    """Overflowed steps have infinite targets; the logs average the others."""
    initial = _start(model_class, "dni")
    set_policy("mixed_float16")
    model = model_class(_net(), _synths("dni"), method="dni")
    model.set_weights(initial)
    scale = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=2.0**19
    )
    _fit(model, scale, epochs=2)
    assert 0 < scale.iterations.numpy() < 8  # some steps skipped, some applied
    for name in ("cut_1_sg_loss", "cut_2_sg_loss"):
        losses = np.array(model.history.history[name])
        assert np.all(np.isfinite(losses)) and np.all(losses > 0), losses


def test_a_static_loss_scale_factor_is_undone_exactly(set_policy):
    """Under float32, an optimizer's `loss_scale_factor` leaves cdni's updates be."""
    initial = _start(keras_sg.DecoupledModel, "cdni")
    runs = []
    for factor in (None, 1024.0):
        model = keras_sg.DecoupledModel(_net(), _synths("cdni"), method="cdni")
        model.set_weights(initial)
        _fit(model, keras.optimizers.SGD(0.1, loss_scale_factor=factor))
        runs.append(model.get_weights())
    _assert_updates_close(runs[1], runs[0], initial, 1e-6)


@pytest.mark.parametrize("policy", ["float16", "bfloat16", "float64"])
def test_other_policies_are_refused_by_name(set_policy, policy):
    set_policy(policy)
    with pytest.raises(ValueError, match=f"dtype policy '{policy}'"):
        keras_sg.DecoupledModel(_net(), _synths("dni"), method="dni")
    set_policy("float32")
    net = _net()
    net.add(keras.layers.Dense(2, dtype=policy, name="odd"))
    with pytest.raises(ValueError, match=f"'{policy}' of layer 'odd'"):
        keras_sg.PipelinedModel(net, _synths("dni"), method="dni")


def test_float16_parts_need_a_model_that_scales_the_loss(set_policy):
    """A model made under float32 would compile without loss scaling: refused."""
    set_policy("mixed_float16")
    net, synths = _net(), _synths("dni")
    set_policy("float32")
    with pytest.raises(ValueError, match="made under the dtype policy 'float32'"):
        keras_sg.DecoupledModel(net, synths, method="dni")
    model = keras_sg.DecoupledModel(net, synths, method="dni", dtype="mixed_float16")
    model.compile(optimizer="sgd", loss=LOSS)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
