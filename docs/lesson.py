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
# A network split over several devices spends much of its time waiting: each
# device waits for the forward pass of the devices below it and for the backward
# pass of the devices above. Synthetic gradients (Decoupled Neural Interfaces,
# Jaderberg et al. 2016, arXiv:1608.05343; Czarnecki et al. 2017,
# arXiv:1703.00522) let a device update as soon as its own forward pass is done,
# from a gradient that a small network, the *synthesizer*, predicts.
#
# This notebook teaches the method and measures it with keras_sg, on this
# machine:
#
# 1. ways to scale training, and the idle devices of model parallelism;
# 2. the three locks of backpropagation, on a timeline of a 3-stage network;
# 3. the math on a three-layer network in NumPy, checked against keras_sg;
# 4. the demo: MNIST with backprop, DNI and cDNI;
# 5. when it pays: idle time against the synthesizers' extra cost;
# 6. the limits, with numbers from our own runs;
# 7. take-home: cDNI as an exercise, the fully decoupled network, two clocks.
#
# The reference for the math is [method.md](method.md); this notebook cites it
# rather than repeating it. Every number below comes from a cell that computed
# it. Run it from a fresh clone with `python3 dev.py lesson` (the *full*
# setting, whose outputs are committed); the test suite runs it in the *small*
# setting (`KERAS_SG_LESSON_SETTING=small`), where every run is tiny and the
# numbers mean little.

# %%
# Setup: the logical devices first (TensorFlow fixes them when it starts, so
# nothing may touch it before they are made; run this cell once per kernel),
# then the setting: small in CI, full for the committed outputs.
import contextlib
import os
import time

START = time.perf_counter()  # the last cell reports the time from here
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@contextlib.contextmanager
def quiet_start():
    """Hides TensorFlow's start-up lines, which its C++ side writes to file
    descriptor 2 before it reads TF_CPP_MIN_LOG_LEVEL. Python errors still
    show: the notebook's stderr is not that descriptor."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


with quiet_start():
    import keras_sg  # imports TensorFlow, does not start it

    # Two logical CPU devices, each running one op at a time
    # (intra_op_threads=1) and both at once (inter_op_threads=2): like two
    # small accelerators; sections 4 and 5 place stages on them.
    DEVICES = keras_sg.placement.split_cpu(2, intra_op_threads=1, inter_op_threads=2)
    import tensorflow as tf

    tf.config.list_logical_devices()  # starts TensorFlow, quietly

import atexit
import shutil
import tempfile

import keras
import numpy as np
from IPython.display import Image, display

# Every model of the lesson traces its own training step, and TensorFlow
# warns when many functions are traced in a row; here that is expected.
tf.get_logger().setLevel("ERROR")
SETTING = os.environ.get("KERAS_SG_LESSON_SETTING", "full")
if SETTING not in ("small", "full"):
    raise ValueError(
        "KERAS_SG_LESSON_SETTING must be 'small' or 'full'. "
        f"Received: KERAS_SG_LESSON_SETTING={SETTING!r}"
    )
# SMALL makes every run tiny: the test suite executes the whole notebook in the
# small setting, within about 60-90 s on two cores (tests/test_lesson.py).
SMALL = SETTING == "small"
FIGURES = tempfile.mkdtemp(prefix="keras_sg_lesson_")  # PNGs shown inline
atexit.register(shutil.rmtree, FIGURES, ignore_errors=True)
keras.utils.set_random_seed(0)
print(f"setting: {SETTING}; devices: {DEVICES}")

# %% [markdown]
# ## 1. Ways to scale training
#
# When a model or its batch outgrows one device, training is split over
# several. Four ways, briefly:
#
# - **Data parallelism.** Every device holds the whole model and runs its own
#   share of the batch; the gradients are averaged (all-reduce) before each
#   update. Simple and efficient while the model fits on one device.
# - **Model (pipeline) parallelism.** The layers are split into *stages*, one
#   per device. Activations travel forward from stage to stage, gradients
#   backward. This is the setting synthetic gradients address.
# - **Tensor parallelism.** Each layer's matrix products are split over devices
#   (Megatron-LM, Shoeybi et al. 2019, arXiv:1909.08053); devices exchange
#   partial results inside every layer, so it needs fast links.
# - **ZeRO.** Data parallelism whose optimizer state, gradients and weights are
#   sharded over the devices instead of copied on each (Rajbhandari et al.
#   2020, arXiv:1910.02054).
#
# Large runs combine them. Model parallelism has a cost of its own: with the
# whole batch going through the stages one after another, only one device
# works at a time (*naive* model parallelism). Pipelines cut the batch into M
# micro-batches so that the devices work on different ones at once: GPipe
# (Huang et al. 2019, arXiv:1811.06965) runs all forwards, then all backwards;
# Megatron-LM's interleaved 1F1B (Narayanan et al. 2021, arXiv:2104.04473)
# alternates one forward and one backward and gives each device v smaller
# chunks of the model. Each still waits at the start and the end of every step
# (the *bubble*), because the update needs the gradients of every
# micro-batch.
#
# The figures below are drawn by keras_sg's schedule simulator
# (`keras_sg.schedules`, pure Python; [simulation.md](simulation.md) takes it
# to 96 blocks on 64 devices): K = 4 devices, M = 8 micro-batches, a stage's
# forward costs 1 time unit and its backward 2. Each box is one operation of
# one device, numbered by its micro-batch.

# %%
from keras_sg.schedules import draw_timeline, simulate


def show(result, title):
    """Draws a simulated timeline with keras_sg.schedules and shows it here."""
    name = f"{result.schedule}_K{result.num_devices}_M{result.num_microbatches}"
    path = os.path.join(FIGURES, f"{name}_{len(os.listdir(FIGURES))}.png")
    display(Image(filename=draw_timeline(result, path, title=title)))


K, M, F, B = 4, 8, 1.0, 2.0
pipelines = {
    "naive": simulate("naive", K, M, F, B),
    "gpipe": simulate("gpipe", K, M, F, B),
    # v = 2 chunks per device, each half a stage.
    "interleaved_1f1b": simulate("interleaved_1f1b", K, M, F / 2, B / 2, num_chunks=2),
}
for name, result in pipelines.items():
    show(result, f"{name}: K={K} devices, M={M} micro-batches")
for name, result in pipelines.items():
    print(
        f"{name:>17}: step {result.step_time:5.1f} time units, "
        f"devices idle {result.bubble_fraction:.0%} of it"
    )

# %% [markdown]
# Naive model parallelism leaves each device idle (K − 1)/K of the time. GPipe
# shrinks the idle share to the bubble, (K − 1)/(M + K − 1) of the step with
# even stages; interleaving divides the bubble's length by v. The bubble goes to zero
# only as M grows, and M is bounded by memory (GPipe holds the activations of
# all M micro-batches) and by the batch size that still trains well.

# %% [markdown]
# ## 2. The three locks of backpropagation
#
# Why must the devices wait? Take a network of three stages on three devices
# and follow one batch ([method.md, section 1](method.md#1-what-backprop-locks)).
# Backpropagation locks each stage three ways (Jaderberg et al. 2016):
#
# - **forward lock**: stage k cannot start before stage k − 1 has computed its
#   input;
# - **backward lock**: stage k cannot compute its gradients before every stage
#   above it has run its backward pass;
# - **update lock**: so stage k cannot update its weights before the forward
#   pass has reached the loss and the backward pass has come back down.
#
# Below, the timeline of one step of plain backprop: forward 1, backward 2 and
# an optimizer update of 0.5 per stage. Then the same network with synthetic
# gradients (DNI, one batch per step as `keras_sg.DecoupledModel` trains it;
# each synthesizer's prediction and regression together cost 0.3), and with
# synthetic inputs as well (the fully unlocked step of
# `keras_sg.UnlockedModel`; each input synthesizer also costs 0.3).

# %%
F, B, U, S = 1.0, 2.0, 0.5, 0.3
locks = {
    "backprop": simulate("naive", 3, 1, F, B, update=U),
    "dni": simulate("dni", 3, 1, F, B, S, update=U),
    "fully_unlocked": simulate(
        "fully_unlocked", 3, 1, F, B, S, input_synth=S, update=U
    ),
}
titles = {
    "backprop": "backprop: forward, backward and update locked",
    "dni": "DNI: backward and update unlocked, forward still locked",
    "fully_unlocked": "synthetic inputs as well: no update waits for another device",
}
for name, result in locks.items():
    show(result, titles[name])

# %%
# What each device waits for: every message from another device (the event
# waited for, then the event that waits), and when each device can update.
for name, result in locks.items():
    print(f"{name}: one step takes {result.step_time:g} time units")
    for sent, waits in result.messages:
        print(
            f"  device {waits.device}'s {waits.kind} (t={waits.start:g}) waits for "
            f"device {sent.device}'s {sent.kind} (ends t={sent.end:g})"
        )
    for device in range(result.num_devices):
        update = [e for e in result.events if e.device == device and e.kind == "U"]
        print(
            f"  device {device} updates at t={update[0].start:g}, "
            f"idle {result.idle_fraction[device]:.0%} of the step"
        )

# %% [markdown]
# Under backprop, device 0 updates last: its update waits for the whole
# forward and backward pass above it. With synthetic gradients each device
# updates as soon as its own forward, synthesizer and backward are done: no
# update waits for a backward pass on another device. What is left is the
# forward lock (device 2 still waits for device 0's forward, through device 1)
# and the synthesizers' regressions, which need the target sent down from the
# stage above ([method.md, section 10](method.md#10-what-each-stage-waits-for)).
# Synthetic inputs remove the forward lock too, at the cost of a second kind of
# synthesizer. The saving is idle time; the price is the synthesizers' extra
# work. It pays when the extra cost is below the idle time it removes (section
# 5), and only when there is idle time: on one device nothing waits.

# %% [markdown]
# ## 3. The math on a three-layer network
#
# The smallest network where everything shows: three dense layers, two cuts,
# tanh activations and a softmax cross-entropy loss L over a batch of B
# examples,
#
# ```
# x ──f1──► h1 ──f2──► h2 ──f3──► logits
#
# h1 = tanh(x W1 + b1),   h2 = tanh(h1 W2 + b2),   logits = h2 W3 + b3
# ```
#
# **What a synthetic gradient imitates.** Backprop gives each stage the true
# gradient at its output, δk = ∂L/∂hk, which exists only once every stage above
# has run. A synthesizer Mk predicts it from hk alone; here a linear one,
# ĝk = hk Mk + ck. As in keras_sg, ĝk predicts the *per-example* gradient
# B · δk, and a stage is pulled back with ĝk / B ([method.md, section
# 5](method.md#5-scale-per-example-gradients)).
#
# **The updates** (SGD, learning rate η; [method.md, section
# 2](method.md#2-what-a-synthetic-gradient-imitates)):
#
# ```
# θ3 ← θ3 − η (∂f3/∂θ3)ᵀ ∂L/∂logits        the top stage sees the true loss
# θ2 ← θ2 − η (∂f2/∂θ2)ᵀ ĝ2 / B            stage 2 trusts M2
# θ1 ← θ1 − η (∂f1/∂θ1)ᵀ ĝ1 / B            stage 1 trusts M1
# ```
#
# **Bootstrapping** ([method.md, section
# 3](method.md#3-bootstrapping-how-the-synthesizers-learn)). Each synthesizer
# regresses a target by mean squared error. M2's target is the true gradient,
# t2 = B · J3ᵀ ∂L/∂logits, since the stage above it holds the loss. M1's is
# t1 = B · J2ᵀ ĝ2 / B: what stage 2 would send down if it trusted M2, and stage
# 2 computes it anyway, in the backward pass that gives its own update. Only
# the top stage sees a true gradient; the information about the loss reaches
# M1 through M2, one cut per round of regression, as in temporal-difference
# learning.
#
# In NumPy, one function per piece:

# %% tags=["lesson-math"]
import numpy as np


def forward(p, x):
    """The three stages: returns h1, h2 and the logits."""
    h1 = np.tanh(x @ p["W1"] + p["b1"])
    h2 = np.tanh(h1 @ p["W2"] + p["b2"])
    return h1, h2, h2 @ p["W3"] + p["b3"]


def cross_entropy(logits, y):
    """The batch-mean softmax cross-entropy and its gradient w.r.t. the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(probs[np.arange(len(y)), y]))
    onehot = np.eye(logits.shape[1])[y]
    return loss, (probs - onehot) / len(y)


def pullback(inputs, outputs, grad, W):
    """The vector-Jacobian product of a tanh layer with `grad` at its output.

    Returns the gradients of the kernel and the bias, and the gradient at the
    layer's input.
    """
    dz = grad * (1 - outputs**2)
    return inputs.T @ dz, dz.sum(axis=0), dz @ W.T


def synthesize(M, c, s):
    """A linear synthesizer: the per-example gradient predicted from s."""
    return s @ M + c


def regression(s, g, t):
    """Gradients of mean((g - t)²) w.r.t. M and c, for g = s M + c, t fixed."""
    d = 2 * (g - t) / g.size
    return s.T @ d, d.sum(axis=0)


def backprop_step(p, x, y, lr):
    """One step of plain backprop (the synthesizers, if any, stay as they are)."""
    h1, h2, logits = forward(p, x)
    loss, d_logits = cross_entropy(logits, y)
    grads = {"W3": h2.T @ d_logits, "b3": d_logits.sum(axis=0)}
    delta2 = d_logits @ p["W3"].T
    grads["W2"], grads["b2"], delta1 = pullback(h1, h2, delta2, p["W2"])
    grads["W1"], grads["b1"], _ = pullback(x, h1, delta1, p["W1"])
    return {k: v - lr * grads[k] if k in grads else v for k, v in p.items()}, loss


def dni_step(p, x, y, lr):
    """One DNI step: returns the new parameters and the batch loss."""
    batch = len(x)
    h1, h2, logits = forward(p, x)
    loss, d_logits = cross_entropy(logits, y)
    g1 = synthesize(p["M1"], p["c1"], h1)  # ≈ B · δ1
    g2 = synthesize(p["M2"], p["c2"], h2)  # ≈ B · δ2
    # The top stage: the true gradient of the loss, and M2's (true) target.
    grads = {"W3": h2.T @ d_logits, "b3": d_logits.sum(axis=0)}
    t2 = batch * d_logits @ p["W3"].T
    # Stage 2 from ĝ2 / B; the same pullback gives M1's bootstrapped target.
    grads["W2"], grads["b2"], back = pullback(h1, h2, g2 / batch, p["W2"])
    t1 = batch * back
    # Stage 1 from ĝ1 / B.
    grads["W1"], grads["b1"], _ = pullback(x, h1, g1 / batch, p["W1"])
    # Each synthesizer regresses its target.
    grads["M1"], grads["c1"] = regression(h1, g1, t1)
    grads["M2"], grads["c2"] = regression(h2, g2, t2)
    return {k: v - lr * grads[k] for k, v in p.items()}, loss


def true_cut_gradients(p, x, y):
    """B · δ1 and B · δ2, the per-example true gradients at the two cuts."""
    h1, h2, logits = forward(p, x)
    _, d_logits = cross_entropy(logits, y)
    delta2 = d_logits @ p["W3"].T
    _, _, delta1 = pullback(h1, h2, delta2, p["W2"])
    return len(x) * delta1, len(x) * delta2


def init_params(rng, inputs, units, classes, context=0, synth_scale=0.0):
    """Glorot-uniform stages; synthesizers at zero (as keras_sg starts them)
    unless synth_scale > 0. `context` widens the synthesizers' input."""

    def glorot(a, b):
        return rng.uniform(-1, 1, size=(a, b)) * np.sqrt(6 / (a + b))

    p = {
        "W1": glorot(inputs, units),
        "b1": np.zeros(units),
        "W2": glorot(units, units),
        "b2": np.zeros(units),
        "W3": glorot(units, classes),
        "b3": np.zeros(classes),
    }
    for k in (1, 2):
        p[f"M{k}"] = synth_scale * rng.normal(size=(units + context, units))
        p[f"c{k}"] = synth_scale * rng.normal(size=units)
    if synth_scale:  # nonzero biases everywhere, so every path carries a signal
        for k in (1, 2, 3):
            p[f"b{k}"] = 0.1 * rng.normal(size=p[f"b{k}"].shape)
    return p


# %% [markdown]
# **Is that what keras_sg computes?** The next two cells build the same network as
# a `keras_sg.DecoupledModel` (method `"dni"`, linear `DenseSynthesizer`s, SGD),
# gives it the very same weights, nonzero synthesizers included, trains both
# for a few steps at a nonzero learning rate on the same batches, and asserts
# that every weight agrees to float32 tolerance. A test runs this cell too
# (`tests/test_lesson.py`).

# %% tags=["lesson-math"]
import keras

import keras_sg


def keras_sg_steps(p, x, y, lr, batch_size, method):
    """Trains keras_sg's DecoupledModel from the weights `p`, one SGD step per
    batch of `batch_size`, in order; returns its weights as a dict like `p`."""
    inputs, units = p["W1"].shape
    classes = p["W3"].shape[1]
    net = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(units, activation="tanh"),
            keras_sg.Interface(name="cut_1"),
            keras.layers.Dense(units, activation="tanh"),
            keras_sg.Interface(name="cut_2"),
            keras.layers.Dense(classes),
        ]
    )
    context = classes if method == "cdni" else None
    synthesizers = [
        keras_sg.DenseSynthesizer(
            hidden_layers=0, use_batch_norm=False, num_classes=context
        )
        for _ in range(2)
    ]
    model = keras_sg.DecoupledModel(net, synthesizers, method=method)
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    dense = [layer for layer in net.layers if isinstance(layer, keras.layers.Dense)]
    for k, layer in enumerate(dense, start=1):
        layer.set_weights([p[f"W{k}"], p[f"b{k}"]])
    for k, synth in enumerate(synthesizers, start=1):
        synth.head.set_weights([p[f"M{k}"], p[f"c{k}"]])
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    weights = {}
    for k, layer in enumerate(dense, start=1):
        weights[f"W{k}"], weights[f"b{k}"] = layer.get_weights()
    for k, synth in enumerate(synthesizers, start=1):
        weights[f"M{k}"], weights[f"c{k}"] = synth.head.get_weights()
    return weights


def check_against_keras_sg(step, method, steps=3, lr=0.5, seed=0):
    """Runs `steps` NumPy steps of `step` and keras_sg's `method` from the same
    weights and batches; asserts they agree. Returns (largest change of a
    weight, largest disagreement)."""
    rng = np.random.default_rng(seed)
    inputs, units, classes, batch = 5, 4, 3, 6
    context = classes if method == "cdni" else 0
    p = init_params(rng, inputs, units, classes, context, synth_scale=0.5)
    x = rng.normal(size=(steps * batch, inputs))
    y = rng.integers(0, classes, size=steps * batch)
    ours = p
    for i in range(0, steps * batch, batch):
        ours, _ = step(ours, x[i : i + batch], y[i : i + batch], lr)
    theirs = keras_sg_steps(
        {k: v.astype("float32") for k, v in p.items()},
        x.astype("float32"),
        y,
        lr,
        batch,
        method,
    )
    for name in p:
        np.testing.assert_allclose(
            theirs[name], ours[name], rtol=1e-4, atol=1e-5, err_msg=name
        )
    change = max(np.abs(ours[k] - p[k]).max() for k in p)
    disagreement = max(np.abs(theirs[k] - ours[k]).max() for k in p)
    return change, disagreement


# %%
change, disagreement = check_against_keras_sg(dni_step, "dni")
print(
    f"3 SGD steps at learning rate 0.5: weights moved by up to {change:.3f}; "
    f"NumPy and keras_sg differ by at most {disagreement:.1e}"
)

# %% [markdown]
# **Does it train?** The same three functions on a toy problem: ten Gaussian
# inputs, three classes given by a fixed random nonlinear rule, a network of
# 32 units per layer, SGD 0.1, batch 32. Three runs from the same initial
# weights: backprop; DNI; and "top only", where the lower stages never update
# (the baseline any method must beat: a linear model on random tanh features).
# After the last epoch: the loss and accuracy on the training set, and for DNI
# the cosine between the synthetic and the true gradient at each cut, over the
# whole set.


# %%
def cosine(a, b):
    """Cosine similarity of two arrays, taken as flat vectors."""
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def top_only_step(p, x, y, lr):
    """DNI's step applied to the top stage only: the lower stages stay fixed."""
    new, loss = dni_step(p, x, y, lr)
    return {k: new[k] if k in ("W3", "b3") else v for k, v in p.items()}, loss


def toy_problem(n, inputs=10, classes=3, seed=0):
    """Gaussian inputs, labels from a fixed random one-hidden-layer rule."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs))
    hidden = np.tanh(x @ rng.normal(size=(inputs, inputs)))
    return x, np.argmax(hidden @ rng.normal(size=(inputs, classes)), axis=1)


def train_numpy(step, x, y, epochs, lr=0.1, batch=32, context=0):
    """Trains from the same initial weights; returns one row per epoch:
    (loss, accuracy, cosine at cut 1, cosine at cut 2). The synthesizers read
    `[h, onehot(y)]` when context > 0."""
    p = init_params(np.random.default_rng(1), x.shape[1], 32, 3, context)
    rows = []
    for _ in range(epochs):
        for i in range(0, len(x), batch):
            p, _ = step(p, x[i : i + batch], y[i : i + batch], lr)
        h1, h2, logits = forward(p, x)
        loss, _ = cross_entropy(logits, y)
        accuracy = float(np.mean(logits.argmax(axis=1) == y))
        true1, true2 = true_cut_gradients(p, x, y)
        labels = np.eye(3)[y][:, :context]
        s1, s2 = (np.concatenate([h, labels], axis=1) for h in (h1, h2))
        cos1 = cosine(synthesize(p["M1"], p["c1"], s1), true1)
        cos2 = cosine(synthesize(p["M2"], p["c2"], s2), true2)
        rows.append((loss, accuracy, cos1, cos2))
    return rows


EPOCHS_NUMPY = 4 if SMALL else 30
x_toy, y_toy = toy_problem(512 if SMALL else 2048)
toy_runs = {
    "backprop": train_numpy(backprop_step, x_toy, y_toy, EPOCHS_NUMPY),
    "dni": train_numpy(dni_step, x_toy, y_toy, EPOCHS_NUMPY),
    "top only": train_numpy(top_only_step, x_toy, y_toy, EPOCHS_NUMPY),
}
for name, rows in toy_runs.items():
    loss, accuracy, cos1, cos2 = rows[-1]
    line = (
        f"{name:>9}: after {len(rows)} epochs loss {loss:.3f}, accuracy {accuracy:.3f}"
    )
    if name == "dni":
        line += f"; cosine synthetic vs true: cut 1 {cos1:+.2f}, cut 2 {cos2:+.2f}"
    print(line)

# %% [markdown]
# Read the cosines before the accuracy. A linear synthesizer of h alone cannot
# follow this gradient: δ2 = (softmax(logits) − onehot(y)) W3ᵀ / B depends on the
# label, which h2 carries only through the stages below, nonlinearly
# ([method.md, section 4](method.md#4-cdni-conditioning-on-the-label)). Where
# the cosines stay near zero, the lower stages move in directions unrelated to
# the loss, and DNI does no better than training the top stage alone. The
# paper's DNI synthesizers are two hidden layers deep (1024 units each, the
# default of `keras_sg.DenseSynthesizer`). The other way out, giving the
# synthesizer the label, is cDNI: the exercise of section 7.

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
# ### The exercise: cDNI from DNI
#
# Section 3 ended on a synthesizer that cannot see the label. Give it the
# label: write `cdni_step`, DNI's step of section 3 in which each synthesizer
# reads `[hk, onehot(y)]` instead of hk (its matrix Mk gains one row per
# class). Why a *linear* synthesizer is then enough for the label's share of
# the gradient is in [method.md, section
# 4](method.md#4-cdni-conditioning-on-the-label). Replace the `raise` below
# with your code, using the functions of section 3, and run the cells after
# it: they check your step against keras_sg's `method="cdni"` (to float
# tolerance, over three SGD steps) and train it on the toy problem.
#
# The solution is in [lesson_solutions.py](lesson_solutions.py); the test
# suite checks it against keras_sg. Until you write yours, the cells below use
# it and say so.


# %% tags=["exercise"]
def cdni_step(p, x, y, lr):
    """One cDNI step: returns the new parameters and the batch loss.

    As `dni_step`, with synthesizers of `units + classes` input rows that read
    `np.concatenate([hk, np.eye(classes)[y]], axis=1)`.
    """
    raise NotImplementedError("the exercise: write cdni_step from dni_step")


# %%
import lesson_solutions  # docs/lesson_solutions.py

try:
    change, disagreement = check_against_keras_sg(cdni_step, "cdni")
    cdni_used = cdni_step
    print("Your cdni_step:", end=" ")
except NotImplementedError:
    cdni_used = lesson_solutions.cdni_step
    change, disagreement = check_against_keras_sg(cdni_used, "cdni")
    print("cdni_step is not written yet; the shipped solution:", end=" ")
print(
    f"weights moved by up to {change:.3f} in 3 steps; "
    f"keras_sg's cDNI differs by at most {disagreement:.1e}"
)

# %%
toy_runs["cdni"] = train_numpy(cdni_used, x_toy, y_toy, EPOCHS_NUMPY, context=3)
for name in ("backprop", "dni", "cdni", "top only"):
    loss, accuracy, cos1, cos2 = toy_runs[name][-1]
    line = f"{name:>9}: loss {loss:.3f}, accuracy {accuracy:.3f}"
    if name in ("dni", "cdni"):
        line += f"; cosine at cut 1 {cos1:+.2f}, cut 2 {cos2:+.2f}"
    print(line)

# %% [markdown]
# Read cut 1's cosine. M1 never sees a true gradient: its targets are stage
# 2's pullbacks of M2's predictions, so what it knows about the loss came
# through M2. Where its cosine is well above zero, that is bootstrapping at
# work; where DNI's is not, on the same network, that is the label DNI could
# not see.

# %% [markdown]
# ### The fully decoupled network
#
# DNI and cDNI leave the forward lock (section 2). The complete unlock of
# Jaderberg et al. (2016, Section 3.4) also predicts each stage's *input* from
# the network's input x, with an *input synthesizer*, so that every stage
# starts on the batch at once ([method.md, section
# 7](method.md#7-forward-unlocking-synthetic-inputs);
# [api.md, `UnlockedModel`](api.md#unlockedmodelnetwork-synthesizers-input_synthesizers-methoddni-input_sourcesnone)).
# A short run on MNIST, beside cDNI without synthetic inputs (the same network
# from the same initial weights); `input_drift` is the relative squared error
# of the synthetic input against the activation the composed network computes,
# at each cut.

# %%
from keras_sg.data import load_split, manual_dir_from_env

MNIST_DIR = manual_dir_from_env("mnist")  # KERAS_SG_MNIST_DIR, or download
N_TRAIN, N_TEST = (2048, 1024) if SMALL else (60000, 10000)
UNITS, EPOCHS_UNLOCKED = (64, 1) if SMALL else (256, 3)
train_images, train_labels = load_split(
    "mnist", f"train[:{N_TRAIN}]", manual_dir=MNIST_DIR
)
test_images, test_labels = load_split("mnist", f"test[:{N_TEST}]", manual_dir=MNIST_DIR)
x_train = train_images.reshape(len(train_images), -1).astype("float32") / 255
x_test = test_images.reshape(len(test_images), -1).astype("float32") / 255


def mnist_model(kind):
    """A 784-UNITS-UNITS-10 network with linear cDNI synthesizers, and, for
    "unlocked", input synthesizers from x (one hidden layer of 64 units)."""
    keras.utils.set_random_seed(0)
    net = keras_sg.models.fully_connected((784,), 10, depth=3, units=UNITS)
    synths = [
        keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=10) for _ in range(2)
    ]
    if kind == "cdni":
        return keras_sg.DecoupledModel(net, synths, method="cdni")
    inputs = [
        keras_sg.DenseInputSynthesizer(
            target_shape=(UNITS,), hidden_layers=1, units=64, use_batch_norm=False
        )
        for _ in range(2)
    ]
    return keras_sg.UnlockedModel(net, synths, inputs, method="cdni")


unlocked_logs = {}
for kind in ("cdni", "unlocked"):
    model = mnist_model(kind)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    history = model.fit(
        x_train, train_labels, batch_size=128, epochs=EPOCHS_UNLOCKED, verbose=0
    )
    seconds = time.perf_counter() - started
    test = model.evaluate(x_test, test_labels, verbose=0, return_dict=True)
    unlocked_logs[kind] = history.history
    line = (
        f"{kind:>8}: {EPOCHS_UNLOCKED} epoch(s) of {N_TRAIN} images in "
        f"{seconds:.0f} s, test accuracy {test['accuracy']:.3f}"
    )
    drifts = [key for key in history.history if key.endswith("_input_drift")]
    for key in sorted(drifts):
        line += f"; {key} {history.history[key][-1]:.3f}"
    print(line)

# %% [markdown]
# ### Two networks on different clocks
#
# Synthetic gradients also join networks that tick at different rates (the
# DNI paper's multi-network system, Section 3.3, as keras_sg reads it): a fast
# LSTM reads one digit per step; a slow LSTM ticks once every `period` steps,
# reads the fast one's output and sends it a message for the next block. The
# target at a step is the digit shown now plus the first digit of the block
# two blocks back, mod 10, so what the fast network must remember lies two slow
# ticks back. With `method="dni"` each network updates from synthetic
# gradients at the two interfaces and neither waits for the other's backward
# pass; `"bptt"` is full backpropagation through both, the reference. The
# details, and longer runs, are in [recurrent.md, section
# 9](recurrent.md#9-two-networks-at-different-clocks) and
# [api.md, `ClockedPairModel`](api.md#clockedpairmodelfast_cell-slow_cell-period-output-methoddni-message_synthesizernone-state_synthesizernone-sg_loss_weight10).

# %%
from keras_sg.data import clocked_digits

LENGTH, PERIOD = (8, 2) if SMALL else (16, 4)
SEQUENCES, FAST, SLOW, EPOCHS_CLOCKS = (128, 8, 4, 1) if SMALL else (4096, 64, 32, 5)
x_seq, y_seq = clocked_digits(train_images, train_labels, SEQUENCES, LENGTH, PERIOD)
x_seq_test, y_seq_test = clocked_digits(
    test_images, test_labels, SEQUENCES // 4, LENGTH, PERIOD, seed=1
)
for method in ("bptt", "dni"):
    keras.utils.set_random_seed(0)
    synths = {}
    if method == "dni":
        synths = {
            "message_synthesizer": keras_sg.DenseSynthesizer(hidden_layers=0),
            "state_synthesizer": keras_sg.DenseSynthesizer(hidden_layers=0),
        }
    pair = keras_sg.ClockedPairModel(
        keras.layers.LSTMCell(FAST),
        keras.layers.LSTMCell(SLOW),
        period=PERIOD,
        output=keras.layers.Dense(10),
        method=method,
        **synths,
    )
    pair.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    pair.fit(x_seq, y_seq, batch_size=32, epochs=EPOCHS_CLOCKS, verbose=0)
    seconds = time.perf_counter() - started
    test = pair.evaluate(x_seq_test, y_seq_test, verbose=0, return_dict=True)
    print(
        f"{method:>4}: {EPOCHS_CLOCKS} epoch(s) of {SEQUENCES} sequences of "
        f"{LENGTH} digits in {seconds:.0f} s, test accuracy {test['accuracy']:.3f} "
        "(chance 0.1)"
    )

# %% [markdown]
# Not in this notebook: convolutional synthesizers, and why the network's head
# decides whether they can predict the gradient at all (a conv synthesizer
# sees one position; with a flattening head the gradient depends on where
# the pixel is). See [training.md, "Conv synthesizers and the network's
# head"](training.md#conv-synthesizers-and-the-networks-head).

# %%
elapsed = time.perf_counter() - START
print(
    f"This notebook ran in the {SETTING} setting in {elapsed / 60:.1f} min "
    f"({elapsed:.0f} s, from the setup cell to this one) on {os.cpu_count()} CPU "
    "core(s)."
)
