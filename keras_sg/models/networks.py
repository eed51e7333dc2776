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
    norm_momentum: float = 0.99,
) -> keras.Sequential:
    """A fully connected classifier cut after every hidden layer.

    `depth` counts the weight layers: `depth - 1` hidden layers of `units`
    (each dense, batch norm, ReLU, then an `Interface`) and a linear output
    layer of `num_classes` logits. Jaderberg et al. 2016 (arXiv:1608.05343,
    Table 1) use 3 to 6 layers of 256 units with batch norm.
    `norm_momentum` is the batch norms' `momentum` (see `convolutional`).

    Example:

    ```python
    net = keras_sg.models.fully_connected((784,), 10, depth=3)  # 2 interfaces
    ```
    """
    check_int("depth", depth, 1)
    _check_momentum(norm_momentum)
    layers = [keras.Input(input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten())
    for i in range(depth - 1):
        layers.append(
            keras.layers.Dense(units, use_bias=not batch_norm, name=f"dense_{i}")
        )
        if batch_norm:
            layers.append(
                keras.layers.BatchNormalization(
                    momentum=norm_momentum, name=f"norm_{i}"
                )
            )
        layers.append(keras.layers.ReLU(name=f"relu_{i}"))
        layers.append(Interface(name=f"cut_{i + 1}"))
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name or f"fcn_{depth}")


HEADS = ("flatten", "global_average")
POOLINGS = (None, "max", "average")


def convolutional(
    input_shape: tuple,
    num_classes: int,
    depth: int = 3,
    filters: int = 64,
    kernel_size: int = 5,
    batch_norm: bool = True,
    head: str = "flatten",
    pooling: str | None = None,
    name: str | None = None,
    norm_momentum: float = 0.99,
) -> keras.Sequential:
    """A convolutional classifier cut after every conv.

    `depth - 1` convolutions ('same' padding, stride 1; batch norm, ReLU,
    then an optional 2x2 pooling of stride 2, then an `Interface`), and a
    head that turns the last feature map into `num_classes` logits:

    - `head="flatten"`: flatten the map into a linear layer. Its weight at
      each pixel is its own, so the gradient at a cut depends on where in
      the image a feature sits: a conv synthesizer, which is translation
      equivariant, cannot predict it (see "Conv synthesizers and the
      network's head" in docs/training.md).
    - `head="global_average"`: average the map over height and width into a
      linear layer. The gradient at the last cut is the same at every pixel
      of an image, a linear function of its softmax error.

    Global average pooling over full-resolution maps learns MNIST slowly (a
    2-conv net: 27% test accuracy after 470 steps); `pooling="max"` or
    `"average"` halves height and width in every stage, before its cut, so
    that the averaged features see more of the digit.

    `norm_momentum` is the batch norms' `momentum`: their moving statistics,
    which `evaluate` and `predict` use, average the batch statistics over
    about 1 / (1 - momentum) steps. Keras's 0.99 lags in short runs at high
    rates: a CNN-3 after 392 steps at Adam 3e-3 classified 96% of training
    images in training mode and 30% in inference mode, and 96% again once
    its statistics were refreshed with the final weights.

    Example:

    ```python
    net = keras_sg.models.convolutional(
        (28, 28, 1), 10, depth=3, head="global_average", pooling="max"
    )  # 2 interfaces, on 14x14 and 7x7 maps
    ```
    """
    check_int("depth", depth, 2)
    _check_momentum(norm_momentum)
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {HEADS}. Received: head={head!r}")
    if pooling not in POOLINGS:
        raise ValueError(
            f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}"
        )
    if len(input_shape) != 3:
        raise ValueError(
            "convolutional() needs an image shape (height, width, channels). "
            f"Received: input_shape={tuple(input_shape)}"
        )
    if pooling is not None:
        side = min(input_shape[:2])
        if side is not None and side < 2 ** (depth - 1):
            raise ValueError(
                f"pooling={pooling!r} halves height and width {depth - 1} times, "
                f"which needs images of at least {2 ** (depth - 1)} pixels a "
                f"side. Received: input_shape={tuple(input_shape)}, depth={depth}"
            )
    pool = {"max": keras.layers.MaxPooling2D, "average": keras.layers.AveragePooling2D}
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
            layers.append(
                keras.layers.BatchNormalization(
                    momentum=norm_momentum, name=f"norm_{i}"
                )
            )
        layers.append(keras.layers.ReLU(name=f"relu_{i}"))
        if pooling is not None:
            layers.append(pool[pooling](2, name=f"pool_{i}"))
        layers.append(Interface(name=f"cut_{i + 1}"))
    if head == "flatten":
        layers.append(keras.layers.Flatten())
    else:
        layers.append(keras.layers.GlobalAveragePooling2D(name="global_average"))
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name or f"cnn_{depth}")


def _check_momentum(momentum):
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        momentum = repr(momentum)
    elif 0.0 <= momentum < 1.0:
        return
    raise ValueError(
        "`norm_momentum` must be a number in [0, 1). "
        f"Received: norm_momentum={momentum}"
    )
