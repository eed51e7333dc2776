"""Checkpoints that survive a kill: atomic writes, finite weights only, and a
loader that says which files are damaged and falls back past them."""

import logging
import math
import os
import re
import zipfile
from pathlib import Path

import keras
import numpy as np

from keras_sg._checks import check_int
from keras_sg.callbacks.divergence import (
    RollBackOnDivergence,
    StopOnDivergence,
    is_loss_key,
    training_state,
)

CHECKPOINT = re.compile(r"epoch-(\d+)\.keras")
PARTIAL_PREFIX = ".partial-"
log = logging.getLogger(__name__)


def save_atomically(model: keras.Model, path) -> Path:
    """Saves `model` to the `.keras` file `path` so that it is whole or absent.

    The model is written to a hidden `.partial-<name>` beside `path`, flushed
    to disk and renamed over `path` (`os.replace` is atomic on POSIX): a
    process killed mid-write leaves the old file, or none, and a stray
    partial file that `remove_partial_files` clears.

    Returns:
        `path`, as a `Path`.
    """
    path = Path(path)
    partial = path.with_name(PARTIAL_PREFIX + path.name)
    model.save(partial)
    with open(partial, "rb") as file:
        os.fsync(file.fileno())
    os.replace(partial, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself reaches the disk
    finally:
        os.close(folder)
    return path


def remove_partial_files(folder) -> list[Path]:
    """Deletes the partial files that killed writers left in `folder`."""
    removed = sorted(Path(folder).glob(PARTIAL_PREFIX + "*"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def checkpoint_files(folder) -> list[tuple[int, Path]]:
    """The `epoch-<n>.keras` files in `folder`, as (n, path), oldest first."""
    found = []
    for path in Path(folder).glob("epoch-*.keras"):
        if match := CHECKPOINT.fullmatch(path.name):
            found.append((int(match.group(1)), path))
    return sorted(found)


def damage(path) -> str | None:
    """Why the `.keras` file at `path` is damaged, or None if it looks whole.

    A `.keras` file is a zip archive holding `config.json` and the weights;
    a truncated one is no zip at all, a corrupted one fails a CRC check.
    """
    path = Path(path)
    size = path.stat().st_size
    if not zipfile.is_zipfile(path):
        return f"not a complete .keras archive ({size} bytes; truncated?)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"unreadable .keras archive ({size} bytes): {error}"
    if bad is not None:
        return f"member {bad!r} fails its CRC check"
    missing = {"config.json", "model.weights.h5"} - names
    if missing:
        return f"missing {sorted(missing)} (holds {sorted(names)})"
    return None


def load_latest(folder, on_skip=None):
    """Loads the newest checkpoint in `folder` that is whole, falling back.

    Args:
        folder: a folder of `epoch-<n>.keras` files.
        on_skip: called as `on_skip(path, reason)` for each newer file passed
            over; `reason` starts with "damaged:" for a broken archive and
            "could not be loaded:" when Keras refuses a whole one.

    Returns:
        `(model, epoch)`, or `(None, 0)` when no checkpoint loads.
    """
    for epoch, path in reversed(checkpoint_files(folder)):
        reason = damage(path)
        if reason is not None:
            reason = f"damaged: {reason}"
        else:
            try:
                return keras.models.load_model(path), epoch
            except Exception as error:  # Keras raises many kinds
                reason = f"could not be loaded: {type(error).__name__}: {error}"
        if on_skip is not None:
            on_skip(path, reason)
    return None, 0


def all_finite(model: keras.Model) -> bool:
    """True if every variable of `model` and of its optimizers is finite:
    `training_state(model)`, `AsyncPipelinedModel`'s stage and synthesizer
    optimizers included (Keras does not track those)."""
    return all(
        np.isfinite(v).all()
        for v in (keras.ops.convert_to_numpy(x) for x in training_state(model))
        if np.issubdtype(v.dtype, np.floating)
    )


class FiniteCheckpoint(keras.callbacks.Callback):
    """Saves `epoch-<n>.keras` after each epoch, atomically, if it is finite.

    Unlike `keras.callbacks.ModelCheckpoint`, an epoch whose weights,
    optimizer state or any logged training loss (task, synthesizer, auxiliary:
    each key `is_loss_key` accepts) are not finite is not saved
    (a warning says so), and pruning keeps the newest `keep` files: since only
    finite models are ever written, a run that diverges late still holds its
    last finite checkpoints. Files are written by `save_atomically`.

    Args:
        folder: the folder of the checkpoints (created if needed).
        keep: how many of the newest checkpoints to keep; >= 1.
        guard: a `StopOnDivergence`, or None. An epoch in which it found
            training diverged (a loss that blew up while staying finite:
            its `max_growth`) is not saved either. Put the guard before
            this callback in the list, so that it judges the epoch first.
            With a `RollBackOnDivergence`, an epoch that it undid is saved,
            its losses notwithstanding (its weights must still be finite):
            the file then holds the state that the rollback put back, the
            one that the next epoch starts from, so that a resume goes on
            as the run would have.

    Attributes:
        last_saved: the path of the newest checkpoint this callback wrote, or
            None.
    """

    def __init__(self, folder, keep: int = 2, guard=None):
        super().__init__()
        self.folder = Path(folder)
        self.keep = check_int("keep", keep, 1)
        if guard is not None and not isinstance(guard, StopOnDivergence):
            raise ValueError(
                "Expected guard to be a keras_sg.callbacks.StopOnDivergence or "
                f"None. Received: guard={guard!r}"
            )
        self.guard = guard
        self.last_saved = None

    def on_epoch_end(self, epoch, logs=None):
        rolled_back = isinstance(self.guard, RollBackOnDivergence) and any(
            r["epoch"] == epoch + 1 for r in self.guard.rollbacks
        )
        bad = {
            k: v
            for k, v in (logs or {}).items()
            if is_loss_key(k) and not math.isfinite(float(v)) and not rolled_back
        }
        if bad or not all_finite(self.model):
            log.warning(
                "Not saving epoch %d: %s",
                epoch + 1,
                f"non-finite losses {bad}" if bad else "non-finite weights",
            )
            return
        if self.guard is not None and self.guard.diverged is not None:
            log.warning("Not saving epoch %d: %s", epoch + 1, self.guard.message)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.last_saved = save_atomically(
            self.model, self.folder / f"epoch-{epoch + 1:04d}.keras"
        )
        # Files of later epochs are ones a resume passed over as damaged:
        # leave them for the user; prune only what this run has superseded.
        older = [p for n, p in checkpoint_files(self.folder) if n <= epoch + 1]
        for path in older[: -self.keep]:
            path.unlink(missing_ok=True)
