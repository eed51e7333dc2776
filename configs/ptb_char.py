r"""An LSTM on Penn Treebank characters, trained in chunks of T steps
(Jaderberg et al. 2016, arXiv:1608.05343, Section 3.2).

Each training batch holds `batch_size` windows of `data.sequence_length`
characters, consecutive in the stream (`keras_sg.data.bptt_dataset`); the
state starts at zero in every window and is carried across its chunks of
`truncation` steps. Every `steps_per_epoch` steps (an epoch here) the run
measures the test bits per character on the first `data.test_characters`
characters of the test split (0: all of it), so metrics.json holds a
learning curve: over the whole stream, cut into `batch_size` parallel
streams scored in windows of the same length with the state carried from
one window to the next (`test_bpc_curve`), and with the state reset at
each window (`test_bpc_window_curve`).

    python scripts/train_sequence.py --config=configs/ptb_char.py:dni,truncation=8 \
        --workdir=workdirs/ptb_T8_dni

The files are read from `data.dir`, else from the variable KERAS_SG_PTB_DIR,
and checked against their sha256. Variants (after the colon): a method (bptt,
dni, dni_aux), truncation=T, units=<LSTM size>, steps=<budget>,
eval_every=<steps between test measurements>, and `smoke`: a tiny generated
text (no PTB folder needed) and a few steps.
"""

import ml_collections
from ml_collections import config_dict

from configs import common, sequence


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(
        arg,
        methods=sequence.TIME_METHODS,
        method="dni",
        truncation=8,
        units=256,
        steps=3000,
        eval_every=250,
        smoke=False,
    )
    config = sequence.base_config("ptb_char", arg.method, arg.smoke)
    config.truncation = arg.truncation
    config.aux_weight = 1.0
    config.steps = 4 if arg.smoke else arg.steps
    config.steps_per_epoch = 2 if arg.smoke else arg.eval_every
    config.model = ml_collections.ConfigDict()
    config.model.units = 8 if arg.smoke else arg.units
    config.model.embedding = 4 if arg.smoke else 32
    config.data = ml_collections.ConfigDict()
    config.data.generated = arg.smoke  # a tiny generated text, not PTB
    config.data.dir = config_dict.placeholder(str)
    # Windows of this many characters, a multiple of T; 4 chunks at T = 8.
    config.data.sequence_length = 4 * arg.truncation if arg.smoke else 32
    config.data.test_characters = 0 if arg.smoke else 100000
    return config
