"""The asynchronous stage runtime: lock-step equality, staleness, the fit front."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_synth, weights_of

import keras_sg

D, H, OUT, B = 3, 4, 2, 2
WORKER = Path(__file__).with_name("async_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _net(width=H, top_width=None):
    top = [keras.layers.Dense(top_width, activation="tanh")] if top_width else []
    return keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(width, name="d0"),
            keras_sg.Interface(name="cut_1"),
            keras.layers.Dense(width, name="d1"),
            keras_sg.Interface(name="cut_2"),
            *top,
            keras.layers.Dense(OUT, name="d2"),
        ]
    )


def _model(cls, optimizer, method="dni", loss="mse", **kwargs):
    keras.utils.set_random_seed(7)
    classes = OUT if method == "cdni" else None
    synths = [linear_synth(num_classes=classes) for _ in range(2)]
    model = cls(_net(), synths, method=method, **kwargs)
    rng = np.random.default_rng(4)
    for synth in synths:
        kernel, bias = synth.head.get_weights()
        synth.head.set_weights(
            [rng.normal(size=kernel.shape), rng.normal(size=bias.shape)]
        )
    model.compile(optimizer=optimizer, loss=loss)
    return model


def _data(n=15, classes=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, D)).astype("float32")
    if classes:
        return x, rng.integers(0, OUT, size=n)
    return x, rng.normal(size=(n, OUT)).astype("float32")


def _parts(model):
    return model.stages + model.synthesizers


# ------------------------------------------------------------- lock step


@pytest.mark.parametrize(
    "optimizer, method, extra",
    [
        (lambda: keras.optimizers.Adam(0.05), "dni", {}),
        (lambda: keras.optimizers.SGD(0.1, momentum=0.5), "cdni", {}),
        # Each stage's clone is a FusedAdam too (the type is checked below).
        (lambda: keras_sg.optimizers.FusedAdam(0.05), "dni", {}),
        # Lock-step targets are 2 batches old: the bound never waits.
        (
            lambda: keras.optimizers.SGD(0.1, momentum=0.5),
            "cdni",
            {"max_target_age": 2},
        ),
    ],
    ids=["adam-dni", "sgd-cdni", "fusedadam-dni", "sgd-cdni-age2"],
)
def test_lock_step_equals_pipelined_model_weight_by_weight(optimizer, method, extra):
    """Two epochs of 8 batches (the last partial): 16 global steps, K = 3.

    Each stage's own optimizer steps at every global step (idle ones only
    count it), so Adam's bias correction matches the single optimizer's.
    """
    classes = method == "cdni"
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    loss = loss if classes else "mse"
    x, y = _data(classes=classes)
    reference = _model(keras_sg.PipelinedModel, optimizer(), method, loss)
    start = weights_of(_parts(reference))
    want_history = reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    model = _model(
        keras_sg.AsyncPipelinedModel, optimizer(), method, loss, lock_step=True, **extra
    )
    np.testing.assert_array_equal(weights_of(_parts(model))[0], start[0])
    history = model.fit(
        x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, drain=False
    )
    # The top stage's loss, averaged over the batches that reached it.
    np.testing.assert_allclose(
        history.history["loss"], want_history.history["loss"], rtol=1e-6
    )

    want, got = weights_of(_parts(reference)), weights_of(_parts(model))
    moved = [np.abs(w - s).max() for w, s in zip(want, start, strict=True)]
    assert min(moved) > 1e-3  # every stage and synthesizer learned
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)
    iterations = [int(o.iterations) for o in model.stage_optimizers()]
    assert iterations == [16, 16, 16] == [int(reference.optimizer.iterations)] * 3
    assert {type(o) for o in model.stage_optimizers()} == {type(reference.optimizer)}
    # Batch ids: stage k saw every batch of the 16 steps that reached it.
    for k, log in enumerate(model.stage_log):
        np.testing.assert_array_equal(log["batch"], np.arange(16 - k))
        if k < 2:
            # The synthesizer at cut k regresses, at batch s, the target
            # that stage k + 1 sent one step earlier: batch s - 2.
            np.testing.assert_array_equal(
                log["target_batch"], np.where(log["batch"] >= 2, log["batch"] - 2, -1)
            )


def _two_optimizers(cls, jit=False, **kwargs):
    """`_model` compiled with Adam for the stages and SGD with momentum for
    the synthesizers (`synthesizer_optimizer`), each stage's math with XLA
    if `jit` (AsyncPipelinedModel only)."""
    model = _model(cls, "sgd", **kwargs)
    model.compile(
        keras.optimizers.Adam(0.05),
        "mse",
        synthesizer_optimizer=keras.optimizers.SGD(0.3, momentum=0.5),
        jit_compile=jit,
    )
    return model


@pytest.mark.parametrize("jit", [False, True], ids=["plain", "xla"])
def test_lock_step_with_a_synthesizer_optimizer_equals_pipelined_model(jit):
    """`compile(synthesizer_optimizer=...)`: each synthesizer gets its own
    clone of it, the stages the model optimizer's; 16 global steps, K = 3,
    weight by weight against PipelinedModel's two optimizers."""
    x, y = _data()
    reference = _two_optimizers(keras_sg.PipelinedModel)
    start = weights_of(_parts(reference))
    want_history = reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    model = _two_optimizers(keras_sg.AsyncPipelinedModel, jit, lock_step=True)
    history = model.fit(
        x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, drain=False
    )
    # The loss and each synthesizer's regression loss, as the reference
    # logs them.
    assert history.history.keys() == want_history.history.keys()
    for name, values in want_history.history.items():
        np.testing.assert_allclose(history.history[name], values, rtol=1e-6)
    want, got = weights_of(_parts(reference)), weights_of(_parts(model))
    moved = [np.abs(w - s).max() for w, s in zip(want, start, strict=True)]
    assert min(moved) > 1e-3  # every stage and synthesizer learned
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
    # Both kinds step at every global step, as the reference's two do.
    steps = int(reference.synthesizer_optimizer.iterations)
    assert steps == int(reference.optimizer.iterations) == 16
    assert [int(o.iterations) for o in model.stage_optimizers()] == [16] * 3
    synth_optimizers = model.synthesizer_optimizers()
    assert [type(o).__name__ for o in synth_optimizers] == ["SGD", "SGD"]
    assert [int(o.iterations) for o in synth_optimizers] == [16, 16]
    # The stage optimizers hold no synthesizer variable.
    synth_ids = {id(v) for s in model.synthesizers for v in s.trainable_variables}
    for optimizer in model.stage_optimizers():
        built = {id(v) for v in optimizer._trainable_variables}
        assert not built & synth_ids


class _SynthesizerRate(keras.callbacks.Callback):
    """Sets the synthesizer optimizer's rate at each epoch's start, as
    Keras's LearningRateScheduler sets the model optimizer's."""

    def __init__(self, rates):
        super().__init__()
        self.rates = rates

    def on_epoch_begin(self, epoch, logs=None):
        self.model.synthesizer_optimizer.learning_rate = self.rates[epoch]


def test_rates_that_callbacks_set_reach_every_stage(tmp_path):
    """Keras's LearningRateScheduler (and ReduceLROnPlateau) set
    `model.optimizer.learning_rate`, which no stage reads: the stages'
    clones follow it, and the synthesizer optimizer's, so lock-step with
    the callbacks still equals PipelinedModel weight by weight over three
    epochs of different rates; the rate set survives a save and load."""
    x, y = _data()

    def callbacks():
        return [
            keras.callbacks.LearningRateScheduler(
                lambda epoch: [0.05, 0.01, 0.002][epoch]
            ),
            _SynthesizerRate([0.3, 0.1, 0.0]),
        ]

    reference = _two_optimizers(keras_sg.PipelinedModel)
    start = weights_of(_parts(reference))
    reference.fit(
        x, y, batch_size=B, epochs=3, shuffle=False, verbose=0, callbacks=callbacks()
    )
    model = _two_optimizers(keras_sg.AsyncPipelinedModel, lock_step=True)
    model.fit(
        x,
        y,
        batch_size=B,
        epochs=3,
        shuffle=False,
        verbose=0,
        drain=False,
        callbacks=callbacks(),
    )
    want, got = weights_of(_parts(reference)), weights_of(_parts(model))
    moved = [np.abs(w - s).max() for w, s in zip(want, start, strict=True)]
    assert min(moved) > 1e-3
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
    rates = [float(o.learning_rate) for o in model.stage_optimizers()]
    assert rates == pytest.approx([0.002] * 3)
    assert [float(o.learning_rate) for o in model.synthesizer_optimizers()] == [0, 0]
    # Saved and loaded, the compiled optimizers keep the rates set (and the
    # steps): the next fit's stages go on at them.
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.002)
    assert int(loaded.optimizer.iterations) == 24
    loaded.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    rates = [float(o.learning_rate) for o in loaded.stage_optimizers()]
    assert rates == pytest.approx([0.002] * 3)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt  # after BackupAndRestore saved epoch 1


def test_backup_and_restore_resumes_as_the_uninterrupted_run(tmp_path):
    """Keras's BackupAndRestore: a run interrupted after its second epoch
    and run again goes on from its third epoch and ends with the weights,
    optimizer states and steps of a run that was not interrupted (lock
    step, which is deterministic)."""
    x, y = _data(n=16)

    def compiled():
        return _two_optimizers(keras_sg.AsyncPipelinedModel, lock_step=True)

    def state(model):
        optimizers = model.stage_optimizers() + model.synthesizer_optimizers()
        return weights_of(_parts(model)) + [
            np.asarray(v) for o in optimizers for v in o.variables
        ]

    straight = compiled()
    straight.fit(x, y, batch_size=B, epochs=4, shuffle=False, verbose=0)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = compiled()
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(
            x,
            y,
            batch_size=B,
            epochs=4,
            shuffle=False,
            verbose=0,
            callbacks=[backup, _Interrupt()],
        )
    assert not _stage_threads()
    resumed = compiled()
    history = resumed.fit(
        x,
        y,
        batch_size=B,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))],
    )
    assert history.epoch == [2, 3]
    got, want = state(resumed), state(straight)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    # 8 batches and 2 drain steps a epoch.
    assert int(resumed.optimizer.iterations) == 40


@pytest.mark.parametrize(
    "callback, drain, message",
    [
        (
            lambda path: keras.callbacks.BackupAndRestore(path, save_freq=2),
            True,
            r"Received: BackupAndRestore\(save_freq=2\)",
        ),
        (
            lambda path: keras.callbacks.ModelCheckpoint(
                path + "/m.keras", save_freq=3
            ),
            True,
            r"Received: ModelCheckpoint\(save_freq=3\)",
        ),
        (
            lambda path: keras.callbacks.ModelCheckpoint(path + "/m.keras"),
            False,
            "Received: drain=False",
        ),
    ],
    ids=["backup-batches", "checkpoint-batches", "no-drain"],
)
def test_checkpoints_of_no_consistent_state_are_refused(
    tmp_path, callback, drain, message
):
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd")
    with pytest.raises(ValueError, match=message):
        model.fit(
            x,
            y,
            batch_size=B,
            epochs=1,
            verbose=0,
            drain=drain,
            callbacks=[callback(str(tmp_path))],
        )
    assert not _stage_threads()


class _LoadAtEpoch(keras.callbacks.Callback):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.model.load_weights(self.path)


@pytest.mark.timeout(60)
def test_loading_weights_while_the_stages_run_is_an_error_not_a_hang(tmp_path):
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd")
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    with pytest.raises(ValueError, match="cannot load weights while `fit`"):
        model.fit(
            x, y, batch_size=B, epochs=2, verbose=0, callbacks=[_LoadAtEpoch(path)]
        )
    assert not _stage_threads()
    model.load_weights(path)  # after fit, it loads


def test_a_run_with_a_synthesizer_optimizer_resumes_from_a_file(tmp_path):
    """Its clones' state is saved beside the stage optimizers' and put back."""

    def compiled():
        model = _model(keras_sg.AsyncPipelinedModel, "sgd", lock_step=True)
        model.compile(
            keras.optimizers.Adam(0.05),
            "mse",
            synthesizer_optimizer=keras.optimizers.Adam(0.02),
        )
        return model

    resumed, path = _straight_against_resumed(compiled, tmp_path)
    assert [int(o.iterations) for o in resumed.synthesizer_optimizers()] == [20, 20]
    # A file with the synthesizer optimizers does not load into a model
    # without them.
    plain = _model(keras_sg.AsyncPipelinedModel, "sgd", lock_step=True)
    plain.compile(keras.optimizers.Adam(0.05), "mse")
    with pytest.raises(ValueError, match="with or without a synthesizer optimizer"):
        plain.load_weights(path)


def test_lock_step_drains_every_epoch():
    """With the default drain, every stage finishes each epoch's batches."""
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd", lock_step=True)
    model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    for log in model.stage_log:
        np.testing.assert_array_equal(log["batch"], np.arange(8))
    # 4 batches and 2 drain steps per epoch: each stage counts all 12.
    assert [int(o.iterations) for o in model.stage_optimizers()] == [12] * 3
    # A second fit goes on with the same optimizers.
    batches = _Batches()
    model.fit(
        x, y, batch_size=B, epochs=1, shuffle=False, verbose=0, callbacks=[batches]
    )
    assert [int(o.iterations) for o in model.stage_optimizers()] == [18] * 3
    # The compiled optimizer's count follows the top stage's global steps:
    # it idles the epoch's first two (and counts them), then works.
    assert batches.steps == [15, 16, 17, 18]
    assert int(model.optimizer.iterations) == 18


def _counting_traces(monkeypatch):
    """Counts the stage functions the runtime traces."""
    traced = []
    make = keras_sg.AsyncPipelinedModel._stage_function

    def counted(self, k, runtime):
        traced.append(k)
        return make(self, k, runtime)

    monkeypatch.setattr(keras_sg.AsyncPipelinedModel, "_stage_function", counted)
    return traced


def test_fits_of_one_epoch_reuse_the_runtime_and_train_as_one_fit(monkeypatch):
    """Lock-step, Adam: three fits of one epoch give the weights of one fit
    of three, tracing the stage functions once; each fit's batch ids count
    from 0."""
    traced = _counting_traces(monkeypatch)
    x, y = _data(n=8)

    def compiled():
        return _model(
            keras_sg.AsyncPipelinedModel, keras.optimizers.Adam(0.05), lock_step=True
        )

    straight = compiled()
    straight.fit(x, y, batch_size=B, epochs=3, shuffle=False, verbose=0)
    assert len(traced) == 3
    stepwise = compiled()
    runtimes = []
    for _ in range(3):
        stepwise.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
        runtimes.append(stepwise._kept_runtime)
        for log in stepwise.stage_log:
            np.testing.assert_array_equal(log["batch"], np.arange(4))
    assert len(traced) == 6  # the second model's first fit only
    assert runtimes[0] is runtimes[1] is runtimes[2]
    want, got = weights_of(_parts(straight)), weights_of(_parts(stepwise))
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)
    assert _stage_threads() == []


def test_a_kept_runtime_drops_what_was_in_flight(monkeypatch):
    """Without the drain, batches are still in the queues when `fit` ends:
    the next `fit` on the kept runtime starts from empty queues, as one on
    a new runtime does."""
    traced = _counting_traces(monkeypatch)
    x, y = _data(n=8)
    fit = dict(batch_size=B, epochs=1, shuffle=False, verbose=0, drain=False)
    kept, fresh = (
        _model(
            keras_sg.AsyncPipelinedModel, keras.optimizers.Adam(0.05), lock_step=True
        )
        for _ in range(2)
    )
    for _ in range(2):
        kept.fit(x, y, **fit)
        runtime = kept._kept_runtime
        queues = runtime.forward + runtime.backward + runtime.kept
        assert [int(q.size()) for q in queues] == [0] * len(queues)
        fresh.fit(x, y, **fit)
        fresh._discard_runtime()
    assert len(traced) == 3 + 2 * 3
    want, got = weights_of(_parts(fresh)), weights_of(_parts(kept))
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)


def test_a_runtime_whose_queues_cannot_be_emptied_is_not_kept():
    """A queue that fails at the end of a `fit` (its worker gone, say): the
    fit's training stands, the runtime is closed, the next fit makes one."""
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd", lock_step=True)

    class Unavailable(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            def dequeue(*args, **kwargs):
                raise tf.errors.UnavailableError(None, None, "worker gone")

            # Without the drain, batches are left in the queues to empty.
            model._kept_runtime.forward[0].dequeue = dequeue

    fit = dict(batch_size=B, shuffle=False, verbose=0, drain=False)
    model.fit(x, y, callbacks=[Unavailable()], **fit)
    assert model._kept_runtime is None
    assert _stage_threads() == []
    model.fit(x, y, **fit)
    assert model._kept_runtime is not None


def test_a_new_compile_or_other_batches_make_a_new_runtime(monkeypatch):
    traced = _counting_traces(monkeypatch)
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd")
    model.fit(x, y, batch_size=B, verbose=0)
    first = model._kept_runtime
    model.fit(x, y, batch_size=B, verbose=0)
    assert model._kept_runtime is first and len(traced) == 3
    # New optimizers (and loss and metrics): the old runtime is closed.
    model.compile(keras.optimizers.SGD(0.01), "mse")
    assert model._kept_runtime is None
    model.fit(x, y, batch_size=B, verbose=0)
    second = model._kept_runtime
    assert second is not first and len(traced) == 6
    # Batches of another spec (float64 inputs): traced anew.
    model.fit(x.astype("float64"), y, batch_size=B, verbose=0)
    assert model._kept_runtime is not second and len(traced) == 9
    # More steps per call: traced anew.
    model.compile(model.optimizer, "mse", steps_per_execution=2)
    model.fit(x, y, batch_size=B, verbose=0)
    assert len(traced) == 12
    assert _stage_threads() == []


def _straight_against_resumed(compiled, tmp_path):
    """Two lock-step epochs of `compiled()` straight, and one, save, load and
    one more: the weights must be the same. Returns the resumed model and
    the file."""
    x, y = _data()
    straight = compiled()
    straight.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    first = compiled()
    first.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "epoch-1.keras"
    first.save(path)
    resumed = keras.models.load_model(path)
    resumed.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    want, got = weights_of(_parts(straight)), weights_of(_parts(resumed))
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)
    return resumed, path


def test_a_run_resumed_from_a_file_goes_on_as_it_would_have(tmp_path):
    """Lock-step, Adam: two epochs straight, or one, save, load and one more.

    The file holds each stage optimizer's moments and `iterations`, and a
    drained epoch leaves nothing in flight.
    """
    resumed, _ = _straight_against_resumed(
        lambda: _model(
            keras_sg.AsyncPipelinedModel, keras.optimizers.Adam(0.05), lock_step=True
        ),
        tmp_path,
    )
    iterations = [int(o.iterations) for o in resumed.stage_optimizers()]
    assert iterations == [20, 20, 20]  # 2 x (8 batches + 2 drain steps)


# ------------------------------------------------------------- staleness


def _check_staleness(log, capacity, num_stages):
    """The bounds derived in AsyncPipelinedModel's docstring."""
    for k in range(num_stages - 1):
        batch, target, lag = (log[k][n] for n in ("batch", "target_batch", "lag"))
        assert lag.min() >= 0
        assert lag.max() <= capacity + 1, (k, lag.max())
        used = target >= 0
        staleness = batch[used] - target[used]
        assert staleness.min() >= 1
        assert staleness.max() <= capacity + 2, (k, staleness.max())
        # Targets come in order: the synthesizer never goes back in time.
        assert np.all(np.diff(target[used]) > 0)


def _sleep(t):
    time.sleep(0.01)
    return t


class _Slow(keras.layers.Layer):
    """The identity, 10 ms late: a top stage slower than the stages below."""

    def call(self, inputs):
        out = tf.numpy_function(_sleep, [inputs], inputs.dtype)
        return tf.ensure_shape(out, inputs.shape)


def _fit_below_a_slow_top(capacity, per_call, **kwargs):
    """Two epochs of 30 batches of 3 stages, the top one 10 ms late a step,
    so that the two below run ahead as far as they are let. Returns the
    stage log."""
    keras.utils.set_random_seed(3)
    synths = [linear_synth() for _ in range(2)]
    top = keras.Sequential([_Slow(), keras.layers.Dense(OUT)])
    stages = keras_sg.models.split_stages(_net())[:2] + [top]
    model = keras_sg.AsyncPipelinedModel(stages, synths, capacity=capacity, **kwargs)
    model.compile(keras.optimizers.SGD(0.01), loss="mse", steps_per_execution=per_call)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, D)).astype("float32")
    y = rng.normal(size=(120, OUT)).astype("float32")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    return model.stage_log


@pytest.mark.parametrize("capacity, per_call", [(1, 1), (3, 1), (2, 3)])
def test_capacity_bounds_staleness_when_free_running(capacity, per_call):
    """The stages below a slow top run ahead as far as the queues let them,
    one step per call or `per_call` steps per call (steps_per_execution)."""
    log = _fit_below_a_slow_top(capacity, per_call)
    for k in range(3):
        np.testing.assert_array_equal(log[k]["batch"], np.arange(60))
    _check_staleness(log, capacity, 3)
    assert (log[2]["target_batch"] == -1).all()
    # The stage below the slow top reaches its bound: the test can see a
    # queue that lets it run further.
    assert log[1]["lag"].max() == capacity + 1


@pytest.mark.parametrize("age", [2, 3])
def test_max_target_age_bounds_the_age_of_the_targets(age):
    """Below a slow top, with room to run C + 1 = 4 batches ahead, each
    synthesizer still regresses targets at most `age` batches old, and the
    bound is reached: the stages wait for the targets, they do not merely
    skip the old ones."""
    log = _fit_below_a_slow_top(3, 2, max_target_age=age)
    _check_staleness(log, 3, 3)
    for k in range(2):
        batch, target = log[k]["batch"], log[k]["target_batch"]
        used = target >= 0
        ages = batch[used] - target[used]
        assert ages.max() == age, (k, np.bincount(ages))
        # By the end of batch s's step the stage has taken the target of
        # batch s - age (in this step or an earlier one), from the
        # (age + 1)-th batch of each epoch on: those of the epoch before
        # were dropped at its end.
        newest = np.maximum.accumulate(target)
        late = (batch % 30) >= age
        np.testing.assert_array_less(batch[late] - age - 1, newest[late])


# --------------------------------------------------- steps per execution


class _Batches(keras.callbacks.Callback):
    """Records the batch callbacks: begin indices, end indices, losses and
    the model optimizer's `iterations` at each end."""

    def __init__(self):
        super().__init__()
        self.begins, self.ends, self.losses, self.steps = [], [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(batch)
        self.losses.append(float(logs["loss"]))
        self.steps.append(int(self.model.optimizer.iterations))


@pytest.mark.parametrize("jit", [False, True], ids=["plain", "xla"])
def test_steps_per_execution_runs_calls_of_n_steps_as_keras_does(jit):
    """Free running, steps_per_execution=4, two epochs of 10 batches.

    Each stage runs calls of 4 + 4 + 2 steps. Below the top nothing can
    learn (zero-initialised synthesizers that never train: sg_loss_weight=0,
    so every synthetic gradient is 0 and Adam leaves the stages as they
    are), so the top stage trains on fixed features in batch order, whatever
    the schedule: it must equal Keras's own `fit` of the top layer on those
    features with the same steps_per_execution, in its weights, its History
    and its batch callbacks (one per call, at the call's last step, with
    the logs after it). Also with each stage's math compiled by XLA.
    """
    x, y = _data(n=20)
    model = _model(
        keras_sg.AsyncPipelinedModel, keras.optimizers.Adam(0.05), sg_loss_weight=0.0
    )
    for synth in model.synthesizers:
        synth.head.set_weights([np.zeros_like(w) for w in synth.head.get_weights()])
    model.compile(
        keras.optimizers.Adam(0.05), "mse", steps_per_execution=4, jit_compile=jit
    )
    features = model.stages[1](model.stages[0](x)).numpy()
    below = weights_of(_parts(model)[:2] + model.synthesizers)
    reference = keras.Sequential([keras.Input((H,)), keras.layers.Dense(OUT)])
    top_start = model.stages[2].get_weights()
    reference.set_weights(top_start)
    reference.compile(keras.optimizers.Adam(0.05), "mse", steps_per_execution=4)
    want_batches = _Batches()
    want = reference.fit(
        features,
        y,
        batch_size=B,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[want_batches],
    )

    calls = [[], [], []]

    def hook(k, phase, n):
        if phase == "end":
            calls[k].append(n)

    model.stage_step_hook = hook
    batches = _Batches()
    history = model.fit(
        x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, callbacks=[batches]
    )
    assert calls == [[4, 4, 2, 4, 4, 2]] * 3
    for log in model.stage_log:
        np.testing.assert_array_equal(log["batch"], np.arange(20))
    for w, g in zip(
        below, weights_of(_parts(model)[:2] + model.synthesizers), strict=True
    ):
        np.testing.assert_array_equal(g, w)
    got = model.stages[2].get_weights()
    for w, g, s in zip(reference.get_weights(), got, top_start, strict=True):
        assert np.abs(g - s).max() > 1e-2  # the top learned
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(history.history["loss"], want.history["loss"], rtol=1e-6)
    assert batches.begins == want_batches.begins == [0, 4, 8, 0, 4, 8]
    # Keras numbers the end of the short last call as if it were full (11,
    # in this version); here it is that call's last step.
    assert batches.ends == [3, 7, 9, 3, 7, 9]
    assert want_batches.ends[:2] == [3, 7]
    np.testing.assert_allclose(batches.losses, want_batches.losses, rtol=1e-6)
    assert int(model.stage_optimizers()[2].iterations) == 20
    # The compiled optimizer, which no stage steps, counts the top stage's
    # steps as Keras's does: what a callback reading it sees.
    assert batches.steps == want_batches.steps == [4, 8, 10, 14, 18, 20]
    assert int(model.optimizer.iterations) == 20


def test_lock_step_refuses_steps_per_execution():
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd", lock_step=True)
    model.compile("sgd", "mse", steps_per_execution=2)
    with pytest.raises(ValueError, match="steps_per_execution=2"):
        model.fit(x, y, batch_size=B, verbose=0)
    assert _stage_threads() == []


# ---------------------------------------------------- stop_training


class _StopAt(keras.callbacks.Callback):
    """Sets `model.stop_training` at the end of batch `batch` of epoch
    `epoch` (0-based, as Keras numbers them), as EarlyStopping or
    TerminateOnNaN would."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.model.stop_training = True


def test_lock_step_stops_where_pipelined_model_stops():
    """A callback that stops `fit` at batch 3 of the second epoch: lock-step
    mode (without the drain, whose global step t is PipelinedModel's step t)
    ends at the same global step, weight by weight."""
    x, y = _data()  # 8 batches an epoch
    reference = _model(keras_sg.PipelinedModel, keras.optimizers.Adam(0.05))
    start = weights_of(_parts(reference))
    want = reference.fit(
        x,
        y,
        batch_size=B,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[_StopAt(1, 3)],
    )
    model = _model(
        keras_sg.AsyncPipelinedModel, keras.optimizers.Adam(0.05), lock_step=True
    )
    got = model.fit(
        x,
        y,
        batch_size=B,
        epochs=3,
        shuffle=False,
        verbose=0,
        drain=False,
        callbacks=[_StopAt(1, 3)],
    )
    assert len(got.history["loss"]) == len(want.history["loss"]) == 2
    assert int(reference.optimizer.iterations) == 8 + 4
    assert [int(o.iterations) for o in model.stage_optimizers()] == [12] * 3
    for k, log in enumerate(model.stage_log):
        np.testing.assert_array_equal(log["batch"], np.arange(12 - k))
    want_w, got_w = weights_of(_parts(reference)), weights_of(_parts(model))
    moved = [np.abs(w - s).max() for w, s in zip(want_w, start, strict=True)]
    assert min(moved) > 1e-3
    for w, g in zip(want_w, got_w, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("drain", [True, False], ids=["drain", "no-drain"])
@pytest.mark.parametrize("stop_epoch", [0, 1])
def test_free_running_stops_early_and_every_stage_trains_what_was_fed(
    drain, stop_epoch
):
    """K = 3, 2 steps per call, stage 0 slowed after each call so that the
    stages above ask for batches it has not fed yet when the stop comes:
    stage 0 feeds those (a call is never cut short) and then no more, and
    every stage trains every batch fed. The runtime is then fit again."""
    x, y = _data(n=128)  # 64 batches an epoch
    model = _model(keras_sg.AsyncPipelinedModel, "sgd", capacity=1)
    model.compile(keras.optimizers.SGD(0.01), loss="mse", steps_per_execution=2)

    def slow_stage_0(k, what, n):
        if k == 0 and what == "end":
            time.sleep(0.03)

    model.stage_step_hook = slow_stage_0
    history = model.fit(
        x,
        y,
        batch_size=B,
        epochs=3,
        shuffle=False,
        verbose=0,
        drain=drain,
        callbacks=[_StopAt(stop_epoch, 1)],
    )
    assert len(history.history["loss"]) == stop_epoch + 1
    trained = [len(log["batch"]) for log in model.stage_log]
    # Every batch fed is trained by every stage: none is left in flight.
    assert trained[0] == trained[1] == trained[2], trained
    # The top stage ended the call in which it was told to stop (its
    # batches 0 and 1 of the epoch); stage 0 fed one or two more (3 or 4 in
    # all in our runs; the bound leaves room for a slow main thread), not
    # the epoch.
    assert 64 * stop_epoch + 2 <= trained[0] < 64 * stop_epoch + 48, trained
    for log in model.stage_log:
        np.testing.assert_array_equal(log["batch"], np.arange(trained[0]))
    assert [int(o.iterations) for o in model.stage_optimizers()] == trained
    assert _stage_threads() == []
    # The kept runtime goes on: a new fit, from batch 0, every batch.
    model.stage_step_hook = None
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for log in model.stage_log:
        np.testing.assert_array_equal(log["batch"], np.arange(64))


# ------------------------------------------------------------- fit front


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch", epoch, sorted(logs)))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch", batch))

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def test_fit_smoke_history_callbacks_and_progress_bar(capsys):
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd", capacity=2)
    recorder = _Recorder()
    history = model.fit(
        x,
        y,
        batch_size=B,
        epochs=2,
        verbose=1,
        callbacks=[recorder],
        validation_data=(x, y),
    )
    assert isinstance(history, keras.callbacks.History)
    assert sorted(history.history) == [
        "cut_1_sg_loss",
        "cut_2_sg_loss",
        "loss",
        "val_loss",
    ]
    assert len(history.history["loss"]) == 2
    keys = ["cut_1_sg_loss", "cut_2_sg_loss", "loss", "val_loss"]
    batches = [("batch", i) for i in range(4)]
    assert recorder.calls == [
        "train_begin",
        *batches,
        ("epoch", 0, keys),
        *batches,
        ("epoch", 1, keys),
        "train_end",
    ]
    assert "4/4" in capsys.readouterr().out
    # The epoch's loss is the top stage's mean over its batches: equal to
    # the plain forward loss of the weights at each top step, so finite.
    assert np.isfinite(history.history["loss"]).all()


def test_fit_reduces_the_loss_on_a_separable_problem():
    """cDNI, free running with capacity 2, on two Gaussian blobs."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=256)
    x = (rng.normal(size=(256, D)) + 2.0 * (2 * y[:, None] - 1)).astype("float32")
    synths = [linear_synth(num_classes=2) for _ in range(2)]
    model = keras_sg.AsyncPipelinedModel(
        _net(width=16), synths, method="cdni", capacity=2
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(0.01), loss, metrics=["accuracy"])
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0)
    after = model.evaluate(x, y, verbose=0, return_dict=True)
    assert before["loss"] > 0.5
    assert after["loss"] < 0.2, (before, after)
    assert after["accuracy"] > 0.95
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.predict(x[:5], verbose=0).shape == (5, 2)


def test_round_trips_through_keras_files(tmp_path):
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd", capacity=3, max_target_age=2)
    model.fit(x, y, batch_size=B, verbose=0)
    path = tmp_path / "async.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_sg.AsyncPipelinedModel)
    assert (loaded.capacity, loaded.lock_step, loaded.max_target_age) == (3, False, 2)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )


# -------------------------------------------------------------- shutdown


def _stage_threads():
    return [t for t in threading.enumerate() if t.name.startswith("keras_sg-stage")]


def test_no_threads_left_after_fit():
    before = threading.active_count()
    x, y = _data(n=8)
    for lock_step in (False, True):
        model = _model(keras_sg.AsyncPipelinedModel, "sgd", lock_step=lock_step)
        model.fit(x, y, batch_size=B, epochs=2, verbose=0)
    assert _stage_threads() == []
    assert threading.active_count() == before


def test_a_full_target_queue_fails_the_step_instead_of_waiting(monkeypatch):
    """If the staleness bound ever broke, the target queue could fill, and
    a sender waiting on it could wait for ever: the step fails, naming the
    cut. Here the synthesizer takes no target, so the queue (C + 2 = 3
    items) fills; lock-step, so that the target queue is full before the
    queue of kept activations (2 C + 4)."""
    from keras_sg.models import async_pipelined_model as apm

    take_newest = apm._Runtime.take_newest

    def takes_none(self, k, n_back):
        return take_newest(self, k, tf.zeros_like(n_back))

    monkeypatch.setattr(apm._Runtime, "take_newest", takes_none)
    x, y = _data(n=16)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd", lock_step=True)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="The target queue at cut 0 is full"
    ):
        model.fit(x, y, batch_size=B, shuffle=False, verbose=0)
    assert _stage_threads() == []
    assert model._kept_runtime is None


def _failing_loss(y_true, y_pred):
    """MSE that fails on a label of 100 or more: an error in the top stage."""
    check = tf.debugging.assert_less(tf.reduce_max(y_true), 100.0, message="big y")
    with tf.control_dependencies([check]):
        return keras.losses.mean_squared_error(y_true, y_pred)


class _Raise(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            raise RuntimeError("callback failed")


@pytest.mark.parametrize(
    "where, lock_step",
    [("stage_0", False), ("top", False), ("top", True), ("callback", False)],
)
def test_an_error_anywhere_is_raised_and_leaves_no_threads(where, lock_step):
    before = threading.active_count()
    x, y = _data(n=40, classes=where == "stage_0")
    callbacks = []
    if where == "stage_0":  # cDNI's in-graph label check, in stage 0
        method, loss = "cdni", "sparse_categorical_crossentropy"
        y[30] = 5
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(B)
        expected = (ValueError, "cDNI labels must lie in")
    elif where == "top":
        method, loss = "dni", _failing_loss
        y[30] = 1000.0
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(B)
        expected = (tf.errors.InvalidArgumentError, "big y")
    else:
        method, loss = "dni", "mse"
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(B)
        callbacks = [_Raise()]
        expected = (RuntimeError, "callback failed")
    model = _model(
        keras_sg.AsyncPipelinedModel, "sgd", method, loss, lock_step=lock_step
    )
    with pytest.raises(expected[0], match=expected[1]):
        model.fit(data, epochs=3, verbose=0, callbacks=callbacks)
    assert _stage_threads() == []
    assert threading.active_count() == before
    # The failed fit's runtime is closed, not kept: the next fit makes one.
    assert model._kept_runtime is None


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"capacity": 0}, "capacity=0"),
        ({"capacity": "2"}, "capacity='2'"),
        ({"capacity": True}, "capacity=True"),
        ({"lock_step": True, "capacity": 2}, "capacity=2"),
        ({"lock_step": 1}, "lock_step=1"),
        ({"max_target_age": 1, "capacity": 2}, "max_target_age=1"),
        ({"max_target_age": 4, "capacity": 2}, r"\[2, 3\].*max_target_age=4"),
        ({"max_target_age": 2.0, "capacity": 2}, "max_target_age=2.0"),
        ({"max_target_age": True, "capacity": 2}, "max_target_age=True"),
        ({"method": "backprop"}, "method='backprop'"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    synths = [linear_synth() for _ in range(2)]
    with pytest.raises(ValueError, match=message):
        keras_sg.AsyncPipelinedModel(_net(), synths, **kwargs)


# ------------------------------------------------------------ per-stage XLA


def test_lock_step_with_xla_per_stage_equals_lock_step_without():
    """jit_compile=True compiles each stage's math (forward, backward,
    synthesizer regression, the optimizer's update) with XLA: 8 steps of
    lock-step training, K = 3, equal the uncompiled run (itself equal to
    PipelinedModel), weight by weight, and each stage optimizer counts
    every step. SGD with momentum: Adam, nearly invariant to a gradient's
    scale, is checked compiled in free mode (with steps_per_execution) and
    on two logical CPUs."""
    optimizer = lambda: keras.optimizers.SGD(0.02, 0.5)  # noqa: E731
    x, y = _data(n=8)
    runs = []
    for jit in (False, True):
        model = _model(keras_sg.AsyncPipelinedModel, optimizer(), lock_step=True)
        start = weights_of(_parts(model))
        model.compile(optimizer(), "mse", jit_compile=jit)
        assert model.jit_compile is jit
        history = model.fit(
            x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, drain=False
        )
        runs.append((model, history.history["loss"]))
    (plain, want_loss), (compiled, loss) = runs
    want, got = weights_of(_parts(plain)), weights_of(_parts(compiled))
    assert min(np.abs(w - s).max() for w, s in zip(want, start, strict=True)) > 1e-3
    # Scaling the stage gradients by 3 inside the compiled step fails this
    # by ~1 (with Adam, by ~4e-5 only: it is scale-invariant but for its
    # epsilon).
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    assert [int(o.iterations) for o in compiled.stage_optimizers()] == [8] * 3


class _NoXla(keras.layers.Layer):
    """The identity, in a layer that says XLA cannot compile it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False

    def call(self, inputs):
        return inputs


def test_xla_per_stage_refuses_what_it_cannot_compile():
    # A layer that says it does not support XLA: refused at compile.
    synths = [linear_synth() for _ in range(2)]
    stages = keras_sg.models.split_stages(_net())
    stages[1] = keras.Sequential([_NoXla(name="no_xla"), stages[1]])
    model = keras_sg.AsyncPipelinedModel(stages, synths)
    with pytest.raises(ValueError, match="'no_xla'.*jit_compile=True"):
        model.compile("sgd", "mse", jit_compile=True)
    # An op XLA cannot compile (a Python function): the stage's error,
    # raised by fit, says the stage was compiled with XLA.
    stages = keras_sg.models.split_stages(_net())[:2]
    stages.append(keras.Sequential([_Slow(), keras.layers.Dense(OUT)]))
    model = keras_sg.AsyncPipelinedModel(stages, synths)
    model.compile("sgd", "mse", jit_compile=True)
    x, y = _data(n=8)
    with pytest.raises(Exception, match="jit_compile=True") as raised:
        model.fit(x, y, batch_size=B, verbose=0)
    assert "stage 2" in str(raised.value.__notes__)
    assert _stage_threads() == []


@pytest.mark.parametrize(
    "fit_kwargs, message",
    [
        ({"sample_weight": np.ones(8)}, "sample_weight=weights"),
        ({"y": None}, "y=None"),
        ({"class_weight": {0: 1.0}}, "class_weight"),
        ({"validation_split": 0.5}, "validation_split"),
        ({"steps_per_epoch": 0}, "Received: 0"),
    ],
)
def test_fit_rejects_what_it_cannot_do(fit_kwargs, message):
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd")
    kwargs = {"y": y, "batch_size": B, "verbose": 0, **fit_kwargs}
    with pytest.raises(ValueError, match=message):
        model.fit(x, **kwargs)
    assert _stage_threads() == []


def test_fit_rejects_datasets_with_weights_or_without_labels():
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd")
    weighted = tf.data.Dataset.from_tensor_slices((x, y, np.ones(8))).batch(B)
    with pytest.raises(ValueError, match="3 part"):
        model.fit(weighted, verbose=0)
    unlabelled = tf.data.Dataset.from_tensor_slices(x).batch(B)
    with pytest.raises(ValueError, match="1 part"):
        model.fit(unlabelled, verbose=0)
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(B).repeat()
    with pytest.raises(ValueError, match="cardinality=-1"):
        model.fit(endless, verbose=0)


def test_lock_step_under_mixed_bfloat16_equals_pipelined_model():
    """Under "mixed_bfloat16" the stages and synthesizers compute in bfloat16
    and the runtime's queues carry float32, as PipelinedModel's buffers do:
    two epochs of cDNI with Adam, weight by weight. With per-stage XLA the
    run stays within bfloat16's rounding of it (XLA rounds elsewhere)."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = _data(classes=True)

    def run(cls, policy, jit=False, **kwargs):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = _model(cls, keras.optimizers.Adam(0.05), "cdni", loss, **kwargs)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        start = weights_of(_parts(model))
        fit = dict(batch_size=B, epochs=2, shuffle=False, verbose=0)
        if cls is keras_sg.AsyncPipelinedModel:
            model.jit_compile = jit
            fit["drain"] = False
        history = model.fit(x, y, **fit)
        return model, start, history.history["loss"]

    reference, start, want_loss = run(keras_sg.PipelinedModel, "mixed_bfloat16")
    model, _, loss_values = run(
        keras_sg.AsyncPipelinedModel, "mixed_bfloat16", lock_step=True
    )
    assert {layer.compute_dtype for layer in model.stages[0].layers} == {"bfloat16"}
    np.testing.assert_allclose(loss_values, want_loss, rtol=1e-6)
    want, got = weights_of(_parts(reference)), weights_of(_parts(model))
    assert min(np.abs(w - s).max() for w, s in zip(want, start, strict=True)) > 1e-4
    for w, g in zip(want, got, strict=True):
        assert g.dtype == np.float32  # the weights stay float32
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-6)
    # Not the float32 run: the policy took effect.
    in_float32, _, _ = run(keras_sg.AsyncPipelinedModel, "float32", lock_step=True)
    gap = max(
        np.abs(a - b).max()
        for a, b in zip(weights_of(_parts(in_float32)), got, strict=True)
    )
    assert gap > 1e-4
    _, _, xla_loss = run(
        keras_sg.AsyncPipelinedModel, "mixed_bfloat16", jit=True, lock_step=True
    )
    np.testing.assert_allclose(xla_loss, want_loss, rtol=1e-2)


def test_fit_rejects_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        synths = [linear_synth() for _ in range(2)]
        model = keras_sg.AsyncPipelinedModel(_net(), synths)
        model.compile("sgd", "mse")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x, y = _data(n=8)
    with pytest.raises(ValueError, match="'mixed_float16'"):
        model.fit(x, y, batch_size=B, verbose=0)


@pytest.mark.parametrize("where", ["optimizer", "synthesizer_optimizer"])
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"use_ema": True}, r"Received: SGD\(use_ema=True\)"),
        (
            {"gradient_accumulation_steps": 2},
            r"Received: SGD\(gradient_accumulation_steps=2\)",
        ),
    ],
    ids=["ema", "accumulation"],
)
def test_fit_rejects_what_the_stage_optimizers_cannot_do(where, settings, message):
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd", lock_step=True)
    optimizer = keras.optimizers.SGD(0.1, **settings)
    if where == "optimizer":
        model.compile(optimizer, "mse")
    else:
        model.compile("sgd", "mse", synthesizer_optimizer=optimizer)
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, batch_size=B, verbose=0)
    assert not _stage_threads()


def test_fit_rejects_a_distribution_strategy():
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope(), pytest.raises(ValueError, match="OneDeviceStrategy"):
        model.fit(x, y, batch_size=B, verbose=0)


def test_train_step_is_refused():
    x, y = _data(n=8)
    model = _model(keras_sg.AsyncPipelinedModel, "sgd")
    with pytest.raises(ValueError, match="trains through `fit`"):
        model.train_on_batch(x[:2], y[:2])


# ---------------------------------------------------------------- placed


def _worker(mode):
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    )
    done = subprocess.run(
        [sys.executable, str(WORKER), mode],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_placed_on_two_logical_devices_lock_step_equals_pipelined():
    result = _worker("logical")
    assert result["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    # Each stage's variables, optimizer slots and queues live on its device.
    assert result["variable_devices"] == [["device:CPU:0"], ["device:CPU:1"]]
    assert result["slot_devices"] == [["device:CPU:0"], ["device:CPU:1"]]
    assert result["queue_devices"] == {
        "activations_0": "device:CPU:1",
        "targets_0": "device:CPU:0",
    }
    # The check that the target queue has room runs beside it, on CPU:0.
    assert result["target_check_devices"] == ["device:CPU:0"]
    # Each stage's loop runs on its device, and nothing it takes at each
    # step comes from another: no tensor captured from this process (on two
    # servers, a constant captured from the client crossed at every step).
    assert result["loop_devices"] == [["device:CPU:0"], ["device:CPU:1"]]
    assert result["captured_tensor_devices"] == [[], []]
    # Each metric lives where it is updated: the loss and the compiled
    # metrics on the top stage's device, the synthesizer's loss on its
    # stage's. Their logs are PipelinedModel's, and `evaluate`, traced
    # before the fit moved them, reads them anew.
    assert result["metric_devices"] == {
        "loss": ["device:CPU:1"],
        "compile_metrics": ["device:CPU:1"],
        "cut_1_sg_loss": ["device:CPU:0"],
    }
    want_history, history = result["history"]
    assert sorted(history) == ["accuracy", "cut_1_sg_loss", "loss"]
    assert sorted(want_history) == sorted(history)
    for name, values in want_history.items():
        np.testing.assert_allclose(history[name], values, rtol=1e-6)
    want_evaluated, evaluated = result["evaluated"]
    assert want_evaluated["loss"] > 0.01
    assert evaluated.keys() == want_evaluated.keys()
    for name, value in want_evaluated.items():
        assert evaluated[name] == pytest.approx(value, rel=1e-5)
    assert result["moved"] > 1e-3
    assert result["max_weight_diff"] < 1e-6
    assert result["iterations"] == [10, 10]
    assert result["free_batches"] == [list(range(20)), list(range(20))]
    # Capacity 2, free running across the two devices: the bounds hold.
    assert 0 <= min(result["free_lag"]) <= max(result["free_lag"]) <= 3
    assert result["free_staleness"]
    assert 1 <= min(result["free_staleness"]) <= max(result["free_staleness"]) <= 4
    assert result["threads_after"] == result["threads_before"]


def test_xla_per_stage_runs_on_each_stage_device():
    """Two logical CPUs, lock-step, jit_compile=True: each stage's XLA
    functions are called on its device, and run there. XLA reads only the
    variables of the device a compiled function runs on (shown by the
    worker: a CPU:1 variable read under CPU:0 fails), so training stage 1
    on its CPU:1 variables is proof that its compiled math ran on CPU:1."""
    result = _worker("xla")
    assert result["jit_compile"] is True
    # Stage 0: its step, its synthesizer's and the two updates (with and
    # without the synthesizer); stage 1 (the top): its step and update.
    assert result["xla_call_devices"] == [["device:CPU:0"] * 4, ["device:CPU:1"] * 2]
    assert result["optimizer_devices"] == [["device:CPU:0"], ["device:CPU:1"]]
    assert result["near_read"] == 2.0
    assert "located in device" in result["wrong_device_error"]
    assert "device:CPU:1 from device" in result["wrong_device_error"]
    # And it equals the uncompiled lock-step run.
    assert result["moved"] > 1e-3
    assert result["max_weight_diff"] < 1e-6
    assert result["iterations"] == [10, 10]
    # evaluate and predict run the placed forward pass uncompiled (XLA
    # would run it whole on one device, and fail to read the other's
    # variables); the training math stays compiled.
    assert result["evaluated"][1] == pytest.approx(result["evaluated"][0], rel=1e-5)
    assert result["max_predict_diff"] < 1e-5
    assert result["jit_after_evaluate"] is True
