"""What every keras_sg experiment config shares: data, optimizer, training, logs.

A config file's `get_config(arg)` takes the text after the colon of
`--config=configs/<file>.py:<arg>`: comma-separated tokens, each a method name
(`dni`), a flag (`smoke`) or `key=value` (`depth=4`).
"""

import math
import re

import ml_collections
from ml_collections import config_dict

METHODS = ("backprop", "dni", "cdni", "no_bprop", "bp_lambda", "unlocked")
# The synthetic gradients each method trains with: DNI's synthesizers (an MLP
# or conv net on the activation) or cDNI's (linear, also given the label).
# BP(lambda) mixes DNI's with backprop's (Jaderberg et al. 2016, Appendix A);
# "unlocked" is the complete unlock, synthetic inputs from x and cDNI.
SG_KIND = {"dni": "dni", "cdni": "cdni", "bp_lambda": "dni", "unlocked": "cdni"}
SCHEDULES = ("paper", "constant")
# "step": one training step of the method's model per batch; "async":
# keras_sg.AsyncPipelinedModel, every stage in its own loop (dni and cdni).
RUNTIMES = ("step", "async")


def parse_arg(arg: str | None, methods=METHODS, **defaults):
    """Parses `"cdni,depth=4,smoke"` over `defaults` into a ConfigDict.

    A bare method name (one of `methods`) sets `method`; a bare word that is
    a boolean default sets it True; `key=value` is converted to the type of
    the default.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for token in filter(None, (arg or "").split(",")):
        key, sep, value = token.partition("=")
        if not sep:
            if key in methods:
                parsed.method = key
                continue
            if isinstance(defaults.get(key), bool):
                parsed[key] = True
                continue
            raise ValueError(
                f"Unknown config variant token {token!r}; expected a method "
                f"{methods}, a flag among "
                f"{[k for k, v in defaults.items() if isinstance(v, bool)]}, or "
                f"key=value with key in {sorted(defaults)}"
            )
        if key not in defaults:
            raise ValueError(
                f"Unknown config variant key {key!r}; "
                f"expected one of {sorted(defaults)}"
            )
        kind = type(defaults[key])
        parsed[key] = (
            (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        )
    if parsed.method not in methods:
        raise ValueError(
            f"Expected method in {methods}. Received: method={parsed.method!r}"
        )
    return parsed


def base_config(
    method: str, smoke: bool, bp_lambda: float = 0.5, update_probability: float = 1.0
) -> ml_collections.ConfigDict:
    """The fields that every experiment has, at the MNIST settings the issue cites
    from the paper (batch 256, Adam, 3e-5; we could not read the paper itself)."""
    config = ml_collections.ConfigDict()
    config.method = method
    # Method "bp_lambda" only: the weight of the backpropagated gradient in
    # each cut's mixture, in [0, 1] (0 is DNI's update, 1 backprop's).
    config.bp_lambda = bp_lambda
    # Methods "dni" and "cdni": each stage (and its synthesizer) updates at a
    # step with this probability, drawn from `seed`; 1.0 is the plain method.
    config.update_probability = update_probability
    config.seed = 0
    config.deterministic = True  # deterministic TF ops: resumed runs end bit-equal

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic" if smoke else "mnist"
    # Folder of the original files; if unset, the dataset's own environment
    # variable (KERAS_SG_MNIST_DIR, KERAS_SG_FASHION_MNIST_DIR, KERAS_SG_CIFAR10_DIR).
    config.data.manual_dir = config_dict.placeholder(str)
    config.data.data_dir = config_dict.placeholder(str)  # tensorflow-datasets folder
    config.data.train_examples = 512 if smoke else 0  # 0: the whole split
    config.data.test_examples = 256 if smoke else 0
    # > 0: hold out the last this many training examples and evaluate on them
    # instead of the test split (tuning without looking at the test set).
    config.data.validation_examples = 0

    config.batch_size = 64 if smoke else 256  # as cited from the paper
    config.epochs = 2 if smoke else 20
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # as cited from the paper
    config.optimizer.learning_rate = 1e-3 if smoke else 3e-5  # as cited from the paper
    # "paper": the rate divided by 10 after 60% and again after 80% of the
    # run's steps (epochs * steps per epoch), the shape the issue cites from
    # the paper (3e-5 to 500k steps, /10 at 300k and 400k); "constant": no decay.
    config.optimizer.schedule = "paper"
    add_synthesizer_optimizer(config)
    config.sg_loss_weight = 1.0
    add_runtime(config)

    config.placement = ml_collections.ConfigDict()
    # "host:port,host:port": run stage k on cluster task k mod n, each task a
    # `scripts/tf_server.py` process; "" keeps every stage in this process.
    config.placement.workers = ""
    # Seconds to wait for every worker's server to answer before giving up.
    config.placement.connect_timeout = 30.0

    config.log = ml_collections.ConfigDict()
    config.log.diagnostics_every_steps = 4 if smoke else 500  # SG vs true gradient
    config.log.probe_examples = 64 if smoke else 256
    config.log.update_freq = "epoch"  # TensorBoard scalars: "epoch" or a step count
    # Steps TensorBoard profiles: "0" none, "10" step 10, "10,20" steps 10-20.
    config.log.profile_batch = "0"
    config.keep_checkpoints = 2
    # Stop (status "diverged", exit status 1) once the training loss passes
    # this many times its lowest epoch mean; 0: only a loss that is not
    # finite stops a run (keras_sg.callbacks.StopOnDivergence).
    config.max_loss_growth = 10.0
    # Rollbacks allowed in one run of the script: at the end of an epoch that
    # diverged (by the checks above), put back the model and its optimizers as
    # they were at the end of the last sound epoch and go on
    # (keras_sg.callbacks.RollBackOnDivergence); once they are used up, a
    # divergence stops the run. 0: none, a divergence stops the run at once.
    config.rollbacks = 0
    return config


def add_synthesizer_optimizer(config: ml_collections.ConfigDict):
    """Adds `config.synthesizer_optimizer`: the synthesizers' own optimizer.

    `name` "" (the default) trains the synthesizers with `optimizer`, as one
    optimizer over every variable; a Keras optimizer name (`"sgd"`) gives
    them an optimizer of their own, at `learning_rate`, which must then be
    set. Public DNI codes give synthesizers a learning rate of their own;
    under Adam, scaling their loss (`sg_loss_weight`) does not.
    """
    config.synthesizer_optimizer = ml_collections.ConfigDict()
    config.synthesizer_optimizer.name = ""
    config.synthesizer_optimizer.learning_rate = config_dict.placeholder(float)


def add_runtime(config: ml_collections.ConfigDict, runtime: str = "step"):
    """Adds `config.runtime` and `config.async_runtime`: how the stages train.

    `runtime` "step" trains the method's model one step per batch; "async"
    trains `keras_sg.AsyncPipelinedModel` (methods dni and cdni), each stage
    in its own loop at its own pace, with the settings under
    `async_runtime` (docs/async.md): `capacity` (items per forward queue,
    the staleness bound), `lock_step` (the stages step together, the
    deterministic mode; needs capacity 1), `max_target_age` (0: none, else
    2 to capacity + 1), `steps_per_execution` (steps per call of each
    stage's function) and `jit_compile` (each stage's math with XLA).
    """
    config.runtime = runtime
    config.async_runtime = ml_collections.ConfigDict()
    config.async_runtime.capacity = 1
    config.async_runtime.lock_step = False
    config.async_runtime.max_target_age = 0
    config.async_runtime.steps_per_execution = 1
    config.async_runtime.jit_compile = False


def check_runtime(config):
    """Refuses a bad `config.runtime` or `config.async_runtime`, naming the
    field (see `add_runtime`)."""
    _choice(config, "runtime", RUNTIMES)
    if config.runtime != "async":
        return
    if config.method not in ("dni", "cdni"):
        raise ValueError(
            "runtime='async' trains pipelined DNI, so it needs method 'dni' or "
            f"'cdni'. Received: runtime='async' with method={config.method!r}"
        )
    if config.update_probability != 1.0:
        raise ValueError(
            "runtime='async' updates every stage at every step; it takes no "
            "update_probability below 1. Received: "
            f"update_probability={config.update_probability!r}"
        )
    _int(config, "async_runtime.capacity", 1)
    _bool(config, "async_runtime.lock_step")
    _int(config, "async_runtime.steps_per_execution", 1)
    _bool(config, "async_runtime.jit_compile")
    settings = config.async_runtime
    if settings.lock_step and settings.capacity != 1:
        _refuse(
            "async_runtime.capacity",
            settings.capacity,
            "1 with async_runtime.lock_step=True",
        )
    if settings.lock_step and settings.steps_per_execution != 1:
        _refuse(
            "async_runtime.steps_per_execution",
            settings.steps_per_execution,
            "1 with async_runtime.lock_step=True",
        )
    age = settings.max_target_age
    if (
        isinstance(age, bool)
        or not isinstance(age, int)
        or not (age == 0 or 2 <= age <= settings.capacity + 1)
    ):
        _refuse(
            "async_runtime.max_target_age",
            age,
            f"0 (no bound) or an integer in [2, capacity + 1] = "
            f"[2, {settings.capacity + 1}]",
        )


def check_synthesizer_optimizer(config, trains_synthesizers: bool):
    """Refuses a bad `config.synthesizer_optimizer`, naming the field.

    Args:
        config: a config with `synthesizer_optimizer` (see
            `add_synthesizer_optimizer`).
        trains_synthesizers: whether `config.method` trains synthesizers.
    """
    name = config.synthesizer_optimizer.name
    if name in ("", None):
        return
    if not isinstance(name, str):
        _refuse("synthesizer_optimizer.name", name, "a Keras optimizer name or ''")
    if not trains_synthesizers:
        raise ValueError(
            f"method={config.method!r} trains no synthesizers, so it takes no "
            "synthesizer optimizer: leave `synthesizer_optimizer.name` empty. "
            f"Received: synthesizer_optimizer.name={name!r}"
        )
    _number(config, "synthesizer_optimizer.learning_rate", 0, inclusive=False)


def table1_config(arg: str | None):
    """The variants that the MNIST nets of Table 1 (configs/mnist_fcn.py and
    configs/mnist_cnn.py) take after the colon, and the base config they give.

    Returns:
        `(variants, config)`: `arg` parsed over method="dni", depth=3,
        smoke=False, bp_lambda=0.5, update_probability=1.0, runtime="step",
        and `base_config` of them (with `runtime` set).
    """
    variants = parse_arg(
        arg,
        method="dni",
        depth=3,
        smoke=False,
        bp_lambda=0.5,
        update_probability=1.0,
        runtime="step",
    )
    config = base_config(
        variants.method,
        variants.smoke,
        variants.bp_lambda,
        variants.update_probability,
    )
    config.runtime = variants.runtime
    return variants, config


DATASETS = ("synthetic", "mnist", "fashion_mnist", "cifar10")
MODELS = {"fcn": "dense", "cnn": "conv"}  # model kind: its synthesizer kind


def _refuse(name: str, value, expected: str):
    raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")


def _int(config, name: str, minimum: int):
    value = _get(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _refuse(name, value, f"an integer >= {minimum}")


def _number(config, name: str, minimum: float, inclusive: bool):
    value = _get(config, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (value >= minimum if inclusive else value > minimum)
    if not ok:
        _refuse(name, value, f"a finite number {'>=' if inclusive else '>'} {minimum}")


def _choice(config, name: str, choices):
    value = _get(config, name)
    if value not in choices:
        _refuse(name, value, f"one of {tuple(choices)}")


def _bool(config, name: str):
    value = _get(config, name)
    if not isinstance(value, bool):
        _refuse(name, value, "True or False")


def _get(config, name: str):
    for part in name.split("."):
        config = config[part]
    return config


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every field that can be out of range, before anything is written.

    Command-line overrides (`--config.epochs=0`) bypass `get_config`, so
    `scripts/train.py` calls this on the final config.

    Returns:
        `config`, unchanged.

    Raises:
        ValueError: naming the first bad field and its value, as
            "`keep_checkpoints` must be an integer >= 1. Received:
            keep_checkpoints=-1".
    """
    _choice(config, "method", METHODS)
    value = config.bp_lambda
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0.0 <= value <= 1.0
    ):
        _refuse("bp_lambda", value, "a number in [0, 1]")
    value = config.update_probability
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0.0 < value <= 1.0
    ):
        _refuse("update_probability", value, "a number in (0, 1]")
    if value != 1.0 and config.method not in ("dni", "cdni"):
        raise ValueError(
            "`update_probability` below 1 (stochastic updates) needs method "
            f"'dni' or 'cdni'. Received: update_probability={value!r} with "
            f"method={config.method!r}"
        )
    _int(config, "seed", 0)
    _bool(config, "deterministic")
    _choice(config, "data.name", DATASETS)
    minimum = 1 if config.data.name == "synthetic" else 0  # 0: the whole split
    _int(config, "data.train_examples", minimum)
    _int(config, "data.test_examples", minimum)
    _int(config, "data.validation_examples", 0)
    _int(config, "batch_size", 1)
    _int(config, "epochs", 1)
    if not config.optimizer.name or not isinstance(config.optimizer.name, str):
        _refuse("optimizer.name", config.optimizer.name, "a Keras optimizer name")
    _number(config, "optimizer.learning_rate", 0, inclusive=False)
    _choice(config, "optimizer.schedule", SCHEDULES)
    if "synthesizer_optimizer" in config:
        check_synthesizer_optimizer(config, config.method in SG_KIND)
    _number(config, "sg_loss_weight", 0, inclusive=True)
    if "runtime" in config:
        check_runtime(config)
    _int(config, "keep_checkpoints", 1)
    growth = config.max_loss_growth
    if not (
        isinstance(growth, int | float)
        and not isinstance(growth, bool)
        and (growth == 0 or (math.isfinite(growth) and growth > 1))
    ):
        _refuse("max_loss_growth", growth, "0 (off) or a finite number > 1")
    if "rollbacks" in config:
        _int(config, "rollbacks", 0)
        if config.rollbacks and not growth:
            _refuse(
                "rollbacks",
                config.rollbacks,
                "0 when max_loss_growth is 0 (a rollback is made when the task "
                "loss grows past max_loss_growth, or is not finite, at an epoch's "
                "end)",
            )
    _int(config, "log.diagnostics_every_steps", 0)
    _int(config, "log.probe_examples", 1)
    steps = config.log.profile_batch
    match = isinstance(steps, str) and re.fullmatch(r"(\d+)(?:,(\d+))?", steps)
    if not match or (match[2] is not None and int(match[2]) < int(match[1])):
        _refuse(
            "log.profile_batch",
            steps,
            "'0' (off), a step 'N' or steps 'first,last' with first <= last",
        )
    freq = config.log.update_freq
    # A step count given on the command line arrives as text: "100".
    steps = int(freq) if isinstance(freq, str) and freq.isdigit() else freq
    if freq not in ("epoch", "batch") and (
        isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
    ):
        _refuse("log.update_freq", freq, "'epoch', 'batch' or an integer >= 1")

    _choice(config, "model.kind", tuple(MODELS))
    minimum = 2 if config.model.kind == "cnn" or config.method != "backprop" else 1
    _int(config, "model.depth", minimum)
    sizes = ("units",) if config.model.kind == "fcn" else ("filters", "kernel_size")
    for field in sizes:
        _int(config, f"model.{field}", 1)
    _bool(config, "model.batch_norm")
    if "norm_momentum" in config.model:
        _number(config, "model.norm_momentum", 0, inclusive=True)
        if not config.model.norm_momentum < 1:
            _refuse("model.norm_momentum", config.model.norm_momentum, "in [0, 1)")
    if config.model.kind == "cnn":
        if "head" in config.model:
            _choice(config, "model.head", ("flatten", "global_average"))
        if "pooling" in config.model:
            _choice(config, "model.pooling", ("", None, "average", "max"))

    _choice(config, "synthesizer.kind", (MODELS[config.model.kind],))
    _int(config, "synthesizer.hidden_layers", 0)
    if config.synthesizer.kind == "dense":
        sizes = ("units",)
    else:
        sizes = ("filters", "kernel_size")
    for field in sizes:
        _int(config, f"synthesizer.{field}", 1)
    if "dilation_rate" in config.synthesizer:
        _int(config, "synthesizer.dilation_rate", 1)
    _bool(config, "synthesizer.batch_norm")
    if "output_scale" in config.synthesizer:
        scale = config.synthesizer.output_scale
        ok = isinstance(scale, int | float) and not isinstance(scale, bool)
        if scale != "per_position" and not (ok and math.isfinite(scale) and scale > 0):
            _refuse("synthesizer.output_scale", scale, "a number > 0 or 'per_position'")

    _int(config, "input_synthesizer.hidden_layers", 0)
    for field in sizes:
        _int(config, f"input_synthesizer.{field}", 1)
    _bool(config, "input_synthesizer.batch_norm")
    return config
