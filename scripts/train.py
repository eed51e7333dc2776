r"""Trains one keras_sg experiment from a config file, resumably.

    python scripts/train.py --config=configs/mnist_fcn.py:cdni,depth=4 \
        --workdir=workdirs/fcn4_cdni [--config.epochs=50]

Writes into the workdir: config.json (the resolved config), tb/ (TensorBoard:
train and validation scalars, SG-vs-true-gradient diagnostics), ckpt/ (a
`.keras` checkpoint per epoch, model and optimizer), history.csv and, at the
end, metrics.json. Run the same command again after an interruption (even a
SIGKILL) and it goes on from the last checkpoint that loads, ending with the
weights that an uninterrupted run ends with.
"""

import json
import os
import re
import sys
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the config files import configs.common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:variant].", lock_config=True
)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])

CHECKPOINT = re.compile(r"epoch-(\d+)\.keras$")


def load_data(config):
    """Train and test arrays, as the config asks."""
    import keras_sg

    if config.data.name == "synthetic":
        shape = (28, 28, 1)
        x, y = keras_sg.data.synthetic_images(
            config.data.train_examples + config.data.test_examples, shape, seed=1
        )
        cut = config.data.train_examples
        return (x[:cut], y[:cut]), (x[cut:], y[cut:])
    # Each dataset has its own variable (KERAS_SG_MNIST_DIR, ...).
    manual_dir = config.data.manual_dir or keras_sg.data.manual_dir_from_env(
        config.data.name
    )
    load = dict(data_dir=config.data.data_dir, manual_dir=manual_dir)
    train = keras_sg.data.load_split(config.data.name, "train", **load)
    test = keras_sg.data.load_split(config.data.name, "test", **load)
    if config.data.train_examples:
        train = tuple(a[: config.data.train_examples] for a in train)
    if config.data.test_examples:
        test = tuple(a[: config.data.test_examples] for a in test)
    return train, test


def build_model(config, input_shape, num_classes, devices=None):
    """The network, its synthesizers and the decoupled model, from plain values.

    `devices`: None, or devices to deal the stages onto, round-robin."""
    import keras

    import keras_sg

    m, s = config.model, config.synthesizer
    if m.kind == "fcn":
        net = keras_sg.models.fully_connected(
            input_shape,
            num_classes,
            depth=m.depth,
            units=m.units,
            batch_norm=m.batch_norm,
        )
    elif m.kind == "cnn":
        net = keras_sg.models.convolutional(
            input_shape,
            num_classes,
            depth=m.depth,
            filters=m.filters,
            kernel_size=m.kernel_size,
            batch_norm=m.batch_norm,
        )
    else:
        raise ValueError(f"Expected model.kind 'fcn' or 'cnn'. Received: {m.kind!r}")
    num_stages = len(keras_sg.split_stages(net))
    synthesizers = None
    if config.method in ("dni", "cdni"):
        classes = num_classes if config.method == "cdni" else None
        cuts = num_stages - 1
        if s.kind == "dense":
            make = lambda: keras_sg.DenseSynthesizer(  # noqa: E731
                hidden_layers=s.hidden_layers,
                units=s.units,
                use_batch_norm=s.batch_norm,
                num_classes=classes,
            )
        else:
            make = lambda: keras_sg.ConvSynthesizer(  # noqa: E731
                hidden_layers=s.hidden_layers,
                filters=s.filters,
                kernel_size=s.kernel_size,
                use_batch_norm=s.batch_norm,
                num_classes=classes,
            )
        synthesizers = [make() for _ in range(cuts)]
    if devices:
        devices = [devices[k % len(devices)] for k in range(num_stages)]
    model = keras_sg.DecoupledModel(
        net,
        synthesizers,
        method=config.method,
        sg_loss_weight=config.sg_loss_weight,
        devices=devices or None,
    )
    optimizer = keras.optimizers.get(
        {
            "class_name": config.optimizer.name,
            "config": {"learning_rate": config.optimizer.learning_rate},
        }
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def latest_checkpoint(folder: Path):
    """The newest checkpoint that loads, with its epoch, or (None, 0).

    A run killed while writing leaves a broken newest file: fall back to the
    one before.
    """
    import keras

    found = sorted(
        (int(m.group(1)), p)
        for p in folder.glob("epoch-*.keras")
        if (m := CHECKPOINT.search(p.name))
    )
    for epoch, path in reversed(found):
        try:
            return keras.models.load_model(path), epoch
        except Exception as error:  # a truncated zip raises various errors
            logging.warning("Skipping unreadable checkpoint %s: %s", path, error)
    return None, 0


def bookkeeping(folder: Path, keep: int):
    """Two callbacks: one adds `epoch_seconds` to the logs (put it before the
    CSV logger), one keeps the newest `keep` checkpoints (put it after the
    checkpoint callback)."""
    import keras

    start = {}
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: start.update(t=time.perf_counter()),
        on_epoch_end=lambda epoch, logs: logs.update(
            epoch_seconds=time.perf_counter() - start["t"]
        ),
    )

    def prune(epoch, logs):
        for path in sorted(folder.glob("epoch-*.keras"))[:-keep]:
            path.unlink(missing_ok=True)

    return timer, keras.callbacks.LambdaCallback(on_epoch_end=prune)


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_sg

    config = FLAGS.config
    workdir = Path(FLAGS.workdir)
    ckpt_dir = workdir / "ckpt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    devices = None
    if config.placement.workers:
        # Before any variable exists: connecting resets TensorFlow's context.
        devices = keras_sg.placement.connect_to_cluster(
            {"worker": keras_sg.placement.worker_addresses(config.placement.workers)}
        )
        print(f"Stages run on {devices}", flush=True)

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    (x_train, y_train), (x_test, y_test) = load_data(config)
    num_classes = int(max(y_train.max(), y_test.max()) + 1)
    flatten = config.model.kind == "fcn"
    input_shape = (int(np.prod(x_train.shape[1:])),) if flatten else x_train.shape[1:]

    model, initial_epoch = latest_checkpoint(ckpt_dir)
    if model is None:
        model = build_model(config, tuple(input_shape), num_classes, devices)
    else:
        logging.info("Resuming from epoch %d", initial_epoch)
        print(f"Resuming {workdir} from epoch {initial_epoch}", flush=True)

    train = keras_sg.data.batches(
        x_train,
        y_train,
        config.batch_size,
        flatten=flatten,
        shuffle=True,
        seed=config.seed,
        first_epoch=initial_epoch,
    )
    test = keras_sg.data.batches(x_test, y_test, 1000, flatten=flatten)
    probe_n = config.log.probe_examples
    probe_x = x_test[:probe_n].astype("float32") / 255.0
    probe = (
        probe_x.reshape(len(probe_x), -1) if flatten else probe_x,
        y_test[:probe_n],
    )

    timer, prune = bookkeeping(ckpt_dir, config.keep_checkpoints)
    callbacks = [
        timer,
        keras.callbacks.TensorBoard(
            str(workdir / "tb"),
            update_freq=config.log.update_freq,
            profile_batch=config.log.profile_batch,
        ),
        keras.callbacks.CSVLogger(str(workdir / "history.csv"), append=True),
        keras.callbacks.ModelCheckpoint(str(ckpt_dir / "epoch-{epoch:04d}.keras")),
        prune,
    ]
    if config.method in ("dni", "cdni") and config.log.diagnostics_every_steps:
        callbacks.append(
            keras_sg.callbacks.SyntheticGradientMonitor(
                str(workdir / "tb" / "diagnostics"),
                probe,
                every_n_steps=config.log.diagnostics_every_steps,
            )
        )
    start = time.perf_counter()
    try:
        model.fit(
            train,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            validation_data=test,
            callbacks=callbacks,
            shuffle=False,  # the dataset orders each epoch itself
            verbose=1 if sys.stdout.isatty() else 2,  # progress bars on a terminal
        )
    except keras_sg.placement.WorkerLostError as error:
        raise SystemExit(f"train.py: {error}") from None
    session_seconds = time.perf_counter() - start
    logs = model.evaluate(test, verbose=0, return_dict=True)
    metrics = {
        "method": config.method,
        "test_accuracy": logs["accuracy"],
        "test_error_percent": 100 * (1 - logs["accuracy"]),
        "test_loss": logs["loss"],
        "epochs": config.epochs,
        "steps": int(model.optimizer.iterations.numpy()),
        "resumed_from_epoch": initial_epoch,
        "session_seconds": session_seconds,
    }
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(
        f"{config.method}: test error {metrics['test_error_percent']:.2f}% "
        f"after {metrics['steps']} steps ({config.epochs} epochs) in "
        f"{session_seconds:.0f}s; results in {workdir}",
        flush=True,
    )


if __name__ == "__main__":
    app.run(main)
