r"""Trains one keras_sg experiment from a config file, resumably.

    python scripts/train.py --config=configs/mnist_fcn.py:cdni,depth=4 \
        --workdir=workdirs/fcn4_cdni [--config.epochs=50]

Writes into the workdir: config.json (the resolved config), tb/ (TensorBoard:
train and validation scalars, SG-vs-true-gradient diagnostics), ckpt/ (a
`.keras` checkpoint per epoch, model and optimizer, written atomically and
only while every loss and weight is finite), history.csv and, at the end,
metrics.json (strict JSON). Run the same command again after an interruption
(even a SIGKILL) and it goes on from the last checkpoint that loads, ending
with the weights that an uninterrupted run ends with.

A run stops with a one-line error and exit status 1, before training, on a
config value out of range, a workdir it cannot write, a workdir another run
holds (a `lock` file there names its process) or a workdir whose checkpoints
were trained with another config (only `SAFE_TO_CHANGE` fields may differ);
and, during training, as soon as the task loss or a synthesizer loss is not
finite, or the task loss passes `max_loss_growth` times its lowest epoch mean,
naming it and the newest checkpoint before it. With `rollbacks=N` the checks
are made at each epoch's end, and the first N epochs that fail them are undone
instead (the model and its optimizers put back as the last sound epoch left
them, `keras_sg.callbacks.RollBackOnDivergence`); training goes on with the
next epoch, and metrics.json lists the rollbacks. A resumed run starts with N
again.
"""

import fcntl
import json
import math
import os
import sys
import time
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the config files import configs.common

from configs import common  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:variant].", lock_config=True
)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])

# Fields a rerun may change on a workdir that holds checkpoints: they change
# how long the run goes, what it logs and where it reads the data from, not
# the model it trains. "log.*" covers every field under log.
SAFE_TO_CHANGE = (
    "epochs",
    "keep_checkpoints",
    "max_loss_growth",
    "rollbacks",
    "log.*",
    "data.manual_dir",
    "data.data_dir",
)
# Fields added after workdirs were made, with the value that keeps the old
# behaviour: a config.json without them recorded that value.
ADDED_FIELDS = {
    "synthesizer_optimizer.name": "",
    "synthesizer_optimizer.learning_rate": None,
    "runtime": "step",
    "async_runtime.capacity": 1,
    "async_runtime.lock_step": False,
    "async_runtime.max_target_age": 0,
    "async_runtime.steps_per_execution": 1,
    "async_runtime.jit_compile": False,
    "rollbacks": 0,
}
_LOCK = []  # the open lock file: held for the life of the process
PROGRAM = "train.py"  # the name errors start with (train_sequence.py reuses fail)


def fail(message: str):
    """Ends the run with a one-line error on stderr and exit status 1."""
    raise SystemExit(f"{PROGRAM}: {message}")


def parse_flags(argv):
    """absl's flag parsing, with each error on one line instead of a traceback."""
    try:
        rest = FLAGS(argv)
    except flags.Error as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        fail(" ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else str(error))
    except Exception as error:  # a config file that raises anything else
        fail(f"cannot load --config: {type(error).__name__}: {error}")
    if not isinstance(FLAGS.config, ml_collections.ConfigDict):
        # config_flags defers a file that failed to load until first use.
        cause = getattr(FLAGS.config, "_error", None)
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        fail(f"cannot load the config file: {lines[-1] if lines else cause}")
    return rest


def load_data(config):
    """Train and evaluation arrays, as the config asks.

    The evaluation arrays are the test split, or, with
    `data.validation_examples` > 0, the last that many examples of the
    training split, which training then leaves out.
    """
    train, test = _load_splits(config)
    held = config.data.validation_examples
    if not held:
        return train, test
    if held >= len(train[0]):
        raise ValueError(
            "`data.validation_examples` must leave training examples: the "
            f"training split has {len(train[0])}. Received: "
            f"data.validation_examples={held}"
        )
    cut = len(train[0]) - held
    return tuple(a[:cut] for a in train), tuple(a[cut:] for a in train)


def evaluated_split(config) -> str:
    """What `load_data`'s evaluation arrays are: "validation" or "test"."""
    return "validation" if config.data.validation_examples else "test"


def _load_splits(config):
    import keras_sg

    if config.data.name == "synthetic":
        shape = (28, 28, 1)
        x, y = keras_sg.data.synthetic_images(
            config.data.train_examples + config.data.test_examples, shape, seed=1
        )
        cut = config.data.train_examples
        return (x[:cut], y[:cut]), (x[cut:], y[cut:])
    # Each dataset has its own variable (KERAS_SG_MNIST_DIR, ...).
    manual_dir = config.data.manual_dir or keras_sg.data.manual_dir_from_env(
        config.data.name
    )
    load = dict(data_dir=config.data.data_dir, manual_dir=manual_dir)
    train = keras_sg.data.load_split(config.data.name, "train", **load)
    test = keras_sg.data.load_split(config.data.name, "test", **load)
    if config.data.train_examples:
        train = tuple(a[: config.data.train_examples] for a in train)
    if config.data.test_examples:
        test = tuple(a[: config.data.test_examples] for a in test)
    return train, test


def build_model(config, input_shape, num_classes, devices=None, steps_per_epoch=None):
    """The network, its synthesizers and the decoupled model, from plain values.

    `devices`: None, or devices to deal the stages onto, round-robin.
    `steps_per_epoch`: needed by the paper's learning-rate schedule."""
    import keras

    import keras_sg

    m, s = config.model, config.synthesizer
    if m.kind == "fcn":
        net = keras_sg.models.fully_connected(
            input_shape,
            num_classes,
            depth=m.depth,
            units=m.units,
            batch_norm=m.batch_norm,
            norm_momentum=m.get("norm_momentum", 0.99),
        )
    elif m.kind == "cnn":
        net = keras_sg.models.convolutional(
            input_shape,
            num_classes,
            depth=m.depth,
            filters=m.filters,
            kernel_size=m.kernel_size,
            batch_norm=m.batch_norm,
            head=m.get("head", "flatten"),
            pooling=m.get("pooling") or None,
            norm_momentum=m.get("norm_momentum", 0.99),
        )
    else:
        raise ValueError(f"Expected model.kind 'fcn' or 'cnn'. Received: {m.kind!r}")
    stages = keras_sg.split_stages(net)
    sg_kind = common.SG_KIND.get(config.method)  # "dni", "cdni" or None
    synthesizers = None
    if sg_kind:
        classes = num_classes if sg_kind == "cdni" else None
        cuts = len(stages) - 1
        if s.kind == "dense":
            make = lambda: keras_sg.DenseSynthesizer(  # noqa: E731
                hidden_layers=s.hidden_layers,
                units=s.units,
                use_batch_norm=s.batch_norm,
                num_classes=classes,
                output_scale=s.get("output_scale", 1.0),
            )
        else:
            make = lambda: keras_sg.ConvSynthesizer(  # noqa: E731
                hidden_layers=s.hidden_layers,
                filters=s.filters,
                kernel_size=s.kernel_size,
                use_batch_norm=s.batch_norm,
                num_classes=classes,
                output_scale=s.get("output_scale", 1.0),
                dilation_rate=s.get("dilation_rate", 1),
            )
        synthesizers = [make() for _ in range(cuts)]
    if devices:
        devices = [devices[k % len(devices)] for k in range(len(stages))]
    if steps_per_epoch:
        steps_per_epoch = optimizer_steps_per_epoch(
            config, len(stages), steps_per_epoch
        )
    common_args = dict(sg_loss_weight=config.sg_loss_weight, devices=devices or None)
    if config.method == "bp_lambda":
        model = keras_sg.BPLambdaModel(
            net, synthesizers, bp_lambda=config.bp_lambda, method=sg_kind, **common_args
        )
    elif config.method == "unlocked":
        inputs = [
            make_input_synthesizer(config, shape)
            for shape in cut_shapes(stages, input_shape)
        ]
        model = keras_sg.UnlockedModel(
            net, synthesizers, input_synthesizers=inputs, method=sg_kind, **common_args
        )
    elif config.runtime == "async":
        settings = config.async_runtime
        model = keras_sg.AsyncPipelinedModel(
            net,
            synthesizers,
            method=config.method,
            capacity=settings.capacity,
            lock_step=settings.lock_step,
            max_target_age=settings.max_target_age or None,
            **common_args,
        )
    elif config.update_probability < 1.0:
        model = keras_sg.StochasticUpdateModel(
            net,
            synthesizers,
            update_probability=config.update_probability,
            seed=config.seed,
            method=config.method,
            **common_args,
        )
    else:
        model = keras_sg.DecoupledModel(
            net, synthesizers, method=config.method, **common_args
        )
    optimizer = keras.optimizers.get(
        {
            "class_name": config.optimizer.name,
            "config": {"learning_rate": learning_rate(config, steps_per_epoch)},
        }
    )
    runtime = {}
    if config.runtime == "async":
        runtime = dict(
            steps_per_execution=config.async_runtime.steps_per_execution,
            jit_compile=config.async_runtime.jit_compile,
        )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        synthesizer_optimizer=synthesizer_optimizer(config, steps_per_epoch),
        **runtime,
    )
    return model


def optimizers_of(model) -> list:
    """(optimizer, whether it trains only synthesizers) for every optimizer of
    `model`: its compiled ones and, for an `AsyncPipelinedModel`, its stages'
    and synthesizers' clones of them, which step in their place."""
    import keras_sg

    pairs = [(model.optimizer, False)]
    if model.synthesizer_optimizer is not None:
        pairs.append((model.synthesizer_optimizer, True))
    if isinstance(model, keras_sg.AsyncPipelinedModel):
        pairs += [(o, False) for o in model.stage_optimizers()]
        pairs += [(o, True) for o in model.synthesizer_optimizers() or []]
    return pairs


def optimizer_steps_per_epoch(config, num_stages: int, steps_per_epoch: int) -> int:
    """The steps an epoch adds to the optimizers' `iterations`, which the
    paper's schedule reads: one per batch, and in the async runtime's
    lock-step mode also one per global step of the epoch's drain
    (`num_stages - 1`), which every stage's optimizer counts."""
    if config.runtime == "async" and config.async_runtime.lock_step:
        return steps_per_epoch + num_stages - 1
    return steps_per_epoch


def follow_schedule(model, config, steps_per_epoch):
    """Gives every optimizer of `model` (`optimizers_of`) the learning-rate
    schedule of `config`: on resume, since `epochs` may have changed."""
    rate = learning_rate(config, steps_per_epoch)
    if model.synthesizer_optimizer is not None:
        synth_rate = learning_rate(
            config, steps_per_epoch, config.synthesizer_optimizer.learning_rate
        )
    for optimizer, synthesizers_only in optimizers_of(model):
        optimizer.learning_rate = synth_rate if synthesizers_only else rate


def synthesizer_optimizer(config, steps_per_epoch=None, extra=None):
    """The synthesizers' own optimizer, or None (`synthesizer_optimizer.name`
    empty: `optimizer` trains them). It follows `optimizer.schedule`, if the
    config has one, from its own learning rate; `extra` adds to its config
    (`clipnorm`)."""
    import keras

    name = config.synthesizer_optimizer.name
    if not name:
        return None
    rate = config.synthesizer_optimizer.learning_rate
    if "schedule" in config.optimizer:
        rate = learning_rate(config, steps_per_epoch, rate)
    return keras.optimizers.get(
        {"class_name": name, "config": {"learning_rate": rate, **(extra or {})}}
    )


def cut_shapes(stages, input_shape) -> list[tuple]:
    """The activation shape at each cut (without the batch axis)."""
    import keras

    shapes, shape = [], (None, *input_shape)
    for stage in stages[:-1]:
        shape = tuple(stage.compute_output_spec(keras.KerasTensor(shape)).shape)
        shapes.append(shape[1:])
    return shapes


def make_input_synthesizer(config, target_shape):
    """The complete unlock's input synthesizer at one cut: predicts the
    activation of shape `target_shape` from the network's input."""
    import keras_sg

    i = config.input_synthesizer
    if config.model.kind == "fcn":
        return keras_sg.DenseInputSynthesizer(
            target_shape,
            hidden_layers=i.hidden_layers,
            units=i.units,
            use_batch_norm=i.batch_norm,
        )
    return keras_sg.ConvInputSynthesizer(
        target_shape,
        hidden_layers=i.hidden_layers,
        filters=i.filters,
        kernel_size=i.kernel_size,
        use_batch_norm=i.batch_norm,
    )


def learning_rate(config, steps_per_epoch, rate=None):
    """The optimizer's learning rate: a number, or the paper's schedule shape.

    With `optimizer.schedule="paper"`, the rate is divided by 10 after 60% and
    again after 80% of the run's `epochs * steps_per_epoch` steps. The
    schedule reads the optimizer's `iterations`, which a checkpoint restores,
    so a resumed run follows it from where it stopped. `rate` (the
    synthesizer optimizer's) replaces `optimizer.learning_rate`.
    """
    import keras

    if rate is None:
        rate = config.optimizer.learning_rate
    if config.optimizer.schedule == "constant":
        return rate
    if not steps_per_epoch:
        raise ValueError(
            "The paper's schedule needs the number of steps per epoch. "
            f"Received: steps_per_epoch={steps_per_epoch!r}"
        )
    total = config.epochs * steps_per_epoch
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[int(0.6 * total), int(0.8 * total)],
        values=[rate, rate / 10, rate / 100],
    )


def profile_steps(text: str):
    """`log.profile_batch` for keras.callbacks.TensorBoard: "0" (off) or "N"
    as a step, "first,last" as a pair of steps."""
    first, _, last = text.partition(",")
    return (int(first), int(last)) if last else int(first)


def epoch_timer():
    """A callback adding `epoch_seconds` to the logs (put it before the CSV logger)."""
    import keras

    start = {}
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: start.update(t=time.perf_counter()),
        on_epoch_end=lambda epoch, logs: logs.update(
            epoch_seconds=time.perf_counter() - start["t"]
        ),
    )


def rollback_reporter(guard):
    """A callback printing a line for each rollback the guard (a
    `RollBackOnDivergence`, put before it in the list) makes."""
    import keras

    seen = []  # the rollbacks reported so far

    def report(epoch, logs):
        for n, rollback in enumerate(guard.rollbacks[len(seen) :], len(seen) + 1):
            print(
                f"{rollback['message']} Rolled back to the end of epoch "
                f"{rollback['restored_epoch']} (rollback {n} of "
                f"{guard.max_rollbacks}); training goes on.",
                flush=True,
            )
            seen.append(rollback)

    return keras.callbacks.LambdaCallback(on_epoch_end=report)


def check_optimizer(config):
    """Ends the run unless Keras knows the config's optimizer."""
    import keras

    try:
        keras.optimizers.get(
            {
                "class_name": config.optimizer.name,
                "config": {"learning_rate": config.optimizer.learning_rate},
            }
        )
    except (ValueError, TypeError) as error:
        fail(
            "bad config: `optimizer.name` must name a Keras optimizer. "
            f"Received: optimizer.name={config.optimizer.name!r} ({error})"
        )
    synth = config.get("synthesizer_optimizer")
    if synth is None or not synth.name:
        return
    try:
        keras.optimizers.get(
            {"class_name": synth.name, "config": {"learning_rate": synth.learning_rate}}
        )
    except (ValueError, TypeError) as error:
        fail(
            "bad config: `synthesizer_optimizer.name` must name a Keras "
            f"optimizer. Received: synthesizer_optimizer.name={synth.name!r} "
            f"({error})"
        )


def check_workdir(workdir: Path):
    """Ends the run if `workdir` is a file or cannot be made, creating nothing."""
    if workdir.exists() and not workdir.is_dir():
        fail(f"--workdir={workdir} is a file; expected a folder")
    existing = workdir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        fail(f"cannot create --workdir={workdir}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"cannot write into --workdir={workdir}: {existing} is not writable")
    if (workdir / "lock").exists():  # refuse a held workdir before slow imports
        fd = os.open(workdir / "lock", os.O_RDONLY)
        try:
            take_lock(fd, workdir)
        finally:
            os.close(fd)  # released: lock_workdir takes it for good


def take_lock(fd: int, workdir: Path):
    """flock()s the open lock file `fd`, or ends the run naming its holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        for _ in range(20):  # the holder writes its PID just after locking
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            if holder:
                break
            time.sleep(0.05)
        fail(
            f"--workdir={workdir} is in use by another run "
            f"(process {holder or 'unknown'}); wait for it to end, or choose "
            "another workdir"
        )


def lock_workdir(workdir: Path):
    """Creates `workdir` and locks it for this process, or ends the run.

    The lock is an `flock` on `workdir/lock`, which holds the PID of the run
    that has it. The kernel releases it when that process dies, however it
    dies, so a stale file from a killed run never blocks the next one.
    Call `check_workdir` first for the clearer errors.
    """
    try:
        (workdir / "ckpt").mkdir(parents=True, exist_ok=True)
        fd = os.open(workdir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        fail(f"cannot write into --workdir={workdir}: {error}")
    take_lock(fd, workdir)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as error:
        fail(f"cannot write into --workdir={workdir}: {error}")
    _LOCK.append(fd)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_config(workdir: Path, config):
    """Ends the run if the workdir's checkpoints were trained with another config.

    Fields in `SAFE_TO_CHANGE` may differ; the new values are then recorded.
    """
    recorded_path = workdir / "config.json"
    has_checkpoints = any((workdir / "ckpt").glob("epoch-*.keras"))
    if not has_checkpoints or not recorded_path.exists():
        return
    try:
        recorded = flatten(json.loads(recorded_path.read_text()))
    except ValueError as error:
        fail(f"{recorded_path} is damaged ({error}); cannot check the config")
    wanted = flatten(json.loads(config.to_json_best_effort()))
    for key, value in ADDED_FIELDS.items():
        if key in wanted:
            recorded.setdefault(key, value)

    def safe(key):
        return any(
            key == s or (s.endswith(".*") and key.startswith(s[:-1]))
            for s in SAFE_TO_CHANGE
        )

    differing = [
        f"{key}={recorded.get(key, '<absent>')!r} -> {wanted.get(key, '<absent>')!r}"
        for key in sorted(set(recorded) | set(wanted))
        if recorded.get(key) != wanted.get(key) and not safe(key)
    ]
    if differing:
        fail(
            f"--workdir={workdir} holds checkpoints trained with another config; "
            f"differing fields (recorded -> now): {', '.join(differing)}. "
            "Rerun with the recorded values (its config.json) or use a new "
            f"workdir; fields free to change: {', '.join(SAFE_TO_CHANGE)}"
        )


def write_atomically(path: Path, text: str):
    """Writes `text` to `path` through a temporary file and a rename."""
    partial = path.with_name(f".partial-{path.name}")
    partial.write_text(text)
    os.replace(partial, path)


def strict(value):
    """`value` with every NaN or infinity replaced by None: strict JSON."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(workdir: Path, metrics: dict):
    write_atomically(
        workdir / "metrics.json", json.dumps(strict(metrics), indent=2, allow_nan=False)
    )


def schedule_summary(config, steps_per_epoch) -> dict:
    """The learning rate of the run, as plain values for metrics.json."""
    rate = learning_rate(config, steps_per_epoch)
    if isinstance(rate, float | int):
        return {"kind": "constant", "values": [float(rate)], "boundaries": []}
    return {
        "kind": config.optimizer.schedule,
        "values": [float(v) for v in rate.values],
        "boundaries": [int(b) for b in rate.boundaries],
    }


def final_diagnostics(model, probe) -> dict:
    """Each cut's synthetic-vs-true gradient cosine at the end of training, on
    the probe batch (`SyntheticGradientMonitor`'s measure), and for a model
    with synthetic inputs how far they are from the composed network's
    activations."""
    import numpy as np

    from keras_sg.callbacks.sg_monitor import gradient_diagnostics

    x, y = probe
    report = gradient_diagnostics(model, x, y)
    out = {
        "cut_names": list(model.cut_names),
        "final_cut_cosines": [report[f"{n}/cosine"] for n in model.cut_names],
        "final_cut_norm_ratios": [report[f"{n}/norm_ratio"] for n in model.cut_names],
    }
    if getattr(model, "input_synthesizers", None):
        # ||I_k(x) - h_k||^2 / ||h_k||^2, h_k from the composed network, both
        # in inference mode.
        drift, h = [], x
        for k, synth in enumerate(model.input_synthesizers):
            h = model.stages[k](h, training=False)
            h_hat = np.asarray(synth(x, training=False), dtype=np.float64)
            true = np.asarray(h, dtype=np.float64)
            drift.append(float(np.sum((h_hat - true) ** 2) / np.sum(true**2)))
        out["final_input_relative_error"] = drift
    return out


def main(argv):
    del argv
    config = FLAGS.config
    workdir = Path(FLAGS.workdir)
    try:
        common.validate(config)
    except ValueError as error:
        fail(f"bad config: {error}")
    # Before the slow imports: fail fast and create nothing.
    check_workdir(workdir)
    check_same_config(workdir, config)
    check_optimizer(config)
    lock_workdir(workdir)
    check_same_config(workdir, config)  # again: another run may have come between

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_sg
    from keras_sg.callbacks import checkpoint

    ckpt_dir = workdir / "ckpt"
    checkpoint.remove_partial_files(ckpt_dir)  # left by a run killed mid-write
    write_atomically(workdir / "config.json", config.to_json_best_effort(indent=2))

    devices = None
    if config.placement.workers:
        # Before any variable exists: connecting resets TensorFlow's context.
        workers = keras_sg.placement.worker_addresses(config.placement.workers)
        try:
            devices = keras_sg.placement.connect_to_cluster(
                {"worker": workers}, timeout=config.placement.connect_timeout
            )
        except ConnectionError as error:
            raise SystemExit(f"train.py: {error}") from None
        print(f"Stages run on {devices}", flush=True)

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    (x_train, y_train), (x_test, y_test) = load_data(config)
    num_classes = int(max(y_train.max(), y_test.max()) + 1)
    flat = config.model.kind == "fcn"
    input_shape = (int(np.prod(x_train.shape[1:])),) if flat else x_train.shape[1:]

    def skipped(path, reason):
        print(
            f"Checkpoint {path} is {reason}; falling back to the one before", flush=True
        )

    steps = keras_sg.data.steps_per_epoch(len(x_train), config.batch_size)
    model, initial_epoch = checkpoint.load_latest(ckpt_dir, on_skip=skipped)
    if model is None:
        model = build_model(
            config, tuple(input_shape), num_classes, devices, steps_per_epoch=steps
        )
    else:
        logging.info("Resuming from epoch %d", initial_epoch)
        print(f"Resuming {workdir} from epoch {initial_epoch}", flush=True)
        if config.optimizer.schedule != "constant":
            # The same schedule, from the config: `epochs` may have changed.
            follow_schedule(
                model,
                config,
                optimizer_steps_per_epoch(config, len(model.stages), steps),
            )

    train = keras_sg.data.batches(
        x_train,
        y_train,
        config.batch_size,
        flatten=flat,
        shuffle=True,
        seed=config.seed,
        first_epoch=initial_epoch,
    )
    test = keras_sg.data.batches(x_test, y_test, 1000, flatten=flat)
    if flat:
        # The flattened batches have an unknown feature size; an input
        # synthesizer (method "unlocked") needs it known.
        def known(x, y):
            return tf.ensure_shape(x, (None, *input_shape)), y

        train, test = train.map(known), test.map(known)
    probe_n = config.log.probe_examples
    probe_x = x_test[:probe_n].astype("float32") / 255.0
    probe = (
        probe_x.reshape(len(probe_x), -1) if flat else probe_x,
        y_test[:probe_n],
    )

    update_freq = config.log.update_freq
    if config.rollbacks:
        guard = keras_sg.callbacks.RollBackOnDivergence(
            max_growth=config.max_loss_growth, max_rollbacks=config.rollbacks
        )
    else:
        guard = keras_sg.callbacks.StopOnDivergence(
            max_growth=config.max_loss_growth or None
        )
    callbacks = [
        guard,
        *([rollback_reporter(guard)] if config.rollbacks else []),
        epoch_timer(),
        keras.callbacks.TensorBoard(
            str(workdir / "tb"),
            update_freq=int(update_freq) if update_freq.isdigit() else update_freq,
            profile_batch=profile_steps(config.log.profile_batch),
        ),
        keras.callbacks.CSVLogger(str(workdir / "history.csv"), append=True),
        keras_sg.callbacks.FiniteCheckpoint(
            ckpt_dir, keep=config.keep_checkpoints, guard=guard
        ),
    ]
    has_synthesizers = common.SG_KIND.get(config.method) is not None
    if has_synthesizers and config.log.diagnostics_every_steps:
        callbacks.append(
            keras_sg.callbacks.SyntheticGradientMonitor(
                str(workdir / "tb" / "diagnostics"),
                probe,
                every_n_steps=config.log.diagnostics_every_steps,
            )
        )
    start = time.perf_counter()
    try:
        model.fit(
            train,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            validation_data=test,
            callbacks=callbacks,
            shuffle=False,  # the dataset orders each epoch itself
            verbose=1 if sys.stdout.isatty() else 2,  # progress bars on a terminal
        )
    except keras_sg.placement.WorkerLostError as error:
        fail(str(error))
    session_seconds = time.perf_counter() - start
    metrics = {
        "method": config.method,
        "status": "finished",
        "epochs": config.epochs,
        "steps": int(model.optimizer.iterations.numpy()),
        "resumed_from_epoch": initial_epoch,
        "session_seconds": session_seconds,
    }
    if config.rollbacks:
        metrics["rollbacks"] = [
            dict(
                epoch=r["epoch"],
                restored_epoch=r["restored_epoch"],
                reason=r["reason"],
                losses={k: str(v) for k, v in r["losses"].items()},
                message=r["message"],
            )
            for r in guard.rollbacks
        ]
    if guard.diverged:
        epoch = guard.diverged["epoch"]
        finite = [p for n, p in checkpoint.checkpoint_files(ckpt_dir) if n < epoch]
        kept = str(finite[-1]) if finite else None
        metrics.update(
            status="diverged",
            diverged=dict(
                guard.diverged,
                losses={k: str(v) for k, v in guard.diverged["losses"].items()},
                message=guard.message,
            ),
            newest_finite_checkpoint=kept,
        )
        write_metrics(workdir, metrics)
        fail(f"{guard.message} Newest finite checkpoint: {kept or 'none'}")
    logs = model.evaluate(test, verbose=0, return_dict=True)
    split = evaluated_split(config)
    metrics.update(
        {
            "evaluated_on": split,
            f"{split}_examples": int(len(y_test)),
            f"{split}_accuracy": logs["accuracy"],
            f"{split}_error_percent": 100 * (1 - logs["accuracy"]),
            f"{split}_loss": logs["loss"],
        },
        learning_rate_schedule=schedule_summary(
            config, optimizer_steps_per_epoch(config, len(model.stages), steps)
        ),
    )
    if has_synthesizers:
        metrics.update(final_diagnostics(model, probe))
    write_metrics(workdir, metrics)
    print(
        f"{config.method}: {split} error {metrics[split + '_error_percent']:.2f}% "
        f"after {metrics['steps']} steps ({config.epochs} epochs) in "
        f"{session_seconds:.0f}s; results in {workdir}",
        flush=True,
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
