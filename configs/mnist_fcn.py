r"""MNIST fully connected nets of the DNI paper's Table 1 (Jaderberg et al. 2016).

FCN of `depth` layers (256 units, batch norm, ReLU), an interface after every
hidden layer; DNI synthesizers with two hidden layers of 1024 units and batch
norm, cDNI synthesizers linear on the activation and the one-hot label.

    python scripts/train.py --config=configs/mnist_fcn.py:cdni,depth=4 \
        --workdir=workdirs/fcn4_cdni

Variants (after the colon, comma-separated): a method (backprop, dni, cdni,
no_bprop; bp_lambda: BP(lambda) on DNI synthesizers; unlocked: the complete
unlock, synthetic inputs from x with cDNI), depth=3..6, bp_lambda=0.25 (for
bp_lambda), update_probability=0.2 (stochastic updates of dni or cdni),
runtime=async (dni or cdni on keras_sg.AsyncPipelinedModel, each stage in its
own loop; its settings under `async_runtime`) and `smoke` for seconds-long
runs on synthetic data.

    python scripts/train.py --config=configs/mnist_fcn.py:unlocked,depth=4 ...
    python scripts/train.py --config=configs/mnist_fcn.py:dni,update_probability=0.2 ...
    python scripts/train.py --config=configs/mnist_fcn.py:bp_lambda,bp_lambda=0.25 ...
    python scripts/train.py --config=configs/mnist_fcn.py:cdni,runtime=async \
        --config.async_runtime.capacity=2 ...
Override single values with e.g. `--config.optimizer.learning_rate=1e-4`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg, config = common.table1_config(arg)

    config.model = ml_collections.ConfigDict()
    config.model.kind = "fcn"
    config.model.depth = arg.depth
    config.model.units = 32 if arg.smoke else 256
    config.model.batch_norm = True
    config.model.norm_momentum = 0.99  # Keras's default

    config.synthesizer = ml_collections.ConfigDict()
    config.synthesizer.kind = "dense"
    linear = common.SG_KIND.get(arg.method) == "cdni"
    config.synthesizer.hidden_layers = 0 if linear else 2
    config.synthesizer.units = 64 if arg.smoke else 1024
    config.synthesizer.batch_norm = not linear
    config.synthesizer.output_scale = 1.0

    # Method "unlocked": at each cut, an MLP predicting the activation from x.
    config.input_synthesizer = ml_collections.ConfigDict()
    config.input_synthesizer.hidden_layers = 2
    config.input_synthesizer.units = 64 if arg.smoke else 1024
    config.input_synthesizer.batch_norm = True
    return config
