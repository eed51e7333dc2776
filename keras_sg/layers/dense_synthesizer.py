"""A synthesizer made of dense layers, for activations of fully connected nets."""

import keras

from keras_sg._checks import check_int
from keras_sg.layers.synthesizer import Synthesizer, concat_context, hidden_stack


@keras.saving.register_keras_serializable(package="keras_sg")
class DenseSynthesizer(Synthesizer):
    """Predicts synthetic gradients with a small multilayer perceptron.

    The network acts on the last axis of the activation, as `keras.layers.Dense`
    does: `hidden_layers` dense layers of `units` units (each followed by
    optional batch normalisation and a ReLU), then a dense layer back to the
    activation's width. That last layer's kernel and bias start at zero, so
    the first synthetic gradients are exactly 0 and the network below starts
    from its initial weights rather than from noise (Jaderberg et al. 2016,
    arXiv:1608.05343, Appendix C).

    Defaults follow the paper's MNIST DNI synthesizer: two hidden layers of
    1024 units with batch normalisation. Its cDNI synthesizer is linear
    (`hidden_layers=0`) on the activation and the one-hot label.

    Args:
        hidden_layers: number of hidden layers; 0 makes the synthesizer linear.
        units: width of each hidden layer.
        use_batch_norm: whether a batch normalisation precedes each ReLU.
        num_classes: size of the context (cDNI); see `Synthesizer`.
        kernel_initializer: initializer of the hidden kernels.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: the activation, shape `(batch, ..., features)`.
        context: labels when conditioned: `(batch,)` integers or
            `(batch, num_classes)` floats. Broadcast over the middle axes.
        training: whether batch normalisation uses batch statistics.

    Returns:
        A tensor of the activation's shape.

    Example:

    ```python
    synth = keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=10)
    g = synth(h, context=labels)  # g.shape == h.shape
    ```
    """

    def __init__(
        self,
        hidden_layers: int = 2,
        units: int = 1024,
        use_batch_norm: bool = True,
        num_classes: int | None = None,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        self.hidden_layers = check_int("hidden_layers", hidden_layers, 0)
        self.units = check_int("units", units, 1)
        self.use_batch_norm = bool(use_batch_norm)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(
                f"DenseSynthesizer '{self.name}' needs an activation of rank "
                f">= 2 (batch, ..., features). Received: input_shape={input_shape}"
            )
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                f"DenseSynthesizer '{self.name}' needs a known last dimension. "
                f"Received: input_shape={input_shape}"
            )
        width = features + (self.num_classes or 0)
        shape = tuple(input_shape[:-1]) + (width,)
        self.hidden = []
        self.norms = []
        for i in range(self.hidden_layers):
            dense = keras.layers.Dense(
                self.units,
                use_bias=not self.use_batch_norm,
                kernel_initializer=self.kernel_initializer,
                name=f"hidden_{i}",
                dtype=self.dtype_policy,
            )
            dense.build(shape)
            shape = dense.compute_output_shape(shape)
            self.hidden.append(dense)
            if self.use_batch_norm:
                norm = keras.layers.BatchNormalization(
                    name=f"norm_{i}", dtype=self.dtype_policy
                )
                norm.build(shape)
                self.norms.append(norm)
        self.head = keras.layers.Dense(
            features,
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
                "units": self.units,
                "use_batch_norm": self.use_batch_norm,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
