"""Optimizers.

`FusedAdam` is Keras's Adam with each variable's update done by one
TensorFlow kernel (`ResourceApplyAdam`) instead of Keras's dozen element-wise
ops, each a pass over the variable. On one CPU core the update of a
1024 x 1024 dense layer takes a third of the time (docs/async.md, "A fused
Adam"); the values are Keras's, to float rounding.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_sg")
class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam, each variable's update one fused TensorFlow kernel.

    Same arguments, same math and same slots (`momentums`, `velocities`)
    as `keras.optimizers.Adam`, so checkpoints of one load into the other;
    weight decay, gradient clipping, EMA, loss scaling and learning rate
    schedules are Keras's, applied around the update as for Adam. The update
    of each dense gradient is `tf.raw_ops.ResourceApplyAdam`, which XLA
    compiles too. A sparse gradient (`tf.IndexedSlices`, from an `Embedding`)
    gets Keras's own update.

    `amsgrad=True` is refused: XLA has no fused AMSGrad kernel. Use
    `keras.optimizers.Adam(amsgrad=True)`.

    Example:

    ```python
    model.compile(optimizer=keras_sg.optimizers.FusedAdam(1e-3), loss=...)
    ```
    """

    def __init__(self, learning_rate=0.001, *args, amsgrad=False, **kwargs):
        if amsgrad:
            raise ValueError(
                "FusedAdam has no AMSGrad: XLA compiles no fused AMSGrad "
                "kernel. Received: amsgrad=True; use "
                "keras.optimizers.Adam(amsgrad=True) instead"
            )
        super().__init__(learning_rate, *args, amsgrad=False, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=m.handle,
            v=v.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
