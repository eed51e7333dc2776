"""RollBackOnDivergence: an epoch that diverged is undone, weights and
optimizer state, and training goes on as it would have from the epoch
before; after `max_rollbacks`, or with no sound epoch, it stops."""

import math

import keras
import numpy as np
import pytest
from conftest import linear_synth, mlp

import keras_sg
from keras_sg.callbacks.divergence import training_state

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 3)).astype("float32")
Y = RNG.integers(0, 2, size=24)


def _model(kind):
    keras.utils.set_random_seed(11)
    net = mlp([5], 3, out_units=2)
    synths = [linear_synth(num_classes=2)]
    if kind == "decoupled":
        model = keras_sg.DecoupledModel(net, synths, method="cdni")
        extra = {"synthesizer_optimizer": keras.optimizers.SGD(0.05)}
    else:  # two stages, each with its own Adam, stepping together
        model = keras_sg.AsyncPipelinedModel(net, synths, method="cdni", lock_step=True)
        extra = {}
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **extra,
    )
    return model


def _fit(model, epochs, callbacks=()):
    # AsyncPipelinedModel drains each epoch (its default): nothing is in
    # flight at an epoch's end, and so nothing escapes the rollback.
    fit = dict(batch_size=4, epochs=epochs, shuffle=False, verbose=0)
    return model.fit(X, Y, callbacks=list(callbacks), **fit)


class _Spoil(keras.callbacks.Callback):
    """At the end of epoch `epoch` (0-based), before the rollback sees it:
    scrambles every weight and logs a NaN task loss, as a collapse would."""

    def __init__(self, epoch, loss=math.nan):
        super().__init__()
        self.epoch, self.loss = epoch, loss

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            for weight in self.model.weights:
                weight.assign(weight + 3.0)
            logs["loss"] = self.loss


@pytest.mark.parametrize("kind", ["decoupled", "async_lock_step"])
def test_a_rolled_back_epoch_leaves_training_as_if_it_had_not_run(kind):
    """Epoch 3 spoiled and rolled back to the end of epoch 2; epoch 4 then
    trains from there on the same batches: the weights after 4 epochs are
    those of 3 plain epochs, every optimizer's state (Adam's slots and
    `iterations`, the synthesizers' own SGD) included."""
    reference = _model(kind)
    _fit(reference, 3)
    model = _model(kind)
    start = [np.array(w) for w in model.get_weights()]
    rollback = keras_sg.callbacks.RollBackOnDivergence()
    with pytest.warns(UserWarning, match="as they were at the end of epoch 2"):
        history = _fit(model, 4, [_Spoil(2), rollback])
    assert len(history.history["loss"]) == 4  # training went on
    assert [r["restored_epoch"] for r in rollback.rollbacks] == [2]
    assert rollback.rollbacks[0]["epoch"] == 3
    assert rollback.rollbacks[0]["reason"] == "not finite"
    assert rollback.diverged is None and not model.stop_training
    want, got = reference.get_weights(), model.get_weights()
    assert max(np.abs(w - s).max() for w, s in zip(want, start, strict=True)) > 0.05
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    states = [[np.array(v) for v in training_state(m)] for m in (reference, model)]
    assert len(states[0]) == len(states[1])
    for w, g in zip(*states, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_training_state_holds_every_optimizer_s_variables():
    model = _model("async_lock_step")
    _fit(model, 1)
    state = {id(v) for v in training_state(model)}
    for optimizer in model.stage_optimizers():
        assert {id(v) for v in optimizer.variables} <= state
    assert {id(v) for v in model.variables} <= state
    assert len(state) == len(training_state(model))  # each variable once


def test_a_loss_that_grew_is_rolled_back_and_a_second_divergence_stops():
    model = _model("decoupled")
    rollback = keras_sg.callbacks.RollBackOnDivergence(max_growth=2, max_rollbacks=1)
    # Epoch means: sound for two epochs, then 1e3 (grew) and, after the
    # rollback, NaN: the second divergence stops fit.
    spoil = [_Spoil(2, loss=1e3), _Spoil(3)]
    with pytest.warns(UserWarning, match="rollback 1 of 1"):
        history = _fit(model, 6, [*spoil, rollback])
    assert len(history.history["loss"]) == 4
    assert rollback.rollbacks[0]["reason"] == "grew"
    assert rollback.diverged["epoch"] == 4 and model.stop_training
    assert "not finite" in rollback.message


def test_no_sound_epoch_yet_means_a_stop():
    model = _model("decoupled")
    rollback = keras_sg.callbacks.RollBackOnDivergence()
    history = _fit(model, 3, [_Spoil(0), rollback])
    assert len(history.history["loss"]) == 1
    assert rollback.rollbacks == [] and rollback.diverged["epoch"] == 1


def test_a_stop_asked_by_another_callback_is_kept():
    class StopNow(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                self.model.stop_training = True

    model = _model("decoupled")
    rollback = keras_sg.callbacks.RollBackOnDivergence()
    with pytest.warns(UserWarning):
        history = _fit(model, 5, [StopNow(), _Spoil(2), rollback])
    assert len(history.history["loss"]) == 3 and len(rollback.rollbacks) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_growth": None}, "max_growth=None"),
        ({"max_growth": 1.0}, "max_growth=1.0"),
        ({"max_rollbacks": 0}, "max_rollbacks=0"),
        ({"max_rollbacks": 1.5}, "max_rollbacks=1.5"),
        ({"max_rollbacks": True}, "max_rollbacks=True"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        keras_sg.callbacks.RollBackOnDivergence(**kwargs)
