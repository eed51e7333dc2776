r"""Trains a recurrent keras_sg experiment (copy, PTB characters, clocks), resumably.

    python scripts/train_sequence.py \
        --config=configs/copy.py:dni,truncation=4,task=repeat_copy \
        --workdir=workdirs/repeat_copy_T4_dni [--config.steps=40000]

The configs are configs/copy.py and configs/ptb_char.py
(`keras_sg.TruncatedBPTTModel`: methods bptt, dni, dni_aux) and
configs/clocks.py (`keras_sg.ClockedPairModel`: bptt, dni). A run trains
with Keras `fit` until `steps` optimizer steps, in epochs of
`steps_per_epoch` steps, or until the first epoch end past `max_seconds`.

The workdir holds what scripts/train.py writes: config.json, a `lock`
(one run at a time), tb/ (TensorBoard), history.csv (one row per epoch),
ckpt/ (a `.keras` checkpoint per epoch, only while every loss and weight is
finite; for the copy tasks, the curriculum's state beside it) and, at the
end, metrics.json: the task, method, truncation, status ("finished" or
"diverged"), why it stopped ("budget", "wall_clock", "max_length"), steps,
seconds (summed over every session's epochs) and the result:

- copy, repeat_copy: `largest_n` (the largest sequence length N solved
  below the curriculum's threshold) and `n_curve`, [(step, N solved)];
- ptb_char: `test_bpc_curve`, [(step, test bits per character)], and
  `final_test_bpc`: over the whole test stream, in `batch_size` parallel
  streams scored window by window with the state carried from one window
  to the next (reset only where each stream starts;
  `keras_sg.data.stream_bits_per_character`). `test_bpc_window_curve` is
  the number `evaluate` gives, with the state reset at every window of
  `data.sequence_length` characters: what the network makes of that much
  context alone;
- clocks: `test_accuracy`, the accuracy on the steps that need the digit
  `lag` slow ticks back (`test_accuracy_later`) and `test_accuracy_curve`.

Run the same command again after an interruption and it goes on from the
last checkpoint (and curriculum state); `steps` and `max_seconds` may grow.
A run whose loss, synthesizer loss or auxiliary loss stops being finite
writes status "diverged" and exits with status 1.
"""

import importlib.util
import math
import os
import sys
import time
from pathlib import Path

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the config files import configs.common

from configs import sequence  # noqa: E402


def _load_train_helpers():
    """scripts/train.py as a module, for its workdir, lock and JSON helpers.

    Loaded by path and not kept in `sys.modules`: it defines the `--config`
    and `--workdir` flags this script uses."""
    spec = importlib.util.spec_from_file_location(
        "_train_helpers", ROOT / "scripts" / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


base = _load_train_helpers()
base.PROGRAM = "train_sequence.py"
base.SAFE_TO_CHANGE = sequence.SAFE_TO_CHANGE
FLAGS = flags.FLAGS
fail = base.fail
parse_flags = base.parse_flags


# ------------------------------------------------------------------- data


def generated_text(characters: int, seed: int) -> str:
    """A tiny text for smoke runs: words of a small vocabulary, joined by `_`,
    sentences ended by a newline, as in the PTB character files."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "ran"]
    out, size = [], 0
    while size < characters:
        sentence = "_".join(rng.choice(words, size=rng.integers(3, 8))) + "\n"
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:characters]


def ptb_corpus(config):
    """The PTB character corpus the config asks for (`CharCorpus`)."""
    from keras_sg import data

    if config.data.generated:
        texts = [generated_text(n, seed) for n, seed in ((6000, 0), (800, 1), (800, 2))]
        vocabulary = data.char_vocabulary("".join(texts))
        return data.CharCorpus(
            vocabulary, *(data.encode_chars(t, vocabulary) for t in texts)
        )
    try:
        return data.load_ptb_chars(config.data.dir)
    except (FileNotFoundError, ValueError) as error:
        fail(f"cannot read PTB: {error}")


def copy_epoch(config, length: int, epoch: int):
    """One epoch of copy-task batches at sequence length N = `length`, as
    arrays, padded (unscored) at the end to a multiple of the truncation.

    Batch b of epoch e is `task_batch(task, batch, N, seed=[seed, e, b])`,
    as `keras_sg.data.copy_task_dataset` makes it."""
    import numpy as np

    from keras_sg import data

    extra = {"bits": config.data.bits}
    if config.task == "repeat_copy":
        extra["max_repeats"] = config.data.max_repeats
    parts = [
        data.task_batch(
            config.task,
            config.batch_size,
            length,
            seed=[config.seed, epoch, b],
            **extra,
        )
        for b in range(config.steps_per_epoch)
    ]
    x, y, w = (np.concatenate(a) for a in zip(*parts, strict=True))
    pad = -x.shape[1] % config.truncation
    widths = [(0, 0), (0, pad)]
    return (
        np.pad(x, widths + [(0, 0)]),
        np.pad(y, widths + [(0, 0)]),
        np.pad(w, widths),
    )


def clock_data(config):
    """Train and test `(x, y)` of clocked digits."""
    from keras_sg import data

    d = config.data
    n, m = d.train_sequences, d.test_sequences
    if d.name == "synthetic":
        x, y = data.synthetic_clocked_digits(
            n + m, d.length, d.period, lag=d.lag, seed=config.seed
        )
        return (x[:n], y[:n]), (x[n:], y[n:])
    folder = d.manual_dir or data.manual_dir_from_env("mnist")
    try:
        images, labels = data.load_split("mnist", "train", manual_dir=folder)
        test_images, test_labels = data.load_split("mnist", "test", manual_dir=folder)
    except (FileNotFoundError, ValueError) as error:
        fail(f"cannot read MNIST: {error}")
    train = data.clocked_digits(
        images, labels, n, d.length, d.period, lag=d.lag, seed=config.seed
    )
    test = data.clocked_digits(
        test_images, test_labels, m, d.length, d.period, lag=d.lag, seed=1
    )
    return train, test


# ------------------------------------------------------------------ model


def build_model(config, vocabulary_size=None):
    """The compiled model the config describes."""
    import keras

    import keras_sg

    def synth():
        return keras_sg.DenseSynthesizer(
            hidden_layers=config.synthesizer.hidden_layers,
            units=config.synthesizer.units,
            use_batch_norm=False,
        )

    optimizer_config = {"learning_rate": config.optimizer.learning_rate}
    if config.optimizer.clipnorm:
        optimizer_config["clipnorm"] = config.optimizer.clipnorm
    optimizer = keras.optimizers.get(
        {"class_name": config.optimizer.name, "config": optimizer_config}
    )
    clip = {"clipnorm": config.optimizer.clipnorm} if config.optimizer.clipnorm else {}
    synth_optimizer = base.synthesizer_optimizer(config, extra=clip)
    if config.task == "clocks":
        synths = {}
        if config.method == "dni":
            synths = dict(message_synthesizer=synth(), state_synthesizer=synth())
        model = keras_sg.ClockedPairModel(
            keras.layers.LSTMCell(config.model.fast_units),
            keras.layers.LSTMCell(config.model.slow_units),
            period=config.data.period,
            output=keras.layers.Dense(10),
            method=config.method,
            sg_loss_weight=config.sg_loss_weight,
            **synths,
        )
        model.compile(
            optimizer,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            synthesizer_optimizer=synth_optimizer,
        )
        return model
    if config.task == "ptb_char":
        layers = [
            keras.Input((config.data.sequence_length,), dtype="int32"),
            keras.layers.Embedding(vocabulary_size, config.model.embedding),
            keras.layers.LSTM(config.model.units, return_sequences=True),
            keras.layers.Dense(vocabulary_size),
        ]
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        compile_args = {}
    else:
        from keras_sg.data import copy_tasks

        inputs, outputs = copy_tasks.task_channels(config.task, config.data.bits)
        layers = [
            keras.Input((None, inputs)),
            keras.layers.LSTM(config.model.units, return_sequences=True),
            keras.layers.Dense(outputs),
        ]
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        compile_args = {
            "weighted_metrics": [keras_sg.data.BitsPerCharacter(from_logits=True)]
        }
    uses_synth = config.method in ("dni", "dni_aux")
    model = keras_sg.TruncatedBPTTModel(
        keras.Sequential(layers),
        truncation=config.truncation,
        method=config.method,
        synthesizer=synth() if uses_synth else None,
        aux_synthesizer=synth() if config.method == "dni_aux" else None,
        sg_loss_weight=config.sg_loss_weight,
        aux_weight=config.aux_weight,
        sg_scale=config.sg_scale,
    )
    model.compile(
        optimizer, loss, synthesizer_optimizer=synth_optimizer, **compile_args
    )
    return model


# -------------------------------------------------------------- callbacks


def callbacks_module():
    """The callbacks of this script (they need keras, imported late)."""
    import keras

    class CurriculumStep(keras.callbacks.Callback):
        """Runs the curriculum at the epoch's end, puts N into the logs and
        saves the curriculum's state beside the epoch's checkpoint."""

        def __init__(self, curriculum, folder):
            super().__init__()
            self.curriculum, self.folder = curriculum, Path(folder)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            self.curriculum.on_epoch_end(epoch, logs)
            logs["sequence_length"] = self.curriculum.history[-1]["length"]
            logs["solved_length"] = self.curriculum.solved_length
            self.curriculum.save(str(self.folder / f"curriculum-{epoch + 1:04d}.json"))

    class StreamBits(keras.callbacks.Callback):
        """Puts the test bits per character into the epoch's logs:
        `test_bpc` over the whole stream, the state carried across windows,
        and `test_bpc_window`, with the state reset at every window (the
        validation loss divided by ln 2)."""

        def __init__(self, ids, batch_size, seq_len):
            super().__init__()
            self.ids, self.batch_size, self.seq_len = ids, batch_size, seq_len

        def on_epoch_end(self, epoch, logs=None):
            from keras_sg.data import stream_bits_per_character

            logs = logs if logs is not None else {}
            logs["test_bpc"] = stream_bits_per_character(
                self.model, self.ids, self.batch_size, self.seq_len
            )
            if "val_loss" in logs:
                logs["test_bpc_window"] = logs["val_loss"] / math.log(2.0)

    return CurriculumStep, StreamBits


# ------------------------------------------------------------------- main


def history_rows(workdir: Path) -> list[dict]:
    """history.csv, the last row of each epoch (a resumed run repeats some)."""
    import csv

    path = workdir / "history.csv"
    if not path.exists():
        return []
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = {
                k: float(v) for k, v in row.items() if v and v != "NA"
            }
    return [rows[k] for k in sorted(rows)]


def check_stream_history(workdir: Path):
    """Ends the run if the workdir's history.csv predates the `test_bpc`
    column: appending rows with one more column would shift every value
    after it under the wrong name."""
    path = workdir / "history.csv"
    if not path.exists() or not path.stat().st_size:
        return
    with open(path) as f:
        header = f.readline().strip().split(",")
    if "test_bpc" not in header:
        fail(
            f"{path} was written before the test bits per character over the "
            "whole stream were logged (no `test_bpc` column); resume it with "
            f"the script that started it, or start a new workdir. Received: "
            f"columns {header}"
        )


def main(argv):
    del argv
    config = FLAGS.config
    workdir = Path(FLAGS.workdir)
    try:
        sequence.validate(config)
    except ValueError as error:
        fail(f"bad config: {error}")
    base.check_workdir(workdir)
    base.check_same_config(workdir, config)
    base.check_optimizer(config)
    base.lock_workdir(workdir)
    try:
        run(config, workdir)
    finally:  # release the workdir (an in-process caller may run again)
        while base._LOCK:
            os.close(base._LOCK.pop())


def run(config, workdir: Path):
    base.check_same_config(workdir, config)
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_sg
    from keras_sg.callbacks import checkpoint

    ckpt_dir = workdir / "ckpt"
    checkpoint.remove_partial_files(ckpt_dir)
    base.write_atomically(workdir / "config.json", config.to_json_best_effort(indent=2))
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    spe = config.steps_per_epoch
    vocabulary_size = None
    if config.task == "ptb_char":
        corpus = ptb_corpus(config)
        vocabulary_size = len(corpus.vocabulary)
        test_ids = corpus.test
        if config.data.test_characters:
            test_ids = test_ids[: config.data.test_characters]
        length = config.data.sequence_length
        try:
            train_windows = keras_sg.data.bptt_windows(
                corpus.train, config.batch_size, length
            )
            test = keras_sg.data.bptt_dataset(test_ids, config.batch_size, length)
        except ValueError as error:
            fail(f"bad config: {error}")
        check_stream_history(workdir)
    elif config.task == "clocks":
        (x, y), (x_test, y_test) = clock_data(config)
        wanted = -(-len(x) // config.batch_size)
        if spe != wanted:
            fail(
                "bad config: `steps_per_epoch` of the clocks task is one pass, "
                f"ceil(data.train_sequences / batch_size) = {wanted}. Received: "
                f"steps_per_epoch={spe}"
            )
    epochs = -(-config.steps // spe)

    def skipped(path, reason):
        print(f"Checkpoint {path} is {reason}; falling back to the one before")

    model, initial_epoch = checkpoint.load_latest(ckpt_dir, on_skip=skipped)
    if model is None:
        model = build_model(config, vocabulary_size)
    else:
        print(f"Resuming {workdir} from epoch {initial_epoch}", flush=True)

    CurriculumStep, StreamBits = callbacks_module()
    # Stops at the first non-finite loss the model logs: the task loss and
    # every synthesizer and auxiliary loss.
    guard = keras_sg.callbacks.StopOnDivergence()
    stop = {"reason": "budget"}
    session_start = time.perf_counter()

    def cap(epoch, logs):
        elapsed = time.perf_counter() - session_start
        if config.max_seconds and elapsed > config.max_seconds and epoch + 1 < epochs:
            stop["reason"] = "wall_clock"
            model.stop_training = True

    freq = config.log.update_freq
    callbacks = [
        guard,
        base.epoch_timer(),
        keras.callbacks.TensorBoard(
            str(workdir / "tb"), update_freq=int(freq) if freq.isdigit() else freq
        ),
        keras.callbacks.CSVLogger(str(workdir / "history.csv"), append=True),
        keras_sg.callbacks.FiniteCheckpoint(ckpt_dir, keep=config.keep_checkpoints),
        keras.callbacks.LambdaCallback(on_epoch_end=cap),
    ]
    verbose = 1 if sys.stdout.isatty() else 2
    if config.task == "ptb_char":
        # Before the CSV logger: the test BPC goes into the logs.
        callbacks.insert(1, StreamBits(test_ids, config.batch_size, length))
    curriculum = None
    if config.task in ("copy", "repeat_copy"):
        c = config.curriculum
        curriculum = keras_sg.data.LengthCurriculum(
            threshold=c.threshold,
            start_length=c.start_length,
            step=c.step,
            max_length=c.max_length,
        )
        if initial_epoch:
            state = ckpt_dir / f"curriculum-{initial_epoch:04d}.json"
            try:
                curriculum.load(str(state))
            except (OSError, ValueError) as error:
                fail(f"cannot restore the curriculum from {state}: {error}")
        # Before the CSV logger and the checkpoint: N goes into the logs.
        callbacks.insert(2, CurriculumStep(curriculum, ckpt_dir))
        for epoch in range(initial_epoch, epochs):
            if curriculum.solved_length >= c.max_length:
                stop["reason"] = "max_length"
                break
            x, y, w = copy_epoch(config, curriculum.length, epoch)
            model.fit(
                x,
                y,
                sample_weight=w,
                batch_size=config.batch_size,
                epochs=epoch + 1,
                initial_epoch=epoch,
                shuffle=False,
                callbacks=callbacks,
                verbose=verbose,
            )
            if guard.diverged or model.stop_training:
                break
    elif config.task == "ptb_char":
        inputs, targets = train_windows
        windows = len(inputs)
        first = initial_epoch * spe
        # Window k of the run is window k mod W of the stream, in order.
        order = (np.arange(first, first + (epochs - initial_epoch) * spe)) % windows
        train = tf.data.Dataset.from_tensor_slices((inputs[order], targets[order]))
        model.fit(
            train,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=spe,
            validation_data=test,
            callbacks=callbacks,
            verbose=verbose,
        )
    else:
        model.fit(
            x,
            y,
            batch_size=config.batch_size,
            epochs=epochs,
            initial_epoch=initial_epoch,
            validation_data=(x_test, y_test),
            callbacks=callbacks,
            verbose=verbose,
        )
    session_seconds = time.perf_counter() - session_start

    rows = history_rows(workdir)
    steps_done = int(model.optimizer.iterations.numpy())
    metrics = {
        "task": config.task,
        "method": config.method,
        "truncation": config.get("truncation"),
        "status": "finished",
        "stopped": stop["reason"],
        "steps": steps_done,
        "steps_budget": config.steps,
        "max_seconds": config.max_seconds,
        "epochs": len(rows),
        "resumed_from_epoch": initial_epoch,
        "seconds": sum(r.get("epoch_seconds", 0.0) for r in rows),
        "session_seconds": session_seconds,
    }
    if guard.diverged:
        finite = checkpoint.checkpoint_files(ckpt_dir)
        epoch, batch = guard.diverged["epoch"], guard.diverged["batch"]
        losses = {k: str(v) for k, v in guard.diverged["losses"].items()}
        metrics.update(
            status="diverged",
            diverged=dict(guard.diverged, losses=losses, message=guard.message),
        )
        metrics["newest_finite_checkpoint"] = str(finite[-1][1]) if finite else None
        base.write_metrics(workdir, metrics)
        where = f"epoch {epoch}" + (f", batch {batch}" if batch is not None else "")
        fail(
            f"training diverged at {where}: non-finite {losses}. "
            f"Newest finite checkpoint: {metrics['newest_finite_checkpoint']}"
        )
    if curriculum is not None:
        metrics.update(
            largest_n=curriculum.solved_length,
            n_curve=[
                [(int(r["epoch"]) + 1) * spe, int(r["solved_length"])] for r in rows
            ],
            length_curve=[
                [(int(r["epoch"]) + 1) * spe, int(r["sequence_length"])] for r in rows
            ],
            curriculum=curriculum.get_state(),
        )
    elif config.task == "ptb_char":
        curve = [[(int(r["epoch"]) + 1) * spe, r["test_bpc"]] for r in rows]
        windows = keras_sg.data.bptt_windows(test_ids, config.batch_size, length)[1]
        metrics.update(
            test_bpc_curve=curve,
            final_test_bpc=curve[-1][1] if curve else None,
            test_bpc_window_curve=[
                [(int(r["epoch"]) + 1) * spe, r["test_bpc_window"]] for r in rows
            ],
            test_characters_scored=int(windows.size),
            train_bpc_last_epoch=rows[-1]["loss"] / math.log(2.0) if rows else None,
            test_characters=int(len(test_ids)),
            vocabulary_size=vocabulary_size,
        )
    else:
        lag_steps = config.data.lag * config.data.period
        right = model.predict(x_test, verbose=0).argmax(-1) == y_test
        metrics.update(
            test_accuracy=float(right.mean()),
            test_accuracy_first_blocks=float(right[:, :lag_steps].mean()),
            test_accuracy_later=float(right[:, lag_steps:].mean()),
            test_accuracy_curve=[
                [(int(r["epoch"]) + 1) * spe, r["val_accuracy"]] for r in rows
            ],
        )
    base.write_metrics(workdir, metrics)
    print(
        f"{config.task} {config.method}: {metrics['steps']} steps in "
        f"{metrics['seconds']:.0f}s ({metrics['stopped']}); results in {workdir}",
        flush=True,
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
