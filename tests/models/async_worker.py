"""Runs AsyncPipelinedModel on two logical CPUs and reports what it saw.

Run as a subprocess by test_async_pipelined.py: logical devices must exist
before TensorFlow initialises. Prints one JSON line.
"""

import json
import os
import sys
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_sg  # noqa: E402

MODE = sys.argv[1]  # logical, or xla
devices = keras_sg.placement.split_cpu(2, intra_op_threads=1, inter_op_threads=2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import linear_synth, weights_of  # noqa: E402

D, H, OUT, B = 3, 4, 2, 2


def build(cls, **kwargs):
    keras.utils.set_random_seed(5)
    net = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(H, activation="tanh"),
            keras_sg.Interface(name="cut_1"),
            keras.layers.Dense(OUT),
        ]
    )
    synths = [linear_synth(num_classes=OUT)]
    model = cls(net, synths, method="cdni", devices=devices, **kwargs)
    rng = np.random.default_rng(4)
    kernel, bias = synths[0].head.get_weights()
    synths[0].head.set_weights(
        [rng.normal(size=kernel.shape), rng.normal(size=bias.shape)]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(0.05), loss, metrics=["accuracy"])
    return model


def parts(model):
    return model.stages + model.synthesizers


def short(device):
    return device.split("/")[-1]


rng = np.random.default_rng(0)
x = rng.normal(size=(10, D)).astype("float32")
y = rng.integers(0, OUT, size=10)


def graph_nodes(concrete):
    """The nodes of a stage function's graph and of the functions it calls
    (the while loop's body and below)."""
    graph = concrete.graph.as_graph_def()
    nodes = list(graph.node)
    for function in graph.library.function:
        nodes += list(function.node_def)
    return nodes


def xla_devices(concrete):
    """The devices of the XLA function calls in a stage function."""
    return sorted(
        short(n.device)
        for n in graph_nodes(concrete)
        if n.attr["_XlaMustCompile"].b and n.op.endswith("PartitionedCall")
    )


if MODE == "xla":
    # Lock-step with each stage's math compiled by XLA, on two logical CPUs.
    reference = build(keras_sg.AsyncPipelinedModel, lock_step=True)
    reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, drain=False)
    model = build(keras_sg.AsyncPipelinedModel, lock_step=True)
    model.compile(model.optimizer, model.loss, jit_compile=True)
    start = weights_of(parts(model))
    model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, drain=False)
    want, got = weights_of(parts(reference)), weights_of(parts(model))
    # evaluate and predict run the forward pass uncompiled, as the reference.
    evaluated = [
        m.evaluate(x, y, verbose=0, return_dict=True)["loss"]
        for m in (reference, model)
    ]
    predicted = [m.predict(x, verbose=0) for m in (reference, model)]
    # The runtime its fit traced, kept by the model for the next fit.
    runtime = model._kept_runtime
    calls = [xla_devices(step) for step in runtime.steps]
    # XLA runs a compiled function on one device and reads only the
    # variables there: a variable of CPU:1 read by a function called under
    # CPU:0 is an error, under CPU:1 it is not.
    with tf.device(devices[1]):
        far = tf.Variable(1.0)
    read = tf.function(lambda: far + 1.0, jit_compile=True)
    with tf.device(devices[1]):
        near_read = float(read())
    try:
        with tf.device(devices[0]):
            read()
        wrong_device_error = ""
    except tf.errors.InvalidArgumentError as error:
        wrong_device_error = str(error).splitlines()[0]
    print(
        json.dumps(
            {
                "jit_compile": model.jit_compile,
                "max_weight_diff": float(
                    max(np.abs(w - g).max() for w, g in zip(want, got, strict=True))
                ),
                "moved": float(
                    min(np.abs(g - s).max() for g, s in zip(got, start, strict=True))
                ),
                "optimizer_devices": [
                    sorted({short(v.value.device) for v in o.variables})
                    for o in model.stage_optimizers()
                ],
                "iterations": [int(o.iterations) for o in model.stage_optimizers()],
                "xla_call_devices": calls,
                "evaluated": evaluated,
                "max_predict_diff": float(np.abs(predicted[0] - predicted[1]).max()),
                "jit_after_evaluate": model.jit_compile,
                "near_read": near_read,
                "wrong_device_error": wrong_device_error,
            }
        )
    )
    sys.exit(0)

threads_before = threading.active_count()
reference = build(keras_sg.PipelinedModel)
start = weights_of(parts(reference))
want_history = reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
model = build(keras_sg.AsyncPipelinedModel, lock_step=True)
# An evaluate before the first fit traces Keras's test function on the
# metrics as Keras made them; the fit then moves them to the stages.
model.evaluate(x, y, verbose=0)
history = model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, drain=False)
want, got = weights_of(parts(reference)), weights_of(parts(model))
evaluated = [m.evaluate(x, y, verbose=0, return_dict=True) for m in (reference, model)]
metric_devices = {
    m.name: sorted({short(v.value.device) for v in m.variables}) for m in model.metrics
}

optimizers = model.stage_optimizers()
variable_devices = [
    sorted({short(v.value.device) for v in model.stage_variables(k)}) for k in range(2)
]
slot_devices = [
    sorted(
        {
            short(v.value.device)
            for v in optimizer.variables
            if "momentum" in v.path or "velocity" in v.path
        }
    )
    for optimizer in optimizers
]

free = build(keras_sg.AsyncPipelinedModel, capacity=2)
free.fit(x, y, batch_size=B, epochs=4, verbose=0)

runtime = free._kept_runtime
queue_devices = {
    "activations_0": short(runtime.forward[0].queue_ref.device),
    "targets_0": short(runtime.backward[0].queue_ref.device),
}


def op_devices(concrete, ops):
    """The devices of the nodes of types `ops` in a stage function."""
    return sorted({short(n.device) for n in graph_nodes(concrete) if n.op in ops})


# Stage 1 sends its targets to the queue on CPU:0; the check that the queue
# has room (its size, the assertion) runs there too, beside the queue.
target_check_devices = op_devices(runtime.steps[1], ("QueueSizeV2", "Assert"))


def loop_inputs(concrete):
    """The devices of the step loop and of what enters it, other than
    resources (variables, queues, the iterator: they live where they were
    made). A tensor that enters from another device crosses at every step."""
    nodes = {n.name: n for n in concrete.graph.as_graph_def().node}
    loops = [n for n in nodes.values() if n.op in ("While", "StatelessWhile")]
    devices = set()
    for loop in loops:
        devices.add(short(loop.device))
        for name in loop.input:
            node = nodes[name.lstrip("^").split(":")[0]]
            if node.attr["dtype"].type != tf.resource.as_datatype_enum:
                devices.add(short(node.device))
    return sorted(devices)


# Nothing a step uses comes from this process: each stage's loop runs on
# its device with every tensor it takes (no capture from the default device).
loop_devices = [loop_inputs(step) for step in runtime.steps]
captured = [
    sorted({short(t.device) for t in step.captured_inputs if t.dtype != tf.resource})
    for step in runtime.steps
]

print(
    json.dumps(
        {
            "devices": devices,
            "variable_devices": variable_devices,
            "slot_devices": slot_devices,
            "queue_devices": queue_devices,
            "target_check_devices": target_check_devices,
            "loop_devices": loop_devices,
            "captured_tensor_devices": captured,
            "metric_devices": metric_devices,
            "history": [want_history.history, history.history],
            "evaluated": evaluated,
            "moved": float(
                min(np.abs(w - s).max() for w, s in zip(want, start, strict=True))
            ),
            "max_weight_diff": float(
                max(np.abs(w - g).max() for w, g in zip(want, got, strict=True))
            ),
            "iterations": [int(o.iterations) for o in optimizers],
            "free_batches": [log["batch"].tolist() for log in free.stage_log],
            "free_lag": free.stage_log[0]["lag"].tolist(),
            "free_staleness": [
                int(b - t)
                for b, t in zip(
                    free.stage_log[0]["batch"],
                    free.stage_log[0]["target_batch"],
                    strict=True,
                )
                if t >= 0
            ],
            "threads_before": threads_before,
            "threads_after": threading.active_count(),
        }
    )
)
