# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Synthetic gradients: the lesson
#
# (Introduction: owned by lessonA.)

# %%
# Setup: the setting (small in CI, full for the committed outputs), and the
# logical devices, which must be made before TensorFlow starts.
import os

SETTING = os.environ.get("KERAS_SG_LESSON_SETTING", "full")
if SETTING not in ("small", "full"):
    raise ValueError(
        "KERAS_SG_LESSON_SETTING must be 'small' or 'full'. "
        f"Received: KERAS_SG_LESSON_SETTING={SETTING!r}"
    )
SMALL = SETTING == "small"

# %% [markdown]
# ## 1. Ways to scale training
#
# (lessonA)

# %% [markdown]
# ## 2. The three locks of backpropagation
#
# (lessonA)

# %% [markdown]
# ## 3. The math on a three-layer network
#
# (lessonA)

# %% [markdown]
# ## 4. The demo: MNIST with backprop, DNI and cDNI
#
# The network is the DNI paper's FCN-3 (Jaderberg et al. 2016, Table 1): two
# hidden layers with batch norm and ReLU, a linear layer of ten logits, and a
# cut after each hidden layer, so three stages and two synthesizers. We train
# it three ways, from the same initial weights and on the same batches:
#
# - **backprop**, the reference;
# - **DNI**: at each cut a synthesizer predicts the gradient from the
#   activation alone and learns from a bootstrapped target
#   ([method.md](method.md), sections 2 and 3); the paper's synthesizer, two
#   hidden layers with batch norm;
# - **cDNI**: a *linear* synthesizer that also reads the one-hot label
#   ([method.md](method.md), section 4).
#
# Adam, each method at the rate chosen for it on a validation split
# ([tuning.md](tuning.md)). Every `EVAL_EVERY` steps we record the test
# accuracy and, at each cut, the cosine between the synthetic and the true
# gradient on a fixed batch of 256 test images
# (`keras_sg.callbacks.gradient_diagnostics`, which runs one backward pass
# end to end to get the true gradient; [training.md](training.md) explains
# how to read it). A cosine of 1 would mean the synthesizer points where
# backprop points; 0, that it has learned nothing about the direction.

# %%
import gzip  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from IPython.display import Image, Markdown, display  # noqa: E402

import keras_sg  # noqa: E402


def read_mnist(split):
    """MNIST's `split` as flat float32 pixels in [0, 1] and int64 labels.

    Read from the four original files in the folder that KERAS_SG_MNIST_DIR
    names (dev.py sets it on this project's machines), else through
    tensorflow-datasets, which downloads them; checked either way against the
    split's known digest.
    """
    folder = keras_sg.data.manual_dir_from_env("mnist")
    if folder is None:
        images, labels = keras_sg.data.load_split("mnist", split)
    else:
        prefix = "train" if split == "train" else "t10k"
        with gzip.open(f"{folder}/{prefix}-images-idx3-ubyte.gz") as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
        with gzip.open(f"{folder}/{prefix}-labels-idx1-ubyte.gz") as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
        keras_sg.data.verify_split("mnist", split, images, labels, f" in {folder}")
    return images.reshape(len(images), -1).astype("float32") / 255.0, labels


x_train, y_train = read_mnist("train")
x_test, y_test = read_mnist("test")

METHODS = ("backprop", "dni", "cdni")
RATES = {"backprop": 3e-3, "dni": 3e-4, "cdni": 3e-3}  # Adam; docs/tuning.md
BATCH = 256  # the paper's
UNITS = 64 if SMALL else 256  # hidden units of FCN-3 (the paper's: 256)
DNI_UNITS = 128 if SMALL else 1024  # the DNI synthesizer's (the paper's: 1024)
STEPS = 30 if SMALL else 3 * (len(x_train) // BATCH)  # full: three epochs
EVAL_EVERY = 10 if SMALL else 39
EVAL_EXAMPLES = 2000 if SMALL else len(x_test)
PROBE = (x_test[:256], y_test[:256])  # the batch the cosines are measured on


def synthesizers(method, units=DNI_UNITS, cuts=2):
    """The synthesizers of `method`, one per cut (None for backprop)."""
    if method == "dni":  # the paper's DNI synthesizer: 2 hidden layers, batch norm
        return [
            keras_sg.DenseSynthesizer(hidden_layers=2, units=units) for _ in range(cuts)
        ]
    if method == "cdni":  # linear in the activation and the one-hot label
        return [
            keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=10)
            for _ in range(cuts)
        ]
    return None


def fcn3(method, seed):
    """FCN-3 trained by `method`; the seed fixes the initial weights."""
    keras.utils.set_random_seed(seed)
    net = keras_sg.models.fully_connected(
        (784,), 10, depth=3, units=UNITS, norm_momentum=0.9
    )
    model = keras_sg.DecoupledModel(net, synthesizers(method), method=method)
    model.compile(
        optimizer=keras.optimizers.Adam(RATES[method]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train(method, seed=0):
    """Trains FCN-3 for STEPS steps, measuring every EVAL_EVERY steps.

    Returns a dict: the steps measured at, and there the test accuracy and
    (for DNI and cDNI) each cut's cosine.
    """
    model = fcn3(method, seed)
    rng = np.random.default_rng(seed)  # the batches' order depends on the seed alone
    epochs = -(-STEPS * BATCH // len(x_train))
    order = np.concatenate([rng.permutation(len(x_train)) for _ in range(epochs)])
    run = {"steps": [], "accuracy": [], "cosine": []}
    done = 0
    while done < STEPS:
        n = min(EVAL_EVERY, STEPS - done)
        index = order[done * BATCH : (done + n) * BATCH]
        model.fit(
            x_train[index], y_train[index], batch_size=BATCH, shuffle=False, verbose=0
        )
        done += n
        logs = model.evaluate(
            x_test[:EVAL_EXAMPLES],
            y_test[:EVAL_EXAMPLES],
            batch_size=1000,
            verbose=0,
            return_dict=True,
        )
        run["steps"].append(done)
        run["accuracy"].append(logs["accuracy"])
        if model.uses_synthesizers:
            report = keras_sg.callbacks.gradient_diagnostics(model, *PROBE)
            run["cosine"].append([report[f"{cut}/cosine"] for cut in model.cut_names])
    return run


section_start = time.perf_counter()
runs = {method: train(method) for method in METHODS}
seconds = time.perf_counter() - section_start
print(f"Section 4 trained in {seconds:.0f} s ({SETTING} setting).")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
for method, run in runs.items():
    left.plot(run["steps"], run["accuracy"], label=method)
left.set(xlabel="training step", ylabel="test accuracy", title="FCN-3 on MNIST")
left.legend()
for method, style in (("dni", "-"), ("cdni", "--")):
    cosines = np.array(runs[method]["cosine"])
    for k in range(cosines.shape[1]):
        right.plot(
            runs[method]["steps"],
            cosines[:, k],
            style,
            color=f"C{k + 3}",
            label=f"{method}, cut {k + 1}",
        )
right.axhline(0.0, color="grey", linewidth=0.5)
right.set(xlabel="training step", ylabel="cosine", title="synthetic vs true gradient")
right.legend()
plt.show()

rows = [
    "| method | test accuracy | cosine at each cut (lowest first) |",
    "| --- | --- | --- |",
]
for method, run in runs.items():
    cosines = (
        ", ".join(f"{c:.3f}" for c in run["cosine"][-1])
        if run["cosine"]
        else "(true gradients)"
    )
    rows.append(f"| {method} | {run['accuracy'][-1]:.4f} | {cosines} |")
display(Markdown(f"After {STEPS} steps of batch {BATCH}:\n\n" + "\n".join(rows)))

dni_last, cdni_last = runs["dni"]["cosine"][-1], runs["cdni"]["cosine"][-1]
above = [
    k + 1 for k, (c, d) in enumerate(zip(cdni_last, dni_last, strict=True)) if c > d
]
print(f"cDNI's cosine is above DNI's at cut(s) {above} of {len(dni_last)}.")
for method in ("dni", "cdni"):
    last = runs[method]["cosine"][-1]
    order = (
        "rises"
        if all(a < b for a, b in zip(last[:-1], last[1:], strict=True))
        else "does not rise"
    )
    print(f"{method}: the cosine {order} from the lowest cut to the top one.")

# %% [markdown]
# How to read this. Two things to look for, and the lines printed above say
# whether this run shows them:
#
# - **The cosine falls from the top cut down.** The top cut's synthesizer
#   regresses the true gradient; the one below regresses only what the stage
#   above sends down, built on the top synthesizer's prediction, so its errors
#   add to those of the cut above ([method.md](method.md), section 3).
# - **cDNI's cosines sit above DNI's.** Below a softmax layer the gradient has
#   a term linear in the one-hot label, which a linear synthesizer that reads
#   the label represents exactly (method.md, section 4); DNI's synthesizer
#   never sees the label and has to guess it from the activation.
#
# A low cosine does not stop learning: an update that points less than 90
# degrees away from the true gradient still lowers the loss, for a small
# enough step, only by less. That is the price section 6 measures. The
# paper's table, with longer runs and deeper networks, is reproduced in
# [results.md](results.md).

# %% [markdown]
# ## 5. When it pays
#
# Synthetic gradients speed nothing up on one device: each stage does its
# usual work plus its synthesizer's. They pay on a model split over devices,
# where backprop leaves each device idle while the others work (section 2).
# The rule: **pipelined DNI is faster when each device's extra cost, its
# synthesizer, is less than the idle time it removes**. We measure both on
# this machine.
#
# The model: two stages, each two dense layers of `WIDTH` units (the top one
# adds ten logits), one stage on each of the two logical devices of the setup
# cell (`DEVICES`), batch 256, random inputs (speed does not depend on the
# values). Two ways to train it:
#
# - **backprop model-parallel**: `DecoupledModel(method="backprop",
#   devices=DEVICES)`; stage 1 waits for stage 0's forward pass, stage 0 for
#   stage 1's backward pass;
# - **pipelined DNI**: `PipelinedModel`, every stage on a different batch in
#   the same step, with a low-rank synthesizer (`LowRankSynthesizer`, rank 64:
#   a cheap one, 2dr instead of d² multiply-adds).
#
# `keras_sg.profiling.profile` traces a few training steps with TensorFlow's
# profiler and splits each device's time by kind ([api.md](api.md), "Profiling"):
# F forward, B backward, S synthesizer, U optimizer update, T transfers.
#
# **A caution on this machine.** The two logical devices are one process's
# share of two CPU cores, with one thread per op: they behave like two slow
# accelerators, but they share memory bandwidth and caches, and other work on
# the machine slows them unevenly. The speed-up measured here is what this
# machine shows, not what two accelerators would; the simulator below says
# what to expect at scale.

# %%
WIDTH = 256 if SMALL else 1024
PIPE_BATCH = 256
TIMED_STEPS = 8 if SMALL else 20
ROUNDS = 1 if SMALL else 5  # timed fits of each model, taken in turn
PROFILED_STEPS = 3 if SMALL else 10


def random_batches(input_dim, batch_size=PIPE_BATCH):
    """Eight batches of random inputs and labels, repeated for ever."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * batch_size, input_dim)).astype("float32")
    y = rng.integers(0, 10, size=8 * batch_size)
    options = tf.data.Options()
    # With every core busy, tf.data's autotuner stretched steps in
    # scripts/benchmark_pipeline.py; in-memory batches gain nothing from it.
    options.autotune.enabled = False
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat()
    return data.with_options(options)


def two_stages(width, layers_per_stage):
    """Two stages of dense layers; the top one ends in ten logits.

    Named `block_k`, not `stage_k`: the profiler tells the stages apart by
    the `stage_k` name scopes that keras_sg puts around each stage's work.
    """
    stages = []
    for k in range(2):
        layers = [keras.Input((width,))]
        layers += [
            keras.layers.Dense(width, activation="relu")
            for _ in range(layers_per_stage)
        ]
        if k == 1:
            layers.append(keras.layers.Dense(10))
        stages.append(keras.Sequential(layers, name=f"block_{k}"))
    return stages


def compiled(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def measure(models, data):
    """Median examples/s of each model over ROUNDS timed fits, and a profile.

    The models are timed in turn, round after round, so that a change of the
    machine's load hits all of them; the profile comes after the timing (the
    profiler slows the steps it traces). Also returns the cores this process
    used while timing each model: its CPU time over the wall time.
    """
    speeds = {name: [] for name in models}
    cores = {name: [] for name in models}
    for model in models.values():  # trace the step function, fill the pipeline
        model.fit(data, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
    for _ in range(ROUNDS):
        for name, model in models.items():
            start, cpu = time.perf_counter(), time.process_time()
            model.fit(
                data, steps_per_epoch=TIMED_STEPS, epochs=1, verbose=0, shuffle=False
            )
            wall = time.perf_counter() - start
            speeds[name].append(TIMED_STEPS * PIPE_BATCH / wall)
            cores[name].append((time.process_time() - cpu) / wall)
    profiles = {
        name: keras_sg.profiling.profile(
            model, data, steps=PROFILED_STEPS, skip=2, batch_size=PIPE_BATCH
        )
        for name, model in models.items()
    }
    speeds = {name: float(np.median(s)) for name, s in speeds.items()}
    cores = {name: float(np.median(c)) for name, c in cores.items()}
    return speeds, cores, profiles


def synthesizer_cost(pipelined, profile, device):
    """ms per step that device `device` spends on its synthesizer.

    The synthesizer's forward, backward and regression (S), and its share of
    the optimizer update: U is shared by the weights a device holds.
    """
    stage = pipelined.stages[device]
    synth = (
        pipelined.synthesizers[device] if device < len(pipelined.synthesizers) else None
    )
    if synth is None:
        return 0.0
    share = synth.count_params() / (synth.count_params() + stage.count_params())
    return profile.costs[device]["S"] + share * profile.costs[device]["U"]


def when_it_pays(pipelined, speeds, cores, profiles):
    """Prints, per device, the idle time of backprop model-parallel and the
    synthesizer's extra cost, the speed-up they predict and the measured one.

    Returns the predicted and the measured speed-up.
    """
    bp = profiles["backprop"]
    step = bp.step_time  # ms per profiled step of backprop model-parallel
    # ms per step in which some stage computes, and in which none does (the
    # optimizer update, Keras between two steps): pipelining removes only
    # the waits of one device for another.
    some = keras_sg.profiling.union_length([(e.start, e.end) for e in bp.events])
    some /= bp.steps
    rows = [
        "| device | computes | waits for the other | extra cost | extra < idle |",
        "| --- | --- | --- | --- | --- |",
    ]
    busiest = 0.0
    for d in range(bp.num_devices):
        mine = [(e.start, e.end) for e in bp.events if e.device == d]
        busy = keras_sg.profiling.union_length(mine) / bp.steps
        idle = some - busy
        extra = synthesizer_cost(pipelined, profiles["pipelined"], d)
        # The top stage has no synthesizer: nothing to compare.
        verdict = extra < idle if d < len(pipelined.synthesizers) else "–"
        rows.append(f"| {d} | {busy:.2f} | {idle:.2f} | {extra:.2f} | {verdict} |")
        busiest = max(busiest, busy + extra)
    # Pipelined, no device waits for another: each step takes the busiest
    # device's work and synthesizer, and the time in which no stage computes.
    predicted = step / (step - some + busiest)
    measured = speeds["pipelined"] / speeds["backprop"]
    display(
        Markdown(
            f"Backprop model-parallel, ms per step with the profiler on: {step:.2f},"
            f" of which no stage computes in {step - some:.2f}.\n\n" + "\n".join(rows)
        )
    )
    traced = step / profiles["pipelined"].step_time
    labels = {"backprop": "backprop model-parallel", "pipelined": "pipelined DNI"}
    for name, label in labels.items():
        print(
            f"{label:<24} {speeds[name]:7.0f} examples/s, using"
            f" {cores[name]:.2f} of the machine's {os.cpu_count()} cores"
        )
    print(f"predicted speed-up {predicted:.2f}x, measured {measured:.2f}x")
    print(f"(in the profiled steps, {traced:.2f}x)")
    return predicted, measured


section_start = time.perf_counter()
data = random_batches(WIDTH)
backprop_mp = compiled(
    keras_sg.DecoupledModel(two_stages(WIDTH, 2), method="backprop", devices=DEVICES)
)
pipelined = compiled(
    keras_sg.PipelinedModel(
        two_stages(WIDTH, 2), [keras_sg.LowRankSynthesizer(rank=64)], devices=DEVICES
    )
)
speeds, cores, profiles = measure(
    {"backprop": backprop_mp, "pipelined": pipelined}, data
)
predicted, measured = when_it_pays(pipelined, speeds, cores, profiles)
print(f"Measured in {time.perf_counter() - section_start:.0f} s.")

# %% [markdown]
# Reading the table (ms per step of backprop model-parallel):
#
# - *computes*: the device runs some op of its stage (forward, backward,
#   transfers);
# - *waits for the other*: the other device computes and this one does not.
#   This is the idle time that pipelining removes;
# - *extra cost*: what the synthesizer at the device's cut costs it in the
#   pipelined model: its forward, backward and regression (S), and its share
#   of the optimizer update;
# - what stays is the time in which no stage computes: the optimizer's update
#   (the profiler puts it on no stage) and Keras between two steps.
#
# The prediction: with every device on its own batch and none waiting for
# another, a step takes the busiest device's work and synthesizer, plus the
# time in which no stage computes. The cores the process used while timed
# tell whether the machine let both devices work: pipelined DNI can keep two
# cores busy only if no other program takes them.
#
# The measured timelines of two profiled steps, one row per device:

# %%
with tempfile.TemporaryDirectory(prefix="lesson_") as folder:
    keras_sg.profiling.draw_timelines(
        [profiles["backprop"], profiles["pipelined"]],
        f"{folder}/timelines.png",
        titles=["backprop model-parallel", "pipelined DNI, low-rank synthesizer"],
    )
    display(Image(filename=f"{folder}/timelines.png"))  # read into the notebook

# %% [markdown]
# Where the measurement and the prediction part, the prediction's
# assumptions are what to question: that the two devices really run at once
# (they share two cores with everything else on the machine, and with
# TensorFlow's own threads), and that the pipelined step adds nothing but the
# synthesizers (it also keeps activations and labels in buffers between
# steps). [benchmarks.md](benchmarks.md) measures the same schedules with more
# care (repeats, four devices, two server processes, the simulator's
# prediction from every measured cost) and [async.md](async.md) a runtime
# without a global step.
#
# ### The simulator at scale
#
# Two devices say little about a large model. `keras_sg.schedules.simulate`
# times schedules event by event in pure Python ([simulation.md](simulation.md)):
# here a model of 96 equal blocks (a forward costs 1, a backward 2 time units
# per block) split over K = 8 to 64 devices, with M micro-batches per step.
# The flushed schedules (GPipe, 1F1B, interleaved 1F1B, Zero Bubble ZB-H1)
# leave a bubble at every step's start and end; pipelined DNI has none after
# its warm-up but pays its synthesizers, here at overhead s = 0.1 of a stage's
# compute. Throughput is relative to the best flushed schedule.

# %%
from keras_sg.schedules import simulate  # noqa: E402

BLOCKS, BLOCK_FORWARD, BLOCK_BACKWARD = 96, 1.0, 2.0
DEVICE_COUNTS = (8, 16, 32, 64)
MICRO_BATCHES = (8,) if SMALL else (8, 32)
SG_OVERHEAD = 0.1


def flushed_step_times(k, m):
    """Step time of each flushed schedule for K devices and M micro-batches."""
    forward, backward = BLOCKS / k * BLOCK_FORWARD, BLOCKS / k * BLOCK_BACKWARD
    times = {
        name: simulate(name, k, m, forward, backward).step_time
        for name in ("gpipe", "1f1b")
    }
    times["zb_h1"] = simulate(
        "zb_h1", k, m, forward, backward, weight_grad_fraction=0.5
    ).step_time
    if m % k == 0:  # Megatron-LM's interleaving needs M to be a multiple of K
        times["interleaved_1f1b"] = simulate(
            "interleaved_1f1b", k, m, forward / 2, backward / 2, num_chunks=2
        ).step_time
    return times


def dni_step_time(k, m, overhead):
    """Pipelined DNI's time for M micro-batches in steady state."""
    forward, backward = BLOCKS / k * BLOCK_FORWARD, BLOCKS / k * BLOCK_BACKWARD
    return simulate(
        "pipelined_dni", k, m, forward, backward, overhead * (forward + backward)
    ).step_time


def break_even(k, m, target):
    """The SG overhead at which pipelined DNI takes `target` time.

    Every device runs its stage and its synthesizer on each micro-batch, so
    DNI's time grows linearly with the overhead: two simulations give the
    line, a third checks the crossing.
    """
    at_zero, at_one = dni_step_time(k, m, 0.0), dni_step_time(k, m, 1.0)
    overhead = (target - at_zero) / (at_one - at_zero)
    assert abs(dni_step_time(k, m, overhead) - target) < 1e-6 * target
    return overhead


scale = {}
for m in MICRO_BATCHES:
    rows = [
        "| K | best flushed | its time | pipelined DNI | DNI vs best | break-even s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k in DEVICE_COUNTS:
        times = flushed_step_times(k, m)
        best = min(times, key=times.get)
        dni = dni_step_time(k, m, SG_OVERHEAD)
        scale[k, m] = (best, times[best], dni, break_even(k, m, times[best]))
        rows.append(
            f"| {k} | {best} | {times[best]:.1f} | {dni:.1f} |"
            f" {times[best] / dni:.2f}x | {scale[k, m][3]:.3f} |"
        )
    display(
        Markdown(
            f"**M = {m} micro-batches per step** (time units for M micro-batches)\n\n"
            + "\n".join(rows)
        )
    )

fig, ax = plt.subplots(figsize=(5.5, 3.5))
for m in MICRO_BATCHES:
    ax.plot(
        DEVICE_COUNTS, [scale[k, m][3] for k in DEVICE_COUNTS], "o-", label=f"M = {m}"
    )
ax.axhline(SG_OVERHEAD, color="grey", linestyle=":", label=f"s = {SG_OVERHEAD}")
ax.set(
    xscale="log",
    yscale="log",
    xlabel="devices K",
    ylabel="break-even SG overhead s*",
    title="pipelined DNI is faster while s < s*",
)
ax.minorticks_off()
ax.set_xticks(DEVICE_COUNTS, [str(k) for k in DEVICE_COUNTS])
ax.legend()
plt.show()

# %% [markdown]
# The break-even overhead is the rule "extra cost < idle time" at scale: the
# synthesizers may cost, as a share of a stage's compute, up to the bubble
# that the best flushed schedule leaves. That bubble grows with the number of
# devices K and shrinks as the micro-batches M grow, so DNI's room grows with
# K and shrinks with M; the table above gives it for this scenario. What the
# simulator leaves out ([simulation.md](simulation.md)): memory, messages'
# latency, and above all that DNI follows an estimate of the gradient, so it
# needs more steps to reach the same accuracy (section 6).

# %% [markdown]
# ## 6. Limits
#
# Three limits, measured. The lesson plan's fourth, that more than one
# device is needed, is section 5's first sentence: on one device the
# synthesizers are pure extra cost.
#
# ### Steps to an accuracy, and variance over seeds
#
# Section 4's runs, and the same runs with more seeds (the seed fixes the
# initial weights and the order of the batches): how many steps each method
# needs to first reach each accuracy on the test set (checked every
# `EVAL_EVERY` steps), and how much the final accuracy varies from seed to
# seed.

# %%
SEEDS = (0,) if SMALL else (0, 1, 2)
TARGETS = (0.5, 0.7) if SMALL else (0.9, 0.95, 0.97)

section_start = time.perf_counter()
seeded = {(method, 0): runs[method] for method in METHODS}  # section 4's
for seed in SEEDS[1:]:
    for method in METHODS:
        seeded[method, seed] = train(method, seed)


def steps_to(run, target):
    """The first measured step at which `run` reached `target`, or None."""
    return next(
        (s for s, a in zip(run["steps"], run["accuracy"], strict=True) if a >= target),
        None,
    )


header = " | ".join(f"steps to {t:.0%}" for t in TARGETS)
rows = [
    f"| method | final accuracy, mean ± std over {len(SEEDS)} seed(s) | {header} |",
    "|" + " --- |" * (2 + len(TARGETS)),
]
spread = {}
for method in METHODS:
    finals = np.array([seeded[method, s]["accuracy"][-1] for s in SEEDS])
    spread[method] = finals.std(ddof=1) if len(SEEDS) > 1 else float("nan")
    std = f" ± {spread[method]:.4f}" if len(SEEDS) > 1 else " (one seed: no spread)"
    cells = []
    for target in TARGETS:
        reached = [steps_to(seeded[method, s], target) for s in SEEDS]
        cells.append(", ".join("not reached" if r is None else str(r) for r in reached))
    rows.append(f"| {method} | {finals.mean():.4f}{std} | " + " | ".join(cells) + " |")
display(
    Markdown(
        f"{STEPS} steps per run; steps to an accuracy listed per seed.\n\n"
        + "\n".join(rows)
    )
)
if len(SEEDS) > 1:
    wider = max(METHODS, key=spread.get)
    print(f"The widest spread over seeds is {wider}'s ({spread[wider]:.4f}).")
for target in TARGETS:
    mean_steps = {}
    for method in METHODS:
        reached = [steps_to(seeded[method, s], target) for s in SEEDS]
        if None not in reached:  # every seed reached it
            mean_steps[method] = np.mean(reached)
    if "backprop" not in mean_steps:
        continue
    for method in ("dni", "cdni"):
        if method in mean_steps:
            ratio = mean_steps[method] / mean_steps["backprop"]
            print(f"To {target:.0%}, {method} needs {ratio:.1f}x backprop's steps.")
        else:
            print(f"To {target:.0%}, {method} did not get there on every seed.")
print(f"Extra seeds trained in {time.perf_counter() - section_start:.0f} s.")

# %% [markdown]
# A synthetic gradient is an estimate of the true one (section 4's cosines),
# so each DNI update lowers the loss less than backprop's would, and training
# takes more steps: this is what unlocking must pay for. The wall time to an
# accuracy is steps times time per step, so pipelined DNI wins only if its
# speed-up per step (section 5) is larger than the factor by which it needs
# more steps (printed above, where both methods got there). With deeper
# networks the cuts' errors compound and DNI falls further behind;
# [results.md](results.md) has FCN-3 to FCN-6 over three seeds with longer
# runs, cDNI beside it. Read the spread with care: a few seeds give only a
# rough one, and it can differ a lot between depths.
#
# ### A small network: the synthesizers cost more than they save
#
# Section 5's rule, the other way round. Take two stages of one dense layer of
# `SMALL_WIDTH` units each, and the paper's DNI synthesizer (two hidden layers
# of 1024 units with batch norm): the synthesizer does far more work than the
# stage it serves, and a stage this small leaves its device idle only briefly.

# %%
SMALL_WIDTH = 32
section_start = time.perf_counter()
small_data = random_batches(SMALL_WIDTH)
small_backprop = compiled(
    keras_sg.DecoupledModel(
        two_stages(SMALL_WIDTH, 1), method="backprop", devices=DEVICES
    )
)
small_pipelined = compiled(
    keras_sg.PipelinedModel(
        two_stages(SMALL_WIDTH, 1),
        synthesizers("dni", units=1024, cuts=1),
        devices=DEVICES,
    )
)
small_speeds, small_cores, small_profiles = measure(
    {"backprop": small_backprop, "pipelined": small_pipelined}, small_data
)
small_predicted, small_measured = when_it_pays(
    small_pipelined, small_speeds, small_cores, small_profiles
)
verdict = "slower" if small_measured < 1 else "not slower"
print(f"Pipelined DNI is {verdict} than backprop on this small network.")
print(f"Measured in {time.perf_counter() - section_start:.0f} s.")

# %% [markdown]
# A cheaper synthesizer would help here (a linear or low-rank one), but the
# idle time it can fill is as small as the stages: on small networks there is
# little to win. Synthetic gradients pay where stages are large, devices many
# and their idle time long, and when the method's extra steps (above) cost
# less than the idle time saved.

# %% [markdown]
# ## 7. Take-home: cDNI, the fully decoupled network, clocks
#
# (lessonA)
