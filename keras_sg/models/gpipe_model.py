"""GPipe-style backprop: micro-batches through placed stages, one update per batch."""

import keras
import tensorflow as tf

from keras_sg._checks import check_int
from keras_sg.models import steps
from keras_sg.models.decoupled_model import DecoupledModel, _stage_vjp


@keras.saving.register_keras_serializable(package="keras_sg")
class GPipeModel(DecoupledModel):
    """Exact backprop over M micro-batches, gradients accumulated, one update.

    Each batch is split into `micro_batches` equal parts that flow through the
    stages one after another; nothing orders micro-batch m + 1's forward pass
    behind micro-batch m's backward pass, so with stages on separate devices
    TensorFlow's executor overlaps them as GPipe does (Huang et al. 2019,
    arXiv:1811.06965). The gradient is the mean of the micro-batch gradients,
    which equals the full-batch gradient for a batch-mean loss when nothing
    depends on batch statistics (batch normalisation sees one micro-batch at
    a time, as in GPipe). This is the baseline that pipelined DNI is measured
    against; it needs no synthesizers.

    Args:
        network: as for `DecoupledModel`.
        micro_batches: M, which must divide every batch size.
        **kwargs: `DecoupledModel` arguments (`devices`, `name`); the method is
            always `"backprop"`.
    """

    def __init__(self, network, micro_batches: int = 4, **kwargs):
        self.micro_batches = check_int("micro_batches", micro_batches, 1)
        kwargs["method"] = "backprop"
        kwargs.pop("synthesizers", None)
        super().__init__(network, **kwargs)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self.build_for(x)
        m = self.micro_batches
        batch = tf.shape(x)[0]
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    batch % m,
                    0,
                    message=f"GPipeModel(micro_batches={m}) needs batch sizes "
                    "divisible by the number of micro-batches",
                )
            ]
        ):
            x = tf.identity(x)
        xs, ys = tf.split(x, m), tf.split(y, m)
        sws = tf.split(sample_weight, m) if sample_weight is not None else [None] * m
        share = steps.replica_fraction()
        # Each micro-batch's loss enters the sum with weight 1 / M, times
        # the loss scale of the step (mixed precision).
        weight = self._loss_scale() / m
        last = len(self.stages) - 1

        total, losses, preds = {}, [], []
        sent = [[] for _ in range(last)]  # the gradients sent down to stage k
        for x_m, y_m, sw_m in zip(xs, ys, sws, strict=True):
            pullbacks, h = [], x_m
            for k, stage in enumerate(self.stages[:-1]):
                with self._on(k):
                    h, pullback = _stage_vjp(stage, h, share, k > 0)
                pullbacks.append(pullback)
            top = self.stages[last]

            def top_loss(a, y_m=y_m, sw_m=sw_m, x_m=x_m):
                y_pred = top(a, training=True)
                loss = self.compute_loss(
                    x=x_m, y=y_m, y_pred=y_pred, sample_weight=sw_m, training=True
                )
                return loss, y_pred

            with self._on(last):
                (loss, y_pred), top_pullback = steps.vjp(
                    top_loss, h, top.trainable_variables, watch_inputs=last > 0
                )
                grad, stage_grads = top_pullback((weight, None))
                # Accumulate where the variables live, not on the default device.
                _accumulate(total, top.trainable_variables, stage_grads)
            for k in reversed(range(last)):
                sent[k].append(grad)
                with self._on(k):
                    grad, stage_grads = pullbacks[k]((grad, weight))
                    _accumulate(total, self.stages[k].trainable_variables, stage_grads)
            losses.append(loss)
            preds.append(y_pred)

        # Placed, stage k + 1 updates once every micro-batch's gradient has
        # reached stage k (see `steps.arrived`; the executor may run the
        # micro-batches' backward passes in any order).
        for k, grads in enumerate(sent):
            self._update_after_send(k, grads, total)
        self._apply(total)

        loss = tf.add_n(losses) / m
        self._loss_tracker.update_state(loss / share, sample_weight=batch)
        return self.compute_metrics(
            x, y, tf.concat(preds, axis=0), sample_weight=sample_weight
        )

    def get_config(self):
        config = super().get_config()
        for key in ("method", "synthesizers", "sg_loss_weight", "sg_target"):
            config.pop(key, None)
        config["micro_batches"] = self.micro_batches
        return config


def _accumulate(total, variables, grads):
    # The sums are backward work: a name with "gradient" in it tells the
    # profiler so (`keras_sg.profiling.op_kind`), which would otherwise count
    # them as the stage's forward pass.
    with tf.name_scope("gradient_sum"):
        for v, g in zip(variables, grads, strict=True):
            total[id(v)] = g if id(v) not in total else total[id(v)] + g
