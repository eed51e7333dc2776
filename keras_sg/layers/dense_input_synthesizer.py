"""An input synthesizer made of dense layers."""

import math

import keras
from keras import ops

from keras_sg._checks import check_int
from keras_sg.layers.input_synthesizer import InputSynthesizer
from keras_sg.layers.synthesizer import hidden_stack


@keras.saving.register_keras_serializable(package="keras_sg")
class DenseInputSynthesizer(InputSynthesizer):
    """Predicts the activation at a cut with a multilayer perceptron.

    The source is flattened to `(batch, features)`; `hidden_layers` dense
    layers of `units` units (each followed by optional batch normalisation and
    a ReLU) and a linear dense layer map it to `prod(target_shape)` numbers,
    reshaped to `(batch,) + target_shape`. Defaults mirror `DenseSynthesizer`,
    the paper's MNIST synthesizer (two hidden layers of 1024 units with batch
    normalisation; Jaderberg et al. 2016, arXiv:1608.05343). Unlike a gradient
    synthesizer's, the last layer does not start at zero: a zero input would
    give the stage above nothing to learn from.

    Args:
        target_shape: the shape of the predicted activation, without the
            batch axis.
        hidden_layers: number of hidden layers; 0 makes the map affine.
        units: width of each hidden layer.
        use_batch_norm: whether a batch normalisation precedes each ReLU.
        kernel_initializer: initializer of every kernel.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: the source, `(batch, ...)` with known non-batch dimensions.
        training: whether batch normalisation uses batch statistics.

    Returns:
        A tensor of shape `(batch,) + target_shape`.

    Example:

    ```python
    synth = keras_sg.DenseInputSynthesizer(target_shape=(256,), hidden_layers=0)
    h1_hat = synth(x)  # x: (batch, 784); h1_hat: (batch, 256)
    ```
    """

    def __init__(
        self,
        target_shape,
        hidden_layers: int = 2,
        units: int = 1024,
        use_batch_norm: bool = True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(target_shape, **kwargs)
        self.hidden_layers = check_int("hidden_layers", hidden_layers, 0)
        self.units = check_int("units", units, 1)
        self.use_batch_norm = bool(use_batch_norm)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"DenseInputSynthesizer '{self.name}' needs a source of rank "
                ">= 2 with known non-batch dimensions. "
                f"Received: input_shape={input_shape}"
            )
        self.source_shape = input_shape[1:]
        shape = (input_shape[0], math.prod(input_shape[1:]))
        self.hidden = []
        self.norms = []
        for i in range(self.hidden_layers):
            dense = keras.layers.Dense(
                self.units,
                use_bias=not self.use_batch_norm,
                kernel_initializer=self.kernel_initializer,
                name=f"hidden_{i}",
            )
            dense.build(shape)
            shape = dense.compute_output_shape(shape)
            self.hidden.append(dense)
            if self.use_batch_norm:
                norm = keras.layers.BatchNormalization(name=f"norm_{i}")
                norm.build(shape)
                self.norms.append(norm)
        self.head = keras.layers.Dense(
            math.prod(self.target_shape),
            kernel_initializer=self.kernel_initializer,
            name="head",
        )
        self.head.build(shape)

    def call(self, inputs, training=None):
        x = ops.reshape(inputs, (-1, math.prod(inputs.shape[1:])))
        x = hidden_stack(x, self.hidden, self.norms, training)
        return ops.reshape(self.head(x), (-1,) + self.target_shape)

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
