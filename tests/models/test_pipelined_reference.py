"""Pipelined and sequential DNI, step by step, against an independent reference.

The reference below knows nothing of the model's buffers, branches or step
functions. It keeps, per (stage, batch), the activation a stage produced and
the target it sent back, and at step t lets stage k work on batch t - k
(pipelined) or t (sequential), with every weight as it was at the start of
the step, then applies plain SGD. Stages and synthesizers are compared weight
by weight after every step of `fit`, over partial batches (10 examples in
batches of 4, 4 and 2) and several epochs.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_synth

import keras_sg

N, BATCH, D, H, C, LR, SG_WEIGHT = 10, 4, 3, 4, 3, 0.1, 0.5
EPOCHS = 3


class _AddLoss(keras.layers.Layer):
    """Identity that adds a penalty on its input through `add_loss`."""

    def call(self, inputs):
        self.add_loss(0.1 * keras.ops.mean(keras.ops.square(inputs)))
        return inputs


def _network(regularized=False, batch_norm=False):
    l2 = keras.regularizers.L2(0.05) if regularized else None
    layers = [
        keras.Input((D,)),
        keras.layers.Dense(H, name="d0", kernel_regularizer=l2),
    ]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(name="bn0"))
    layers += [
        keras.layers.Activation("tanh", activity_regularizer=l2),
        keras_sg.Interface(name="cut_1"),
        keras.layers.Dense(H, activation="tanh", name="d1", activity_regularizer=l2),
        *([_AddLoss()] if regularized else []),
        keras_sg.Interface(name="cut_2"),
        keras.layers.Dense(C, name="d2", kernel_regularizer=l2),
    ]
    return keras.Sequential(layers)


def _model(cls, method, optimizer=None, **net_kwargs):
    classes = C if method == "cdni" else None
    synths = [linear_synth(num_classes=classes) for _ in range(2)]
    model = cls(_network(**net_kwargs), synths, method=method, sg_loss_weight=SG_WEIGHT)
    rng = np.random.default_rng(4)
    for synth in synths:  # non-zero synthesizers: every path carries a signal
        kernel, bias = synth.head.get_weights()
        synth.head.set_weights(
            [rng.normal(size=kernel.shape) * 0.5, rng.normal(size=bias.shape) * 0.5]
        )
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.integers(0, C, size=N)
    return x, y


class _Reference:
    """Decoupled training written out by hand: stage clones and GradientTapes.

    `lag=1` is the pipelined schedule (stage k on batch t - k, the synthesizer
    at cut k on the batch that stage k + 1 worked on at step t - 1); `lag=0`
    the sequential one (everything on batch t).
    """

    def __init__(self, model, method, lag, optimizer=None):
        self.stages = []
        for stage in model.stages:
            clone = keras.models.clone_model(stage)
            clone.set_weights(stage.get_weights())
            self.stages.append(clone)
        self.synths = [
            [keras.Variable(w) for w in s.head.get_weights()]
            for s in model.synthesizers
        ]
        # Plain SGD by default; else a Keras optimizer given, each step, only
        # what worked in it.
        self.optimizer = optimizer
        if optimizer is not None:
            optimizer.build(
                [v for s in self.stages for v in s.trainable_variables]
                + [v for s in self.synths for v in s]
            )
        self.conditioned = method == "cdni"
        self.lag = lag
        self.batches, self.h, self.targets = [], {}, {}
        # Per step: (task loss, batch size) of the batch at the top, or None.
        self.logged = []

    def synthesize(self, k, h, y):
        kernel, bias = self.synths[k]
        if self.conditioned:
            h = tf.concat([h, tf.one_hot(y, C)], axis=-1)
        return h @ kernel + bias

    def step(self, x, y):
        t = len(self.batches)
        self.batches.append((tf.constant(x), y))
        last = len(self.stages) - 1
        updates = []
        self.logged.append(None)
        for k, stage in enumerate(self.stages):
            i = t - self.lag * k
            if i < 0:
                continue
            xi, yi = self.batches[i]
            a = xi if k == 0 else self.h[(k - 1, i)]
            b = float(a.shape[0])
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(a)
                out = stage(a, training=True)
                penalty = tf.add_n(stage.losses) if stage.losses else 0.0
                if k < last:
                    g = tf.stop_gradient(self.synthesize(k, out, yi))
                    # sum over examples of <g_n, out_n> / b: each example's
                    # synthetic gradient is that of a mean over b examples.
                    objective = tf.reduce_sum(g * out) / b + penalty
                else:
                    task = tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(yi, out)
                    )
                    objective = task + penalty
                    self.logged[t] = (float(task), b)
            updates += zip(
                stage.trainable_variables,
                tape.gradient(objective, stage.trainable_variables),
                strict=True,
            )
            if k > 0:
                self.targets[(k - 1, i)] = b * tape.gradient(objective, a)
            if k < last:
                self.h[(k, i)] = out
        for k in range(last):
            j = t - self.lag * (k + 2)
            if j < 0:
                continue
            with tf.GradientTape() as tape:
                g = self.synthesize(k, self.h[(k, j)], self.batches[j][1])
                sg_loss = SG_WEIGHT * tf.reduce_mean((g - self.targets[(k, j)]) ** 2)
            grads = tape.gradient(sg_loss, self.synths[k])
            updates += zip(self.synths[k], grads, strict=True)
        if self.optimizer is not None:
            self.optimizer.apply([g for _, g in updates], [v for v, _ in updates])
            return
        for variable, grad in updates:
            variable.assign_sub(LR * grad)

    def weights(self):
        return [s.get_weights() for s in self.stages], [
            [v.numpy() for v in s] for s in self.synths
        ]


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        stages = [s.get_weights() for s in self.model.stages]
        synths = [s.head.get_weights() for s in self.model.synthesizers]
        self.steps.append((stages, synths, float(logs["loss"])))


def _assert_close(actual, expected, what):
    for a_layer, e_layer in zip(actual, expected, strict=True):
        for a, e in zip(a_layer, e_layer, strict=True):
            np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-5, err_msg=what)


def _run_and_compare(model, reference, x, y, check_loss):
    recorder = _Recorder()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    per_epoch = -(-N // BATCH)
    assert len(recorder.steps) == EPOCHS * per_epoch
    for t, (stages, synths, loss) in enumerate(recorder.steps):
        start = (t % per_epoch) * BATCH
        reference.step(x[start : start + BATCH], y[start : start + BATCH])
        ref_stages, ref_synths = reference.weights()
        _assert_close(stages, ref_stages, f"stages after step {t}")
        _assert_close(synths, ref_synths, f"synthesizers after step {t}")
        if check_loss:
            # Keras logs the epoch's running mean, each batch weighted by its size.
            first = (t // per_epoch) * per_epoch
            seen = [e for e in reference.logged[first : t + 1] if e is not None]
            ref = sum(v * b for v, b in seen) / max(sum(b for _, b in seen), 1.0)
            np.testing.assert_allclose(loss, ref, rtol=1e-4, err_msg=f"loss {t}")


@pytest.mark.parametrize("method", ["dni", "cdni"])
def test_pipelined_steps_match_a_hand_written_reference(method):
    """Nine pipelined steps over partial batches, weight by weight, with the loss."""
    x, y = _data()
    model = _model(keras_sg.PipelinedModel, method)
    reference = _Reference(model, method, lag=1)
    _run_and_compare(model, reference, x, y, check_loss=True)


@pytest.mark.parametrize("method", ["dni", "cdni"])
def test_pipelined_penalties_and_batch_norm_match_the_reference(method):
    """Kernel and activity penalties, `add_loss` and batch norm below the top.

    Each stage adds its own penalties to its update, and the gradient of an
    activity penalty at the stage's input is part of the target it sends
    down, as in Keras's backprop; batch norm's moving statistics follow the
    batches the stage worked on.
    """
    x, y = _data()
    model = _model(keras_sg.PipelinedModel, method, regularized=True, batch_norm=True)
    reference = _Reference(model, method, lag=1)
    _run_and_compare(model, reference, x, y, check_loss=False)


@pytest.mark.parametrize("net_kwargs", [{}, {"regularized": True, "batch_norm": True}])
def test_sequential_dni_steps_match_the_reference(net_kwargs):
    """DecoupledModel: the same reference with every stage on the same batch."""
    x, y = _data()
    model = _model(keras_sg.DecoupledModel, "dni", **net_kwargs)
    reference = _Reference(model, "dni", lag=0)
    _run_and_compare(model, reference, x, y, check_loss=not net_kwargs)


def test_pipelined_adam_steps_match_the_reference():
    """Adam, whose per-step normalisation hides a gradient's scale, but not
    which batch or which target it came from."""
    x, y = _data()
    model = _model(keras_sg.PipelinedModel, "cdni", keras.optimizers.Adam(0.02))
    reference = _Reference(model, "cdni", lag=1, optimizer=keras.optimizers.Adam(0.02))
    _run_and_compare(model, reference, x, y, check_loss=True)
