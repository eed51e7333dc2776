"""What the sequence configs (configs/copy.py, configs/ptb_char.py,
configs/clocks.py) share: the fields `scripts/train_sequence.py` reads for
every task, and the check of every field that can be out of range.

A run is measured in optimizer steps: `steps` is its budget, counted in
epochs of `steps_per_epoch` steps (an epoch is the unit of checkpoints,
logs and, for the copy tasks, of the curriculum). `max_seconds` caps its
wall clock: a run stops at the first epoch end past it, with status
"finished" and `stopped: "wall_clock"` in its metrics.json.
"""

import ml_collections

from configs import common

TASKS = ("copy", "repeat_copy", "ptb_char", "clocks")
TIME_METHODS = ("bptt", "dni", "dni_aux")  # TruncatedBPTTModel's
CLOCK_METHODS = ("bptt", "dni")  # ClockedPairModel's


def base_config(task: str, method: str, smoke: bool) -> ml_collections.ConfigDict:
    """The fields every sequence task has; a task file adds its own."""
    config = ml_collections.ConfigDict()
    config.task = task
    config.method = method
    config.seed = 0
    config.deterministic = True
    config.batch_size = 8 if smoke else 32
    config.steps = 0  # the budget: set by each task
    config.steps_per_epoch = 0
    config.max_seconds = 0.0 if smoke else 1200.0  # 0: no cap
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.clipnorm = 0.0  # 0: no clipping
    # "": the synthesizers train with `optimizer`; else their own, at its
    # learning_rate (and `optimizer.clipnorm`).
    common.add_synthesizer_optimizer(config)
    config.sg_loss_weight = 1.0
    # TruncatedBPTTModel's `sg_scale`: the factor on the synthetic gradient
    # where a chunk uses it, a discount on the bootstrapped target (1: none).
    config.sg_scale = 1.0
    config.synthesizer = ml_collections.ConfigDict()
    # Linear synthesizers (zero-initialised): the first update is
    # truncated BPTT's; hidden layers are an option, not the paper's n/c.
    config.synthesizer.hidden_layers = 0
    config.synthesizer.units = 64 if smoke else 256
    config.log = ml_collections.ConfigDict()
    config.log.update_freq = "epoch"
    config.keep_checkpoints = 2
    return config


# Fields a rerun may change on a workdir that holds checkpoints: how long the
# run goes, what it logs, where the data lives.
SAFE_TO_CHANGE = (
    "steps",
    "max_seconds",
    "keep_checkpoints",
    "log.*",
    "data.dir",
    "data.manual_dir",
)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every field that can be out of range, naming the first bad one:
    "`truncation` must be an integer >= 1. Received: truncation=0".

    Returns:
        `config`, unchanged.
    """
    check = common
    check._choice(config, "task", TASKS)
    methods = CLOCK_METHODS if config.task == "clocks" else TIME_METHODS
    check._choice(config, "method", methods)
    check._int(config, "seed", 0)
    check._bool(config, "deterministic")
    check._int(config, "batch_size", 1)
    check._int(config, "steps", 1)
    check._int(config, "steps_per_epoch", 1)
    check._number(config, "max_seconds", 0, inclusive=True)
    if not config.optimizer.name or not isinstance(config.optimizer.name, str):
        check._refuse("optimizer.name", config.optimizer.name, "a Keras optimizer")
    check._number(config, "optimizer.learning_rate", 0, inclusive=False)
    check._number(config, "optimizer.clipnorm", 0, inclusive=True)
    if "synthesizer_optimizer" in config:
        check.check_synthesizer_optimizer(config, config.method != "bptt")
    check._number(config, "sg_loss_weight", 0, inclusive=True)
    check._int(config, "synthesizer.hidden_layers", 0)
    check._int(config, "synthesizer.units", 1)
    check._int(config, "keep_checkpoints", 1)
    freq = config.log.update_freq
    if freq not in ("epoch", "batch") and not (
        isinstance(freq, str) and freq.isdigit()
    ):
        check._refuse("log.update_freq", freq, "'epoch', 'batch' or a step count")
    if config.task == "clocks":
        for name in ("fast_units", "slow_units"):
            check._int(config, f"model.{name}", 1)
        check._choice(config, "data.name", ("mnist", "synthetic"))
        for name in ("period", "lag", "train_sequences", "test_sequences"):
            check._int(config, f"data.{name}", 1)
        length, period, lag = config.data.length, config.data.period, config.data.lag
        check._int(config, "data.length", 1)
        if length % period or length <= lag * period:
            check._refuse(
                "data.length",
                length,
                f"a multiple of data.period={period} greater than "
                f"data.lag * data.period = {lag * period}",
            )
        return config
    check._int(config, "truncation", 1)
    check._number(config, "aux_weight", 0, inclusive=True)
    check._number(config, "sg_scale", 0, inclusive=True)
    if config.sg_scale > 1:
        check._refuse("sg_scale", config.sg_scale, "a number in [0, 1]")
    check._int(config, "model.units", 1)
    if config.task == "ptb_char":
        check._int(config, "model.embedding", 1)
        check._int(config, "data.sequence_length", 1)
        if config.data.sequence_length % config.truncation:
            check._refuse(
                "data.sequence_length",
                config.data.sequence_length,
                f"a multiple of truncation={config.truncation}",
            )
        check._int(config, "data.test_characters", 0)
        check._bool(config, "data.generated")
        return config
    check._int(config, "data.bits", 1)
    check._int(config, "data.max_repeats", 1)
    check._number(config, "curriculum.threshold", 0, inclusive=False)
    check._int(config, "curriculum.start_length", 1)
    check._int(config, "curriculum.step", 1)
    check._int(config, "curriculum.max_length", config.curriculum.start_length)
    return config
