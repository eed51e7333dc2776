"""The client of the asynchronous runtime's two-server tests.

Run as a subprocess by test_async_cluster.py (connecting resets TensorFlow's
context). Prints one JSON line.

    async_cluster_worker.py parity ADDRESSES
    async_cluster_worker.py lost ADDRESSES  (prints "training", then trains on)
    async_cluster_worker.py checkpointed ADDRESSES DIR
        (lock-step, a checkpoint per epoch in DIR; prints "saved" after the
        second, then trains on slowly)
    async_cluster_worker.py resume ADDRESSES CHECKPOINT
        (lock-step from CHECKPOINT to the end, on the servers, against the
        same run straight through in the client)
"""

import json
import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_sg  # noqa: E402

MODE, ADDRESSES = sys.argv[1], sys.argv[2].split(",")
devices = keras_sg.placement.connect_to_cluster({"worker": ADDRESSES})

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

D, H, OUT, B = 3, 4, 2, 2


def build(cls, placed, **kwargs):
    keras.utils.set_random_seed(5)
    net = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(H, activation="tanh"),
            keras_sg.Interface(name="cut_1"),
            keras.layers.Dense(OUT),
        ]
    )
    synth = keras_sg.DenseSynthesizer(
        hidden_layers=0, use_batch_norm=False, num_classes=OUT
    )
    model = cls(
        net,
        [synth],
        method="cdni",
        devices=devices if placed else None,
        **kwargs,
    )
    rng = np.random.default_rng(4)
    kernel, bias = synth.head.get_weights()
    synth.head.set_weights([rng.normal(size=kernel.shape), rng.normal(size=bias.shape)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(0.05), loss)
    return model


def weights(model):
    return [w for part in model.stages + model.synthesizers for w in part.get_weights()]


def max_diff(want, got):
    """The largest difference between two lists of weights."""
    return float(max(np.abs(w - g).max() for w, g in zip(want, got, strict=True)))


def fit_until_lost(model, *args, **kwargs):
    """`model.fit(*args, **kwargs)` while the test kills or stops a server;
    prints which error ended it, when, and the threads it left, then exits.
    """
    threads = threading.active_count()
    try:
        model.fit(*args, **kwargs)
        result = {"error": None}
    except Exception as error:  # the test reads which error it was
        result = {"error": type(error).__name__, "message": str(error)}
    result["at"] = time.time()
    result["threads_left"] = threading.active_count() - threads
    print(json.dumps(result), flush=True)
    # Skip the interpreter's exit: TensorFlow would try to reach the dead
    # task again while tearing down its context.
    os._exit(0)


rng = np.random.default_rng(0)
x = rng.normal(size=(10, D)).astype("float32")
y = rng.integers(0, OUT, size=10)

if MODE == "lost":

    class Started(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                print("training", flush=True)

    model = build(keras_sg.AsyncPipelinedModel, True, capacity=2)
    fit_until_lost(
        model,
        x.repeat(5000, 0),
        y.repeat(5000, 0),
        batch_size=B,
        verbose=0,
        callbacks=[Started()],
    )

# Lock-step runs for the lost worker and the resume: deterministic, so the
# resumed run can be compared with one that was never interrupted.
EPOCHS = 4
x_long = rng.normal(size=(40, D)).astype("float32")
y_long = rng.integers(0, OUT, size=40)


if MODE == "checkpointed":
    folder = sys.argv[3]

    class Saved(keras.callbacks.Callback):
        """After the second epoch's checkpoint (the callback before this
        one), says so; then slows training, so that the kill lands in the
        middle of an epoch."""

        slow = False

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.slow = True
                print("saved", flush=True)

        def on_train_batch_end(self, batch, logs=None):
            if self.slow:
                time.sleep(0.1)

    model = build(keras_sg.AsyncPipelinedModel, True, lock_step=True)
    checkpoint = keras.callbacks.ModelCheckpoint(
        os.path.join(folder, "epoch-{epoch:02d}.keras")
    )
    fit_until_lost(
        model,
        x_long,
        y_long,
        batch_size=B,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[checkpoint, Saved()],
    )

if MODE == "resume":
    path = sys.argv[3]
    done = int(os.path.basename(path)[len("epoch-") : -len(".keras")])
    model = build(keras_sg.AsyncPipelinedModel, True, lock_step=True)
    model.load_weights(path)
    model.fit(
        x_long,
        y_long,
        batch_size=B,
        epochs=EPOCHS,
        initial_epoch=done,
        shuffle=False,
        verbose=0,
    )
    straight = build(keras_sg.AsyncPipelinedModel, False, lock_step=True)
    straight.fit(x_long, y_long, batch_size=B, epochs=EPOCHS, shuffle=False, verbose=0)
    want, got = weights(straight), weights(model)
    print(
        json.dumps(
            {
                "resumed_from": done,
                "max_weight_diff": max_diff(want, got),
                "iterations": [int(o.iterations) for o in model.stage_optimizers()],
                "straight_iterations": [
                    int(o.iterations) for o in straight.stage_optimizers()
                ],
            }
        ),
        flush=True,
    )
    sys.exit(0)


def batches_on(k, repeat=False, examples=None):
    """The batches as a dataset made on stage k's server (of x and y
    repeated to `examples` examples, if given)."""
    arrays = (x, y)
    if examples is not None:
        arrays = (np.resize(x, (examples, D)), np.resize(y, examples))
    with tf.device(devices[k]):
        dataset = tf.data.Dataset.from_tensor_slices(arrays).batch(B)
        return dataset.repeat() if repeat else dataset


def iterator_device(model):
    return model._kept_runtime.iterator._iterator_resource.device


# A dataset made on stage 1's server is refused with a clear error, not
# TensorFlow's: stage 0 would read it from a third task.
remote_dataset_errors = []
for placed in True, False:  # unplaced, stage 0 is this process
    try:
        build(keras_sg.AsyncPipelinedModel, placed).fit(batches_on(1), verbose=0)
        remote_dataset_errors.append(None)
    except ValueError as error:
        remote_dataset_errors.append(str(error))

reference = build(keras_sg.PipelinedModel, False)
start = weights(reference)
reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
want = weights(reference)
# Arrays, and a dataset made on stage 0's server: stage 0 reads both there.
model = build(keras_sg.AsyncPipelinedModel, True, lock_step=True)
model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, drain=False)
on_server = build(keras_sg.AsyncPipelinedModel, True, lock_step=True)
on_server.fit(batches_on(0), epochs=2, verbose=0, drain=False)
# Free running, each fit after the first keeps the runtime: stage 0's thread
# calls its function right after the iterator is made on its server. Without
# a wait for the iterator, stage 0 found it "not initialized" (a million
# examples: making the iterator rewrites the dataset, constants included).
free = build(keras_sg.AsyncPipelinedModel, True)
for _ in range(5):
    free_history = free.fit(
        batches_on(0, repeat=True, examples=1_000_000), steps_per_epoch=5, verbose=0
    )
# Shuffled epochs made on stage 0's server, of TensorFlow ops only: the
# batches of keras_sg.data.batches, which PipelinedModel reads here.
shuffled_reference = build(keras_sg.PipelinedModel, False)
shuffled_reference.fit(
    keras_sg.data.batches(x, y, B, shuffle=True, seed=3), epochs=2, verbose=0
)
with tf.device(devices[0]):
    epochs_on_server = keras_sg.data.shuffled_epochs(x, y, B, 2, seed=3)
shuffled = build(keras_sg.AsyncPipelinedModel, True, lock_step=True)
shuffled.fit(epochs_on_server, epochs=2, steps_per_epoch=5, verbose=0, drain=False)
iterators = [iterator_device(m) for m in (model, on_server, free, shuffled)]
trained = [weights(model), weights(on_server)]
# The same runtime then reads a dataset made in this process.
history = on_server.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(B), verbose=0)
iterators.append(iterator_device(on_server))
print(
    json.dumps(
        {
            "devices": devices,
            "remote_dataset_errors": remote_dataset_errors,
            "variable_devices": [
                sorted({v.value.device for v in model.stage_variables(k)})
                for k in range(2)
            ],
            "iterator_devices": iterators,
            "moved": float(
                min(np.abs(w - s).max() for w, s in zip(want, start, strict=True))
            ),
            "max_weight_diff": [max_diff(want, got) for got in trained],
            "iterations": [int(o.iterations) for o in model.stage_optimizers()],
            "shuffled_weight_diff": max_diff(
                weights(shuffled_reference), weights(shuffled)
            ),
            "client_dataset_loss": history.history["loss"],
            "free_loss": free_history.history["loss"],
        }
    )
)
