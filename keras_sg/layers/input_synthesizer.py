"""Base class of the layers that predict a stage's input (forward unlocking)."""

import keras


class InputSynthesizer(keras.layers.Layer):
    """Predicts the activation h_k at a cut from an earlier tensor.

    A gradient synthesizer unlocks the backward pass; an input synthesizer
    unlocks the forward pass. Sitting at cut k, it maps a source tensor that is
    available before stage k has run (the network's input x, for the paper's
    complete unlock, or an earlier activation h_j, j < k) to an estimate of
    h_k, so the stage above the cut can start on its synthetic input at once
    (Jaderberg et al. 2016, arXiv:1608.05343, Section 3.4). It regresses the
    true activation, stopped, by mean squared error
    (`keras_sg.models.unlocked_steps.input_synthesizer_loss`).

    Unlike a gradient synthesizer, its output need not have the shape of its
    input, so the shape it predicts is an argument.

    Subclasses build their sub-layers in `build(input_shape)` from the
    source's shape and implement `call(inputs, training)`.

    Args:
        target_shape: the shape of h_k without the batch axis, a tuple of
            positive integers.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).
    """

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = check_shape("target_shape", target_shape)
        # The source's shape without the batch axis, once built (subclasses
        # set it in `build`): a built synthesizer refuses another.
        self.source_shape = None

    def compute_output_shape(self, input_shape):
        source = tuple(input_shape[1:])
        if self.source_shape is not None and source != self.source_shape:
            raise ValueError(
                f"The input synthesizer '{self.name}' was built for sources "
                f"of shape {(None, *self.source_shape)}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        return (input_shape[0],) + self.target_shape

    def get_config(self):
        config = super().get_config()
        config.update({"target_shape": list(self.target_shape)})
        return config


def check_shape(name: str, shape) -> tuple:
    """Returns `shape` as a tuple if it is a non-empty sequence of integers >= 1."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if not dims or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims
    ):
        raise ValueError(
            f"`{name}` must be a non-empty tuple of integers >= 1 (the shape "
            f"without the batch axis). Received: {name}={shape!r}"
        )
    return dims
