"""The math of one decoupled training step, as small pure functions.

`DecoupledModel.train_step` composes these; tests call them directly on tiny
networks and compare with NumPy. Notation (Jaderberg et al. 2016,
arXiv:1608.05343): stage k maps h_{k-1} to h_k = f_k(h_{k-1}; theta_k); the
synthesizer at cut k predicts g_k ~ dL/dh_k from h_k (and, for cDNI, from the
label).

Scale. Keras losses average over the global batch of B examples, so dL/dh_k
of a single example is 1/B times that example's own gradient. Synthesizers
predict the per-example gradient, B * dL/dh_k, which does not shrink as the
batch grows; the stage below is pulled back with g_k / B. The factor cancels
exactly: with an oracle synthesizer the update equals backprop's.

Precision. Under a mixed policy the stages and synthesizers compute in float16
or bfloat16, but the quantities a synthesizer learns from live in float32:
targets are unscaled and cast to float32 before they are stored or regressed,
and the regression error is taken in float32. Under `"mixed_float16"` Keras's
`LossScaleOptimizer` divides every gradient it receives by its loss scale S,
so every loss whose gradients reach it is multiplied by S on its tape: here,
the cotangents (the task loss's 1, the stage below a cut's g_k / B, each
synthesizer loss's derivative) are multiplied by S. Targets read off a
pullback are divided by S again, so a synthesizer learns the same per-example
gradient whatever the loss scale of the step.
"""

from collections.abc import Callable, Sequence

import tensorflow as tf


def vjp(
    fn: Callable,
    inputs,
    variables: Sequence[tf.Variable],
    *,
    watch_inputs: bool = True,
    persistent: bool = False,
):
    """Runs `fn` and returns its outputs with a pullback (vector-Jacobian product).

    Only `variables` and, with `watch_inputs`, `inputs` are recorded, so
    nothing computed before this call (such as the stage below a cut) receives
    a gradient: this is the stop-gradient boundary of a decoupled interface.

    Args:
        fn: maps `inputs` to a tuple of tensors.
        inputs: the tensor fed to `fn`.
        variables: the variables to differentiate with respect to.
        watch_inputs: whether the pullback also returns d/d`inputs`.
        persistent: allow more than one pullback (one per cotangent).

    Returns:
        `(outputs, pullback)`. `pullback(cotangents)` takes a tuple as long as
        `outputs`, where `None` entries (or entries whose output is None)
        contribute nothing, and returns
        `(input_gradient, variable_gradients)`: the gradients of
        sum_i <cotangents[i], outputs[i]>. `input_gradient` is None unless
        `watch_inputs`; unconnected gradients are zeros.
    """
    # Keras variables wrap a tf.Variable; the tape watches the latter.
    variables = [getattr(v, "value", v) for v in variables]
    if watch_inputs:
        inputs = tf.convert_to_tensor(inputs)
    with tf.GradientTape(persistent=persistent, watch_accessed_variables=False) as tape:
        tape.watch(variables)
        if watch_inputs:
            tape.watch(inputs)
        outputs = tuple(fn(inputs))

    def pullback(cotangents):
        if len(cotangents) != len(outputs):
            raise ValueError(
                f"pullback expects {len(outputs)} cotangents, one per output. "
                f"Received: {len(cotangents)}"
            )
        targets, weights = [], []
        for output, cotangent in zip(outputs, cotangents, strict=True):
            if cotangent is not None and output is not None:
                targets.append(output)
                weights.append(tf.cast(cotangent, output.dtype))
        sources = variables + ([inputs] if watch_inputs else [])
        grads = tape.gradient(
            targets,
            sources,
            output_gradients=weights,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        input_grad = grads[-1] if watch_inputs else None
        return input_grad, grads[: len(variables)]

    return outputs, pullback


def after(first, tensors):
    """`tensors`, ready in a graph only once `first` is computed.

    Args:
        first: a tensor or op, or None (then `tensors` are returned as they
            are).
        tensors: a list of tensors, `tf.IndexedSlices` or None.

    Returns:
        A list of the same values; in eager mode, `tensors` themselves.
    """
    if first is None or tf.executing_eagerly():
        return list(tensors)
    with tf.control_dependencies([first]):
        return [
            None
            if t is None
            else tf.nest.map_structure(tf.identity, t, expand_composites=True)
            for t in tensors
        ]


def arrived(tensors):
    """An op on the current device that runs once `tensors` are here.

    It reads one element of each tensor, so in a graph placed over devices it
    runs only after the tensors have been received on the device in scope.
    A stage's update made to wait for it (`after`) runs only once the
    gradient the stage sends down has reached the stage below: on a device
    that runs one op at a time, TensorFlow's executor otherwise may run the
    whole update before the send, and the stage below waits for both
    (measured on two one-core TensorFlow servers; docs/simulation.md). The
    tensor is sent once whatever reads it there, so this adds no transfer.

    Args:
        tensors: a tensor or a nest of them (None entries are skipped).

    Returns:
        An op, or None in eager mode or for no tensor.
    """
    flat = [t for t in tf.nest.flatten(tensors) if t is not None]
    if not flat or tf.executing_eagerly():
        return None
    return tf.group(*(tf.reshape(t, [-1])[:1] for t in flat))


def synthesizer_loss(synthetic, target):
    """Mean squared error of a synthetic gradient and its (stopped) target.

    Computed in float32 whatever the synthesizer's compute dtype: in float16
    the derivative 2 (synthetic - target) / n falls below the smallest
    normal number for a typical error and layer width.

    Returns:
        `(loss, d_loss/d_synthetic)`: the mean over every element of
        (synthetic - target)^2, and its gradient 2 (synthetic - target) / n,
        both float32. Multiply the derivative by the loss scale before
        pulling it back (see `loss_scale`).
    """
    target = tf.stop_gradient(tf.cast(target, tf.float32))
    error = tf.cast(synthetic, tf.float32) - target
    count = tf.cast(tf.size(error), error.dtype)
    return tf.reduce_mean(tf.square(error)), 2.0 * error / count


def bootstrapped_target(input_gradient, scale, loss_scale=1.0):
    """The target of the synthesizer one cut below a stage.

    `input_gradient` is the pullback of the stage with its own synthetic
    gradient (or, for the last stage, with the true loss), taken at the
    stage's input, on a tape whose cotangents carried the factor
    `loss_scale`. Unscaled and scaled to a per-example gradient, in float32,
    it is what the synthesizer below regresses.
    """
    gradient = tf.cast(input_gradient, tf.float32) * tf.cast(scale, tf.float32)
    return tf.stop_gradient(gradient / loss_scale)


def stage_cotangent(synthetic, scale, loss_scale=1.0):
    """The cotangent that pulls a stage back with its synthetic gradient.

    The synthesizer predicts the per-example gradient g_k; the batch-mean
    loss's gradient is g_k / B (`scale` is B), times the loss scale of the
    step. Computed in float32; the pullback casts it to the stage's dtype.
    """
    return tf.cast(synthetic, tf.float32) / tf.cast(scale, tf.float32) * loss_scale


def loss_scale(optimizer):
    """The factor `optimizer` expects on every loss it receives gradients of.

    Keras's `LossScaleOptimizer` (which `compile` wraps around the optimizer
    under the `"mixed_float16"` policy) divides gradients by its current
    dynamic scale; an optimizer with `loss_scale_factor` set divides by that.
    Their `scale_loss` gives the factor; for any other optimizer it is 1.
    Skipping a step whose gradients are not finite, and adjusting the dynamic
    scale, stay the optimizer's own work.

    Returns:
        A float32 scalar: the optimizer's `scale_loss` of 1.
    """
    if optimizer is None:
        return tf.constant(1.0)
    return tf.cast(optimizer.scale_loss(tf.constant(1.0)), tf.float32)


def cosine_similarity(a, b):
    """Cosine of the angle between two tensors, flattened whole."""
    a = tf.reshape(tf.cast(a, tf.float32), [-1])
    b = tf.reshape(tf.cast(b, tf.float32), [-1])
    norms = tf.norm(a) * tf.norm(b)
    return tf.math.divide_no_nan(tf.reduce_sum(a * b), norms)


def replica_fraction():
    """1 / number of replicas in sync: per-replica losses are summed by all-reduce."""
    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


def global_batch_size(x, dtype=tf.float32):
    """The number of examples in the step, over all replicas."""
    first = tf.nest.flatten(x)[0]
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return tf.cast(tf.shape(first)[0] * replicas, dtype)


def check_labels(labels, num_classes: int):
    """Asserts that sparse labels lie in [0, num_classes).

    Returns the labels, with the assertion attached, so a wrong label stops
    the step with a message naming the offending values instead of being one-hot
    encoded to an all-zero row.
    """
    if not labels.dtype.is_integer:
        return labels
    low = tf.reduce_min(labels)
    high = tf.reduce_max(labels)
    ok = tf.logical_and(low >= 0, high < num_classes)
    with tf.control_dependencies(
        [
            tf.debugging.Assert(
                ok,
                [
                    f"cDNI labels must lie in [0, num_classes={num_classes}); "
                    "received labels with min",
                    low,
                    "and max",
                    high,
                ],
            )
        ]
    ):
        return tf.identity(labels)
