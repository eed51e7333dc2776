"""FusedAdam against Adam written in NumPy, and against Keras's Adam."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sg
from keras_sg.optimizers import FusedAdam

SHAPES = [(5, 3), (3,)]


def numpy_adam(weights, gradients, rates, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """Adam as in Kingma & Ba, Algorithm 1, with epsilon outside the
    bias-corrected square root ("epsilon hat"), as Keras writes it."""
    weights = [w.astype(np.float64) for w in weights]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for t, (grads, rate) in enumerate(zip(gradients, rates, strict=True), start=1):
        for i, g in enumerate(grads):
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            alpha = rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
            weights[i] = weights[i] - alpha * m[i] / (np.sqrt(v[i]) + eps)
    return weights


def run(optimizer, weights, gradients, jit=False):
    variables = [keras.Variable(w) for w in weights]
    optimizer.build(variables)

    def step(grads):
        optimizer.apply(grads, variables)

    step = tf.function(step, jit_compile=jit) if jit is not None else step
    for grads in gradients:
        step([tf.constant(g) for g in grads])
    return [v.numpy() for v in variables], optimizer


def problem(steps=6, seed=0):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype("float32") for s in SHAPES]
    # Gradients of every sign and scale, changing each step.
    gradients = [
        [
            (rng.normal(size=s) * 10.0 ** rng.integers(-3, 2)).astype("float32")
            for s in SHAPES
        ]
        for _ in range(steps)
    ]
    return weights, gradients


@pytest.mark.parametrize("jit", [None, False, True], ids=["eager", "graph", "xla"])
def test_fused_adam_equals_numpy_adam_over_several_steps(jit):
    weights, gradients = problem()
    got, optimizer = run(FusedAdam(0.05), weights, gradients, jit)
    want = numpy_adam(weights, gradients, [0.05] * len(gradients))
    for g, w, start in zip(got, want, weights, strict=True):
        assert np.abs(w - start).max() > 0.1  # the weights really moved
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert int(optimizer.iterations) == len(gradients)


def test_fused_adam_follows_a_learning_rate_schedule_and_keras_options():
    weights, gradients = problem(steps=5, seed=1)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    rates = [0.1 * 0.5**t for t in range(len(gradients))]
    got, _ = run(FusedAdam(schedule, beta_1=0.8, beta_2=0.99), weights, gradients)
    want = numpy_adam(weights, gradients, rates, beta_1=0.8, beta_2=0.99)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # Clipping and weight decay are Keras's, around the same update.
    options = dict(clipvalue=0.5, weight_decay=0.01)
    got, _ = run(FusedAdam(0.05, **options), weights, gradients)
    keras_got, _ = run(keras.optimizers.Adam(0.05, **options), weights, gradients)
    for g, w in zip(got, keras_got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_fused_adam_trains_a_model_as_keras_adam_and_saves(tmp_path):
    x = np.random.default_rng(2).normal(size=(64, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("int32")

    def fitted(optimizer):
        keras.utils.set_random_seed(3)
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Embedding(8, 3),  # a sparse gradient
                keras.layers.Flatten(),
                keras.layers.Dense(2),
            ]
        )
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(
            np.abs(x * 3).astype("int32") % 8, y, batch_size=16, epochs=2, verbose=0
        )
        return model

    fused, plain = fitted(FusedAdam(0.02)), fitted(keras.optimizers.Adam(0.02))
    for a, b in zip(fused.weights, plain.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    path = tmp_path / "m.keras"
    fused.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is FusedAdam
    for a, b in zip(fused.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_each_dense_update_is_one_fused_kernel():
    weights, gradients = problem(steps=1)
    variables = [keras.Variable(w) for w in weights]
    optimizer = FusedAdam(0.05)
    optimizer.build(variables)
    step = tf.function(lambda g: optimizer.apply(g, variables))
    graph = step.get_concrete_function(
        [tf.TensorSpec(s, "float32") for s in SHAPES]
    ).graph
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("ResourceApplyAdam") == len(SHAPES)
    # No element-wise update of Keras's left beside it.
    assert "Sqrt" not in kinds


def test_amsgrad_is_refused():
    with pytest.raises(ValueError, match="amsgrad=True"):
        keras_sg.optimizers.FusedAdam(amsgrad=True)
