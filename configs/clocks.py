r"""Two LSTMs ticking at different clocks on a stream of digits.

`keras_sg.ClockedPairModel`: a fast LSTM cell reads one digit image a step;
a slow LSTM cell ticks every `data.period` steps, reads the fast network's
output and sends it a message for the next block. The target at every step is
the label of the digit shown now plus, from block `data.lag` on, the label of
the first digit `data.lag` blocks earlier, modulo 10
(`keras_sg.data.clocked_digits`; the paper's own task could not be read
here). Method `bptt` trains the pair by full BPTT (the reference), `dni` joins
the two networks by synthesizers only, neither waiting for the other's
backward pass.

    python scripts/train_sequence.py --config=configs/clocks.py:dni \
        --workdir=workdirs/clocks_dni

MNIST is read from `data.manual_dir` or KERAS_SG_MNIST_DIR. Variants (after
the colon): a method (bptt, dni), steps=<budget>, and `smoke` (synthetic
digits, tiny cells, a few steps).
"""

import ml_collections
from ml_collections import config_dict

from configs import common, sequence


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(
        arg,
        methods=sequence.CLOCK_METHODS,
        method="dni",
        steps=5120,
        smoke=False,
    )
    config = sequence.base_config("clocks", arg.method, arg.smoke)
    config.batch_size = 8 if arg.smoke else 64
    config.optimizer.learning_rate = 3e-3  # as scripts/clocks_benchmark.py
    config.model = ml_collections.ConfigDict()
    config.model.fast_units = 8 if arg.smoke else 64
    config.model.slow_units = 4 if arg.smoke else 32
    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic" if arg.smoke else "mnist"
    config.data.manual_dir = config_dict.placeholder(str)
    config.data.train_sequences = 32 if arg.smoke else 8192
    config.data.test_sequences = 16 if arg.smoke else 1024
    config.data.length = 8 if arg.smoke else 16
    config.data.period = 2 if arg.smoke else 4
    config.data.lag = 2
    # One epoch is a pass over the training sequences.
    config.steps_per_epoch = -(-config.data.train_sequences // config.batch_size)
    config.steps = 2 * config.steps_per_epoch if arg.smoke else arg.steps
    return config
