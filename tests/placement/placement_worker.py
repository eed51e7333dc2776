"""Places a decoupled model on two logical CPUs and reports where things ran.

Run as a subprocess by test_placement.py: logical devices must exist before
TensorFlow initialises. Prints one JSON line.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_sg  # noqa: E402

MODE = sys.argv[1]  # place FOLDER | too_late | bad_devices DEVICE...
if MODE == "too_late":
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # TensorFlow initialises here
    try:
        keras_sg.placement.split_cpu(2)
    except RuntimeError as error:
        print(json.dumps({"error": str(error)}))
    sys.exit(0)

devices = keras_sg.placement.split_cpu(2, intra_op_threads=1, inter_op_threads=2)

if MODE == "bad_devices":  # each device in place of stage 1's; the errors
    import tiny_model

    errors = {}
    for device in sys.argv[2:]:
        try:
            tiny_model.build([devices[0], device])
            errors[device] = None
        except ValueError as error:
            errors[device] = str(error)
    print(json.dumps(errors))
    sys.exit(0)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tiny_model  # noqa: E402


def build(placed):
    return tiny_model.build(devices if placed else None)


x, y = tiny_model.data()

placed = build(True)
variables = {
    "stage_0": sorted({v.value.device for v in placed.stages[0].weights}),
    "stage_1": sorted({v.value.device for v in placed.stages[1].weights}),
    "synth_0": sorted({v.value.device for v in placed.synthesizers[0].weights}),
}

# Where the ops of one traced train step are placed: the MatMuls that read
# each stage's kernel.
step = tf.function(placed.train_step)
graph = step.get_concrete_function((tf.constant(x[:16]), tf.constant(y[:16]))).graph
matmul_devices = sorted(
    {op.device for op in graph.get_operations() if op.type == "MatMul"}
)

# Where the optimizer's slots live and its update math runs (Adam's Sqrt).
sqrt_devices = sorted({op.device for op in graph.get_operations() if op.type == "Sqrt"})
slots = {}
for v in placed.optimizer.variables:
    if "momentum" in v.path or "velocity" in v.path:
        device = v.value.device.split("/")[-1]
        slots[device] = slots.get(device, 0) + 1

placed.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
# A loaded model rebuilds its optimizer on load: the slots go back in place.
path = os.path.join(sys.argv[2], "placed.keras")
placed.save(path)
loaded = keras.models.load_model(path)
loaded_slots = {}
for v in loaded.optimizer.variables:
    if "momentum" in v.path or "velocity" in v.path:
        device = v.value.device.split("/")[-1]
        loaded_slots[device] = loaded_slots.get(device, 0) + 1
loaded_same = all(
    np.array_equal(a.numpy(), b.numpy())
    for a, b in zip(loaded.optimizer.variables, placed.optimizer.variables, strict=True)
)


def placed_graph(model_class, **kwargs):
    """A placed two-stage MLP of `model_class` (SGD) and its train step's graph."""
    model = model_class(
        keras_sg.models.fully_connected((6,), 3, depth=2, units=8, batch_norm=False),
        devices=devices,
        **kwargs,
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    step = tf.function(model.train_step)
    data = (tf.constant(x[:16]), tf.constant(y[:16]))
    return model, step.get_concrete_function(data).graph


# GPipe sums its micro-batch gradients on the stages' devices: every op
# that makes a tensor of a trainable variable's shape has a device.
gpipe, gpipe_graph = placed_graph(keras_sg.GPipeModel, micro_batches=4)
shapes = {tuple(v.shape) for v in gpipe.trainable_variables}
gpipe_sums = [
    op.device
    for op in gpipe_graph.get_operations()
    if op.type in ("AddV2", "AddN")
    and op.outputs
    and tuple(op.outputs[0].shape) in shapes
]


def waits_for_arrival(graph):
    """Per gradient that waits for the gradient sent down to have arrived
    (`steps.arrived`): its device, the device of what it waits for, the
    devices of what that reads, and how many tensors it reads."""
    found = []
    for op in graph.get_operations():
        for gate in op.control_inputs:
            if gate.type == "NoOp" and gate.name.endswith("group_deps"):
                # Each input a slice of a reshape of the gradient.
                reads = sorted(
                    {s.inputs[0].op.inputs[0].device for s in gate.control_inputs}
                )
                found.append([op.device, gate.device, reads, len(gate.control_inputs)])
    return found


# Backprop and GPipe: stage 1's update waits for its gradient to reach stage 0.
backprop, backprop_graph = placed_graph(keras_sg.DecoupledModel, method="backprop")
send_first = {
    "backprop": waits_for_arrival(backprop_graph),
    "gpipe": waits_for_arrival(gpipe_graph),
    "stage_1_variables": len(backprop.stages[1].trainable_variables),
}

plain = build(False)
plain.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
diff = max(
    float(np.abs(a - b).max())
    for a, b in zip(placed.get_weights(), plain.get_weights(), strict=True)
)
print(
    json.dumps(
        {
            "devices": devices,
            "variables": variables,
            "matmul_devices": matmul_devices,
            "sqrt_devices": sqrt_devices,
            "gpipe_sum_devices": gpipe_sums,
            "send_first": send_first,
            "slots": slots,
            "loaded_slots": loaded_slots,
            "loaded_optimizer_equal": loaded_same,
            "stage_weights": [
                len(placed.stages[0].weights),
                len(placed.stages[1].weights),
            ],
            "synth_weights": len(placed.synthesizers[0].weights),
            "max_weight_diff": diff,
            "jit": placed.jit_compile,
        }
    )
)
