"""Callbacks for training that diverges: one stops it when a loss stops
being a finite number, or blows up; one puts back the last sound epoch and
goes on."""

import math
import warnings

import keras
import numpy as np


def is_loss_key(key: str) -> bool:
    """True for every training loss a model logs: `loss` and each key ending
    in `_loss`, the logs that `StopOnDivergence` and `FiniteCheckpoint` watch.

    That covers the task loss, a cut's synthesizer loss (`<cut>_sg_loss`,
    `DecoupledModel`), `sg_loss` and `aux_loss` (`TruncatedBPTTModel`),
    `message_sg_loss` and `state_sg_loss` (`ClockedPairModel`),
    `synthetic_loss` and `<cut>_input_loss` (`UnlockedModel`). Validation
    logs (`val_...`) are left out: they measure held-out data, not the
    state of training.
    """
    if key.startswith("val_"):
        return False
    return key == "loss" or key.endswith("_loss")


def describe_loss(key: str) -> str:
    """The loss a log key names, for messages: `"the task loss"`,
    `"the synthesizer loss at cut_1"`, `"the auxiliary loss"`, ..."""
    if key == "loss":
        return "the task loss"
    if key == "sg_loss":
        return "the synthesizer loss"
    if key == "aux_loss":
        return "the auxiliary loss"
    if key.endswith("_sg_loss"):
        return f"the synthesizer loss at {key[: -len('_sg_loss')]}"
    return f"the loss {key}"


class StopOnDivergence(keras.callbacks.Callback):
    """Stops `fit` at the first batch where a logged loss is not finite, or,
    with `max_growth`, where the task loss has blown up.

    Like `keras.callbacks.TerminateOnNaN`, but it also watches every other
    training loss the model logs (each key `is_loss_key` accepts: the
    synthesizer losses of every model, `TruncatedBPTTModel`'s auxiliary
    loss) and remembers which loss went first, so that a script can say
    where training diverged and exit with an error instead of writing NaN checkpoints.
    A synthesizer whose regression blows up poisons the stage below it one step
    later, so its loss is often the first to go (Jaderberg et al. 2016,
    arXiv:1608.05343, train synthesizers and stages at once).

    Training can also fall apart with every loss finite: a free-running
    `AsyncPipelinedModel` once went from 97% test accuracy to 44% in one
    epoch, its task loss from 0.09 to 3.97 (docs/async.md). With
    `max_growth=g`, the guard also stops when a loss in `growth_keys`
    (the task loss by default: a synthesizer's loss may grow many times
    over in healthy training, as the gradients it predicts grow) is more
    than g times the lowest epoch mean it had in this `fit`, at an epoch's
    end or at a batch's end (the logs there are means over the epoch so
    far). Only positive means count as a reference.

    The logs `fit` passes at the end of a batch are means over the epoch so
    far: once a loss is NaN or infinite it stays so until the epoch ends, and
    this callback sees it at the batch where it first happened.

    Args:
        max_growth: None (the default: watch for losses that are not
            finite only), or a number > 1.
        growth_keys: the logs `max_growth` watches.

    Attributes:
        diverged: None while training is sound; after a stop, a dict with
            `epoch` (1-based, as `fit` prints it), `batch` (1-based within the
            epoch, None at an epoch's end), `losses` (each non-finite log, or
            each log that grew too much, and its value) and `reason`
            (`"not finite"` or `"grew"`).
        message: None, or one sentence naming the losses and where they went.

    Example:

    ```python
    guard = keras_sg.callbacks.StopOnDivergence(max_growth=10)
    model.fit(x, y, epochs=5, callbacks=[guard])
    if guard.diverged:
        raise SystemExit(guard.message)
    ```
    """

    def __init__(self, max_growth: float | None = None, growth_keys=("loss",)):
        super().__init__()
        if max_growth is not None and (
            isinstance(max_growth, bool)
            or not isinstance(max_growth, int | float)
            or not max_growth > 1
        ):
            raise ValueError(
                "Expected max_growth to be None or a number greater than 1. "
                f"Received: max_growth={max_growth!r}"
            )
        if isinstance(growth_keys, str) or not all(
            isinstance(k, str) for k in growth_keys
        ):
            raise ValueError(
                "Expected growth_keys to be a sequence of log names, such as "
                f'("loss",). Received: growth_keys={growth_keys!r}'
            )
        self.max_growth = max_growth
        self.growth_keys = tuple(growth_keys)
        self.diverged = None
        self.message = None
        self._epoch = 0
        self._lowest = {}  # key -> (lowest positive epoch mean, its epoch)

    def on_train_begin(self, logs=None):
        self.diverged = None
        self.message = None
        self._lowest = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, None)
        if self.diverged is None:
            for key in self.growth_keys:
                value = float((logs or {}).get(key, math.nan))
                lowest = self._lowest.get(key)
                if value > 0 and (lowest is None or value < lowest[0]):
                    self._lowest[key] = (value, epoch + 1)

    def _check(self, logs, batch):
        if self.diverged is not None or not logs:
            return
        bad = {
            key: float(value)
            for key, value in sorted(logs.items())
            if is_loss_key(key) and not math.isfinite(float(value))
        }
        if bad:
            # The task loss last: a synthesizer's loss usually breaks before it.
            keys = sorted(bad, key=lambda k: (k == "loss", k))
            named = [f"{describe_loss(k)} ({k}={bad[k]})" for k in keys]
            what = f"{named[0]} is not finite"
            if len(named) > 1:
                what += "; nor is " + ", ".join(named[1:])
            self._stop(bad, "not finite", batch, what)
            return
        if self.max_growth is None:
            return
        grew = {}
        for key in self.growth_keys:
            lowest = self._lowest.get(key)
            if key in logs and lowest is not None:
                value = float(logs[key])
                if value > self.max_growth * lowest[0]:
                    grew[key] = value
        if grew:
            named = []
            for key, value in grew.items():
                lowest, epoch = self._lowest[key]
                named.append(
                    f"{describe_loss(key)} ({key}={value:.4g}) is "
                    f"{value / lowest:.3g} times its lowest epoch mean "
                    f"({lowest:.4g}, epoch {epoch})"
                )
            what = "; ".join(named) + f", above max_growth={self.max_growth}"
            self._stop(grew, "grew", batch, what)

    def _stop(self, losses, reason, batch, what):
        self.diverged = {
            "epoch": self._epoch + 1,
            "batch": batch,
            "losses": losses,
            "reason": reason,
        }
        where = f"epoch {self._epoch + 1}"
        if batch is not None:
            where += f", batch {batch}"
        self.message = f"Training diverged in {where}: {what}."
        self.model.stop_training = True


def training_state(model: keras.Model) -> list:
    """Every variable that training changes: the model's (weights, batch
    statistics, seeds) and its optimizers' (slots, `iterations`, the rate),
    the model's `optimizer`, its `synthesizer_optimizer` and, for
    `AsyncPipelinedModel`, each stage's own optimizers. Each variable once."""
    variables = list(model.variables)
    optimizers = [getattr(model, "optimizer", None)]
    optimizers.append(getattr(model, "synthesizer_optimizer", None))
    if hasattr(model, "stage_optimizers"):
        optimizers += model.stage_optimizers()
        optimizers += model.synthesizer_optimizers() or []
    for optimizer in optimizers:
        if optimizer is not None:
            variables += list(optimizer.variables)
    return list({id(v): v for v in variables}.values())  # in order, each once


class RollBackOnDivergence(StopOnDivergence):
    """At the end of an epoch that diverged, puts the model and its
    optimizers back as they were at the end of the last sound epoch, and
    goes on training.

    The checks are `StopOnDivergence`'s, made at each epoch's end only: a
    logged loss that is not finite, or a task loss whose epoch mean is more
    than `max_growth` times its lowest epoch mean in this `fit`. At the end
    of each sound epoch the callback copies `training_state(model)` (the
    weights and every optimizer's slots and `iterations`, so a learning-rate
    schedule goes back too) to host memory; at the end of an epoch that
    diverged it assigns that copy back, warns, and training goes on with
    the next epoch's batches. After `max_rollbacks` of them, or when no
    epoch was sound yet, it stops training as `StopOnDivergence` does.

    What it cures is a blow-up that one epoch brought (a bad batch, an
    unlucky step). It did not save the collapses of a free-running
    `AsyncPipelinedModel` measured in docs/async.md ("Rolling back a
    collapse"): each of three fell apart again in the epoch after its
    rollback. The default `max_growth=2` is lower than `StopOnDivergence`'s
    usual 10 so that the copy put back is from before a fall that takes more
    than one epoch; a sound run's epoch means fall or stay. The copy
    costs one read of every variable per epoch, inside the `fit`. An
    `AsyncPipelinedModel` drains its pipeline at each epoch's end by
    default, so nothing is in flight then; with `fit(..., drain=False)` the
    batches in flight at that moment are not undone.

    Args:
        max_growth: a number > 1 (2 by default).
        max_rollbacks: an integer >= 1 (1 by default): rollbacks in one
            `fit` before a divergence stops it.
        growth_keys: the logs `max_growth` watches.

    Attributes:
        rollbacks: one dict per rollback of this `fit`: `StopOnDivergence`'s
            `diverged` dict of the epoch that diverged, its `message`, and
            `restored_epoch`, the sound epoch whose end was put back.
        diverged, message: as `StopOnDivergence`'s, once it stopped training.

    Example:

    ```python
    rollback = keras_sg.callbacks.RollBackOnDivergence(max_growth=2)
    model.fit(x, y, epochs=8, callbacks=[rollback])
    print(rollback.rollbacks)
    ```
    """

    def __init__(
        self, max_growth: float = 2.0, max_rollbacks: int = 1, growth_keys=("loss",)
    ):
        if max_growth is None:
            raise ValueError(
                "Expected max_growth to be a number greater than 1. "
                "Received: max_growth=None"
            )
        super().__init__(max_growth=max_growth, growth_keys=growth_keys)
        if (
            isinstance(max_rollbacks, bool)
            or not isinstance(max_rollbacks, int)
            or max_rollbacks < 1
        ):
            raise ValueError(
                "Expected max_rollbacks to be an integer >= 1. "
                f"Received: max_rollbacks={max_rollbacks!r}"
            )
        self.max_rollbacks = max_rollbacks
        self.rollbacks = []
        self._sound = None  # (epoch, [(variable, its value)]) of the last sound epoch

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.rollbacks = []
        self._sound = None

    def on_train_batch_end(self, batch, logs=None):
        pass  # checked at epoch ends only: a rollback puts back whole epochs

    def on_epoch_end(self, epoch, logs=None):
        stopping = self.model.stop_training  # another callback may have asked
        super().on_epoch_end(epoch, logs)  # stops training if it diverged
        if self.diverged is None:
            state = training_state(self.model)
            self._sound = (
                epoch + 1,
                [(v, np.array(keras.ops.convert_to_numpy(v))) for v in state],
            )
            return
        if self._sound is None or len(self.rollbacks) >= self.max_rollbacks:
            return
        restored_epoch, values = self._sound
        for variable, value in values:
            variable.assign(value)
        self.rollbacks.append(
            dict(self.diverged, message=self.message, restored_epoch=restored_epoch)
        )
        warnings.warn(
            f"{self.message} Put back the model and its optimizers as they were "
            f"at the end of epoch {restored_epoch}; training goes on "
            f"(rollback {len(self.rollbacks)} of {self.max_rollbacks}).",
            stacklevel=2,
        )
        self.diverged = None
        self.message = None
        self.model.stop_training = stopping
