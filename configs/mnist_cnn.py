r"""MNIST convolutional nets of the DNI paper's Table 1 (Jaderberg et al. 2016).

CNN of `depth` layers: `depth - 1` resolution-preserving 5x5 convolutions
(batch norm, ReLU, an interface after each), a flattening and a
linear output layer. Conv synthesizers: DNI two hidden 5x5 convolutions of
128 filters with batch norm; cDNI one linear 5x5 convolution over the
activation and the label broadcast as channels.

    python scripts/train.py --config=configs/mnist_cnn.py:cdni,depth=3 \
        --workdir=workdirs/cnn3_cdni

Variants: a method (backprop, dni, cdni, no_bprop, bp_lambda, unlocked; see
configs/mnist_fcn.py), depth=3..4, bp_lambda=..., update_probability=...,
`smoke`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(
        arg,
        method="dni",
        depth=3,
        smoke=False,
        bp_lambda=0.5,
        update_probability=1.0,
    )
    config = common.base_config(
        arg.method, arg.smoke, arg.bp_lambda, arg.update_probability
    )

    config.model = ml_collections.ConfigDict()
    config.model.kind = "cnn"
    config.model.depth = arg.depth
    config.model.filters = 8 if arg.smoke else 64
    config.model.kernel_size = 3 if arg.smoke else 5
    config.model.batch_norm = True

    config.synthesizer = ml_collections.ConfigDict()
    config.synthesizer.kind = "conv"
    linear = common.SG_KIND.get(arg.method) == "cdni"
    config.synthesizer.hidden_layers = 0 if linear else 2
    config.synthesizer.filters = 8 if arg.smoke else 128
    config.synthesizer.kernel_size = 3 if arg.smoke else 5
    config.synthesizer.batch_norm = not linear

    # Method "unlocked": at each cut, a conv net predicting the activation from x.
    config.input_synthesizer = ml_collections.ConfigDict()
    config.input_synthesizer.hidden_layers = 2
    config.input_synthesizer.filters = 8 if arg.smoke else 128
    config.input_synthesizer.kernel_size = 3 if arg.smoke else 5
    config.input_synthesizer.batch_norm = True
    return config
