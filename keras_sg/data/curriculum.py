"""A curriculum over the sequence length of the Copy tasks.

The DNI paper (Jaderberg et al. 2016, arXiv:1608.05343, Section 3.2) trains
Copy and Repeat Copy with a curriculum: the sequence length N starts small and
grows whenever the average error falls below a threshold; the result is the
largest N reached. `LengthCurriculum` keeps that N; as a Keras callback it
reads the epoch's error from the logs, and `copy_task_dataset(...,
curriculum=...)` reads its `length` when each epoch begins.
"""

import json
import math

import keras

from keras_sg._checks import check_int

# The settings a restored state must agree with: a state saved under another
# threshold or step would continue another experiment.
_SETTINGS = ("threshold", "start_length", "step", "max_length", "monitor")


class LengthCurriculum(keras.callbacks.Callback):
    """Grows the sequence length N each time the average error drops below
    a threshold.

    `update(error)` compares the error measured at the current N with
    `threshold`: strictly below, N counts as solved (`solved_length`) and
    grows by `step` (up to `max_length`); at or above the threshold, or not
    finite, nothing changes. As a callback of `fit`, `update` runs at the end
    of every epoch on `logs[monitor]`, so one epoch is trained at one N.

    Args:
        threshold: the average error, in the monitored unit (bits per
            character for `BitsPerCharacter`), below which N grows. 0.15 in
            the issue this follows.
        start_length: the first N.
        step: how much N grows at a time.
        max_length: the largest N (no limit when None). Once reached and
            solved, N stays.
        monitor: the log entry read at the end of each epoch (for example
            "bits_per_character", or "val_bits_per_character").

    Example:

    ```python
    curriculum = keras_sg.data.LengthCurriculum(threshold=0.15)
    ds = keras_sg.data.copy_task_dataset("copy", 32, 100, curriculum=curriculum)
    model.compile(..., weighted_metrics=[keras_sg.data.BitsPerCharacter(True)])
    model.fit(ds, epochs=50, callbacks=[curriculum])
    curriculum.solved_length  # the largest N solved
    ```
    """

    def __init__(
        self,
        threshold: float = 0.15,
        start_length: int = 1,
        step: int = 1,
        max_length: int | None = None,
        monitor: str = "bits_per_character",
    ):
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(
                f"`threshold` must be a number. Received: threshold={threshold!r}"
            )
        if not threshold > 0 or not math.isfinite(threshold):
            raise ValueError(
                "`threshold` must be positive and finite. "
                f"Received: threshold={threshold!r}"
            )
        check_int("start_length", start_length, 1)
        check_int("step", step, 1)
        if max_length is not None:
            check_int("max_length", max_length, start_length)
        self.threshold = float(threshold)
        self.start_length = start_length
        self.step = step
        self.max_length = max_length
        self.monitor = monitor
        self.length = start_length
        self.solved_length = 0
        self.history = []

    def update(self, error: float, epoch: int | None = None) -> bool:
        """Records the average `error` measured at the current N; grows N
        when it is below the threshold. Returns whether N grew."""
        error = float(error)
        measured_at = self.length
        solved = math.isfinite(error) and error < self.threshold
        if solved:
            self.solved_length = max(self.solved_length, measured_at)
            grown = measured_at + self.step
            if self.max_length is not None:
                grown = min(grown, self.max_length)
            self.length = grown
        grew = self.length != measured_at
        self.history.append(
            {"epoch": epoch, "length": measured_at, "error": error, "grew": grew}
        )
        return grew

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(
                f"LengthCurriculum reads `{self.monitor}` from the epoch's logs, "
                f"which hold {sorted(logs)}: give the metric to compile (as a "
                f"weighted metric) or set `monitor`. Received: monitor={self.monitor!r}"
            )
        self.update(logs[self.monitor], epoch)

    def get_state(self) -> dict:
        """Everything needed to resume: the settings, N, the largest N
        solved and the history (JSON-serialisable)."""
        state = {name: getattr(self, name) for name in _SETTINGS}
        state.update(
            length=self.length,
            solved_length=self.solved_length,
            history=[dict(entry) for entry in self.history],
        )
        return state

    def set_state(self, state: dict):
        """Restores a `get_state()` of a curriculum with the same settings.

        Raises:
            ValueError: a setting differs, naming it with both values.
        """
        for name in (*_SETTINGS, "length", "solved_length", "history"):
            if name not in state:
                raise ValueError(
                    f"The curriculum state lacks `{name}`; it holds {sorted(state)}."
                )
        for name in _SETTINGS:
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"The curriculum state was saved with {name}={state[name]!r}, "
                    f"this curriculum has {name}={getattr(self, name)!r}: make it "
                    "with the settings of the run being resumed."
                )
        check_int("length", state["length"], 1)
        self.length = state["length"]
        self.solved_length = state["solved_length"]
        self.history = [dict(entry) for entry in state["history"]]

    def save(self, path: str):
        """Writes `get_state()` to `path` as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.get_state(), f, indent=1)

    def load(self, path: str):
        """Restores the state that `save` wrote to `path`."""
        with open(path, encoding="utf-8") as f:
            self.set_state(json.load(f))
