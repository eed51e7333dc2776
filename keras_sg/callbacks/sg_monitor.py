"""TensorBoard diagnostics: how close synthetic gradients are to true ones."""

import keras
import numpy as np
import tensorflow as tf

from keras_sg._checks import check_int
from keras_sg.models import steps


def gradient_diagnostics(model, x, y) -> dict[str, float]:
    """Compares synthetic and true gradients of a `DecoupledModel` on one batch.

    Costs one end-to-end backward pass beyond training (run in inference
    mode, so batch norm uses its moving statistics).

    Returns:
        A dict of floats:
        - `<cut>/cosine`: cosine similarity between the synthetic and the true
          gradient at the cut, over the whole batch;
        - `<cut>/norm_ratio`: ||synthetic|| / ||true||;
        - `stage_<k>/true_grad_norm`: global norm of stage k's weight gradient
          under backprop;
        - `stage_<k>/sg_grad_norm`: the same for the update the method makes
          (from the synthetic gradient at the stage's output; the top stage's is
          the true one). Absent for methods without synthesizers.
    """
    report = _diagnostics(model, tf.convert_to_tensor(x), y)
    return {key: float(value) for key, value in report.items()}


def _diagnostics(model, x, y) -> dict[str, tf.Tensor]:
    """`gradient_diagnostics` as scalar tensors: traceable by `tf.function`."""
    synthetic, true = model.cut_gradients(x, y)
    report = {}
    for name, g_hat, g in zip(model.cut_names, synthetic, true, strict=False):
        report[f"{name}/cosine"] = steps.cosine_similarity(g_hat, g)
        report[f"{name}/norm_ratio"] = tf.math.divide_no_nan(tf.norm(g_hat), tf.norm(g))
    scale = steps.global_batch_size(x)
    h = x
    for k, stage in enumerate(model.stages[:-1]):
        (out,), pullback = steps.vjp(
            lambda a, s=stage: (s(a, training=False),),
            h,
            stage.trainable_variables,
            watch_inputs=False,
            persistent=True,
        )
        _, true_grads = pullback((true[k] / scale,))
        report[f"stage_{k}/true_grad_norm"] = tf.linalg.global_norm(true_grads)
        if synthetic:
            _, sg_grads = pullback((synthetic[k] / scale,))
            report[f"stage_{k}/sg_grad_norm"] = tf.linalg.global_norm(sg_grads)
        h = out
    top = model.stages[-1]
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=top(h, training=False))
    top_norm = tf.linalg.global_norm(tape.gradient(loss, top.trainable_variables))
    last = len(model.stages) - 1
    report[f"stage_{last}/true_grad_norm"] = top_norm
    if synthetic:
        report[f"stage_{last}/sg_grad_norm"] = top_norm
    return report


class SyntheticGradientMonitor(keras.callbacks.Callback):
    """Writes `gradient_diagnostics` to TensorBoard every `every_n_steps` steps.

    The synthesizer losses themselves need no extra callback: they are in
    `fit`'s logs, which `keras.callbacks.TensorBoard` writes.

    Args:
        log_dir: folder of the event files (a `diagnostics` run beside the
            TensorBoard callback's `train` and `validation` runs works well).
        probe: a fixed `(x, y)` batch to measure on.
        every_n_steps: how often to measure; each costs an extra backward pass.

    Example:

    ```python
    monitor = keras_sg.callbacks.SyntheticGradientMonitor(
        "logs/diagnostics", probe=(x[:256], y[:256]), every_n_steps=200)
    model.fit(x, y, callbacks=[keras.callbacks.TensorBoard("logs"), monitor])
    ```
    """

    def __init__(self, log_dir: str, probe, every_n_steps: int = 100):
        super().__init__()
        self.log_dir = log_dir
        self.probe = tuple(np.asarray(a) for a in probe)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.history: list[tuple[int, dict[str, float]]] = []
        self._writer = None
        self._measure = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)
        # One traced function a fit: run eagerly, the measurement's hundreds
        # of small ops cost far more than the training steps between them.
        model, (x, y) = self.model, (tf.convert_to_tensor(a) for a in self.probe)
        self._measure = tf.function(lambda: _diagnostics(model, x, y))

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every_n_steps:
            return
        report = {key: float(value) for key, value in self._measure().items()}
        self.history.append((step, report))
        with self._writer.as_default(step=step):
            for key, value in report.items():
                tf.summary.scalar(f"sg/{key}", value)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
