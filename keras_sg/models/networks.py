"""The networks of the DNI paper's MNIST table, with interfaces at every cut."""

import keras

from keras_sg._checks import check_int
from keras_sg.layers.interface import Interface


def fully_connected(
    input_shape: tuple,
    num_classes: int,
    depth: int = 3,
    units: int = 256,
    batch_norm: bool = True,
    name: str | None = None,
) -> keras.Sequential:
    """A fully connected classifier cut after every hidden layer.

    `depth` counts the weight layers: `depth - 1` hidden layers of `units`
    (each dense, batch norm, ReLU, then an `Interface`) and a linear output
    layer of `num_classes` logits. Jaderberg et al. 2016 (arXiv:1608.05343,
    Table 1) use 3 to 6 layers of 256 units with batch norm.

    Example:

    ```python
    net = keras_sg.models.fully_connected((784,), 10, depth=3)  # 2 interfaces
    ```
    """
    check_int("depth", depth, 1)
    layers = [keras.Input(input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten())
    for i in range(depth - 1):
        layers.append(
            keras.layers.Dense(units, use_bias=not batch_norm, name=f"dense_{i}")
        )
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"norm_{i}"))
        layers.append(keras.layers.ReLU(name=f"relu_{i}"))
        layers.append(Interface(name=f"cut_{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name or f"fcn_{depth}")


def convolutional(
    input_shape: tuple,
    num_classes: int,
    depth: int = 3,
    filters: int = 64,
    kernel_size: int = 5,
    batch_norm: bool = True,
    name: str | None = None,
) -> keras.Sequential:
    """A resolution-preserving convolutional classifier cut after every conv.

    `depth - 1` convolutions ('same' padding, stride 1; batch norm, ReLU, then
    an `Interface`), then the feature map is flattened into a linear output
    layer. Every cut sees a full-resolution feature map, the home of
    `ConvSynthesizer`. (Global average pooling instead of flattening was tried
    first: with no downsampling the pooled features of a 2-conv net learn
    MNIST far too slowly, 27% test accuracy after 470 steps.)
    """
    check_int("depth", depth, 2)
    layers = [keras.Input(input_shape)]
    for i in range(depth - 1):
        layers.append(
            keras.layers.Conv2D(
                filters,
                kernel_size,
                padding="same",
                use_bias=not batch_norm,
                name=f"conv_{i}",
            )
        )
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"norm_{i}"))
        layers.append(keras.layers.ReLU(name=f"relu_{i}"))
        layers.append(Interface(name=f"cut_{i + 1}"))
    layers.append(keras.layers.Flatten())
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name or f"cnn_{depth}")
