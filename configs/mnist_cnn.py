r"""MNIST convolutional nets of the DNI paper's Table 1 (Jaderberg et al. 2016).

CNN of `depth` layers: `depth - 1` 5x5 convolutions ('same' padding; batch
norm, ReLU, a 2x2 average pooling of stride 2, an interface after each), global
average pooling and a linear output layer. Conv synthesizers: DNI two hidden
5x5 convolutions of 128 filters with batch norm; cDNI one linear 5x5
convolution over the activation and the label broadcast as channels.

The head is global average pooling, not a flattening into the linear layer:
with a flattening the true gradient at a cut depends on the pixel's
position, which a conv synthesizer (translation equivariant) cannot predict:
the best linear 5x5 conv over [h, labels] reaches a cosine of 0.01-0.02 on
held-out images at every cut. With this head, 64 filters and batch norm
momentum 0.9 it reaches 0.88 and 0.99 at the two cuts of CNN-3, and only
0.27, 0.60 and 0.80 at the three of CNN-4 (held-out, after 200 backprop
steps); average pooling
beats max pooling there, whose gradient goes to one pixel of four (measured
by scripts/conv_synth_upper_bound.py; docs/training.md, "Conv synthesizers
and the network's head"). `model.head="flatten"` and `model.pooling=""`
give the former network.

    python scripts/train.py --config=configs/mnist_cnn.py:cdni,depth=3 \
        --workdir=workdirs/cnn3_cdni

Variants: a method (backprop, dni, cdni, no_bprop, bp_lambda, unlocked; see
configs/mnist_fcn.py), depth=3..4, bp_lambda=..., update_probability=...,
runtime=async, `smoke`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg, config = common.table1_config(arg)

    config.model = ml_collections.ConfigDict()
    config.model.kind = "cnn"
    config.model.depth = arg.depth
    config.model.filters = 8 if arg.smoke else 64
    config.model.kernel_size = 3 if arg.smoke else 5
    config.model.batch_norm = True
    # Moving statistics over ~10 steps: Keras's 0.99 lags behind the weights
    # in runs of a few hundred steps (keras_sg.models.convolutional).
    config.model.norm_momentum = 0.9
    config.model.head = "global_average"  # or "flatten"
    config.model.pooling = "average"  # 2x2 per stage: "average", "max", "" for none

    config.synthesizer = ml_collections.ConfigDict()
    config.synthesizer.kind = "conv"
    linear = common.SG_KIND.get(arg.method) == "cdni"
    config.synthesizer.hidden_layers = 0 if linear else 2
    config.synthesizer.filters = 8 if arg.smoke else 128
    config.synthesizer.kernel_size = 3 if arg.smoke else 5
    config.synthesizer.batch_norm = not linear
    # Predictions over height * width: the weights learn a per-feature
    # gradient, so Adam's first steps do not overshoot the tiny per-pixel one
    # (keras_sg.Synthesizer, "Output scale").
    config.synthesizer.output_scale = "per_position"
    # Taps 2 pixels apart reach further at the same cost: the best linear conv
    # at CNN-3's 14x14 cut rises from 0.88 to 0.91 (docs/training.md), but
    # falls at CNN-4's 3x3 cut; 1 keeps the plain kernel.
    config.synthesizer.dilation_rate = 1

    # Method "unlocked": at each cut, a conv net predicting the activation from x.
    config.input_synthesizer = ml_collections.ConfigDict()
    config.input_synthesizer.hidden_layers = 2
    config.input_synthesizer.filters = 8 if arg.smoke else 128
    config.input_synthesizer.kernel_size = 3 if arg.smoke else 5
    config.input_synthesizer.batch_norm = True
    return config
