"""Base class of the layers that predict synthetic gradients."""

import math

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

    Output scale: the prediction is multiplied by `output_scale`. Under Adam
    a weight moves by about the learning rate at every step whatever the
    size of its gradient, so a synthesizer whose last layer starts at zero
    predicts, after a few steps, values of the size of the learning rate
    times its fan-in, whatever the size of its target. At a cut of a conv
    net with an averaging head the true gradient at each position is about
    1 / (height * width) of the gradient of the averaged feature, and such
    early predictions are far too large (CNN-3 cDNI, Adam 3e-3: 121 times
    the true gradient's norm at the top cut after one step, 37 times at the
    lower cut after 50). `output_scale="per_position"` divides the
    prediction by the number of positions (the product of the axes between
    batch and channels), so
    that the weights learn a per-feature quantity; a number scales by that
    number. It changes what the weights must learn, not what the
    synthesizer can represent.

    Args:
        num_classes: size of the context vector; None (the default) for an
            unconditioned synthesizer that takes no context.
        output_scale: a positive number, or `"per_position"`; 1.0 by default.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).
    """

    def __init__(self, num_classes: int | None = None, output_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
        self.num_classes = num_classes
        number = isinstance(output_scale, int | float) and not isinstance(
            output_scale, bool
        )
        if not (
            output_scale == "per_position"
            if isinstance(output_scale, str)
            else number and math.isfinite(output_scale) and output_scale > 0
        ):
            raise ValueError(
                "`output_scale` must be a positive number or 'per_position'. "
                f"Received: output_scale={output_scale!r}"
            )
        self.output_scale = output_scale

    def scale_of(self, shape) -> float:
        """The factor on the prediction for an activation of `shape`."""
        if self.output_scale != "per_position":
            return float(self.output_scale)
        positions = 1
        for size in shape[1:-1]:
            if size is None:
                raise ValueError(
                    f"Synthesizer '{self.name}' has output_scale='per_position' "
                    "and needs the activation's positions known. Received: "
                    f"shape={tuple(shape)}"
                )
            positions *= size
        return 1.0 / positions

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
        scale = self.scale_of(inputs.shape)
        out = self.predict_gradient(inputs, training=training)
        return out if scale == 1.0 else out * ops.cast(scale, out.dtype)

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
        config.update(
            {"num_classes": self.num_classes, "output_scale": self.output_scale}
        )
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
