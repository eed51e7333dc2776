"""A linear synthesizer through a narrow bottleneck: cheap synthetic gradients."""

import keras

from keras_sg._checks import check_int
from keras_sg.layers.synthesizer import Synthesizer, concat_context


@keras.saving.register_keras_serializable(package="keras_sg")
class LowRankSynthesizer(Synthesizer):
    """Predicts synthetic gradients with a rank-r linear map, g = (h U) V + b.

    A full linear synthesizer on a d-wide activation costs d^2 multiply-adds
    per example, the same as a d-by-d layer of the network it serves; through
    a rank-r bottleneck it costs 2 d r, so at r = d / 16 the synthesizer adds
    about 1/8 of such a layer's compute. This is the lever that keeps the
    synthetic-gradient overhead below the idle time that pipelining removes.
    `V` and `b` start at zero, so the first synthetic gradients are exactly 0.

    Args:
        rank: width of the bottleneck.
        num_classes: size of the context (cDNI); see `Synthesizer`. The
            context enters the bottleneck beside the activation.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: the activation, `(batch, ..., features)`.
        context: labels when conditioned.
        training: unused (no batch normalisation).

    Returns:
        A tensor of the activation's shape.
    """

    def __init__(self, rank: int = 16, num_classes: int | None = None, **kwargs):
        super().__init__(num_classes=num_classes, **kwargs)
        self.rank = check_int("rank", rank, 1)

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                f"LowRankSynthesizer '{self.name}' needs a known last dimension. "
                f"Received: input_shape={input_shape}"
            )
        width = features + (self.num_classes or 0)
        shape = tuple(input_shape[:-1]) + (width,)
        self.down = keras.layers.Dense(
            self.rank, use_bias=False, name="down", dtype=self.dtype_policy
        )
        self.down.build(shape)
        self.up = keras.layers.Dense(
            features,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name="up",
            dtype=self.dtype_policy,
        )
        self.up.build(tuple(input_shape[:-1]) + (self.rank,))

    def merge_context(self, inputs, context):
        return concat_context(inputs, context)

    def predict_gradient(self, inputs, training=None):
        return self.up(self.down(inputs))

    def get_config(self):
        config = super().get_config()
        config.update({"rank": self.rank})
        return config
