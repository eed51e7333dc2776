"""Base class of the layers that predict synthetic gradients."""

import keras
from keras import ops

from keras_sg._checks import check_int


class Synthesizer(keras.layers.Layer):
    """Predicts the gradient of the loss with respect to an activation.

    A synthesizer sits at a cut between two stages. Called on the activation
    `h` leaving the lower stage (and, for cDNI, on a context such as the
    label), it returns a tensor of the shape of `h`: its estimate of the
    per-example gradient dLoss/dh (see `DecoupledModel` for the scale).

    Subclasses build their sub-layers in `build(input_shape)`, where the
    activation's shape is known, and implement `merge_context(inputs,
    context)`, which joins the encoded context to the activation, and
    `predict_gradient(inputs, training)`.

    Conditioning (cDNI, Jaderberg et al. 2016, arXiv:1608.05343, Section 3.2):
    with `num_classes` set, the synthesizer takes a context at every call.
    Integer contexts are sparse labels, one-hot encoded to `num_classes`;
    floating contexts are used as they are and must end in `num_classes`
    features (one-hot labels, or any other side information of that width).

    Mixed precision: subclasses give the sub-layers they make in `build`
    the synthesizer's own dtype policy (`dtype=self.dtype_policy`), so the
    whole synthesizer computes in the policy it was made under, whatever the
    global policy is when it is built. The model regresses its output in
    float32.

    Args:
        num_classes: size of the context vector; None (the default) for an
            unconditioned synthesizer that takes no context.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).
    """

    def __init__(self, num_classes: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
        self.num_classes = num_classes

    @property
    def conditioned(self) -> bool:
        """Whether this synthesizer takes a context (cDNI)."""
        return self.num_classes is not None

    def call(self, inputs, context=None, training=None):
        if self.conditioned:
            if context is None:
                raise ValueError(
                    f"Synthesizer '{self.name}' is conditioned "
                    f"(num_classes={self.num_classes}) and needs a context, "
                    "such as the labels. Received: context=None"
                )
            inputs = self.merge_context(inputs, self.encode_context(context))
        elif context is not None:
            raise ValueError(
                f"Synthesizer '{self.name}' is not conditioned "
                "(num_classes=None) and takes no context. Create it with "
                "`num_classes` to condition it on labels. Received a context "
                f"of shape {tuple(context.shape)}"
            )
        return self.predict_gradient(inputs, training=training)

    def encode_context(self, context):
        """Turns a context into a float matrix of `num_classes` columns."""
        if "int" in keras.backend.standardize_dtype(context.dtype):
            if len(context.shape) == 2 and context.shape[-1] == 1:
                context = ops.squeeze(context, axis=-1)
            if len(context.shape) != 1:
                raise ValueError(
                    f"Synthesizer '{self.name}' expects sparse labels of "
                    "shape (batch,) or (batch, 1). Received a context of "
                    f"shape {tuple(context.shape)}"
                )
            return ops.one_hot(context, self.num_classes, dtype=self.compute_dtype)
        if context.shape[-1] != self.num_classes:
            raise ValueError(
                f"Synthesizer '{self.name}' expects a context with "
                f"num_classes={self.num_classes} features in its last axis "
                "(one-hot labels) or integer labels. Received a context of "
                f"shape {tuple(context.shape)}"
            )
        return ops.cast(context, self.compute_dtype)

    def merge_context(self, inputs, context):
        """Joins the encoded (batch, num_classes) context to the input."""
        raise NotImplementedError

    def predict_gradient(self, inputs, training=None):
        """Maps the (conditioned) activation to the synthetic gradient."""
        raise NotImplementedError

    def compute_output_shape(self, input_shape=None, **shapes):
        """The activation's shape: a gradient has the shape of its variable.

        Keras calls this with the activation's shape, in `compute_output_spec`
        as the single positional `input_shape`, and in `summary()` under the
        name of `build`'s argument. Keyword shapes are accepted so that a
        subclass may name that argument as it likes (`inputs_shape`).
        """
        if input_shape is None:
            input_shape = shapes.get("inputs_shape")
            if input_shape is None and len(shapes) == 1:
                (input_shape,) = shapes.values()
        if input_shape is None:
            raise ValueError(
                f"Synthesizer '{self.name}' needs the activation's shape. "
                f"Received: input_shape=None, shapes={shapes}"
            )
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes})
        return config


def concat_context(inputs, context):
    """Appends a (batch, k) context to the last axis of `inputs`.

    The context is broadcast over every axis between the batch and the last
    one: over the time steps of a sequence, over height and width of an
    image (the cDNI conv synthesizer's label channels).
    """
    rank = len(inputs.shape)
    context = ops.reshape(context, (-1,) + (1,) * (rank - 2) + (context.shape[-1],))
    context = ops.cast(context, inputs.dtype) * ops.ones_like(inputs[..., :1])
    return ops.concatenate([inputs, context], axis=-1)


def hidden_stack(x, hidden, norms, training=None):
    """Runs `x` through the hidden layers of a synthesizer: each layer, then
    its batch normalisation (when `norms` is not empty), then a ReLU."""
    for i, layer in enumerate(hidden):
        x = layer(x)
        if norms:
            x = norms[i](x, training=training)
        x = ops.relu(x)
    return x
