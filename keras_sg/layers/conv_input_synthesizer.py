"""An input synthesizer made of convolutions, for the feature maps of conv nets."""

import keras
from keras import ops

from keras_sg._checks import check_int
from keras_sg.layers.input_synthesizer import InputSynthesizer
from keras_sg.layers.synthesizer import hidden_stack


@keras.saving.register_keras_serializable(package="keras_sg")
class ConvInputSynthesizer(InputSynthesizer):
    """Predicts the feature map at a cut with a stack of convolutions.

    The source, `(batch, height, width, channels)`, is first average-pooled to
    the target's height and width when it is larger by an integer factor (the
    stages below a cut of a conv net usually pool); then `hidden_layers`
    'same' convolutions of `filters` filters (each followed by optional batch
    normalisation and a ReLU) and a linear 'same' convolution with the
    target's channels. Defaults mirror `ConvSynthesizer`, the paper's CNN
    synthesizer (two hidden 5x5 convolutions of 128 filters; Jaderberg et al.
    2016, arXiv:1608.05343).

    Args:
        target_shape: `(height, width, channels)` of the predicted activation.
        hidden_layers: number of hidden convolutions; 0 gives one linear conv.
        filters: filters of each hidden convolution.
        kernel_size: side of the square kernels.
        use_batch_norm: whether a batch normalisation precedes each ReLU.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: the source feature map (or image), 4-D, whose height and width
            are integer multiples of the target's.
        training: whether batch normalisation uses batch statistics.

    Returns:
        A tensor of shape `(batch,) + target_shape`.
    """

    def __init__(
        self,
        target_shape,
        hidden_layers: int = 2,
        filters: int = 128,
        kernel_size: int = 5,
        use_batch_norm: bool = True,
        **kwargs,
    ):
        super().__init__(target_shape, **kwargs)
        if len(self.target_shape) != 3:
            raise ValueError(
                f"ConvInputSynthesizer '{self.name}' predicts a feature map: "
                "`target_shape` must be (height, width, channels). "
                f"Received: target_shape={target_shape!r}"
            )
        self.hidden_layers = check_int("hidden_layers", hidden_layers, 0)
        self.filters = check_int("filters", filters, 1)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        self.use_batch_norm = bool(use_batch_norm)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"ConvInputSynthesizer '{self.name}' needs a 4-D source "
                "(batch, height, width, channels) with known non-batch "
                "dimensions; use DenseInputSynthesizer for other sources. "
                f"Received: input_shape={input_shape}"
            )
        height, width, _ = self.target_shape
        if input_shape[1] % height or input_shape[2] % width:
            raise ValueError(
                f"ConvInputSynthesizer '{self.name}' pools its source to the "
                f"target's height and width {(height, width)}, so the source's "
                "must be integer multiples of them. "
                f"Received: input_shape={input_shape}"
            )
        self.pool_size = (input_shape[1] // height, input_shape[2] // width)
        self.source_shape = input_shape[1:]
        shape = (input_shape[0], height, width, input_shape[3])
        self.hidden = []
        self.norms = []
        for i in range(self.hidden_layers):
            conv = keras.layers.Conv2D(
                self.filters,
                self.kernel_size,
                padding="same",
                use_bias=not self.use_batch_norm,
                name=f"hidden_{i}",
            )
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            self.hidden.append(conv)
            if self.use_batch_norm:
                norm = keras.layers.BatchNormalization(name=f"norm_{i}")
                norm.build(shape)
                self.norms.append(norm)
        self.head = keras.layers.Conv2D(
            self.target_shape[-1], self.kernel_size, padding="same", name="head"
        )
        self.head.build(shape)

    def call(self, inputs, training=None):
        x = inputs
        if self.pool_size != (1, 1):
            x = ops.average_pool(x, self.pool_size, strides=self.pool_size)
        x = hidden_stack(x, self.hidden, self.norms, training)
        return self.head(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_layers": self.hidden_layers,
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "use_batch_norm": self.use_batch_norm,
            }
        )
        return config
