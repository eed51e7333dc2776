r"""Measures schedules on K logical devices: throughput, idle time, SG overhead.

    python scripts/benchmark_pipeline.py --output=docs/benchmarks.md

Every measurement runs in a fresh process, since logical devices and thread
pools are fixed when TensorFlow starts: the CPU is split into K logical
devices with one intra-op thread and K inter-op threads, so each device runs
one op at a time, like one accelerator. The model has K equal stages (two
dense layers of --width units each; the last stage adds a 10-way head).

For each schedule it reports examples/s, each device's busy fraction and the
synthesizer overhead, the last two read from a TensorFlow profiler trace by
`keras_sg.profiling` (every op of stage k runs in the name scope `stage_k`,
so the trace tells the stages apart). It then feeds
the measured per-stage forward, backward, synthesizer and update costs, the
measured transfer per message (`transfers`) and the measured per-step
overhead (the time per step in which no op runs on any device,
`ProfileResult.per_step_overhead`) to the simulator (keras_sg.schedules) and
reports how far its prediction is from the measured throughput, with ZB-H1
simulated (not measured) on GPipe's costs. The costs and overheads go to a
JSON file beside the report (docs/benchmarks.json), from which
`keras_sg.schedules.validation.validate_measured_costs` recomputes the
predictions. Last, on MNIST with two devices, the wall time to 97.5% test
accuracy of backprop model-parallel, GPipe, pipelined cDNI and the
asynchronous runtime's cDNI (one row in the setting docs/async.md
recommends), run r of each with seed r - 1 unless --noaccuracy_vary_seed.

Every measurement runs --repeats times (3 by default), in turn, and every
table gives medians; the report states the machine's load average at the
start and the end.

`async_dni_low_rank` (and `async_cdni` to accuracy) is AsyncPipelinedModel,
free-running, its queues of capacity --capacity (see `time_async`), each
stage running --async_steps_per_execution steps per call, its math compiled
with XLA if --async_jit.

The fully unlocked step (`fully_unlocked`) is `UnlockedModel`: every stage
above the first runs on the prediction of an input synthesizer from x, so all
stages work on the step's batch at once. To measure a few schedules only,
several times each, and print their medians without writing the report
(add --costs=FILE to keep their costs):

    python scripts/benchmark_pipeline.py --table_only --repeats=3 \
        --schedules=backprop_mp,dni_unlocked,fully_unlocked --devices=2,4
"""

import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_string("output", str(ROOT / "docs" / "benchmarks.md"), "Report to write.")
flags.DEFINE_string("figures", str(ROOT / "docs" / "figures"), "Folder of the PNGs.")
flags.DEFINE_list("devices", ["2", "4"], "Numbers of logical devices K.")
flags.DEFINE_integer("width", 1024, "Units of each dense layer.")
flags.DEFINE_integer("batch_size", 256, "Examples per step.")
flags.DEFINE_integer("micro_batches", 8, "GPipe micro-batches M.")
flags.DEFINE_integer("rank", 64, "Rank of the cheap (low-rank) synthesizer.")
flags.DEFINE_integer(
    "capacity", 2, "Queue capacity of the asynchronous runtime (async_* schedules)."
)
flags.DEFINE_integer(
    "async_steps_per_execution",
    1,
    "Steps per call of each stage's function in the async_* schedules "
    "(Keras's steps_per_execution).",
)
flags.DEFINE_bool(
    "async_jit",
    False,
    "Compile each stage's math with XLA in the async_* schedules (jit_compile=True).",
)
flags.DEFINE_bool(
    "async_xla_row",
    False,
    "On the servers, measure the runtime once more with its math compiled "
    "with XLA (the setting docs/async.md recommends), as an extra row beside "
    "the others: its examples/s, CPU loads, and from the servers' traces its "
    "busy fractions and a prediction (each run of a stage's XLA program read "
    "as one op).",
)
flags.DEFINE_enum(
    "async_input",
    "client",
    ["client", "stage0"],
    "Where the async_* schedules' datasets are made on the servers: in the "
    "client, or on stage 0's server (where the runtime then reads them; the "
    "MNIST runs' from keras_sg.data.shuffled_epochs). Logical devices always "
    "make them in the client.",
)
flags.DEFINE_enum(
    "optimizer",
    "adam",
    ["adam", "fused_adam"],
    "Every model's optimizer: Keras's Adam, or keras_sg.optimizers.FusedAdam "
    "(the same math, each variable's update one kernel).",
)
flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
flags.DEFINE_integer("profile_steps", 4, "Steps inside the profiler trace.")
flags.DEFINE_float("target_accuracy", 0.975, "MNIST test accuracy to reach.")
flags.DEFINE_integer("max_epochs", 8, "Cap on the time-to-accuracy runs.")
flags.DEFINE_bool("skip_accuracy", False, "Skip the MNIST time-to-accuracy runs.")
flags.DEFINE_float(
    "max_loss_growth",
    10.0,
    "A time-to-accuracy run that diverged stops, counted as not reaching the "
    "target: a loss not finite, or the epoch mean task loss above this many "
    "times its lowest epoch mean (checked at each epoch's end; 0: only the "
    "non-finite check), as scripts/train.py's max_loss_growth.",
)
flags.register_validator(
    "max_loss_growth",
    lambda value: value == 0 or (math.isfinite(value) and value > 1),
    message="--max_loss_growth must be 0 (off) or a finite number above 1.",
)
flags.DEFINE_integer(
    "rollbacks",
    0,
    "With N > 0, a time-to-accuracy run whose epoch diverged (a loss not "
    "finite, or the epoch mean task loss above twice its lowest) is put back "
    "to its last sound epoch and goes on, at most N times "
    "(keras_sg.callbacks.RollBackOnDivergence), instead of stopping; the "
    "copies and rollbacks count as training time.",
    lower_bound=0,
)
flags.DEFINE_string(
    "cache", str(ROOT / "workdirs" / "benchmarks"), "Folder of finished measurements."
)
flags.DEFINE_bool("skip_cluster", False, "Skip the two-server (cluster) runs.")
flags.DEFINE_integer(
    "server_intra_op_threads",
    1,
    "Intra-op threads of each server (each pinned to one core all the same). "
    "On an AVX2 machine TensorFlow's one-thread matmul ran 1.8x slower than "
    "its two-thread matmul on one core (docs/async.md).",
    lower_bound=1,
)
flags.DEFINE_list(
    "cdni_learning_rates", ["3e-4"], "Extra Adam rates for pipelined cDNI to 97.5%."
)
flags.DEFINE_integer(
    "warmup_steps",
    500,
    "Steps of the stages' linear rate warm-up in the extra cDNI rows to 97.5% "
    "(0: no such rows).",
)
flags.DEFINE_bool(
    "accuracy_vary_seed",
    True,
    "Run r of each time-to-accuracy row initializes the weights and orders "
    "the data with seed r - 1, so that its median is over seeds, not only "
    "over the machine's noise (off: seed 0 in every run).",
)
flags.DEFINE_integer(
    "decay_steps",
    0,
    "Steps of a cosine decay of the rate to a tenth, after the warm-up "
    "(0: none), for benchmark_async.py --accuracy (where every row then "
    "trains with the same warm-up and decay, backprop's included) and "
    "epochs_to_accuracy.py; this script's own report does not use it.",
)
flags.DEFINE_bool(
    "table_only",
    False,
    "Measure --schedules on logical devices only, --repeats times each, and "
    "print the medians; the report is not written.",
)
flags.DEFINE_list("schedules", None, "Schedules of --table_only (default: all).")
flags.DEFINE_integer(
    "repeats",
    3,
    "Runs of every measurement, each in a fresh process, in turn (every "
    "measurement of a table once, then again); every table reports medians.",
)
flags.DEFINE_string(
    "costs",
    None,
    "JSON file of the measured per-device costs and per-step overheads "
    "(default: --output with the suffix .json; with --table_only, written "
    "only if given).",
)
# Internal: one measurement in this process (set by the parent).
flags.DEFINE_string("worker", None, "JSON spec of one measurement (internal).")
flags.DEFINE_list("addresses", None, "Cluster workers of a measurement (internal).")
flags.DEFINE_list("server_pids", None, "Their process ids (internal).")

SCHEDULES = [  # (name, model class, synthesizer)
    ("backprop_mp", "backprop", None),
    ("gpipe", "gpipe", None),
    ("dni_unlocked", "dni", "low_rank"),
    ("pipelined_dni_linear", "pipelined", "linear"),
    ("pipelined_dni_low_rank", "pipelined", "low_rank"),
    ("fully_unlocked", "unlocked", "low_rank"),
    ("async_dni_low_rank", "async", "low_rank"),
]
# The extra row of --async_xla_row (on the servers only).
ASYNC_XLA_ROW = "async_dni_low_rank xla"
# Events kept per device in a measurement's saved timeline.
MAX_EVENTS = 4000


# ---------------------------------------------------------------- the worker


def build(spec, keras, keras_sg, devices, input_dim, num_classes=10):
    """The decoupled model of a measurement, compiled."""
    k, width = spec["devices"], spec["width"]
    stages = []
    for s in range(k):
        layers = [keras.Input((input_dim if s == 0 else width,))]
        layers += [keras.layers.Dense(width, activation="relu") for _ in range(2)]
        if s == k - 1:
            layers.append(keras.layers.Dense(num_classes))
        stages.append(keras.Sequential(layers, name=f"block_{s}"))
    kind, synth = spec["model"], spec["synth"]
    conditioned = num_classes if spec.get("cdni") else None

    def synthesizers():
        if synth == "linear":
            return [
                keras_sg.DenseSynthesizer(
                    hidden_layers=0, use_batch_norm=False, num_classes=conditioned
                )
                for _ in range(k - 1)
            ]
        return [
            keras_sg.LowRankSynthesizer(rank=spec["rank"], num_classes=conditioned)
            for _ in range(k - 1)
        ]

    method = "cdni" if conditioned else "dni"
    if kind == "plain":
        model = keras.Sequential([layer for st in stages for layer in st.layers])
    elif kind == "backprop":
        model = keras_sg.DecoupledModel(stages, method="backprop", devices=devices)
    elif kind == "gpipe":
        model = keras_sg.GPipeModel(
            stages, micro_batches=spec["micro_batches"], devices=devices
        )
    elif kind == "dni":
        model = keras_sg.DecoupledModel(
            stages, synthesizers(), method=method, devices=devices
        )
    elif kind == "unlocked":
        # Input synthesizers from x, as cheap as the low-rank synthesizers:
        # one hidden layer of `rank` units, then a dense layer to the cut.
        inputs = [
            keras_sg.DenseInputSynthesizer(
                target_shape=(width,),
                hidden_layers=1,
                units=spec["rank"],
                use_batch_norm=False,
            )
            for _ in range(k - 1)
        ]
        model = keras_sg.UnlockedModel(
            stages,
            synthesizers(),
            input_synthesizers=inputs,
            method=method,
            devices=devices,
        )
    elif kind == "async":
        model = keras_sg.AsyncPipelinedModel(
            stages,
            synthesizers(),
            method=method,
            devices=devices,
            capacity=spec["capacity"],
            max_target_age=spec.get("max_target_age"),
        )
    else:
        model = keras_sg.PipelinedModel(
            stages, synthesizers(), method=method, devices=devices
        )
    extra = {}
    if kind == "async":
        extra = dict(
            steps_per_execution=spec.get("steps_per_execution", 1),
            jit_compile=spec.get("jit", False),
        )
    rate = spec.get("learning_rate", 1e-3)
    rate = warmed_up(
        keras, rate, spec.get("warmup_steps", 0), spec.get("decay_steps", 0)
    )
    model.compile(
        # With global_clipnorm, the asynchronous runtime clips each stage's
        # gradients (with its synthesizer's) on their own; clipvalue clips
        # each gradient element (free under XLA: it fuses into the update).
        optimizer=optimizer_class(spec, keras, keras_sg)(
            rate,
            global_clipnorm=spec.get("global_clipnorm"),
            clipvalue=spec.get("clipvalue"),
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **extra,
    )
    return model


def optimizer_class(spec, keras, keras_sg):
    """A spec's optimizer. "optimizer" is in a spec only when it is not
    Adam, so that specs cached before the key existed still match."""
    name = spec.get("optimizer", "adam")
    if name == "fused_adam":
        return keras_sg.optimizers.FusedAdam
    if name != "adam":
        raise ValueError(
            f"A spec's optimizer must be adam or fused_adam. Received: {name!r}"
        )
    return keras.optimizers.Adam


def warmed_up(keras, rate, warmup_steps, decay_steps=0):
    """`rate`, after a linear warm-up from 0 over `warmup_steps` steps (0:
    none). The warm-up keeps cDNI's first epochs from diverging
    (scripts/epochs_to_accuracy.py; docs/async.md). With `decay_steps`, a
    cosine decay to a tenth of `rate` over that many steps follows (then
    flat): a schedule for a budget of warmup_steps + decay_steps steps."""
    if warmup_steps < 0 or decay_steps < 0:
        raise ValueError(
            "warmup_steps and decay_steps must be >= 0. Received: "
            f"warmup_steps={warmup_steps}, decay_steps={decay_steps}"
        )
    if not warmup_steps and not decay_steps:
        return rate
    # Without decay_steps, a cosine decay too long to matter: flat.
    if decay_steps:
        decay = {"decay_steps": decay_steps, "alpha": 0.1}
    else:
        decay = {"decay_steps": 10**9}
    schedules = keras.optimizers.schedules
    if not warmup_steps:
        return schedules.CosineDecay(rate, **decay)
    return schedules.CosineDecay(
        0.0, **decay, warmup_target=rate, warmup_steps=warmup_steps
    )


def without_autotune(dataset):
    """The dataset with tf.data's autotuning off.

    With every core busy, the autotuner's background work stretched steps to
    multiples of 64 ms (measured: 106 ms a step with it, 79 ms without, K = 4);
    in-memory batches gain nothing from it.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def run_worker(spec):
    import keras_sg

    k = spec["devices"]
    devices = None
    if FLAGS.addresses:
        devices = keras_sg.placement.connect_to_cluster({"worker": FLAGS.addresses})
    elif spec["model"] != "plain":
        devices = keras_sg.placement.split_cpu(
            k, intra_op_threads=1, inter_op_threads=k
        )
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(spec.get("seed", 0))
    if spec.get("mnist"):
        return accuracy_worker(spec, keras, keras_sg, tf, np, devices)
    rng = np.random.default_rng(0)
    n = spec["batch_size"] * 8
    x = rng.normal(size=(n, spec["width"])).astype("float32")
    y = rng.integers(0, 10, size=n)
    # Made in this process, or for an asynchronous run with input "stage0"
    # on stage 0's server, where the runtime then reads it.
    with tf.device(devices[0] if on_stage0(spec) else None):
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(spec["batch_size"])
        data = without_autotune(data.repeat())
    model = build(spec, keras, keras_sg, devices, spec["width"])
    fit = dict(epochs=1, verbose=0, shuffle=False)
    model.fit(data, steps_per_epoch=5, **fit)  # trace and warm up
    pids = [int(p) for p in FLAGS.server_pids or ()]
    cpu = keras_sg.profiling.cpu_seconds
    cpu_before = [cpu(p) for p in pids] + [time.process_time()]
    start = time.perf_counter()
    lead_ms = 500.0
    if spec["model"] == "async":
        seconds, startup = time_async(model, data, spec["steps"])
        # The servers' trace starts once a new fit has traced its stage
        # functions and run some batches.
        lead_ms += 1000 * startup
    else:
        model.fit(data, steps_per_epoch=spec["steps"], **fit)
        seconds = time.perf_counter() - start
    fit_seconds = time.perf_counter() - start
    cpu_after = [cpu(p) for p in pids] + [time.process_time()]
    result = {
        "spec": spec,
        "examples_per_s": spec["steps"] * spec["batch_size"] / seconds,
        "step_ms": 1000 * seconds / spec["steps"],
    }
    if pids:
        # Each server is pinned to one core: its CPU time over the wall time
        # is that device's CPU load (communication threads included; for
        # the asynchronous runtime, over its whole `fit`, tracing included).
        used = [b - a for a, b in zip(cpu_before, cpu_after, strict=True)]
        result.update(
            cpu=[u / fit_seconds for u in used[:-1]], client=used[-1] / fit_seconds
        )
        # And the servers' own profiler traces, taken while training goes on:
        # every op a server runs counts, per server (device).
        profile = keras_sg.profiling.trace_servers(
            model,
            data,
            FLAGS.addresses,
            result["step_ms"],
            duration_ms=1000,
            batch_size=spec["batch_size"],
            lead_ms=lead_ms,
        )
        # What each server waited for: its idle gaps, grouped by the ops on
        # either side.
        result["idle_gaps"] = [list(groups) for groups in profile.idle_groups]
        result.update(
            costs=[dict(c) for c in profile.costs],
            hosts=list(profile.devices),
            busy=list(profile.busy),
            traced_step_ms=profile.traced_step_time,
            per_step_overhead_ms=profile.per_step_overhead,
            profile=profile.to_dict(max_events=MAX_EVENTS),
            # Each run of an XLA program counts, as one op (read_server_ops).
            xla_traced=True,
        )
    elif spec["model"] != "plain":
        # Per stage: its ops told apart by the stage_k scope, the optimizer's
        # update shared by the stages as their weights.
        profile = profile_logical(keras_sg, model, data, spec)
        result.update(
            busy=list(profile.busy),
            costs=[dict(c) for c in profile.stage_costs],
            traced_step_ms=profile.traced_step_time,
            profiled_step_ms=profile.step_time,
            # Every op of the trace counts, on any device or none (the
            # optimizer's, the loss's), though the timeline holds only the
            # stages' ops.
            per_step_overhead_ms=profile.per_step_overhead,
            profile=profile.to_dict(max_events=MAX_EVENTS),
        )
        if spec["model"] == "async":
            result["profiler_warmed"] = True  # see profile_logical
    return result


def profile_logical(keras_sg, model, data, spec):
    """The profile of a run on logical devices: --profile_steps steps after
    one, so that they are not the first of a `fit`.

    The asynchronous runtime's window starts once its queues are full, and
    holds the fewest whole calls of its stages' functions that hold
    --profile_steps steps (`profile` counts calls). Before it, a window of
    the same length is traced and thrown away. In this process's first
    trace the runtime ran slower, and the longer the trace the slower
    (2026-11-29, K = 2, 32 steps a call: 123 to 150 ms a step in a first
    window of four calls, against 84 to 92 untraced; 100 to 104 in a first
    window of one or two calls; 85 to 98 in a second window; a first
    trace of 160 steps took about 2 million page faults, most in the
    executor threads, and a later one 68 to 300 thousand; cause not found;
    docs/simulation.md, "The profiler's first trace"). Backprop and
    pipelined DNI, traced for 4 steps, did not show it.
    """
    if spec["model"] != "async":
        return keras_sg.profiling.profile(
            model,
            data,
            steps=spec["profile_steps"],
            skip=1,
            batch_size=spec["batch_size"],
        )
    per_call = spec.get("steps_per_execution", 1)
    batches = (spec["devices"] - 1) * (spec["capacity"] + 1) + 1
    window = dict(
        steps=math.ceil(spec["profile_steps"] / per_call),
        skip=math.ceil(batches / per_call),
        batch_size=spec["batch_size"],
    )
    # The window before it thrown away (`discard`).
    return keras_sg.profiling.profile(model, data, **window, discard=1)


def on_stage0(spec):
    """Whether the run's training data is made on stage 0's server (its spec
    says input "stage0"); only an asynchronous run on servers reads there."""
    if spec.get("input") != "stage0":
        return False
    if spec["model"] != "async" or not FLAGS.addresses:
        raise ValueError(
            "Only an asynchronous run on servers reads a dataset made on "
            f"stage 0's server. Received: a {spec['model']!r} run with "
            "input 'stage0'" + ("" if FLAGS.addresses else " and no servers")
        )
    return True


# Batches the asynchronous runtime runs before its timed ones: its first
# `fit` traces the stage functions, and every `fit` starts with its queues
# empty.
ASYNC_WARMUP = 5


def time_async(model, data, steps):
    """Seconds for `steps` batches of an AsyncPipelinedModel's top stage,
    and seconds from the start of its `fit` to its first call's end.

    One `fit` of about ASYNC_WARMUP + `steps` batches; the time runs from
    the end of the top stage's ASYNC_WARMUP-th batch to the end of its last,
    read in the top stage's own thread (`stage_step_hook`): its batch
    callbacks reach the main thread late, and a model's first `fit` traces
    the stage functions first. With `steps_per_execution` N, a stage call
    runs N batches: both counts are rounded up to whole calls, and the time of the
    batches timed is scaled to `steps` batches.
    """
    top = len(model.stages) - 1
    per_call = model.steps_per_execution
    warmup = per_call * math.ceil(ASYNC_WARMUP / per_call)
    timed = per_call * math.ceil(steps / per_call)
    ends, done = {}, [0]
    start = time.perf_counter()

    def hook(k, phase, n):
        if k == top and phase == "end":
            done[0] += n
            ends[done[0]] = time.perf_counter()

    model.stage_step_hook = hook
    try:
        model.fit(
            data,
            steps_per_epoch=warmup + timed,
            epochs=1,
            verbose=0,
            shuffle=False,
        )
    finally:
        model.stage_step_hook = None
    seconds = (ends[warmup + timed] - ends[warmup]) * steps / timed
    return seconds, min(ends.values()) - start


def accuracy_worker(spec, keras, keras_sg, tf, np, devices):
    """Wall time of training (evaluation excluded) to the target test accuracy.

    One `fit` of up to `max_epochs` epochs, as a Keras user trains: a
    callback evaluates on the test set after each epoch, with the clock
    stopped, and ends training once the target is reached. The clock runs
    from the call of `fit` (tracing and, for the asynchronous runtime,
    starting its threads and queues count).
    """
    manual_dir = keras_sg.data.manual_dir_from_env("mnist")
    train_x, train_y = keras_sg.data.load_split("mnist", "train", manual_dir=manual_dir)
    test = without_autotune(
        keras_sg.data.image_dataset(
            "mnist",
            "test",
            1000,
            flatten=True,
            manual_dir=manual_dir,
        )
    )
    model = build(spec, keras, keras_sg, devices, 784)
    # Whole batches only (the pipeline's buffers and GPipe's split want them):
    # the last 96 training examples (of 60000, at batch 256) are left out, so
    # that every epoch is whole batches and the next epoch is shuffled anew.
    steps = len(train_x) // spec["batch_size"]
    used = steps * spec["batch_size"]
    arrays = (train_x[:used], train_y[:used], spec["batch_size"])
    shuffled = dict(flatten=True, seed=spec.get("seed", 0))
    on_server = on_stage0(spec)
    with tf.device(devices[0] if on_server else None):
        if on_server:
            # The same batches, made on stage 0's server and read there by
            # the runtime: TensorFlow ops only, every epoch's order computed
            # here, the epochs one after another in one dataset.
            train = keras_sg.data.shuffled_epochs(
                *arrays, spec["max_epochs"], **shuffled
            )
        else:
            train = keras_sg.data.batches(*arrays, shuffle=True, **shuffled)
        train = without_autotune(train)
    fit = {"steps_per_epoch": steps} if on_server else {}
    result = fit_to_accuracy(
        keras,
        keras_sg,
        model,
        train,
        test,
        epochs=spec["max_epochs"],
        target=spec["target_accuracy"],
        max_loss_growth=spec.get("max_loss_growth", 0.0),
        rollbacks=spec.get("rollbacks", 0),
        **fit,
    )
    result = {"spec": spec, **result, "one_fit": True}
    if spec["model"] == "async":
        result["staleness"] = staleness(model.stage_log)
    # The training logs per epoch (loss, accuracy and, for the decoupled
    # models, each synthesizer's regression loss): what went wrong in a run
    # that did not get there.
    result["history"] = {
        name: [float(v) for v in values]
        for name, values in model.history.history.items()
    }
    return result


def fit_to_accuracy(
    keras,
    keras_sg,
    model,
    train,
    test,
    *,
    epochs,
    target,
    max_loss_growth,
    rollbacks=0,
    **fit,
):
    """One `fit` of up to `epochs` epochs to `target` test accuracy, timed.

    After each epoch, with the clock stopped, a callback evaluates on `test`
    and ends training once the target is reached. With `max_loss_growth`
    above 0 it also ends a run that diverged, as scripts/train.py's
    `max_loss_growth` does: a loss not finite, or the epoch mean task loss
    more than that many times its lowest epoch mean
    (`keras_sg.callbacks.StopOnDivergence`, checked at each epoch's end
    only, so that the guard adds no work to each step). A diverged run
    never reached the target: its seconds are None and `diverged` says
    where and why. With `rollbacks` above 0 the guard is
    `keras_sg.callbacks.RollBackOnDivergence` (its `max_growth` of 2): an
    epoch that diverged is put back to the last sound one and training goes
    on, at most `rollbacks` times, then stops as above. The guard runs
    with the clock going: a rollback's copies of the variables are training
    time.

    Returns:
        A dict: `curve` (epoch, training seconds so far, test accuracy) per
        epoch; `seconds` to the target, or None; `diverged`, None or the
        guard's `diverged` dict with its `message`; with `rollbacks`,
        `rollbacks`: the guard's list of them.
    """
    if rollbacks:
        guard = keras_sg.callbacks.RollBackOnDivergence(max_rollbacks=rollbacks)
    else:
        guard = keras_sg.callbacks.StopOnDivergence(max_growth=max_loss_growth or None)
    curve = []
    clock = {"seconds": 0.0, "since": None}

    class EvaluateAndStop(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            guard.set_model(self.model)
            guard.on_train_begin(logs)

        def on_epoch_end(self, epoch, logs=None):
            guard.on_epoch_begin(epoch)
            guard.on_epoch_end(epoch, logs)  # stops training if it diverged
            clock["seconds"] += time.perf_counter() - clock["since"]
            accuracy = self.model.evaluate(test, verbose=0, return_dict=True)
            curve.append((epoch + 1, clock["seconds"], accuracy["accuracy"]))
            if accuracy["accuracy"] >= target:
                self.model.stop_training = True
            clock["since"] = time.perf_counter()

    clock["since"] = time.perf_counter()
    model.fit(
        train,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[EvaluateAndStop()],
        **fit,
    )
    diverged = None
    if guard.diverged:
        diverged = dict(guard.diverged, message=guard.message)
    reached = not diverged and curve[-1][2] >= target
    result = {
        "curve": curve,
        "seconds": clock["seconds"] if reached else None,
        "diverged": diverged,
    }
    if rollbacks:
        result["rollbacks"] = guard.rollbacks
    return result


def staleness(stage_log):
    """How old the asynchronous runtime's synthesizer targets were, per cut:
    the share of steps that took one, and the mean and largest age (the
    step's batch id less the target's) of those taken."""
    out = []
    for log in stage_log[:-1]:
        taken = log["target_batch"] >= 0
        age = (log["batch"] - log["target_batch"])[taken]
        out.append(
            {
                "steps": int(len(taken)),
                "with_target": float(taken.mean()) if len(taken) else 0.0,
                "mean_age": float(age.mean()) if len(age) else None,
                "max_age": int(age.max()) if len(age) else None,
                "mean_lag": float(log["lag"].mean()) if len(taken) else None,
            }
        )
    return out


# ---------------------------------------------------------------- the parent


def measure(spec):
    """One measurement in a fresh process; kept in --cache so a rerun skips it."""
    cache = Path(FLAGS.cache) / (re.sub(r"[^A-Za-z0-9]+", "_", spec["name"]) + ".json")
    if cache.exists():
        cached = json.loads(cache.read_text())
        # Traced runs saved before the per-step overhead was measured, or
        # before their core costs were, and runs saved before their load
        # was recorded: stale.
        traced = not spec.get("mnist") and spec["model"] != "plain"
        stale = "load" not in cached or (
            traced
            and (
                "per_step_overhead_ms" not in cached
                or "core_costs" not in cached["profile"]
                # logical devices' work and core time on shared cores, kept
                # since (a profile with its core time has its work costs too)
                or (
                    not spec.get("cluster")
                    and cached["profile"].get("core_time") is None
                )
                # XLA runs on the servers traced before their programs' runs
                # were read (busy 4%)
                or (
                    spec.get("jit")
                    and spec.get("cluster")
                    and not cached.get("xla_traced")
                )
                # asynchronous runs on logical devices traced in their
                # process's first trace, for four calls (profile_logical)
                or (
                    spec["model"] == "async"
                    and not spec.get("cluster")
                    and not cached.get("profiler_warmed")
                )
            )
        )
        # Accuracy runs saved before they trained in one `fit`: stale.
        current = not spec.get("mnist") or cached.get("one_fit")
        if cached["spec"] == spec and current and not stale:
            return cached
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, __file__, f"--worker={json.dumps(spec)}"]
    began, load_before = time.time(), os.getloadavg()
    servers = (
        start_servers(spec["devices"], env, spec.get("server_intra_op_threads", 1))
        if spec.get("cluster")
        else []
    )
    try:
        if servers:
            addresses, pids = zip(*((a, str(p.pid)) for a, p in servers), strict=True)
            command += [f"--addresses={','.join(addresses)}"]
            command += [f"--server_pids={','.join(pids)}"]
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=ROOT
        )
    finally:
        for _, server in servers:
            server.kill()
            server.wait()
    if done.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{done.stderr[-3000:]}")
    line = [s for s in done.stdout.splitlines() if s.startswith("{")][-1]
    result = json.loads(line)
    # The machine's load and the time around the run, kept with it, so that
    # a report written from cached runs states the load they ran under.
    result["load"] = [list(load_before), list(os.getloadavg())]
    result["measured_utc"] = [began, time.time()]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def start_servers(n, env, intra_op_threads=1):
    """n TensorFlow servers on 127.0.0.1, server k pinned to core k mod cores,
    one intra-op thread each (by default): n devices that each run one op at
    a time."""
    import socket

    ports = []
    for _ in range(n):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    addresses = [f"127.0.0.1:{p}" for p in ports]
    cores = sorted(os.sched_getaffinity(0))
    servers = []
    for k, address in enumerate(addresses):
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "tf_server.py"),
                f"--workers={','.join(addresses)}",
                f"--task={k}",
                f"--intra_op_threads={intra_op_threads}",
                "--inter_op_threads=2",
                f"--cpus={cores[k % len(cores)]}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        servers.append((address, server))
        if not server.stdout.readline().startswith("serving"):
            for _, started in servers:
                started.kill()
            raise RuntimeError(f"TensorFlow server {k} at {address} did not start")
    return servers


def device_costs(result):
    """The run's costs per device for the simulator, ms per step: each
    device's busy time by kind, ops that ran at once sharing it
    (`ProfileResult.core_costs`; see keras_sg.profiling.core_shares)."""
    return result["profile"]["core_costs"]


def transfers(result):
    """The run's measured transfer per message and cut, ms, as its prediction
    charges it (`ProfileResult.transfer_per_message`)."""
    from keras_sg.profiling import ProfileResult

    spec = result["spec"]
    return ProfileResult.from_dict(result["profile"]).transfer_per_message(
        spec["model"], micro_batches=spec["micro_batches"]
    )


def predict(result, model=None):
    """The simulator's examples/s for a run, from the run's own measured
    costs (`ProfileResult.predict_examples_per_s`; on logical devices, on
    the cores they shared); `model` is the model kind to simulate instead of
    the run's own ("zb_h1" for GPipe's costs)."""
    from keras_sg.profiling import ProfileResult

    spec = result["spec"]
    extra = {"queue_capacity": spec["capacity"]} if "capacity" in spec else {}
    profile = ProfileResult.from_dict(result["profile"])
    # Logical devices share the machine's cores: simulated so, on their work.
    return profile.predict_examples_per_s(
        model or spec["model"],
        micro_batches=spec["micro_batches"],
        shared_cores=bool(profile.work_costs),
        **extra,
    )


def draw(results, path):
    """The measured timelines of some runs, one panel each, two steps."""
    from keras_sg import profiling

    profiling.draw_timelines(
        [profiling.ProfileResult.from_dict(r["profile"]) for r in results],
        path,
        titles=[r["spec"]["name"] for r in results],
        steps=2,
    )


def main(argv):
    del argv
    if FLAGS.worker:
        print(json.dumps(run_worker(json.loads(FLAGS.worker))), flush=True)
        return
    if FLAGS.repeats < 1:
        raise ValueError(f"`--repeats` must be >= 1. Received: {FLAGS.repeats}")
    if FLAGS.table_only:
        print(medians_table())
        return
    base = base_spec()
    devices = list(map(int, FLAGS.devices))
    logical = {
        (name, k): with_capacity(
            dict(base, name=f"{name} (K={k})", devices=k, model=model, synth=synth)
        )
        for k in devices
        for name, model, synth in SCHEDULES
    }
    logical["plain", 2] = dict(
        base,
        name="plain Keras, default threading",
        devices=2,
        model="plain",
        synth=None,
    )
    runs = in_turn(logical, FLAGS.repeats)
    plain = runs.pop(("plain", 2))

    cluster = {}
    if not FLAGS.skip_cluster:
        specs = {
            name: with_capacity(
                dict(
                    base,
                    name=f"{name} (2 servers)",
                    devices=2,
                    model=model,
                    synth=synth,
                    cluster=True,
                )
            )
            for name, model, synth in SCHEDULES
        }
        if FLAGS.async_xla_row:
            specs[ASYNC_XLA_ROW] = dict(
                specs["async_dni_low_rank"],
                name=f"{ASYNC_XLA_ROW} (2 servers)",
                jit=True,
            )
        cluster = in_turn(specs, FLAGS.repeats)

    accuracy = {}
    if not FLAGS.skip_accuracy:
        rows = [
            ("backprop_mp", "backprop", None, False, 1e-3),
            ("gpipe", "gpipe", None, False, 1e-3),
            ("pipelined_cdni", "pipelined", "linear", True, 1e-3),
            ("async_cdni", "async", "linear", True, 1e-3),
        ]
        if FLAGS.warmup_steps:
            rows += [
                (f"{name}, warm-up {FLAGS.warmup_steps}", model, "linear", True, 1e-3)
                for name, model in (
                    ("pipelined_cdni", "pipelined"),
                    ("async_cdni", "async"),
                )
            ]
        # The setting docs/async.md recommends for the runtime's cDNI.
        rows.append((RECOMMENDED_ASYNC_NAME, "async", "linear", True, 1e-3))
        for rate in FLAGS.cdni_learning_rates:
            for synth in ("linear", "low_rank"):
                name = f"pipelined_cdni{'' if synth == 'linear' else ', low-rank'}"
                rows.append((f"{name} (Adam {rate})", "pipelined", synth, True))
                rows[-1] += (float(rate),)
        specs = {
            name: with_capacity(
                dict(
                    base,
                    name=name,
                    devices=2,
                    model=model,
                    synth=synth,
                    cdni=cdni,
                    mnist=True,
                    **({} if rate == 1e-3 else {"learning_rate": rate}),
                    **(
                        {"warmup_steps": FLAGS.warmup_steps}
                        if ", warm-up " in name
                        else {}
                    ),
                    target_accuracy=FLAGS.target_accuracy,
                    max_epochs=FLAGS.max_epochs,
                    max_loss_growth=FLAGS.max_loss_growth,
                    **({"rollbacks": FLAGS.rollbacks} if FLAGS.rollbacks else {}),
                    cluster=not FLAGS.skip_cluster,
                )
            )
            for name, model, synth, cdni, rate in rows
        }
        specs[RECOMMENDED_ASYNC_NAME] = recommended_async(specs[RECOMMENDED_ASYNC_NAME])
        accuracy = in_turn(specs, FLAGS.repeats, vary_seed=FLAGS.accuracy_vary_seed)
    load = measured_load(runs, {"plain": plain}, cluster, accuracy)

    figures = Path(FLAGS.figures)
    figures.mkdir(parents=True, exist_ok=True)
    shown = ("backprop_mp", "gpipe", "pipelined_dni_low_rank", "async_dni_low_rank")
    for k in devices:
        draw(
            [median_run(runs[n, k]) for n in shown],
            figures / f"measured_timeline_K{k}.png",
        )
    if cluster:
        draw(
            [median_run(cluster[n]) for n in shown],
            figures / "measured_timeline_servers.png",
        )
    output = Path(FLAGS.output)
    costs = Path(FLAGS.costs) if FLAGS.costs else output.with_suffix(".json")
    measured = [("logical", runs[n, k]) for k in devices for n, _, _ in SCHEDULES]
    measured += [("servers", cluster[n]) for n, _, _ in SCHEDULES if cluster]
    if ASYNC_XLA_ROW in cluster and median_run(cluster[ASYNC_XLA_ROW]).get(
        "xla_traced"
    ):
        measured.append(("servers", cluster[ASYNC_XLA_ROW]))
    costs.write_text(json.dumps(costs_file(measured, load), indent=1) + "\n")
    output.write_text(report(runs, plain, cluster, accuracy, load, costs.name))
    print(f"wrote {output} and {costs}")
    exit_if_diverged(accuracy)


# What trained the runtime's cDNI best in docs/async.md ("Ten seeds again",
# "A bound on the targets' age"): capacity 1, 32 steps per call, per-stage
# XLA, Adam 1e-3 after a linear warm-up of 500 steps, each gradient clipped
# to [-0.01, 0.01], targets at most 2 batches old.
RECOMMENDED_ASYNC_NAME = (
    "async_cdni C=1 N=32 xla, warm-up 500, clipvalue 0.01, max age 2"
)


def recommended_async(spec):
    """`spec` (an async cDNI row to accuracy) in the recommended setting,
    whatever the --capacity, --async_* and --warmup_steps flags say."""
    spec = async_spec(spec, capacity=1, steps_per_execution=32, jit=True)
    return dict(spec, warmup_steps=500, clipvalue=0.01, max_target_age=2)


def with_capacity(spec):
    """An asynchronous schedule's spec gets --capacity, and
    --async_steps_per_execution, --async_jit and (on servers) --async_input
    when not their defaults (the others' specs, and so their cached
    measurements, stay as they were)."""
    if spec["model"] != "async":
        return spec
    spec = async_spec(
        spec, FLAGS.capacity, FLAGS.async_steps_per_execution, FLAGS.async_jit
    )
    if FLAGS.async_input == "stage0" and spec.get("cluster"):
        spec["input"] = "stage0"
    return spec


def async_spec(spec, capacity, steps_per_execution=1, jit=False):
    """An asynchronous run's spec: steps per call and XLA only when not
    their defaults, so that specs cached before they existed still match."""
    spec = dict(spec, capacity=capacity)
    if steps_per_execution != 1:
        spec["steps_per_execution"] = steps_per_execution
    if jit:
        spec["jit"] = True
    return spec


def base_spec():
    """The flags every measurement shares."""
    return dict(
        width=FLAGS.width,
        batch_size=FLAGS.batch_size,
        micro_batches=FLAGS.micro_batches,
        rank=FLAGS.rank,
        steps=FLAGS.steps,
        profile_steps=FLAGS.profile_steps,
        autotune=False,
        **({} if FLAGS.optimizer == "adam" else {"optimizer": FLAGS.optimizer}),
        # Only when not the default, so that cached runs still match.
        **(
            {}
            if FLAGS.server_intra_op_threads == 1
            else {"server_intra_op_threads": FLAGS.server_intra_op_threads}
        ),
    )


def run_name(name, run):
    """The name of run `run` of a measurement: "x (K=2)" -> "x (K=2, run 1)"."""
    if name.endswith(")"):
        return f"{name[:-1]}, run {run})"
    return f"{name} (run {run})"


def in_turn(specs, repeats, vary_seed=False):
    """Measures every spec `repeats` times, each run in a fresh process.

    The runs go in turn (every spec once, then again), so that a change of
    the machine's load hits every measurement, not one.

    Args:
        specs: {key: spec}.
        repeats: runs of each spec.
        vary_seed: run r initializes the weights and orders the data with
            seed r - 1 (the spec's "seed", kept only when not 0), so that a
            median is over seeds too, not only over the machine's noise.

    Returns:
        {key: [result of each run]}.
    """
    results = {key: [] for key in specs}
    for run in range(1, repeats + 1):
        for key, spec in specs.items():
            spec = dict(spec, name=run_name(spec["name"], run))
            if vary_seed and run > 1:
                spec["seed"] = run - 1
            print(f"[measure] {spec['name']}", flush=True)
            result = measure(spec)
            if "examples_per_s" in result:
                print(f"  {result['examples_per_s']:.0f} examples/s", flush=True)
            results[key].append(result)
    return results


def median_run(results, key="examples_per_s"):
    """The run whose `key` is the median (the lower one of an even count);
    None counts as slower than any number (a target not reached)."""
    order = sorted(results, key=lambda r: math.inf if r[key] is None else r[key])
    return order[(len(order) - 1) // 2]


def median_speed(results):
    """Median examples/s of the runs (the mean of the middle two of an even
    count)."""
    return statistics.median(r["examples_per_s"] for r in results)


def measured_load(*groups):
    """The machine's load average before the first of some runs and after
    the last, and the UTC times of both, as each run recorded them when it
    was measured (`measure`), so that a report written from cached runs
    states the load they ran under, not the load while it is written.

    Args:
        groups: {key: [result of each run]} (as `in_turn` returns).

    Returns:
        (load at the start, load at the end, (start, end) in seconds since
        the epoch), the form `load_text` takes.
    """
    every = [r for group in groups for results in group.values() for r in results]
    missing = [r["spec"]["name"] for r in every if "load" not in r]
    if not every or missing:
        raise ValueError(
            "Every run must carry the load it was measured under (`measure` "
            f"records it). Received runs without: {missing or 'no runs'}"
        )
    first = min(every, key=lambda r: r["measured_utc"][0])
    last = max(every, key=lambda r: r["measured_utc"][1])
    return (
        tuple(first["load"][0]),
        tuple(last["load"][1]),
        (first["measured_utc"][0], last["measured_utc"][1]),
    )


def load_text(load):
    """The machine's load average at the start and the end of the runs
    (`measured_load`), and when they ran."""
    start, end, (began, ended) = load

    def utc(seconds):
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))

    cores = len(os.sched_getaffinity(0))
    return (
        f"Measured {utc(began)} to {utc(ended)} UTC. Load average (1, 5 and 15"
        " min, `os.getloadavg`) at the start: "
        + ", ".join(f"{x:.2f}" for x in start)
        + "; at the end: "
        + ", ".join(f"{x:.2f}" for x in end)
        + f"; on {cores} cores."
    )


def costs_file(measured, load):
    """The machine-readable measured costs (read by
    `keras_sg.schedules.validation.read_measured_costs`).

    Args:
        measured: (setting, [result of each run]) per measured schedule.
        load: the load averages at the start and the end.
    """
    entries = []
    for setting, results in measured:
        middle = median_run(results)
        spec = middle["spec"]
        entries.append(
            {
                "setting": setting,
                "name": re.sub(r", run \d+\)$", ")", spec["name"]),
                "model": spec["model"],
                "synth": spec["synth"],
                "devices": spec["devices"],
                "batch_size": spec["batch_size"],
                "micro_batches": spec["micro_batches"],
                "width": spec["width"],
                "examples_per_s": median_speed(results),
                "traced_examples_per_s": spec["batch_size"]
                / middle["traced_step_ms"]
                * 1000,
                "costs": device_costs(middle),
                "op_costs": middle["costs"],
                **(
                    {
                        "work_costs": middle["profile"]["work_costs"],
                        "cores": middle["profile"]["cores"],
                        "core_time_ms": middle["profile"]["core_time"],
                    }
                    if middle["profile"].get("work_costs")
                    else {}
                ),
                "per_step_overhead_ms": middle["per_step_overhead_ms"],
                "transfer_ms": transfers(middle),
                **({"capacity": spec["capacity"]} if "capacity" in spec else {}),
                **{
                    key: spec[key]
                    for key in ("steps_per_execution", "jit")
                    if key in spec
                },
                "predicted_examples_per_s": predict(middle),
                "runs": [
                    {
                        key: r[key]
                        for key in (
                            "examples_per_s",
                            "step_ms",
                            "traced_step_ms",
                            "per_step_overhead_ms",
                            "busy",
                            "costs",
                        )
                    }
                    for r in results
                ],
            }
        )
    return {
        "written_by": "scripts/benchmark_pipeline.py",
        "units": "ms per training step (one batch); examples/s",
        "costs": "per device: F forward, B backward, S gradient synthesizer, I "
        "input synthesizer, U optimizer update, T transfers (sends, receives, "
        "queue ops; in transfer_ms, not in the simulator's costs), C other "
        "work (on the servers: control edges; with jit, also each run of a "
        "stage's XLA program, one op), from the median run's profiler "
        "trace: each device's busy time by kind, the time in which several of "
        "its ops ran at once shared equally by them "
        "(keras_sg.profiling.core_shares); on logical devices the optimizer's "
        "ops, which carry no device, by their summed durations shared out by "
        "the devices' weights",
        "op_costs": "the same kinds, each the summed durations of the device's ops",
        "work_costs": "logical devices only: the same kinds as the work of a "
        "device with a core of its own, the devices having shared `cores` "
        "cores (keras_sg.profiling.shared_work): each instant of a device's "
        "busy time counts min(1, cores / n), n the devices busy then plus the "
        "ops no device claims; the costs of simulate(..., cores=cores)",
        "cores": "the cores the logical devices shared",
        "core_time_ms": "logical devices only: ms of core time per step that "
        "every op of the trace used, n ops at once using min(n, cores) cores "
        "(keras_sg.profiling.core_time); a step takes at least core_time_ms / "
        "cores plus the per-step overhead, which the prediction on shared "
        "cores takes into account",
        "traced_examples_per_s": "examples/s of the median run's traced steps, "
        "whose costs these are (the profiler slows the steps it traces)",
        "per_step_overhead_ms": "ms per step in which no op runs on any device "
        "(wall time of the traced steps minus the union of every op's "
        "interval, over the steps), in the median run's trace",
        "transfer_ms": "per cut, ms per message: the devices' T shared by "
        "their cuts, over the messages per cut and step (2, or 2 M for GPipe)",
        "capacity": "queue capacity of an asynchronous schedule",
        "steps_per_execution": "steps per call of each stage of an "
        "asynchronous schedule (absent: 1)",
        "jit": "each stage's math compiled with XLA (absent: not)",
        "repeats": FLAGS.repeats,
        "load_average": {"start": list(load[0]), "end": list(load[1])},
        "measured_utc": list(load[2]),
        "measurements": entries,
    }


def speeds_cell(results):
    """'median (run 1, run 2, ...)' in examples/s."""
    each = ", ".join(f"{r['examples_per_s']:.0f}" for r in results)
    return f"{median_speed(results):.0f} ({each})"


def overhead_cell(result):
    """Each stage's synthesizer cost over its F + B, the last stage's left out."""
    ratios = [
        (c["S"] + c.get("I", 0.0)) / (c["F"] + c["B"]) for c in result["costs"][:-1]
    ]
    return ", ".join(f"{o:.0%}" for o in ratios)


def prediction_cell(result, measured):
    predicted = predict(result)
    return f"{predicted:.0f} ({(predicted - measured) / measured:+.0%})"


def zb_h1_cell(gpipe):
    """ZB-H1 simulated on the median GPipe run's costs, against GPipe's own
    prediction: simulated, not measured."""
    predicted = predict(gpipe, model="zb_h1")
    return f"{predicted:.0f} ({predicted / predict(gpipe):.2f}x GPipe's prediction)"


ZB_H1_NAME = "zb_h1 (simulated, not measured)"


def medians_table():
    """Measures --schedules on K logical devices, --repeats times each (in
    turn, so that a change of the machine's load hits every schedule), and
    returns a Markdown table of the medians, the machine's load under it."""
    chosen = FLAGS.schedules or [name for name, _, _ in SCHEDULES]
    known = {name: (model, synth) for name, model, synth in SCHEDULES}
    for name in chosen:
        if name not in known:
            raise ValueError(
                f"`--schedules` must name schedules of {list(known)}. "
                f"Received: {name!r}"
            )
    base = base_spec()
    specs = {
        (name, k): with_capacity(
            dict(
                base,
                name=f"{name} (K={k})",
                devices=k,
                model=known[name][0],
                synth=known[name][1],
            )
        )
        for k in map(int, FLAGS.devices)
        for name in chosen
    }
    runs = in_turn(specs, FLAGS.repeats)
    load = measured_load(runs)
    lines = [
        "| K | schedule | examples/s, median (runs) | vs backprop_mp | busy per "
        "device | SG overhead per stage | per-step overhead (ms) | simulator's "
        "examples/s (error) |",
        "| --- " * 8 + "|",
    ]
    for k in map(int, FLAGS.devices):
        medians = {name: median_speed(runs[name, k]) for name in chosen}
        for name in chosen:
            middle = median_run(runs[name, k])
            speed = medians[name]
            cells = [
                str(k),
                name,
                speeds_cell(runs[name, k]),
                f"{speed / medians['backprop_mp']:.2f}x"
                if "backprop_mp" in medians
                else "–",
                ", ".join(f"{b:.0%}" for b in middle["busy"]),
                overhead_cell(middle) if known[name][1] else "–",
                f"{middle['per_step_overhead_ms']:.1f}",
                prediction_cell(middle, middle["examples_per_s"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
            if name == "gpipe":
                cells = [str(k), ZB_H1_NAME] + ["–"] * 5 + [zb_h1_cell(middle)]
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", load_text(load)]
    if FLAGS["costs"].present:
        measured = [("logical", runs[key]) for key in specs]
        Path(FLAGS.costs).write_text(
            json.dumps(costs_file(measured, load), indent=1) + "\n"
        )
    return "\n".join(lines)


def _table(rows, with_trace):
    """The table of one setting: {schedule: [result of each run]}."""
    base = median_speed(rows["backprop_mp"])
    gpipe = median_speed(rows["gpipe"])
    head = "| schedule | examples/s, median (runs) | vs backprop MP | vs GPipe "
    head += "| busy per device | SG overhead per stage | per-step overhead (ms) "
    head += "| simulator's examples/s (error) |"
    if not with_trace:
        head += " CPU load per server | client CPU |"
    columns = 8 if with_trace else 10
    lines = [head, "| --- " * columns + "|"]
    # The schedules, then the extra row of --async_xla_row where measured.
    extra = [(ASYNC_XLA_ROW, "async", "low_rank")] if ASYNC_XLA_ROW in rows else []
    for name, _, synth in SCHEDULES + extra:
        middle = median_run(rows[name])
        speed = median_speed(rows[name])
        cells = [
            re.sub(r", run \d+\)$", ")", middle["spec"]["name"]),
            speeds_cell(rows[name]),
            f"{speed / base:.2f}x",
            f"{speed / gpipe:.2f}x",
        ]
        jit = middle["spec"].get("jit")
        if jit and not middle.get("xla_traced"):
            # Runs traced before XLA programs' runs were read: no trace cells.
            cells += ["–"] * 4
        else:
            # Each run of a stage's XLA program is one op of kind C (other
            # work), its forward, backward, synthesizer and update not told
            # apart: no synthesizer overhead. The simulator runs it as one
            # unit on its device, as it runs C, with the backward.
            cells += [
                ", ".join(f"{b:.0%}" for b in middle["busy"]),
                # Gradient and input synthesizers (I: fully unlocked only).
                overhead_cell(middle) if synth and not jit else "–",
                f"{middle['per_step_overhead_ms']:.1f}",
                prediction_cell(middle, middle["examples_per_s"]),
            ]
        if not with_trace:
            cells.append(", ".join(f"{c:.0%}" for c in middle["cpu"]))
            cells.append(f"{middle['client']:.0%} of a core")
        lines.append("| " + " | ".join(cells) + " |")
        if name == "gpipe":
            cells = [ZB_H1_NAME] + ["–"] * 6 + [zb_h1_cell(middle)]
            cells += ["–", "–"] if not with_trace else []
            lines.append("| " + " | ".join(cells) + " |")
    return lines


# Flags the report's command always shows, then those it shows when they
# are not their defaults: every flag that changes what is measured.
SHOWN_FLAGS = (
    "devices",
    "width",
    "batch_size",
    "micro_batches",
    "rank",
    "steps",
    "profile_steps",
    "repeats",
)
SHOWN_IF_SET = (
    "capacity",
    "async_steps_per_execution",
    "async_jit",
    "async_input",
    "async_xla_row",
    "optimizer",
    "target_accuracy",
    "max_epochs",
    "skip_accuracy",
    "skip_cluster",
    "cdni_learning_rates",
    "warmup_steps",
    "accuracy_vary_seed",
)


def api_link():
    """docs/api.md as a link from the folder of the report (--output)."""
    return os.path.relpath(
        ROOT / "docs" / "api.md", Path(FLAGS.output).resolve().parent
    )


def command_line():
    """The command that measures what the report shows, with its flags."""
    shown = list(SHOWN_FLAGS) + [
        name for name in SHOWN_IF_SET if FLAGS[name].value != FLAGS[name].default
    ]
    return " ".join(
        ["python scripts/benchmark_pipeline.py"]
        + [FLAGS[name].serialize() for name in shown]
    )


def report(runs, plain, cluster, accuracy, load, costs_name):
    """The Markdown report; every table holds medians of --repeats runs."""
    stage0_input = ""
    if FLAGS.async_input == "stage0":
        stage0_input = (
            "; on the servers its batches come from a dataset made on stage 0's"
            " server, where it reads them (on logical devices, from the client)"
        )
    lines = [
        "# Benchmarks: schedules on two kinds of devices",
        "",
        "Written by `scripts/benchmark_pipeline.py` from the measurements it made"
        " on this project's 2-core CPU machine. Every measurement ran"
        f" {FLAGS.repeats} times, each run in a fresh process, the runs in turn"
        " (every measurement of a table once, then again), so that a change of"
        " the machine's load hits all of them; every table gives the median"
        " (the runs in brackets), and busy fractions, costs, timelines and"
        " predictions come from the median run. " + load_text(load) + " Busy"
        " fractions, per-stage costs and the measured timelines are read from"
        " TensorFlow profiler traces by `keras_sg.profiling`"
        f" ([api.md]({api_link()}#profiling-keras_sgprofiling)).",
        "",
        "```",
        command_line(),
        "```",
        "",
        f"Model: K equal stages of two dense layers of {FLAGS.width} units (the last "
        f"adds a 10-way head), batch {FLAGS.batch_size}, Adam; tf.data autotuning"
        " off: with every core busy, the autotuner's background work stretched"
        " steps to multiples of 64 ms (the step-time quantum of our first report;"
        " K = 4 backprop: 106 ms a step with autotuning, 79 ms without, measured"
        " outside this script). Two kinds of device:",
        "",
        "- **Two TensorFlow servers** (`scripts/tf_server.py`), each pinned to one"
        " core with one intra-op thread, the stages placed on their tasks through"
        " `keras_sg.placement.connect_to_cluster`. A device here really runs one"
        " thing at a time, like an accelerator, and stages talk over gRPC. Busy"
        " fractions and per-device costs come from each server's own profiler"
        " trace; the training client (data, step dispatch) is not pinned and"
        " shares the two cores.",
        "- **K logical CPU devices** in one process (`split_cpu`, one intra-op"
        " thread, K inter-op threads). Busy fractions, per-stage costs and the"
        " synthesizer overhead come from the TensorFlow profiler trace (XPlane),"
        " ops told apart by their `stage_k` name scope. Caution: logical devices"
        " share one pool of inter-op threads, so one device can run two ops at"
        " once (backprop's weight and input gradients of a layer, for example)."
        " Backprop model-parallel is then less serial than on real devices, and"
        " this setting understates what unlocking gains.",
        "",
        "`async_dni_low_rank` is `AsyncPipelinedModel` free-running (docs/async.md):"
        " each stage in its own thread with its own optimizer, the stages"
        f" linked by queues of capacity {FLAGS.capacity}"
        f", {FLAGS.async_steps_per_execution} step(s) per call of each stage"
        f"{', its math compiled with XLA' if FLAGS.async_jit else ''}"
        f"{stage0_input}."
        + (
            " On logical devices the profiler's trace does not place"
            " XLA-compiled work on a device (its programs' runs are"
            " CpuExecutable events of no stage): this row's busy fractions,"
            " costs, per-step overhead and simulator prediction there leave it"
            " out; its examples/s are measured as the others'."
            if FLAGS.async_jit
            else ""
        )
        + " Its examples/s are"
        " those of its top stage over the timed batches, after"
        " warm-up batches in the same `fit` (its first `fit` traces the stage"
        " functions, and every `fit` starts with its queues empty); on"
        " logical devices its profile covers stage 0's steps once the queues"
        " are full, in the fewest whole calls that hold the other schedules'"
        " traced steps, after a window of the same length traced and thrown"
        " away (a process's first trace ran slower: docs/simulation.md,"
        ' "The profiler\'s first trace"); its prediction is the'
        ' simulator\'s "async" schedule with the same capacity.'
        + (
            f" On the servers, `{ASYNC_XLA_ROW}` is the same runtime with each"
            " stage's math compiled with XLA (`jit_compile=True`, the setting"
            " docs/async.md recommends), measured in turn with the others."
            " Each run of a stage's XLA program is one op in its server's"
            " trace, of kind C (other work): the trace does not tell that"
            " program's forward, backward, synthesizer and update apart, so"
            " the row has no synthesizer overhead, and the simulator runs"
            " each program as one unit on its device (as it runs C, with the"
            " backward pass). In the steady state of the asynchronous"
            " schedule a device's step is the sum of its costs wherever they"
            " fall in it, so the prediction does not hang on that split."
            if ASYNC_XLA_ROW in cluster
            else ""
        ),
        "",
        "The simulator's prediction (`keras_sg.schedules.validation."
        "predict_examples_per_s`) takes the median run's measured costs per"
        " device and step (F forward, B backward, S and I synthesizers, U the"
        " optimizer update, C other work, counted with B) and its measured"
        " **per-step overhead**: the time per step in which the trace shows no"
        " op running on any device, i.e. the wall time of the traced steps less"
        " the union of every op's interval (the stages', the optimizer's, the"
        " loss's), over the number of steps. In it every device waits: for the"
        " client to end one step and start the next, and for messages in"
        " flight while no device works; and the gaps between one op and the"
        " next when no other runs (the executor's dispatch), which grow with"
        " the number of ops: GPipe runs M times as many as backprop. It is"
        " measured in each run's own trace, not fitted. Transfers (T: the"
        " sends and receives of cross-device edges, and the queue ops of the"
        " asynchronous runtime, `keras_sg.profiling.op_kind`) are measured"
        " apart: each device's T is shared by its cuts and divided by the"
        " messages per cut and step (2; 2 M for GPipe), and the simulator"
        " charges that per message to the receiving device. On logical devices"
        " only the sends show in a trace (receives and queue ops are"
        " asynchronous kernels, not traced as ops). The fully unlocked step"
        " first runs the composed network, stage on stage, for the loss it"
        " logs: half of each measured F is simulated as that pass, before the"
        " step. GPipe and ZB-H1 split F and B evenly"
        f" over {FLAGS.micro_batches} micro-batches; ZB-H1 (Zero Bubble"
        " pipeline parallelism, Qi et al. 2023, arXiv:2401.10241) is simulated"
        " on the median GPipe run's costs, half of each backward being the"
        " weight gradient, and was never measured: its row says so. The costs"
        f" and overheads of every measured schedule are in [{costs_name}]"
        f"({costs_name}); `keras_sg.schedules.validation.validate_measured_costs`"
        " recomputes every prediction from that file. A device's costs are"
        " its busy time by kind, the time in which several of its ops ran at"
        " once shared equally by them (`keras_sg.profiling.core_shares`): the"
        " simulator's device runs one thing at a time. A server has one core,"
        " and `keras_sg.placement.start_server` gives its clients' functions"
        " two threads, so two ops may share the core and each one's duration"
        " then counts the other's work too; a logical device may run two ops"
        " at once on the two cores, and their summed durations would count as"
        " serial what ran side by side (the summed durations are kept in the"
        " file as `op_costs`; `device_costs` in the script). On logical"
        " devices the optimizer's ops carry no device: their summed durations"
        " are shared out by the devices' weights. Logical devices share the"
        " machine's cores (K = 4 on 2): they are simulated so"
        " (`simulate(..., cores=...)`, processor sharing), on their work on"
        " those cores (`work_costs` in the file;"
        ' `keras_sg.profiling.shared_work`; docs/simulation.md, "Logical'
        ' devices on shared cores"), a step taking no less than the core time'
        " its ops used over the cores (`core_time_ms` in the file;"
        " `keras_sg.profiling.core_time`): GPipe's micro-batches run two or"
        " more ops of one logical device at once. The profiler slows the steps"
        " it traces, and the costs are those of the traced steps:"
        " `traced_examples_per_s` in the file is their speed.",
        "",
    ]
    if cluster:
        lines += [
            "## K = 2 devices: two TensorFlow server processes, one core each",
            "",
            "Busy per device: the union of the op intervals in each server's own"
            " profiler trace (taken remotely while training ran), every op counted:"
            " the stages', the optimizer's and the transfers'. CPU load: the"
            " server's CPU time over the wall time of the timed steps.",
            "",
            *_table(cluster, with_trace=False),
            "",
            load_text(measured_load(cluster)),
            "",
            "![timelines on two servers](figures/measured_timeline_servers.png)",
            "",
            *idle_lines(cluster),
            "What keeps pipelined DNI from the 2x limit here, as the timelines show"
            " (the asynchronous runtime has no step shared by the devices: see"
            " docs/async.md for where its time goes):",
            "",
            "- Between two steps both servers wait (the per-step overhead column):"
            " Keras runs one step per call and waits for it to finish; the client"
            " then takes the next batch and sends the next step's work and batch"
            " over gRPC. In trials outside this script (`steps_per_execution=4`,"
            " asynchronous eager execution, the servers at a lower priority, or"
            " the input batch kept on the first server) the gap shrank by 2 ms at"
            " most. The simulator now adds the measured overhead to every step.",
            "- Keras's Adam is about 30% of each device's work (purple): unfused"
            " element-wise ops over every weight and both moments. Every schedule"
            " pays it, so it dilutes what unlocking gains. `--optimizer=fused_adam`"
            " measures every schedule with keras_sg.optimizers.FusedAdam instead,"
            ' one kernel per variable (docs/async.md, "A fused Adam").',
            "",
        ]
    for k in map(int, FLAGS.devices):
        rows = {name: runs[name, k] for name, _, _ in SCHEDULES}
        lines += [
            f"## K = {k} logical devices in one process",
            "",
            *_table(rows, with_trace=True),
            "",
            # Each table's own window: a report written from a cache may
            # have measured its tables in different hours.
            load_text(measured_load(rows)),
            "",
        ]
        if k > 2:
            lines += [
                f"With K = {k} logical devices on 2 cores, stages share cores:"
                " the table shows the schedules' structure, not a K-fold speed-up.",
                "",
            ]
        lines += [
            f"![measured timelines, K={k}](figures/measured_timeline_K{k}.png)",
            "",
        ]
    best = max(
        median_speed(runs[n, 2])
        for n, _, _ in SCHEDULES
        if n.startswith(("pipelined", "async"))
    )
    plain_speed = median_speed(plain)
    lines += [
        "## Against the fastest backprop on the same two cores",
        "",
        f"A plain `keras.Sequential` of the same layers (K = 2 model), default"
        f" threading, no placement: {speeds_cell(plain)} examples/s (median"
        f" (runs)). The best pipelined or asynchronous DNI on logical devices"
        f" (K = 2), median:"
        f" {best:.0f} examples/s ({best / plain_speed:.2f}x).",
    ]
    if cluster:
        best_cluster = max(
            median_speed(rows)
            for n, rows in cluster.items()
            if n.startswith(("pipelined", "async"))
        )
        lines.append(
            f" On the two servers: {best_cluster:.0f} examples/s"
            f" ({best_cluster / plain_speed:.2f}x)."
        )
    lines.append("")
    if accuracy:
        where = "two servers, one core each" if cluster else "two logical devices"
        lines += [
            f"## Wall time to {FLAGS.target_accuracy:.1%} MNIST test accuracy"
            f" (K = 2, {where})",
            "",
            "Training time only (test evaluation after each epoch excluded);"
            f" at most {FLAGS.max_epochs} epochs. Same model for all, Adam (rate in"
            " the table); pipelined cDNI uses linear synthesizers conditioned on the"
            f" labels, or low-rank ones (rank {FLAGS.rank}) where the name says so;"
            ' "warm-up n": the rate rises linearly from 0 over the first n steps;'
            ' "clipvalue 0.01": every gradient is clipped to [-0.01, 0.01]'
            " (Keras's `clipvalue`). The asynchronous rows run with the"
            " command's --capacity and --async_* flags, except the one whose"
            " name gives its setting (capacity C, N steps per call, XLA),"
            " the setting docs/async.md recommends."
            + (
                " On the servers their batches (keras_sg.data.shuffled_epochs,"
                " the orders of the others' keras_sg.data.batches) are made on"
                " stage 0's server and read there (--async_input=stage0); the"
                " other rows read theirs in the client (Keras's `fit` cannot"
                " read a dataset made on another task)."
                if FLAGS.async_input == "stage0" and cluster
                else ""
            )
            + " Seconds: the median of"
            " the runs (in brackets; a run that did not reach the target"
            " counts as the slowest); epochs of the median run (of each run"
            " in brackets) and its accuracies. A run that diverged (a loss"
            " not finite"
            + (
                f", or the epoch mean loss above {FLAGS.max_loss_growth:g}"
                " times its lowest"
                if FLAGS.max_loss_growth
                else ""
            )
            + ", checked after each epoch) stops there and did not reach the"
            " target."
            + (
                " Run r of each row initializes the weights and orders the data"
                " with seed r - 1."
                if FLAGS.accuracy_vary_seed
                else " Every run uses seed 0."
            ),
            "",
            "| schedule | Adam rate | seconds, median (runs) | epochs (runs) |"
            " test accuracy per epoch |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, results in accuracy.items():
            r = median_run(results, key="seconds")
            curve = ", ".join(f"{a:.4f}" for _, _, a in r["curve"])
            each = ", ".join(seconds_cell(run) for run in results)
            epochs = ", ".join(
                str(len(run["curve"])) if run["seconds"] is not None else "–"
                for run in results
            )
            rate = r["spec"].get("learning_rate", 1e-3)
            lines.append(
                f"| {name} | {rate:g} | {seconds_cell(r)} ({each}) |"
                f" {len(r['curve'])} ({epochs}) | {curve} |"
            )
        lines += divergence_section(accuracy)
        lines += ["", load_text(measured_load(accuracy)), ""]
    return "\n".join(lines)


def idle_lines(cluster):
    """Where the asynchronous runtime's servers idle in its median run: the
    largest groups of each server's gaps (none if the runs did not record
    them)."""
    name = "async_dni_low_rank"
    if name not in cluster:
        return []
    run = median_run(cluster[name])
    if not run.get("idle_gaps"):
        return []
    lines = [
        f"Where {name}'s servers idle (median run): each server's idle time"
        " in its trace, grouped by the ops on either side of each gap"
        " (`keras_sg.profiling.idle_groups`; op names without their loop and"
        " branch scopes), the largest groups:",
        "",
        "| server | idle ms per step | gaps | op before | op after |",
        "| --- | --- | --- | --- | --- |",
    ]
    for device, groups in enumerate(run["idle_gaps"]):
        for group in groups:
            lines.append(
                f"| {device} | {group['ms_per_step']:.2f} | {group['gaps']} |"
                f" `{group['before']}` | `{group['after']}` |"
            )
    return [*lines, ""]


def seconds_cell(run, digits=0):
    """A time-to-accuracy run's seconds, "diverged (epoch n)" or "not
    reached"."""
    if run.get("diverged"):
        return f"diverged (epoch {run['diverged']['epoch']})"
    return "not reached" if run["seconds"] is None else f"{run['seconds']:.{digits}f}"


def divergence_lines(runs):
    """One line per time-to-accuracy run that diverged, with the guard's
    message (runs is a dict of lists of results); [] when none did."""
    lines = []
    for results in runs.values():
        for run in results:
            if run.get("diverged"):
                spec = run["spec"]
                lines.append(
                    f"- {spec['name']}, seed {spec.get('seed', 0)}: "
                    f"{run['diverged']['message']}"
                )
    return lines


def rollback_lines(runs):
    """One line per rollback of a time-to-accuracy run (`--rollbacks`): the
    epoch that diverged, the guard's message and the epoch put back."""
    lines = []
    for results in runs.values():
        for run in results:
            spec = run["spec"]
            for rollback in run.get("rollbacks", []):
                lines.append(
                    f"- {spec['name']}, seed {spec.get('seed', 0)}: "
                    f"{rollback['message']} Put back epoch "
                    f"{rollback['restored_epoch']}."
                )
    return lines


def divergence_section(runs):
    """The lines that follow a time-to-accuracy table: for each of
    `rollback_lines` and `divergence_lines` that has any, a blank line, a
    heading and the lines; [] when no run was rolled back or diverged."""
    lines = []
    rolled = rollback_lines(runs)
    if rolled:
        lines += ["", "Runs rolled back and trained on (--rollbacks):", *rolled]
    stopped = divergence_lines(runs)
    if stopped:
        lines += ["", "Runs that diverged and were stopped:", *stopped]
    return lines


def exit_if_diverged(runs):
    """Ends the script with an error naming the runs that diverged, after
    their tables were written: no run exits 0 after diverging."""
    lines = divergence_lines(runs)
    if lines:
        raise SystemExit(
            f"{len(lines)} time-to-accuracy run(s) diverged; the tables count "
            "them as not reaching the target:\n" + "\n".join(lines)
        )


if __name__ == "__main__":
    app.run(main)
