"""A synthesizer made of convolutions, for the feature maps of conv nets."""

import keras

from keras_sg._checks import check_int
from keras_sg.layers.synthesizer import Synthesizer, concat_context, hidden_stack


@keras.saving.register_keras_serializable(package="keras_sg")
class ConvSynthesizer(Synthesizer):
    """Predicts synthetic gradients of a feature map with a stack of convolutions.

    Every convolution preserves resolution ('same' padding, stride 1, no
    pooling), so the output has the activation's height and width; the last
    one has as many filters as the activation has channels and starts at zero,
    so the first synthetic gradients are exactly 0. Hidden convolutions are
    followed by optional batch normalisation and a ReLU.

    Defaults follow the paper's CNN synthesizer: two hidden 5x5 convolutions
    of 128 filters (Jaderberg et al. 2016, arXiv:1608.05343, Appendix C).
    Conditioned on labels (cDNI), the one-hot label is broadcast over height
    and width as extra input channels.

    `dilation_rate` spreads every kernel's taps `dilation_rate` pixels apart:
    a 5x5 kernel of rate 2 covers 9x9 pixels at the cost of 5x5. The
    gradient at a low cut gathers the pullback of the layers above it over
    their receptive field; on MNIST's CNN-3 the best linear 5x5 conv over
    [h, labels] reaches a held-out cosine of 0.88 with the true gradient at
    the 14x14 cut, and 0.91 with rate 2 (docs/training.md, "Conv synthesizers
    and the network's head").

    Args:
        hidden_layers: number of hidden convolutions; 0 gives one linear conv.
        filters: filters of each hidden convolution.
        kernel_size: side of the square kernels (odd, so 'same' is centred).
        use_batch_norm: whether a batch normalisation precedes each ReLU.
        dilation_rate: spacing of every kernel's taps (1: a plain kernel).
        num_classes: size of the context (cDNI); see `Synthesizer`.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: the feature map, shape `(batch, height, width, channels)`.
        context: labels when conditioned: `(batch,)` integers or
            `(batch, num_classes)` floats.
        training: whether batch normalisation uses batch statistics.

    Returns:
        A tensor of the activation's shape.
    """

    def __init__(
        self,
        hidden_layers: int = 2,
        filters: int = 128,
        kernel_size: int = 5,
        use_batch_norm: bool = True,
        num_classes: int | None = None,
        dilation_rate: int = 1,
        **kwargs,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        self.hidden_layers = check_int("hidden_layers", hidden_layers, 0)
        self.filters = check_int("filters", filters, 1)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        self.use_batch_norm = bool(use_batch_norm)
        self.dilation_rate = check_int("dilation_rate", dilation_rate, 1)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"ConvSynthesizer '{self.name}' needs a 4-D activation "
                "(batch, height, width, channels); use DenseSynthesizer for "
                f"other ranks. Received: input_shape={tuple(input_shape)}"
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"ConvSynthesizer '{self.name}' needs a known number of "
                f"channels. Received: input_shape={tuple(input_shape)}"
            )
        shape = tuple(input_shape[:-1]) + (channels + (self.num_classes or 0),)
        self.hidden = []
        self.norms = []
        for i in range(self.hidden_layers):
            conv = keras.layers.Conv2D(
                self.filters,
                self.kernel_size,
                padding="same",
                dilation_rate=self.dilation_rate,
                use_bias=not self.use_batch_norm,
                name=f"hidden_{i}",
                dtype=self.dtype_policy,
            )
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            self.hidden.append(conv)
            if self.use_batch_norm:
                norm = keras.layers.BatchNormalization(
                    name=f"norm_{i}", dtype=self.dtype_policy
                )
                norm.build(shape)
                self.norms.append(norm)
        self.head = keras.layers.Conv2D(
            channels,
            self.kernel_size,
            padding="same",
            dilation_rate=self.dilation_rate,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name="head",
            dtype=self.dtype_policy,
        )
        self.head.build(shape)

    def merge_context(self, inputs, context):
        return concat_context(inputs, context)

    def predict_gradient(self, inputs, training=None):
        return self.head(hidden_stack(inputs, self.hidden, self.norms, training))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_layers": self.hidden_layers,
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "use_batch_norm": self.use_batch_norm,
                "dilation_rate": self.dilation_rate,
            }
        )
        return config
