"""StopOnDivergence and FiniteCheckpoint: which losses they watch, which
loss the guard names, and where fit stops."""

import math
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_synth, mlp

import keras_sg
from keras_sg.callbacks import checkpoint
from keras_sg.callbacks.divergence import is_loss_key


def _guard():
    guard = keras_sg.callbacks.StopOnDivergence()
    guard.set_model(types.SimpleNamespace(stop_training=False))
    return guard


@pytest.mark.parametrize(
    "logs, named",
    [
        ({"loss": math.nan, "cut_1_sg_loss": 0.5}, "the task loss (loss=nan)"),
        ({"loss": 0.5, "cut_2_sg_loss": math.inf}, "at cut_2 (cut_2_sg_loss=inf)"),
        ({"loss": 0.5, "cut_1_sg_loss": -math.inf}, "at cut_1 (cut_1_sg_loss=-inf)"),
        (
            {"loss": math.nan, "cut_1_sg_loss": math.nan},
            "at cut_1 (cut_1_sg_loss=nan) is not finite; nor is the task loss",
        ),
    ],
)
def test_names_the_non_finite_loss(logs, named):
    guard = _guard()
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 1.0, "cut_1_sg_loss": 2.0})
    assert guard.diverged is None and not guard.model.stop_training
    guard.on_train_batch_end(4, dict(logs, accuracy=math.nan))
    assert guard.model.stop_training
    assert named in guard.message
    assert guard.message.startswith("Training diverged in epoch 3, batch 5:")
    assert guard.diverged["epoch"] == 3 and guard.diverged["batch"] == 5
    bad = {k for k, v in logs.items() if not math.isfinite(v)}
    assert set(guard.diverged["losses"]) == bad  # accuracy is not a loss


def test_finite_logs_and_other_metrics_do_not_stop():
    guard = _guard()
    guard.on_train_batch_end(0, {"loss": 1e30, "cut_1_sg_loss": 0.0})
    guard.on_epoch_end(0, {"loss": 1.0, "val_accuracy": math.nan, "val_loss": 2.0})
    assert guard.diverged is None and not guard.model.stop_training


def _epochs(guard, means, sg=0.1):
    """Runs the guard over epochs with these task-loss means (one batch
    each, whose log is the epoch's mean) and a synthesizer loss."""
    for epoch, mean in enumerate(means):
        guard.on_epoch_begin(epoch)
        logs = {"loss": mean, "cut_1_sg_loss": sg * 100**epoch}
        guard.on_train_batch_end(0, logs)
        guard.on_epoch_end(epoch, logs)


def test_max_growth_stops_a_loss_that_blew_up_while_finite():
    guard = keras_sg.callbacks.StopOnDivergence(max_growth=10)
    guard.set_model(types.SimpleNamespace(stop_training=False))
    guard.on_train_begin()
    # 0.5 -> 0.09 -> 0.5 (5.6 times the lowest) is not a blow-up; the
    # synthesizer loss grows 100-fold an epoch and is not watched.
    _epochs(guard, [0.5, 0.09, 0.5])
    assert guard.diverged is None and not guard.model.stop_training
    guard.on_epoch_begin(3)
    guard.on_train_batch_end(0, {"loss": 0.8, "cut_1_sg_loss": 1e6})
    assert guard.diverged is None
    # The mean over the epoch so far passes 10 times the lowest epoch mean.
    guard.on_train_batch_end(1, {"loss": 0.91, "cut_1_sg_loss": 1e6})
    assert guard.model.stop_training
    assert guard.diverged == {
        "epoch": 4,
        "batch": 2,
        "losses": {"loss": 0.91},
        "reason": "grew",
    }
    assert guard.message == (
        "Training diverged in epoch 4, batch 2: the task loss (loss=0.91) is "
        "10.1 times its lowest epoch mean (0.09, epoch 2), above max_growth=10."
    )


def test_max_growth_at_an_epoch_end_and_on_other_keys():
    guard = keras_sg.callbacks.StopOnDivergence(
        max_growth=4.0, growth_keys=("loss", "cut_1_sg_loss")
    )
    guard.set_model(types.SimpleNamespace(stop_training=False))
    guard.on_train_begin()
    guard.on_epoch_begin(0)
    guard.on_epoch_end(0, {"loss": 1.0, "cut_1_sg_loss": 0.01})
    guard.on_epoch_begin(1)
    guard.on_epoch_end(1, {"loss": 2.0, "cut_1_sg_loss": 0.05})
    assert guard.diverged["batch"] is None and guard.diverged["epoch"] == 2
    assert guard.diverged["losses"] == {"cut_1_sg_loss": 0.05}
    assert "at cut_1 (cut_1_sg_loss=0.05) is 5 times its lowest epoch mean" in (
        guard.message
    )
    # A new fit starts from no reference.
    guard.model.stop_training = False
    guard.on_train_begin()
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 100.0, "cut_1_sg_loss": 100.0})
    assert guard.diverged is None


def test_max_growth_takes_only_positive_means_as_a_reference():
    guard = keras_sg.callbacks.StopOnDivergence(max_growth=2)
    guard.set_model(types.SimpleNamespace(stop_training=False))
    guard.on_train_begin()
    _epochs(guard, [-1.0, 0.0, 3.0, 5.0])  # 3.0 is the first reference
    assert guard.diverged is None
    _epochs(guard, [3.0, 6.5])
    assert guard.diverged["losses"] == {"loss": 6.5}


def test_without_max_growth_only_non_finite_losses_stop():
    guard = _guard()
    _epochs(guard, [0.01, 1e9, 1e30])
    assert guard.diverged is None and not guard.model.stop_training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_growth": 1}, "max_growth=1"),
        ({"max_growth": 0.5}, "max_growth=0.5"),
        ({"max_growth": True}, "max_growth=True"),
        ({"max_growth": "10"}, "max_growth='10'"),
        ({"growth_keys": "loss"}, "growth_keys='loss'"),
    ],
)
def test_bad_growth_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sg.callbacks.StopOnDivergence(**kwargs)


def _blowing_up_model(scale):
    """A model whose logged MSE is multiplied by `scale`, a variable: a
    callback raising it makes the task loss blow up, finite."""

    def scaled_mse(y_true, y_pred):
        return scale * keras.losses.mean_squared_error(y_true, y_pred)

    net = mlp([4], 3, out_units=2)
    model = keras_sg.DecoupledModel(net, [linear_synth()], method="dni")
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss=scaled_mse)
    return model


class _ScaleFrom(keras.callbacks.Callback):
    def __init__(self, scale, epoch, batch):
        super().__init__()
        self.scale, self.at, self.epoch = scale, (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.scale.assign(1000.0)


def test_fit_stops_where_the_loss_blew_up_and_does_not_save_that_epoch(tmp_path):
    scale = tf.Variable(1.0)
    model = _blowing_up_model(scale)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("float32")
    y = rng.normal(size=(40, 2)).astype("float32")
    guard = keras_sg.callbacks.StopOnDivergence(max_growth=10)
    saver = keras_sg.callbacks.FiniteCheckpoint(tmp_path, keep=5, guard=guard)
    history = model.fit(
        x,
        y,
        batch_size=4,
        epochs=5,
        shuffle=False,
        verbose=0,
        callbacks=[guard, saver, _ScaleFrom(scale, 2, 3)],
    )
    # Batch 4 of epoch 3 has a loss about 1000 times the others: the mean
    # over the epoch so far is about 250 times the lowest.
    assert guard.diverged["epoch"] == 3 and guard.diverged["batch"] == 4
    assert guard.diverged["reason"] == "grew"
    assert int(model.optimizer.iterations.numpy()) == 20 + 4
    assert len(history.history["loss"]) == 3
    assert [n for n, _ in checkpoint.checkpoint_files(tmp_path)] == [1, 2]


def test_finite_checkpoint_refuses_a_guard_of_another_kind(tmp_path):
    with pytest.raises(ValueError, match="guard=.*TerminateOnNaN"):
        keras_sg.callbacks.FiniteCheckpoint(
            tmp_path, guard=keras.callbacks.TerminateOnNaN()
        )


def test_fit_stops_at_the_first_non_finite_batch():
    net = mlp([4], 3, out_units=2)
    model = keras_sg.DecoupledModel(net, [linear_synth()], method="dni")
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("float32")
    y = rng.normal(size=(40, 2)).astype("float32")
    x[13] = np.nan  # batch 4 of 10 in the second epoch (batches of 4)
    clean = x.copy()
    clean[13] = 0.0
    guard = keras_sg.callbacks.StopOnDivergence()
    model.fit(clean, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    history = model.fit(
        x,
        y,
        batch_size=4,
        epochs=5,
        initial_epoch=1,
        shuffle=False,
        verbose=0,
        callbacks=[guard],
    )
    assert guard.diverged["epoch"] == 2 and guard.diverged["batch"] == 4
    assert set(guard.diverged["losses"]) == {"loss", "cut_1_sg_loss"}
    assert int(model.optimizer.iterations.numpy()) == 10 + 4
    assert len(history.history["loss"]) == 1  # no epoch after the NaN one


# ------------------------------------- the losses of the recurrent models


def _recurrent_model(method, steps=6):
    net = keras.Sequential(
        [
            keras.Input((steps, 2)),
            keras.layers.LSTM(3, return_sequences=True),
            keras.layers.Dense(2),
        ]
    )
    synths = {}
    if method != "bptt":
        synths["synthesizer"] = linear_synth()
    if method == "dni_aux":
        synths["aux_synthesizer"] = linear_synth()
    return net, synths


@keras.saving.register_keras_serializable(package="keras_sg_tests")
class _PoisonedLog(keras_sg.TruncatedBPTTModel):
    """Adds NaN to the mean it logs as `poison_key` (`sg_loss`, `aux_loss`)
    from optimizer step `poison_from` on, as a synthesizer that blew up would;
    the weights stay finite, so only the watch of that log can stop the run."""

    poison_key = None
    poison_from = 0

    def train_step(self, data):
        logs = super().train_step(data)
        tracker = getattr(self, self.poison_key + "_tracker")
        step = self.optimizer.iterations  # after this batch's update
        poison = tf.where(step >= self.poison_from, math.nan, 0.0)
        tracker.update_state(poison, sample_weight=tf.cast(poison != 0.0, "float32"))
        logs[self.poison_key] = tracker.result()
        return logs


def _sequences(n=12, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, steps, 2)).astype("float32")
    y = rng.normal(size=(n, steps, 2)).astype("float32")
    return x, y


@pytest.mark.parametrize(
    "method, logged",
    [
        ("dni", {"loss", "sg_loss"}),
        ("dni_aux", {"loss", "sg_loss", "aux_loss"}),
    ],
)
def test_every_loss_truncated_bptt_logs_is_watched(method, logged):
    net, synths = _recurrent_model(method)
    model = keras_sg.TruncatedBPTTModel(net, truncation=2, method=method, **synths)
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    x, y = _sequences()
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    watched = {k for k in history.history if is_loss_key(k)}
    assert watched == logged  # not `mae`


def test_every_loss_clocked_pair_logs_is_watched():
    init = {"kernel_initializer": keras.initializers.GlorotUniform(0)}
    model = keras_sg.ClockedPairModel(
        keras.layers.LSTMCell(3, **init),
        keras.layers.GRUCell(2, **init),
        period=2,
        output=keras.layers.Dense(4, **init),
        method="dni",
        message_synthesizer=linear_synth(),
        state_synthesizer=linear_synth(),
    )
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3)).astype("float32")
    y = rng.integers(0, 4, size=(4, 6))
    history = model.fit(x, y, batch_size=4, epochs=1, validation_data=(x, y), verbose=0)
    watched = {k for k in history.history if is_loss_key(k)}
    assert watched == {"loss", "message_sg_loss", "state_sg_loss"}
    assert "val_loss" in history.history  # logged, left to validation


@pytest.mark.parametrize(
    "logs, named",
    [
        ({"loss": 0.5, "sg_loss": math.nan}, "the synthesizer loss (sg_loss=nan)"),
        ({"loss": 0.5, "aux_loss": math.inf}, "the auxiliary loss (aux_loss=inf)"),
        (
            {"loss": 0.5, "message_sg_loss": math.nan},
            "the synthesizer loss at message (message_sg_loss=nan)",
        ),
        (
            {"loss": 0.5, "synthetic_loss": math.nan},
            "the loss synthetic_loss (synthetic_loss=nan)",
        ),
    ],
)
def test_names_the_recurrent_models_losses(logs, named):
    guard = _guard()
    guard.on_train_batch_end(0, logs)
    assert guard.model.stop_training and named in guard.message


@pytest.mark.parametrize("method, key", [("dni", "sg_loss"), ("dni_aux", "aux_loss")])
def test_nan_sg_or_aux_loss_stops_fit_without_its_checkpoint(tmp_path, method, key):
    net, synths = _recurrent_model(method)
    model = _PoisonedLog(net, truncation=2, method=method, **synths)
    model.poison_key, model.poison_from = key, 5  # epoch 2, batch 2 of 3
    model.compile(optimizer="sgd", loss="mse")
    x, y = _sequences()
    guard = keras_sg.callbacks.StopOnDivergence()
    saver = keras_sg.callbacks.FiniteCheckpoint(tmp_path, keep=5)
    history = model.fit(
        x,
        y,
        batch_size=4,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[guard, saver],
    )
    assert guard.diverged["epoch"] == 2 and guard.diverged["batch"] == 2
    assert set(guard.diverged["losses"]) == {key}
    assert int(model.optimizer.iterations.numpy()) == 5
    assert len(history.history["loss"]) == 2  # the NaN epoch ends the run
    assert math.isnan(history.history[key][-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.keras"]
    assert checkpoint.all_finite(model)  # only the log was NaN
