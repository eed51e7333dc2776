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
        scale = steps.global_batch_size(x)
        share = steps.replica_fraction()
        t = state.step.read_value()

        # Read every buffer before anything writes one: what the stages
        # consume this step was produced at the previous step.
        inputs = [x] + [self._read(b, shape) for b, shape in self._cut_buffers()]
        labels = [y] + [_read_like(b, y) for b in state.labels]
        sg_inputs = [self._read(b, shape) for b, shape in self._sg_buffers()]
        sg_labels = [_read_like(b, y) for b in state.sg_labels]
        sg_targets = [self._read(b, shape) for b, shape in self._sg_target_buffers()]

        grads, writes = {}, []
        for k, stage in enumerate(self.stages):
            with self._on(k):
                active = t >= k
                if k < last:
                    out = self._stage_step(
                        k, inputs[k], labels[k], scale, share, active
                    )
                    h, input_grad, stage_grads = out
                    writes.append((state.activation[k], h))
                    writes.append((state.labels[k], _as_float(labels[k])))
                    synth_grads, sg_loss = self._synthesizer_step(
                        k, sg_inputs[k], sg_labels[k], sg_targets[k], share, t >= k + 2
                    )
                    grads.update(
                        zip(
                            map(id, self.synthesizers[k].trainable_variables),
                            synth_grads,
                            strict=True,
                        )
                    )
                    self.sg_loss_trackers[k].update_state(
                        sg_loss, sample_weight=tf.cast(t >= k + 2, sg_loss.dtype)
                    )
                else:
                    loss, y_pred, input_grad, stage_grads = self._top_step(
                        inputs[k], labels[k], share, active
                    )
                grads.update(
                    zip(map(id, stage.trainable_variables), stage_grads, strict=True)
                )
                if k > 0:
                    target = tf.cond(
                        active,
                        lambda g=input_grad: steps.bootstrapped_target(g, scale),
                        lambda g=input_grad: g,
                    )
                    writes.append((state.sg_input[k - 1], inputs[k]))
                    writes.append((state.sg_labels[k - 1], _as_float(labels[k])))
                    writes.append((state.sg_target[k - 1], target))

        # Update weights: one optimizer step over every variable; the skipped
        # (warm-up) parts carry zero gradients.
        self._apply(grads)
        for buffer, value in writes:
            buffer.assign(value)
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

    # ----------------------------------------------------------- one device

    def _stage_step(self, k, inputs, labels, scale, share, active):
        """Stage k below the top: forward, synthetic gradient, pullback."""
        stage, synth = self.stages[k], self.synthesizers[k]
        context = labels if self.method == "cdni" else None

        def work():
            h, pullback = _stage_vjp(stage, inputs, share, k > 0)
            g = _synthesize(synth, h, context)
            input_grad, stage_grads = pullback((g / scale, 1.0))
            if input_grad is None:
                input_grad = tf.zeros_like(inputs)
            return h, input_grad, stage_grads

        def skip():
            h = tf.zeros((0, *self._cut_shapes[k][1:]), inputs.dtype)
            return h, tf.zeros_like(inputs), _zeros_like(stage.trainable_variables)

        return tf.cond(active, work, skip)

    def _top_step(self, inputs, labels, share, active):
        top, last = self.stages[-1], len(self.stages) - 1

        def work():
            def top_loss(a):
                y_pred = top(a, training=True)
                loss = self.compute_loss(x=a, y=labels, y_pred=y_pred, training=True)
                return loss, y_pred

            (loss, y_pred), pullback = steps.vjp(
                top_loss, inputs, top.trainable_variables, watch_inputs=last > 0
            )
            input_grad, grads = pullback((1.0, None))
            if input_grad is None:
                input_grad = tf.zeros_like(inputs)
            return loss, y_pred, input_grad, grads

        def skip():
            y_pred = tf.zeros(
                (0, *top.compute_output_spec(keras.KerasTensor(inputs.shape)).shape[1:])
            )
            return (
                tf.zeros(()),
                y_pred,
                tf.zeros_like(inputs),
                _zeros_like(top.trainable_variables),
            )

        return tf.cond(active, work, skip)

    def _synthesizer_step(self, k, inputs, labels, target, share, valid):
        """The synthesizer at cut k regresses the target sent back last step."""
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
            _, grads = pullback((d_g * (self.sg_loss_weight * share),))
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


def _read_like(buffer, like):
    """A labels buffer read back in the shape and dtype of this step's labels."""
    value = tf.reshape(buffer.read_value(), tf.concat([[-1], tf.shape(like)[1:]], 0))
    return tf.cast(value, like.dtype)


def _as_float(labels):
    return tf.cast(labels, tf.float32)


def _zeros_like(variables):
    return [tf.zeros(v.shape, v.dtype) for v in variables]
