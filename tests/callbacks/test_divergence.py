"""StopOnDivergence: which loss it names, and where fit stops."""

import math
import types

import numpy as np
import pytest
from conftest import linear_synth, mlp

import keras_sg


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
