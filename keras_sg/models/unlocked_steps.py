"""The math of forward unlocking and BP(lambda), as small pure functions.

Beside `keras_sg.models.steps` (same notation and scale): stage k maps h_{k-1}
to h_k; an input synthesizer at cut k predicts h_k from an earlier tensor
(Jaderberg et al. 2016, arXiv:1608.05343, Section 3.4); BP(lambda) mixes, at
each cut, the gradient backpropagated from above with the synthetic one
(Appendix A).
"""

import tensorflow as tf


def input_synthesizer_loss(predicted, true_h):
    """Mean squared error of a predicted activation and the true, stopped one.

    The true activation is a target only: no gradient reaches the stage that
    produced it, so the stages below a cut never learn to be easy to predict.

    Args:
        predicted: the input synthesizer's output, `(batch, ...)`.
        true_h: the activation the stage below produced, of the same shape.

    Returns:
        `(loss, d_loss/d_predicted)`: the mean over every element of
        (predicted - true_h)^2, and its gradient 2 (predicted - true_h) / n.
    """
    predicted = tf.convert_to_tensor(predicted)
    true_h = tf.stop_gradient(tf.cast(true_h, predicted.dtype))
    if not predicted.shape.is_compatible_with(true_h.shape):
        raise ValueError(
            "The input synthesizer must predict the activation's shape. "
            f"Received: predicted shape {tuple(predicted.shape)}, true "
            f"activation shape {tuple(true_h.shape)}"
        )
    error = predicted - true_h
    count = tf.cast(tf.size(error), error.dtype)
    return tf.reduce_mean(tf.square(error)), 2.0 * error / count


def input_drift(synthetic, composed):
    """How far a synthetic input is from the composed network's activation.

    The relative squared error over the batch,

        drift = sum_i ||hhat_i - h_i||^2 / sum_i ||h_i||^2,

    summed over every example i and element, in float32: 0 when the
    synthetic input is exact, 1 when it is as far from h as 0 is. A ratio of
    sums rather than a mean of per-example ratios, which an example whose
    activation is near zero (a dead ReLU layer) would dominate. If h is zero
    on the whole batch, the denominator is 1e-30, so any error shows as a
    huge drift rather than as 0.

    Args:
        synthetic: hhat, the input a stage trained on, `(batch, ...)`.
        composed: h, the activation the composed network produces at that
            cut on the same batch, of the same shape.

    Returns:
        A scalar float32 tensor.
    """
    synthetic = tf.cast(synthetic, tf.float32)
    composed = tf.cast(composed, tf.float32)
    if not synthetic.shape.is_compatible_with(composed.shape):
        raise ValueError(
            "The synthetic input and the composed activation must have the "
            f"same shape. Received: synthetic shape {tuple(synthetic.shape)}, "
            f"composed shape {tuple(composed.shape)}"
        )
    error = tf.reduce_sum(tf.square(synthetic - composed))
    return error / tf.maximum(tf.reduce_sum(tf.square(composed)), 1e-30)


def bp_lambda_mixture(backpropagated, synthetic, bp_lambda, scale):
    """The gradient BP(lambda) sends into the stage below a cut.

    lambda * backpropagated + (1 - lambda) * synthetic / scale: the gradient
    backpropagated from above (itself computed from the mixture at the cut
    above, or the true gradient at the top cut), mixed with the synthetic
    gradient brought to the loss's scale (synthesizers predict per-example
    gradients; see `keras_sg.models.steps`). lambda = 1 is backprop, lambda = 0
    is DNI, exactly: the weights 1 and 0 are exact in floating point.
    """
    # In float32 whatever the stages compute in (mixed precision); the
    # pullback casts the mixture to the stage's dtype.
    backpropagated = tf.cast(backpropagated, tf.float32)
    synthetic = tf.cast(synthetic, tf.float32) / tf.cast(scale, tf.float32)
    return (
        tf.cast(bp_lambda, tf.float32) * backpropagated
        + tf.cast(1.0 - bp_lambda, tf.float32) * synthetic
    )
