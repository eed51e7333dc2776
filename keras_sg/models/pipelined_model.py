"""Pipelined DNI: in one training step every stage works on a different batch."""

import keras
import tensorflow as tf

from keras_sg.models import steps
from keras_sg.models.decoupled_model import (
    DecoupledModel,
    _stage_vjp,
    _synthesize,
)


class _PipelineState:
    """The buffers between stages. A plain object, so Keras neither tracks nor saves it.

    Buffers hold transient activations: a model restored from a file starts
    with empty buffers and warms the pipeline up again.
    """

    def __init__(self, devices, num_stages):
        def buffer(k):
            with tf.device(devices[k] if devices else None):
                return tf.Variable(
                    tf.zeros([0]), shape=tf.TensorShape(None), trainable=False
                )

        cuts = range(num_stages - 1)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        # What stage k+1 reads next step: the activation at cut k and the labels
        # of the batch it belongs to. Kept on the device of stage k+1.
        self.activation = [buffer(k + 1) for k in cuts]
        self.labels = [buffer(k + 1) for k in cuts]
        # What the synthesizer at cut k regresses next step: the activation that
        # stage k+1 consumed, its labels, and the bootstrapped target that stage
        # k+1 sent back. Kept on the device of stage k.
        self.sg_input = [buffer(k) for k in cuts]
        self.sg_labels = [buffer(k) for k in cuts]
        self.sg_target = [buffer(k) for k in cuts]


@keras.saving.register_keras_serializable(package="keras_sg")
class PipelinedModel(DecoupledModel):
    """Pipelined DNI: every stage works on a different batch in the same step.

    At step t, stage k runs on batch t - k: it reads the activation that stage
    k - 1 produced at step t - 1 (kept on device, with its labels), updates
    from its own synthetic gradient (the top stage from the loss on that
    batch's labels), and sends back the bootstrapped target for the
    synthesizer below, which regresses it at step t + 1. Inside a step no stage
    waits for another, so with stages placed on separate devices TensorFlow's
    executor runs them at the same time (Jaderberg et al. 2016,
    arXiv:1608.05343, Section 2: update and backwards unlocking).

    Warm-up: stage k has no input before step k, and the synthesizer at cut k
    no target before step k + 2. Until then they are skipped, not trained on
    empty buffers, and the loss and metrics count only batches that reached
    the top stage.

    Each stage's update, the target it sends back and the regression of the
    synthesizer below are scaled by the size of the batch that stage works
    on, which differs from this step's when a batch is partial. Neither
    weight decay nor regularization touches a stage before its first batch
    arrives (see `_apply_active`; under a `tf.distribute` strategy weight
    decay is refused with an error). The logged loss is the top stage's
    `compute_loss` on the batch that reached it: the task loss, the weight
    penalties of every layer and the top stage's own activity penalties
    (those of the stages below were taken on other batches).

    The buffers change shape (empty during warm-up, smaller after a partial
    batch), which XLA cannot compile, so the model runs with
    `jit_compile=False`; Keras warns if `jit_compile=True` is asked for.

    Takes the arguments of `DecoupledModel`; `method` must be `"dni"` or
    `"cdni"`. `fit` must see the batches in order (`shuffle=False` for
    arrays; a dataset's own order is kept), with labels and without sample
    weights. `evaluate` and `predict` run the plain forward pass.
    """

    def __init__(self, network, synthesizers=None, method: str = "dni", **kwargs):
        if method not in ("dni", "cdni"):
            raise ValueError(
                "PipelinedModel trains with synthetic gradients: expected "
                f"method 'dni' or 'cdni'. Received: method={method!r}"
            )
        if kwargs.get("sg_target", "bootstrap") != "bootstrap":
            raise ValueError(
                "PipelinedModel regresses bootstrapped targets only. "
                f"Received: sg_target={kwargs['sg_target']!r}"
            )
        self._state = None
        self._cut_shapes = None
        super().__init__(network, synthesizers, method=method, **kwargs)
        # XLA keeps a variable's shape fixed, and the buffers change theirs.
        # Fixed-size buffers would need the largest batch before the first
        # step, which `fit` does not tell a model, and XLA's static shapes
        # would then make every stage run on the padded buffer: rows that
        # batch normalisation would count. Keras turns jit_compile off
        # (warning if it was asked for) for a model that does not support it.
        self.supports_jit = False

    def build(self, input_shape):
        super().build(input_shape)
        shapes, shape = [], input_shape
        for stage in self.stages[:-1]:
            shape = tuple(stage.compute_output_spec(keras.KerasTensor(shape)).shape)
            shapes.append(shape)
        self._cut_shapes = shapes
        self._state = _PipelineState(self.devices, len(self.stages))

    @property
    def pipeline_state(self) -> _PipelineState:
        """The buffers between stages, for inspection."""
        return self._state

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None or sample_weight is not None:
            raise ValueError(
                "PipelinedModel needs labels and takes no sample weights. "
                f"Received: y={'None' if y is None else 'labels'}, sample_weight="
                f"{'None' if sample_weight is None else 'weights'}"
            )
        self.build_for(x)
        if self.method == "cdni":
            y = self._context(y)
        state, last = self._state, len(self.stages) - 1
        share = steps.replica_fraction()
        loss_scale = self._loss_scale()
        t = state.step.read_value()

        # Read every buffer before anything writes one: what the stages
        # consume this step was produced at the previous step.
        inputs = [x] + [self._read(b, shape) for b, shape in self._cut_buffers()]
        labels = [y] + [_read_like(b, y) for b in state.labels]
        sg_inputs = [self._read(b, shape) for b, shape in self._sg_buffers()]
        sg_labels = [_read_like(b, y) for b in state.sg_labels]
        sg_targets = [self._read(b, shape) for b, shape in self._sg_target_buffers()]

        grads, writes, sg_losses, sg_weights = {}, [], [], []
        for k, stage in enumerate(self.stages):
            with self._on(k):
                active = t >= k
                if k < last:
                    h, target, stage_grads = self._stage_step(
                        k, inputs[k], labels[k], share, loss_scale, active
                    )
                    writes.append((state.activation[k], h))
                    writes.append((state.labels[k], _as_float(labels[k])))
                    synth_grads, sg_loss = self._synthesizer_step(
                        k,
                        sg_inputs[k],
                        sg_labels[k],
                        sg_targets[k],
                        share * loss_scale,
                        t >= k + 2,
                    )
                    grads.update(
                        zip(
                            map(id, self.synthesizers[k].trainable_variables),
                            synth_grads,
                            strict=True,
                        )
                    )
                    sg_losses.append(sg_loss)
                    sg_weights.append(tf.cast(t >= k + 2, tf.float32))
                else:
                    # The penalties that the stages below (and their
                    # synthesizers) recorded inside their branches cannot be
                    # read here; each was already part of its own update.
                    _forget_losses(self.stages[:last] + self.synthesizers)
                    loss, y_pred, target, stage_grads = self._top_step(
                        inputs[k], labels[k], loss_scale, active
                    )
                grads.update(
                    zip(map(id, stage.trainable_variables), stage_grads, strict=True)
                )
                if k > 0:
                    writes.append((state.sg_input[k - 1], inputs[k]))
                    writes.append((state.sg_labels[k - 1], _as_float(labels[k])))
                    writes.append((state.sg_target[k - 1], target))

        # Update weights: one optimizer step over the parts that worked.
        applied = self._apply_active(grads, t)
        self._track_sg_losses(sg_losses, applied, sg_weights)
        for buffer, value in writes:
            buffer.assign(tf.cast(value, buffer.dtype))
        state.step.assign_add(1)

        top_active = t >= last
        count = tf.where(top_active, tf.shape(labels[last])[0], 0)
        self._loss_tracker.update_state(loss / share, sample_weight=count)
        weight = tf.fill(tf.shape(labels[last])[:1], tf.cast(top_active, "float32"))
        metrics = self.compute_metrics(
            inputs[last], labels[last], y_pred, sample_weight=weight
        )
        for tracker in self.sg_loss_trackers:
            metrics[tracker.name] = tracker.result()
        return metrics

    # --------------------------------------------------------------- update

    def _apply_active(self, grads, t):
        """One optimizer step over the stages and synthesizers that worked at step t.

        Stage k works from step k on, the synthesizer at cut k from step
        k + 2; the others carry zero gradients. For most optimizers that
        leaves them alone: their slots start at zero, and a zero gradient
        moves nothing (`_STILL_AT_ZERO_GRADIENT`, checked for Keras's own).
        Decoupled weight decay (AdamW, Muon, `weight_decay=`) shrinks every
        variable it is given, however, and Ftrl re-derives each variable from
        its accumulators. With those (and any optimizer not on the list),
        each warm-up step applies the optimizer to its own subset, one branch
        per step of the warm-up (`len(stages) + 1` branches; from then on the
        last, with everything). The branches are not the default because each
        holds a copy of the update in the graph, which slows the first trace.
        Either way the optimizer is built once, on every trainable variable,
        and one `apply` runs per step, so `iterations` counts steps. With a
        synthesizer optimizer, the same holds for each optimizer on its own
        variables; the branches are taken when either may move at zero.

        Under a `tf.distribute` strategy the optimizer synchronises replicas
        (a merge call), which TensorFlow refuses inside a branch: there only
        optimizers on the list, without weight decay, are accepted.

        Returns whether the step is applied, as `_apply` does.
        """
        self._build_optimizer()
        moving = self._moving_at_zero_gradient()
        if moving is None:
            return self._apply(grads)
        optimizer, decay = moving
        if tf.distribute.has_strategy():
            raise ValueError(
                "Under a tf.distribute strategy, PipelinedModel updates every "
                "variable at every step, the stages still in warm-up with zero "
                "gradients, so it needs an optimizer that a zero gradient does "
                f"not move: one of {sorted(_STILL_AT_ZERO_GRADIENT)}, without "
                "weight decay (an L2 penalty on the layers is fine). Received: "
                f"optimizer={type(optimizer).__name__}, weight_decay={decay}"
            )
        last = len(self.stages) - 1

        def phase(p):
            layers = list(self.stages[: min(p, last) + 1])
            layers.extend(self.synthesizers[: max(p - 1, 0)])
            subset = {
                id(v): grads[id(v)]
                for layer in layers
                for v in layer.trainable_variables
            }

            def apply():
                # With a synthesizer optimizer, `_apply` counts the step for
                # an optimizer that gets no gradient.
                if subset or self.synthesizer_optimizer is not None:
                    return self._apply(subset)
                self.optimizer.iterations.assign_add(1)
                return tf.constant(True)

            return apply

        index = tf.cast(tf.minimum(t, last + 1), tf.int32)
        return tf.switch_case(index, [phase(p) for p in range(last + 2)])

    def _moving_at_zero_gradient(self):
        """`(optimizer, weight_decay)` of the first optimizer (the model's, then
        the synthesizers') that a zero gradient may move, or None."""
        for optimizer in (self.optimizer, self.synthesizer_optimizer):
            if optimizer is None:
                continue
            optimizer = getattr(optimizer, "inner_optimizer", optimizer)
            decay = getattr(optimizer, "weight_decay", None)
            still = type(optimizer).__name__ in _STILL_AT_ZERO_GRADIENT and (
                type(optimizer).__module__.startswith("keras.")
            )
            if not still or decay:
                return optimizer, decay
        return None

    # ----------------------------------------------------------- one device

    def _stage_step(self, k, inputs, labels, share, loss_scale, active):
        """Stage k below the top: forward, synthetic gradient, pullback.

        Returns the activation (float32, as the buffers hold it), the
        bootstrapped target for the synthesizer at cut k - 1 (empty for
        stage 0) and the stage's gradients.
        """
        stage, synth = self.stages[k], self.synthesizers[k]
        context = labels if self.method == "cdni" else None

        def work():
            # Stage k works on batch t - k, whose size may differ from this step's.
            scale = steps.global_batch_size(inputs)
            h, pullback = _stage_vjp(stage, inputs, share, k > 0)
            g = _synthesize(synth, h, context)
            cotangent = steps.stage_cotangent(g, scale, loss_scale)
            input_grad, stage_grads = pullback((cotangent, loss_scale))
            # The buffers hold float32, whatever the stage computes in.
            h = tf.cast(h, tf.float32)
            if k == 0:
                return h, tf.zeros((0,)), stage_grads
            target = steps.bootstrapped_target(input_grad, scale, loss_scale)
            return h, target, stage_grads

        def skip():
            h = tf.zeros((0, *self._cut_shapes[k][1:]), tf.float32)
            target = tf.zeros((0,)) if k == 0 else tf.zeros_like(inputs, tf.float32)
            return h, target, _zeros_like(stage.trainable_variables)

        return tf.cond(active, work, skip)

    def _top_step(self, inputs, labels, loss_scale, active):
        top, last = self.stages[-1], len(self.stages) - 1

        def work():
            def top_loss(a):
                y_pred = top(a, training=True)
                loss = self.compute_loss(x=a, y=labels, y_pred=y_pred, training=True)
                return loss, y_pred

            (loss, y_pred), pullback = steps.vjp(
                top_loss, inputs, top.trainable_variables, watch_inputs=last > 0
            )
            input_grad, grads = pullback((loss_scale, None))
            if input_grad is None:
                return loss, y_pred, tf.zeros_like(inputs), grads
            # The top works on batch t - last: its size scales the target.
            scale = steps.global_batch_size(inputs)
            target = steps.bootstrapped_target(input_grad, scale, loss_scale)
            return loss, y_pred, target, grads

        def skip():
            spec = top.compute_output_spec(keras.KerasTensor(inputs.shape))
            y_pred = tf.zeros((0, *spec.shape[1:]), spec.dtype)
            return (
                tf.zeros(()),
                y_pred,
                tf.zeros_like(inputs),
                _zeros_like(top.trainable_variables),
            )

        return tf.cond(active, work, skip)

    def _synthesizer_step(self, k, inputs, labels, target, weight, valid):
        """The synthesizer at cut k regresses the target sent back last step.

        `weight` multiplies the derivative of its loss, with
        `sg_loss_weight`: the replica share times the loss scale.
        """
        synth = self.synthesizers[k]
        context = labels if self.method == "cdni" else None

        def work():
            (g,), pullback = steps.vjp(
                lambda a: (_synthesize(synth, a, context),),
                inputs,
                synth.trainable_variables,
                watch_inputs=False,
            )
            sg_loss, d_g = steps.synthesizer_loss(g, target)
            _, grads = pullback((d_g * (self.sg_loss_weight * weight),))
            return grads, sg_loss

        def skip():
            return _zeros_like(synth.trainable_variables), tf.zeros(())

        grads, sg_loss = tf.cond(valid, work, skip)
        return grads, sg_loss

    # -------------------------------------------------------------- buffers

    def _cut_buffers(self):
        return zip(self._state.activation, self._cut_shapes, strict=True)

    def _sg_buffers(self):
        return zip(self._state.sg_input, self._cut_shapes, strict=True)

    def _sg_target_buffers(self):
        return zip(self._state.sg_target, self._cut_shapes, strict=True)

    @staticmethod
    def _read(buffer, shape):
        return tf.reshape(buffer.read_value(), (-1, *shape[1:]))


# Keras's own optimizers (not subclasses, which may update differently) that
# leave a variable unchanged when its gradient has been zero from the start
# (slots at zero), as long as they have no weight decay.
_STILL_AT_ZERO_GRADIENT = frozenset(
    (
        "SGD",
        "Adam",
        "Adamax",
        "Nadam",
        "RMSprop",
        "Adagrad",
        "Adadelta",
        "Adafactor",
        "Lion",
        "Lamb",
    )
)


def _read_like(buffer, like):
    """A labels buffer read back in the shape and dtype of this step's labels."""
    value = tf.reshape(buffer.read_value(), tf.concat([[-1], tf.shape(like)[1:]], 0))
    return tf.cast(value, like.dtype)


def _as_float(labels):
    return tf.cast(labels, tf.float32)


def _forget_losses(layers):
    """Drops the activity and `add_loss` penalties `layers` recorded in a branch.

    Keras keeps them on the layer until its next call, and `compute_loss`
    sums every layer's: read outside the `tf.cond` branch that made them,
    they raise `InaccessibleTensorError`. Weight penalties are recomputed
    from the variables whenever they are read, so they stay.
    """
    for layer in layers:
        layer._clear_losses()


def _zeros_like(variables):
    return [tf.zeros(v.shape, v.dtype) for v in variables]
