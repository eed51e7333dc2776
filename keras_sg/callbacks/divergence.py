"""A callback that stops training when a loss stops being a finite number."""

import math

import keras


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
    """Stops `fit` at the first batch where a logged loss is not finite.

    Like `keras.callbacks.TerminateOnNaN`, but it also watches every other
    training loss the model logs (each key `is_loss_key` accepts: the
    synthesizer losses of every model, `TruncatedBPTTModel`'s auxiliary
    loss) and remembers which loss went first, so that a script can say
    where training diverged and exit with an error instead of writing NaN checkpoints.
    A synthesizer whose regression blows up poisons the stage below it one step
    later, so its loss is often the first to go (Jaderberg et al. 2016,
    arXiv:1608.05343, train synthesizers and stages at once).

    The logs `fit` passes at the end of a batch are means over the epoch so
    far: once a loss is NaN or infinite it stays so until the epoch ends, and
    this callback sees it at the batch where it first happened.

    Attributes:
        diverged: None while every loss is finite; after a stop, a dict with
            `epoch` (1-based, as `fit` prints it), `batch` (1-based within the
            epoch) and `losses` (each non-finite log and its value).
        message: None, or one sentence naming the losses and where they went.

    Example:

    ```python
    guard = keras_sg.callbacks.StopOnDivergence()
    model.fit(x, y, epochs=5, callbacks=[guard])
    if guard.diverged:
        raise SystemExit(guard.message)
    ```
    """

    def __init__(self):
        super().__init__()
        self.diverged = None
        self.message = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.diverged = None
        self.message = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, None)

    def _check(self, logs, batch):
        if self.diverged is not None or not logs:
            return
        bad = {
            key: float(value)
            for key, value in sorted(logs.items())
            if is_loss_key(key) and not math.isfinite(float(value))
        }
        if not bad:
            return
        self.diverged = {"epoch": self._epoch + 1, "batch": batch, "losses": bad}
        where = f"epoch {self._epoch + 1}"
        if batch is not None:
            where += f", batch {batch}"
        # The task loss last: a synthesizer's loss usually breaks before it.
        keys = sorted(bad, key=lambda k: (k == "loss", k))
        named = [f"{describe_loss(k)} ({k}={bad[k]})" for k in keys]
        self.message = f"Training diverged in {where}: {named[0]} is not finite"
        if len(named) > 1:
            self.message += "; nor is " + ", ".join(named[1:])
        self.message += "."
        self.model.stop_training = True
