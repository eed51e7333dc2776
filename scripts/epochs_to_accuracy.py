r"""Epochs to a MNIST test accuracy for one schedule of the benchmark's model.

Time to accuracy is epochs times time per epoch. scripts/benchmark_pipeline.py
measures both on placed devices; this script measures only the first factor,
on the default device, where it costs seconds an epoch: the same model as the
benchmark (K = 2 stages of two dense layers, width 1024, batch 256), the same
data order, and the choices that change how many epochs a decoupled model
needs (the stage optimizer's warm-up, an optimizer of the synthesizers' own,
the synthesizer, the queue capacity of the asynchronous runtime).

    python scripts/epochs_to_accuracy.py --model=pipelined --synth=linear \
        --cdni --warmup_steps=500 --seed=0

--warmup_steps (the benchmark's flag) is the length of a linear warm-up of
the stages' rate from 0: 500 by default, 0 for none; --decay_steps (also
the benchmark's) adds a cosine decay to a tenth after it. For
--model=async, --steps_per_execution and --jit_compile are the runtime's
steps per call and per-stage XLA. It prints the test
accuracy after each epoch and stops at --target_accuracy
or after --max_epochs, or, with an error, when the run diverged (the
benchmark's --max_loss_growth); with --runs_file it appends the run as one
JSON line.
Epoch counts do not depend on the machine's load, so this runs anywhere.
"""

import json
import os
import sys
from pathlib import Path

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
# The benchmark's model and flags: --capacity, --target_accuracy,
# --max_epochs, --max_loss_growth and --warmup_steps come from there.
import benchmark_pipeline  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "model", "pipelined", ["backprop", "pipelined", "async"], "The schedule."
)
flags.DEFINE_enum("synth", "linear", ["linear", "low_rank"], "The synthesizer.")
flags.DEFINE_bool("cdni", True, "Synthesizers conditioned on the label (cDNI).")
flags.DEFINE_float("learning_rate", 1e-3, "The stages' Adam rate.")
flags.DEFINE_string(
    "synthesizer_optimizer",
    None,
    "An optimizer of the synthesizers' own, by Keras name (none: they share "
    "the stages').",
)
flags.DEFINE_float("synthesizer_learning_rate", 1e-3, "Its learning rate.")
flags.DEFINE_integer(
    "steps_per_execution", 1, "Steps per call of each stage (--model=async)."
)
flags.DEFINE_bool("jit_compile", False, "Per-stage XLA (--model=async).")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights and of the shuffling.")
flags.DEFINE_string("runs_file", None, "JSON-lines file to append the run to.")

BATCH_SIZE = 256


def learning_rate(keras):
    """The stages' rate: constant, or a linear warm-up from 0 (then flat, or
    a cosine decay over --decay_steps)."""
    return benchmark_pipeline.warmed_up(
        keras, FLAGS.learning_rate, FLAGS.warmup_steps, FLAGS.decay_steps
    )


def main(argv):
    del argv
    import keras

    import keras_sg

    keras.utils.set_random_seed(FLAGS.seed)
    spec = dict(
        devices=2,
        width=1024,
        batch_size=BATCH_SIZE,
        micro_batches=8,
        rank=64,
        model=FLAGS.model,
        synth=FLAGS.synth,
        cdni=FLAGS.cdni,
        capacity=FLAGS.capacity,
    )
    model = benchmark_pipeline.build(spec, keras, keras_sg, None, 784)
    extra = {}
    if FLAGS.model == "async":
        extra = dict(
            steps_per_execution=FLAGS.steps_per_execution,
            jit_compile=FLAGS.jit_compile,
        )
    elif FLAGS.steps_per_execution != 1 or FLAGS.jit_compile:
        raise ValueError(
            "--steps_per_execution and --jit_compile are options of "
            f"--model=async. Received: --model={FLAGS.model}"
        )
    if FLAGS.synthesizer_optimizer:
        extra["synthesizer_optimizer"] = keras.optimizers.get(
            {
                "class_name": FLAGS.synthesizer_optimizer,
                "config": {"learning_rate": FLAGS.synthesizer_learning_rate},
            }
        )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(keras)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **extra,
    )
    manual_dir = keras_sg.data.manual_dir_from_env("mnist")
    train_x, train_y = keras_sg.data.load_split("mnist", "train", manual_dir=manual_dir)
    test = keras_sg.data.image_dataset(
        "mnist", "test", 1000, flatten=True, manual_dir=manual_dir
    )
    steps = len(train_x) // BATCH_SIZE
    curve = []
    # The benchmark's guard (--max_loss_growth), kept across the one-epoch
    # fits: it remembers the lowest epoch mean loss.
    guard = keras_sg.callbacks.StopOnDivergence(
        max_growth=FLAGS.max_loss_growth or None
    )
    guard.set_model(model)
    guard.on_train_begin()
    for epoch in range(FLAGS.max_epochs):
        train = keras_sg.data.batches(
            train_x,
            train_y,
            BATCH_SIZE,
            flatten=True,
            shuffle=True,
            seed=FLAGS.seed,
            first_epoch=epoch,
        )
        history = model.fit(
            train, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False
        )
        accuracy = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
        curve.append(round(float(accuracy), 4))
        print(f"epoch {epoch + 1}: test accuracy {accuracy:.4f}", flush=True)
        guard.on_epoch_begin(epoch)
        guard.on_epoch_end(epoch, {k: v[-1] for k, v in history.history.items()})
        if guard.diverged or accuracy >= FLAGS.target_accuracy:
            break
    reached = not guard.diverged and curve[-1] >= FLAGS.target_accuracy
    epochs = len(curve) if reached else None
    outcome = "diverged" if guard.diverged else epochs or "not reached"
    print(f"epochs to {FLAGS.target_accuracy:.1%}: {outcome}")
    if FLAGS.runs_file:
        flag_values = {
            name: getattr(FLAGS, name)
            for name in (
                "model",
                "synth",
                "cdni",
                "learning_rate",
                "warmup_steps",
                "decay_steps",
                "synthesizer_optimizer",
                "synthesizer_learning_rate",
                "capacity",
                "steps_per_execution",
                "jit_compile",
                "seed",
                "max_loss_growth",
            )
        }
        run = dict(flags=flag_values, curve=curve, diverged=guard.message)
        with open(FLAGS.runs_file, "a") as f:
            f.write(json.dumps(run) + "\n")
    if guard.diverged:
        raise SystemExit(guard.message)


if __name__ == "__main__":
    app.run(main)
