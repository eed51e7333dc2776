"""The layer that marks a decoupled interface (a cut) in a network."""

import keras


@keras.saving.register_keras_serializable(package="keras_sg")
class Interface(keras.layers.Layer):
    """Marks a cut between two stages of a network.

    In the forward pass the layer is the identity, so a model holding
    interfaces computes exactly what it computes without them, and a plain
    `keras.Model.fit` trains it with ordinary backprop. `DecoupledModel` splits
    the network at each interface: the activation leaving the interface is
    where a synthesizer predicts the gradient, and no gradient flows back
    across it during decoupled training (Jaderberg et al. 2016,
    arXiv:1608.05343, Section 2).

    The layer's name names the cut: the synthetic-gradient loss of the
    interface called `"cut_1"` shows in `fit`'s logs as `cut_1_sg_loss`.

    Args:
        **kwargs: base layer arguments (`name`, `dtype`).

    Call arguments:
        inputs: the activation at the cut, any shape.

    Returns:
        `inputs`, unchanged.

    Example:

    ```python
    net = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(256, activation="relu"),
        keras_sg.Interface(name="cut_1"),
        keras.layers.Dense(10),
    ])
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.built = True

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape
