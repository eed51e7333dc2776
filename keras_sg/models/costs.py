"""Multiply-adds per example: what a stage costs, and what its synthesizer adds.

A synthesizer is extra work the network does not need for prediction: its
forward pass at every step, and its backward pass for its own update. The
ratio of its multiply-adds to those of the stage below it (the stage whose
output it reads) is the method's compute overhead at that cut (the
synthesizer's role: Jaderberg et al. 2016, arXiv:1608.05343, Section 2). A
linear synthesizer on a d-wide cut costs d^2, as much as a d-by-d layer.

What is counted: the multiply-adds of weight products, per example and per
forward pass, as MAC counts usually are. A `Dense` layer of `units` outputs on
`n` inputs costs `n * units` at each position (each element of the axes
between batch and features); a convolution costs
`prod(output spatial dims) * prod(kernel_size) * in_channels / groups * filters`;
a depthwise one `prod(output spatial dims) * prod(kernel_size) * in_channels *
depth_multiplier`; a separable one that plus the pointwise `1x1` convolution;
a transposed one `prod(input spatial dims) * prod(kernel_size) * in_channels *
filters`. Elementwise and data-movement layers (activations, normalization,
dropout, pooling, reshapes, padding, merges such as `Add`) count 0: their work
grows with the activation, not with its square. A conditioned (cDNI)
synthesizer's first layer also reads the `num_classes` context features.

A layer this module does not know (recurrent, attention, custom layers, raw
ops in a functional graph) is not guessed: the count of anything holding it
is None, and `uncounted_layers` names it.
"""

import math

import keras

from keras_sg.layers.conv_synthesizer import ConvSynthesizer
from keras_sg.layers.dense_synthesizer import DenseSynthesizer
from keras_sg.layers.interface import Interface
from keras_sg.layers.low_rank_synthesizer import LowRankSynthesizer

_FREE = (
    keras.layers.InputLayer,
    Interface,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.UnitNormalization,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Identity,
    keras.layers.Rescaling,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Concatenate,
    keras.layers.Embedding,
)


def macs_per_example(layer, input_shape) -> int | None:
    """Multiply-adds of one example's forward pass through `layer`.

    Args:
        layer: a Keras layer, a `Sequential` or functional model (a stage), or
            a keras_sg synthesizer.
        input_shape: the shape `layer` is called on, batch axis first (its
            size is ignored). For a synthesizer, the activation's shape; its
            context is added from `num_classes`.

    Returns:
        The count, or None if some layer inside cannot be counted (see
        `uncounted_layers`) or a needed dimension is unknown.

    Example:

    ```python
    dense = keras.layers.Dense(10)
    macs_per_example(dense, (None, 784))  # 7840
    ```
    """
    uncounted = []
    macs = _count(layer, tuple(input_shape), uncounted)
    return None if uncounted else macs


def uncounted_layers(layer, input_shape) -> list[str]:
    """Names of the layers in `layer` whose multiply-adds are not known.

    Empty exactly when `macs_per_example(layer, input_shape)` is a number.
    """
    uncounted = []
    _count(layer, tuple(input_shape), uncounted)
    return uncounted


def sublayer_macs(model, input_shape) -> list[tuple]:
    """The cost of each layer of `model`, in calling order.

    Args:
        model: a `Sequential` or functional model.
        input_shape: the model's input shape, batch axis first.

    Returns:
        A list of `(layer, input_shape, macs)`, with `macs` None where the
        layer (or a layer inside it) cannot be counted. An empty list for
        anything else.
    """
    return [
        (layer, shape, macs_per_example(layer, shape))
        for layer, shape in _calls(model, tuple(input_shape))
    ]


def cost_ratio(numerator: int | None, denominator: int | None) -> float | None:
    """`numerator / denominator`; None if either is unknown or the denominator 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


# ------------------------------------------------------------------- walking


def _calls(model, input_shape):
    """`(layer, input shape)` of each layer call inside a model, in order."""
    if isinstance(model, keras.Sequential):
        calls, shape = [], input_shape
        for layer in model.layers:
            calls.append((layer, shape))
            shape = _output_shape(layer, shape) if shape is not None else None
        return calls
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):
        calls = []
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.operation is None or node.is_input:
                    continue
                shapes = [tuple(t.shape) for t in node.input_tensors]
                calls.append((node.operation, shapes[0] if shapes else None))
        return calls
    return []


def _count(layer, shape, uncounted):
    if isinstance(layer, keras.Model) and (
        isinstance(layer, keras.Sequential) or hasattr(layer, "_nodes_by_depth")
    ):
        return sum(_count(op, s, uncounted) for op, s in _calls(layer, shape))
    try:
        macs = _layer_macs(layer, shape)
    except (ValueError, TypeError, NotImplementedError):  # a shape it cannot take
        macs = None
    if macs is None:
        uncounted.append(getattr(layer, "name", type(layer).__name__))
        return 0
    return macs


def _layer_macs(layer, shape):
    """One layer's multiply-adds per example, or None if not known."""
    if shape is None:
        return None
    if isinstance(layer, DenseSynthesizer):
        return _dense_synthesizer_macs(layer, shape)
    if isinstance(layer, ConvSynthesizer):
        return _conv_synthesizer_macs(layer, shape)
    if isinstance(layer, LowRankSynthesizer):
        return _low_rank_synthesizer_macs(layer, shape)
    if isinstance(layer, _FREE):
        return 0
    if isinstance(layer, keras.layers.Dense):
        return _dense_macs(shape, layer.units)
    if isinstance(layer, keras.layers.SeparableConv1D | keras.layers.SeparableConv2D):
        return _separable_macs(layer, shape)
    if isinstance(layer, keras.layers.DepthwiseConv1D | keras.layers.DepthwiseConv2D):
        spatial, channels = _conv_dims(layer, layer.compute_output_shape(shape), shape)
        return _product(spatial, layer.kernel_size, channels, layer.depth_multiplier)
    if isinstance(
        layer,
        keras.layers.Conv1DTranspose
        | keras.layers.Conv2DTranspose
        | keras.layers.Conv3DTranspose,
    ):
        spatial, channels = _conv_dims(layer, shape, shape)
        return _product(spatial, layer.kernel_size, channels, layer.filters)
    if isinstance(
        layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D
    ):
        spatial, channels = _conv_dims(layer, layer.compute_output_shape(shape), shape)
        if channels is None:
            return None
        return _product(
            spatial, layer.kernel_size, channels // layer.groups, layer.filters
        )
    return None


def _dense_macs(shape, units, extra_inputs=0):
    """A dense map on the last axis of `shape` (plus `extra_inputs` features)."""
    if shape[-1] is None:
        return None
    return _product(shape[1:-1], (shape[-1] + extra_inputs, units))


def _conv_dims(layer, spatial_shape, channel_shape):
    """Spatial dims of `spatial_shape` and channels of `channel_shape`."""
    if layer.data_format == "channels_first":
        return spatial_shape[2:], channel_shape[1]
    return spatial_shape[1:-1], channel_shape[-1]


def _separable_macs(layer, shape):
    spatial, channels = _conv_dims(layer, layer.compute_output_shape(shape), shape)
    if channels is None:
        return None
    depthwise = _product(spatial, layer.kernel_size, channels, layer.depth_multiplier)
    pointwise = _product(spatial, channels, layer.depth_multiplier, layer.filters)
    return None if depthwise is None or pointwise is None else depthwise + pointwise


def _dense_synthesizer_macs(synth, shape):
    # Hidden layers, then the head back to the activation's width; the first
    # layer also reads the context.
    widths = [synth.units] * synth.hidden_layers + [shape[-1]]
    context, total, inputs = synth.num_classes or 0, 0, shape
    for units in widths:
        macs = _dense_macs(inputs, units, extra_inputs=context)
        if macs is None:
            return None
        total += macs
        context, inputs = 0, inputs[:-1] + (units,)
    return total


def _conv_synthesizer_macs(synth, shape):
    if len(shape) != 4 or None in shape[1:]:
        return None
    # 'same' padding, stride 1: every convolution keeps height and width; the
    # first one also reads the context channels.
    channels = [shape[-1] + (synth.num_classes or 0)]
    channels += [synth.filters] * synth.hidden_layers + [shape[-1]]
    kernel = (synth.kernel_size, synth.kernel_size)
    return sum(
        _product(shape[1:3], kernel, c_in, c_out)
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
    )


def _low_rank_synthesizer_macs(synth, shape):
    down = _dense_macs(shape, synth.rank, extra_inputs=synth.num_classes or 0)
    up = _dense_macs(shape[:-1] + (synth.rank,), shape[-1])
    return None if down is None or up is None else down + up


# ------------------------------------------------------------------- helpers


def _output_shape(layer, shape):
    """The shape `layer` returns on `shape`; None if it cannot say."""
    try:
        return tuple(layer.compute_output_spec(keras.KerasTensor(shape)).shape)
    except (ValueError, TypeError, NotImplementedError):
        return None


def _product(*factors):
    """The product of ints and tuples of ints; None if any factor is None."""
    flat = []
    for f in factors:
        flat.extend(f if isinstance(f, (tuple, list)) else [f])
    if any(f is None for f in flat):
        return None
    return math.prod(int(f) for f in flat)
