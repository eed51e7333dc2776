"""What every keras_sg experiment config shares: data, optimizer, training, logs.

A config file's `get_config(arg)` takes the text after the colon of
`--config=configs/<file>.py:<arg>`: comma-separated tokens, each a method name
(`dni`), a flag (`smoke`) or `key=value` (`depth=4`).
"""

import ml_collections
from ml_collections import config_dict

METHODS = ("backprop", "dni", "cdni", "no_bprop")


def parse_arg(arg: str | None, **defaults):
    """Parses `"cdni,depth=4,smoke"` over `defaults` into a ConfigDict.

    A bare method name sets `method`; a bare word that is a boolean default
    sets it True; `key=value` is converted to the type of the default.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for token in filter(None, (arg or "").split(",")):
        key, sep, value = token.partition("=")
        if not sep:
            if key in METHODS:
                parsed.method = key
                continue
            if isinstance(defaults.get(key), bool):
                parsed[key] = True
                continue
            raise ValueError(
                f"Unknown config variant token {token!r}; expected a method "
                f"{METHODS}, a flag among "
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
    if parsed.method not in METHODS:
        raise ValueError(
            f"Expected method in {METHODS}. Received: method={parsed.method!r}"
        )
    return parsed


def base_config(method: str, smoke: bool) -> ml_collections.ConfigDict:
    """The fields that every experiment has, at the MNIST settings the issue cites
    from the paper (batch 256, Adam, 3e-5; we could not read the paper itself)."""
    config = ml_collections.ConfigDict()
    config.method = method
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

    config.batch_size = 64 if smoke else 256  # as cited from the paper
    config.epochs = 2 if smoke else 20
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # as cited from the paper
    config.optimizer.learning_rate = 1e-3 if smoke else 3e-5  # as cited from the paper
    config.sg_loss_weight = 1.0

    config.placement = ml_collections.ConfigDict()
    # "host:port,host:port": run stage k on cluster task k mod n, each task a
    # `scripts/tf_server.py` process; "" keeps every stage in this process.
    config.placement.workers = ""

    config.log = ml_collections.ConfigDict()
    config.log.diagnostics_every_steps = 4 if smoke else 500  # SG vs true gradient
    config.log.probe_examples = 64 if smoke else 256
    config.log.update_freq = "epoch"  # TensorBoard scalars: "epoch" or a step count
    config.log.profile_batch = 0  # e.g. "10,20" to profile steps 10 to 20
    config.keep_checkpoints = 2
    return config
