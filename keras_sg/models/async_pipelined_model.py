"""Asynchronous pipelined DNI: every stage runs its own training loop."""

import contextlib
import queue
import threading

import keras
import numpy as np
import tensorflow as tf

from keras_sg._checks import check_label_range, reporting_label_errors
from keras_sg.models.pipelined_model import PipelinedModel, _forget_losses
from keras_sg.models.stages import place_metric, place_optimizer

# How long `fit` waits for a stage thread to end once it has been told to
# stop (its queues closed, pending enqueues cancelled).
JOIN_TIMEOUT = 30.0


@keras.saving.register_keras_serializable(package="keras_sg")
class AsyncPipelinedModel(PipelinedModel):
    """Pipelined DNI in which every stage runs its own loop, at its own pace.

    The stage work is `PipelinedModel`'s (the same forward pass, synthetic
    gradient, pullback, bootstrapped target and synthesizer regression); the
    schedule is not. Each stage runs in a Python thread of its own, calling
    its own `tf.function` under `tf.device(<its device>)`, with an optimizer
    of its own: a clone of the compiled optimizer that updates the stage and
    the synthesizer at its output (which lives on its device). With
    `compile(synthesizer_optimizer=...)` that synthesizer has its own clone
    of the synthesizer optimizer instead, on the same device; it steps at
    every step of the stage (counting, without an update, a step that took
    no target), as `PipelinedModel`'s counts every training step. No variable,
    not even an optimizer's `iterations`, is shared between stages, and no
    step joins them (Jaderberg et al. 2016, arXiv:1608.05343, Section 2:
    update and backwards unlocking).

    Queues. Stage k sends the activation at cut k, with the labels and an
    int64 batch id, to stage k + 1 through a `tf.queue.FIFOQueue` of
    `capacity` items on stage k + 1's device; it blocks when the queue is
    full, which is what bounds how far it runs ahead. It also keeps the
    activation, labels and batch id in a queue of its own (on its device),
    for its synthesizer's regression. Stage k + 1 sends back only the
    bootstrapped target and the batch id, through a queue on stage k's
    device. At the start of each step stage k takes every target that has
    arrived with the activations it kept for them (the batch ids must match),
    regresses the newest and drops the older ones. Stage 0 reads its batches
    from the dataset iterator itself, inside its own function.

    Staleness bound. Stage k's s-th step works on batch s. It can enqueue
    batch s - 1 only once stage k + 1 has dequeued batch s - 1 - C (C is
    `capacity`), and stage k + 1 sends a target before it dequeues its next
    batch; so when stage k starts batch s, stage k + 1 has finished at least
    s - 1 - C batches, and at most s (it cannot have seen batch s). Hence:
    - stage k is at most C + 1 batches ahead of stage k + 1's finished
      batches (`stage_log[k]["lag"]` in [0, C + 1]);
    - a target that stage k regresses at batch s is that of a batch j with
      1 <= s - j <= C + 2 (`stage_log[k]["target_batch"]`).
    The backward queue never blocks its sender: between two steps of stage k
    (each of which empties it), stage k + 1 finishes at most C + 2 batches,
    so a queue of C + 2 items never fills. Were it to (a broken bound), the
    sender fails with an error instead of waiting: a full backward queue and
    a full forward queue could otherwise wait on each other for ever.

    A tighter bound on the targets' age. With `max_target_age=A`
    (2 <= A <= C + 1), stage k waits at the start of batch s until the
    target of batch s - A has arrived, so every target it regresses is at
    most A batches old (`target_batch` >= s - A). A stage above that is
    slower than the stage below otherwise lets the stage below run C + 1
    batches ahead, and its targets are then C + 2 batches old nearly every
    step; with A = 2 the stage below waits for it instead (it would wait at
    the full queue anyway, a step later), with less slack for the stages'
    jitter: in docs/async.md it made no run of twenty collapse where 6 of 35
    did without it, at 0.93x the unbounded throughput in one setting and the
    same time per epoch in another. The wait is a blocking dequeue, not a
    poll. A = 1 would wait for the batch just sent, one stage at a time, and
    A >= C + 2 would never wait: both are refused.

    Lock-step mode (`lock_step=True`, `capacity=1`): the stages step
    together, one global step at a time. At global step t every stage k
    whose input has arrived works (on batch t - k), taking the targets sent
    before step t; one that has none (stage k before step k) only advances
    its optimizer's `iterations`, so that Adam's bias correction counts
    global steps as `PipelinedModel`'s single optimizer does. The updates
    then equal `PipelinedModel`'s, weight by weight (with `fit(...,
    drain=False)`, which keeps batches in flight across epochs as
    `PipelinedModel` does). It is the testable form of the runtime, not a
    fast one.

    Epochs. An epoch is `steps_per_epoch` batches through stage 0. At its end
    `fit` drains the pipeline: every stage finishes that epoch's batches (in
    lock-step mode, `len(stages) - 1` further global steps in which stage 0
    idles), so the weights that callbacks and checkpoints see are one
    consistent snapshot. Loss and metrics are the top stage's, on the
    batches that reached it. `evaluate` and `predict` run the plain forward
    pass. A callback that sets `model.stop_training` at a batch's end
    (`EarlyStopping`, `TerminateOnNaN`, `StopOnDivergence`) ends the epoch
    early, as in Keras: in lock-step mode at that global step; free running,
    stage 0 stops feeding at once, and every stage trains the batches that
    were already on their way (a few calls' worth), so none is left in
    flight.

    Input. Stage 0 reads its batches where its dataset lives. On TensorFlow
    servers, arrays given to `fit` become a dataset on stage 0's task, so no
    batch goes through this process; a dataset made under stage 0's device
    is read there too, and one made in this process is read here.

    Steps per call. In free mode each stage's function runs up to
    `compile(steps_per_execution=N)` steps per call, in a `tf.while_loop`
    (an epoch's remainder as a shorter call), so the client calls each
    stage once per N batches. As Keras does with N, the batch callbacks run
    once per call of the top stage (`on_train_batch_begin` at its first
    step, `on_train_batch_end` at its last, with the logs after it);
    `stage_log` still holds every step. Lock-step mode runs one step per
    call and refuses N > 1.

    Per-stage XLA. `compile(jit_compile=True)` compiles each stage's math
    (its forward and backward pass, its synthesizer's regression, its
    optimizer's update) as `tf.function(jit_compile=True)` functions that
    the stage's function calls under its device, where XLA runs them; the
    queue and dataset ops, which XLA cannot compile, stay outside. The
    model as a whole is not compiled (`evaluate` and `predict` run the plain
    forward pass uncompiled). A layer that says it does not support
    XLA is refused at `compile`; an op XLA cannot compile fails the first
    step of its stage, with a note naming `jit_compile=True`.

    Under the `"mixed_bfloat16"` policy the stages and synthesizers compute
    in bfloat16, as `PipelinedModel`'s do, and activations and targets travel
    in float32. Not supported yet (each raises an error): the
    `"mixed_float16"` policy and loss scaling, `tf.distribute` strategies,
    sample and class weights, `fit` without labels, a dataset made on a
    task other than stage 0's, `steps_per_execution` > 1 with
    `lock_step=True`, `ModelCheckpoint` or `BackupAndRestore` saving
    between batches or with `drain=False` (no state of every stage),
    loading weights while `fit` runs the stages, and optimizers with
    `use_ema=True` or `gradient_accumulation_steps`. The stage
    optimizers' state is saved with the model's own variables and
    restored on load; with the drain (which also drops the targets still in
    flight), a run resumed from an epoch's checkpoint goes on as it would
    have.

    Steps. No stage steps the compiled optimizer; its `iterations` counts
    the top stage's steps for the callbacks that read it (Keras's
    `TensorBoard` for the learning rate, `SyntheticGradientMonitor`): it is
    set to the top stage optimizer's before each batch callback and at
    each epoch's end (in lock-step mode, where every stage counts every
    global step, that is the global steps, the drain's included).

    Learning rates. A callback that sets the compiled optimizer's rate
    (Keras's `LearningRateScheduler` and `ReduceLROnPlateau` set
    `model.optimizer.learning_rate`), or the synthesizer optimizer's,
    reaches their clones at the start of each epoch and after each batch
    callback, before the stages' next calls. A schedule given to `compile`
    is cloned with each optimizer and follows its own `iterations`.

    The first `fit` traces the stage functions (and XLA compiles them); the
    next ones reuse them, with the queues, unless the batches' spec or the
    settings changed, `compile` was called again or a `fit` failed.

    After `fit`, `stage_log` holds, per stage, numpy arrays of the batch ids
    it processed (`"batch"`), the batch id of the target its synthesizer
    regressed at each of those steps (`"target_batch"`, -1 for none) and its
    lead over the stage above (`"lag"`: its batch id minus the number of
    batches the stage above had finished).

    Args:
        network, synthesizers, method: as for `PipelinedModel` (`"dni"` or
            `"cdni"`).
        capacity: items each forward queue holds, >= 1: the staleness bound
            above.
        lock_step: step the stages together (requires `capacity=1`).
        max_target_age: None (targets up to C + 2 batches old), or the
            largest age in batches of a target a synthesizer regresses, 2 to
            C + 1 (see above). Lock-step targets are 2 batches old, so it
            changes nothing there.
        **kwargs: the other arguments of `DecoupledModel` (`sg_loss_weight`,
            `devices`, `name`).

    Example:

    ```python
    model = keras_sg.AsyncPipelinedModel(
        net, synthesizers, method="cdni", devices=devices, capacity=2
    )
    model.compile(keras.optimizers.Adam(1e-3), loss)
    model.fit(x, y, batch_size=64, epochs=2)
    ```
    """

    def __init__(
        self,
        network,
        synthesizers=None,
        method: str = "dni",
        capacity: int = 1,
        lock_step: bool = False,
        max_target_age=None,
        **kwargs,
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
            raise ValueError(
                f"`capacity` must be an integer >= 1. Received: capacity={capacity!r}"
            )
        if capacity < 1:
            raise ValueError(
                "`capacity` (items per forward queue) must be >= 1. "
                f"Received: capacity={capacity}"
            )
        if not isinstance(lock_step, bool):
            raise ValueError(
                f"`lock_step` must be True or False. Received: lock_step={lock_step!r}"
            )
        if lock_step and capacity != 1:
            raise ValueError(
                "lock_step=True steps the stages together, one batch in flight "
                f"per cut, so it needs capacity=1. Received: capacity={capacity}"
            )
        if max_target_age is not None:
            if isinstance(max_target_age, bool) or not isinstance(
                max_target_age, (int, np.integer)
            ):
                raise ValueError(
                    "`max_target_age` must be None or an integer. Received: "
                    f"max_target_age={max_target_age!r}"
                )
            if not 2 <= max_target_age <= capacity + 1:
                raise ValueError(
                    "`max_target_age` must lie in [2, capacity + 1] = "
                    f"[2, {capacity + 1}] (targets are at most capacity + 2 "
                    "batches old without it, and 1 would run one stage at a "
                    f"time). Received: max_target_age={max_target_age} with "
                    f"capacity={capacity}"
                )
            max_target_age = int(max_target_age)
        self.capacity = int(capacity)
        self.lock_step = lock_step
        self.max_target_age = max_target_age
        self.stage_log = None
        # Called in stage k's thread as hook(k, "begin", n) and
        # hook(k, "end", n) around each call of its function, which runs n
        # training steps (the profiler's window, `keras_sg.profiling.Profile`);
        # None: no call.
        self.stage_step_hook = None
        # A plain object: Keras's saving would otherwise walk the optimizers
        # on its own, and only if they exist when it loads.
        self._stage_optimizers = _StageOptimizers()
        self._saved_optimizers = None
        # The runtime of the last `fit` (its queues and traced stage
        # functions), kept for the next while nothing it was made for
        # changes; a plain object, neither tracked nor saved.
        self._kept_runtime = None
        self._fitting = False  # while `fit` runs the stages
        super().__init__(network, synthesizers, method=method, **kwargs)

    # ------------------------------------------------------------- checks

    @property
    def jit_compile(self):
        return keras.Model.jit_compile.fget(self)

    @jit_compile.setter
    def jit_compile(self, value):
        self._discard_runtime()
        if value is True:
            # Each stage's math is compiled on its own (see
            # `_stage_function`), not the model as a whole: Keras's check
            # of the whole model (which PipelinedModel fails) does not apply.
            for part in self.stages + self.synthesizers:
                for layer in part._flatten_layers():
                    if not layer.supports_jit:
                        raise ValueError(
                            "jit_compile=True compiles each stage with XLA, "
                            f"and layer {layer.name!r} of {part.name!r} does "
                            "not support XLA. Compile with jit_compile=False. "
                            f"Received: jit_compile={value!r}"
                        )
            self._jit_compile = True
            return
        keras.Model.jit_compile.fset(self, value)

    # jit_compile=True compiles each stage's training math only: `evaluate`
    # and `predict` run the plain forward pass of the whole model, which XLA
    # would compile into one function on one device (a placed model's
    # variables on other devices could not be read).

    def make_test_function(self, force=False):
        with _uncompiled(self):
            return super().make_test_function(force)

    def make_predict_function(self, force=False):
        with _uncompiled(self):
            return super().make_predict_function(force)

    def _check_can_run(self):
        if not self.compiled:
            raise ValueError("Call `compile()` before `fit()`.")
        if self.lock_step and self.steps_per_execution != 1:
            raise ValueError(
                "lock_step=True steps the stages together, one global step "
                "per stage call, so it runs one step per execution. Compile "
                "with steps_per_execution=1 or use lock_step=False. Received: "
                f"steps_per_execution={self.steps_per_execution}"
            )
        if (
            tf.distribute.has_strategy()
            or getattr(self, "_distribute_strategy", None) is not None
        ):
            strategy = tf.distribute.get_strategy()
            raise ValueError(
                "AsyncPipelinedModel runs its stages in threads of its own and "
                "does not run under a tf.distribute strategy. Received: "
                f"strategy {type(strategy).__name__}"
            )
        # float16 needs a loss scale, and each stage's optimizer would decide
        # alone whether to skip a step: refused. bfloat16 needs none.
        policies = {self.dtype_policy.name}
        for part in self.stages + self.synthesizers:
            policies.update(layer.dtype_policy.name for layer in part._flatten_layers())
        if policies - {"float32", "mixed_bfloat16"} or isinstance(
            self.optimizer, keras.optimizers.LossScaleOptimizer
        ):
            raise ValueError(
                "AsyncPipelinedModel trains under the dtype policies 'float32' "
                "and 'mixed_bfloat16' ('mixed_float16' needs a loss scale, "
                "which the stages' optimizers would not share). Received: "
                f"dtype policies {sorted(policies)}, optimizer "
                f"{type(self.optimizer).__name__}"
            )
        for optimizer in (self.optimizer, self.synthesizer_optimizer):
            if optimizer is not None and optimizer.use_ema:
                # Each stage's clone would keep the average of its own
                # variables, but neither Keras's SwapEMAWeights nor the end
                # of `fit` (which puts the average in the weights) reads it.
                raise ValueError(
                    "AsyncPipelinedModel does not support optimizers with "
                    "use_ema=True yet: the stage optimizers' moving averages "
                    "would never reach the weights. Received: "
                    f"{type(optimizer).__name__}(use_ema=True)"
                )
            if optimizer is not None and optimizer.gradient_accumulation_steps:
                # Keras counts `iterations` per accumulated update then,
                # which the stages' step counting (idle steps included)
                # does not follow.
                raise ValueError(
                    "AsyncPipelinedModel does not support "
                    "gradient_accumulation_steps yet (each stage's optimizer "
                    "counts its own steps). Received: "
                    f"{type(optimizer).__name__}(gradient_accumulation_steps="
                    f"{optimizer.gradient_accumulation_steps})"
                )

    def train_step(self, data):
        raise ValueError(
            "AsyncPipelinedModel trains through `fit`, which runs every stage "
            "in its own loop; it has no single train step (use PipelinedModel "
            "for that). Received: a call to train_step"
        )

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_data=None,
        shuffle=True,
        initial_epoch=0,
        steps_per_epoch=None,
        sample_weight=None,
        drain=True,
        **kwargs,
    ):
        """Trains the model, every stage in its own thread.

        Takes the arguments of `keras.Model.fit` listed in its signature;
        `x` is a pair of arrays with `y`, or a `tf.data.Dataset` of
        `(inputs, labels)` batches (repeated as needed). `drain=False` keeps
        batches in flight across epochs, as `PipelinedModel` does (the
        weights at an epoch's end are then not one snapshot, and the batches
        still in flight when `fit` returns are dropped).

        Returns:
            A `keras.callbacks.History`.
        """
        if kwargs:
            raise ValueError(
                "AsyncPipelinedModel.fit does not take these arguments yet. "
                f"Received: {sorted(kwargs)}"
            )
        if sample_weight is not None:
            raise ValueError(
                "AsyncPipelinedModel takes no sample weights. "
                "Received: sample_weight=weights"
            )
        self._check_can_run()
        if self.method == "cdni":
            check_label_range(y, self.synthesizers[0].num_classes)
        dataset, steps_per_epoch = self._dataset(
            x, y, batch_size, shuffle, steps_per_epoch
        )
        epochs = int(epochs)
        verbose = 1 if verbose == "auto" else verbose
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = keras.callbacks.CallbackList(
                callbacks,
                add_history=True,
                add_progbar=verbose != 0,
                verbose=verbose,
                epochs=epochs,
                steps=steps_per_epoch,
                model=self,
            )
        _check_saving_callbacks(callbacks, drain)
        self.stop_training = False
        # Before the runtime starts: a callback may load weights here
        # (Keras's BackupAndRestore), which remakes the stage optimizers
        # from the file, and set where training resumes.
        callbacks.on_train_begin()
        initial_epoch = self._initial_epoch or initial_epoch
        with self._reporting_lost_workers(), reporting_label_errors():
            runtime = self._runtime(dataset)
            self._fitting = True
            trained = False
            try:
                self._train(
                    runtime,
                    callbacks,
                    epochs,
                    initial_epoch,
                    steps_per_epoch,
                    validation_data,
                    drain,
                )
                trained = True
            except _StageFailed:
                pass  # the stage's own error is raised below, after shutdown
            finally:
                self._fitting = False
                # A runtime that trained to the end is kept for the next
                # `fit`, its threads ended and its queues emptied; after an
                # error (or an interrupt) its queues are closed and it goes.
                if not (trained and runtime.stop()):
                    self._kept_runtime = None
                    runtime.shutdown()
                self.stage_log = runtime.log_arrays()
            runtime.raise_error()
        return self.history

    def _runtime(self, dataset):
        """The runtime for this `fit`, started on `dataset`: the last one's if
        it was made for the same batches and settings, else a new one (which
        traces the stage functions, and compiles them anew with XLA)."""
        key = (
            dataset.element_spec,
            self.capacity,
            self.lock_step,
            self.max_target_age,
            self.steps_per_execution,
            self.jit_compile,
        )
        optimizers = self.stage_optimizers()
        kept = self._kept_runtime
        if kept is not None and (kept.key != key or kept.optimizers is not optimizers):
            self._discard_runtime()
            kept = None
        # An iterator lives where its dataset was made (TensorFlow colocates
        # them), whatever the device scope, so it is made there. On another
        # task, eager ops run asynchronously: the scope waits until the
        # iterator is initialized, or stage 0's first call (from its own
        # thread) could read it before ("the iterator has not been
        # initialized").
        with tf.device(_made_on(dataset)), tf.experimental.async_scope():
            iterator = iter(dataset)
        if kept is None:
            kept = _Runtime(self, dataset.element_spec, iterator)
            kept.key = key
        self._kept_runtime = kept
        kept.start(iterator)
        return kept

    def _discard_runtime(self):
        """Drops the kept runtime, closing its queues."""
        kept = getattr(self, "_kept_runtime", None)
        self._kept_runtime = None
        if kept is not None:
            kept.shutdown()

    def compile(self, *args, **kwargs):
        # New optimizers, loss or metrics: the stage functions use them.
        self._discard_runtime()
        super().compile(*args, **kwargs)

    def _train(
        self,
        runtime,
        callbacks,
        epochs,
        initial_epoch,
        steps_per_epoch,
        validation_data,
        drain,
    ):
        logs = {}
        for epoch in range(initial_epoch, epochs):
            self.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            runtime.follow_rates()  # a callback may have set the rate
            first = epoch == initial_epoch
            if self.lock_step:
                runtime.lock_step_epoch(steps_per_epoch, drain, first, callbacks)
            else:
                runtime.free_epoch(steps_per_epoch, drain, first, callbacks)
            if drain:
                runtime.drop_targets()
            # Every stage idles now: the top stage's count is final.
            self.optimizer.iterations.assign(runtime.optimizers[-1].iterations)
            logs = {k: float(v) for k, v in self.get_metrics_result().items()}
            if validation_data is not None:
                val = self.evaluate(
                    *_unpack(validation_data), verbose=0, return_dict=True
                )
                logs.update({f"val_{k}": v for k, v in val.items()})
            callbacks.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        callbacks.on_train_end(logs)

    def _dataset(self, x, y, batch_size, shuffle, steps_per_epoch):
        """The training data as a repeated dataset of `(inputs, labels)` batches."""
        input_device = self._input_device()
        if isinstance(x, tf.data.Dataset):
            if y is not None:
                raise ValueError(
                    "Give the labels inside the dataset, as (inputs, labels). "
                    "Received: a dataset and y"
                )
            dataset = x
        else:
            if y is None:
                raise ValueError(
                    "AsyncPipelinedModel needs labels: the top stage's loss "
                    "and the cDNI synthesizers read them. Received: y=None"
                )
            # Made on stage 0's task, where stage 0 then reads it: on
            # TensorFlow servers no batch goes through this process.
            with tf.device(input_device):
                dataset = tf.data.Dataset.from_tensor_slices((x, y))
                if shuffle:
                    dataset = dataset.shuffle(len(x), reshuffle_each_iteration=True)
                dataset = dataset.batch(batch_size or 32)
        # A dataset's ops are made where it lives: made in this process on a
        # dataset of another task, they fail ("could not parse rpc response").
        where = _made_on(dataset)
        if _task(where) not in (None, _task(input_device)):
            # Stage 0 would read every batch from a third task.
            places = "in this process"
            if input_device:
                places += f" or on stage 0's task ({input_device!r})"
            raise ValueError(
                "AsyncPipelinedModel reads its batches from a dataset made "
                f"{places}. Received: a dataset on {where!r}"
            )
        spec = dataset.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            count = len(spec) if isinstance(spec, tuple) else 1
            raise ValueError(
                "AsyncPipelinedModel expects batches of (inputs, labels), "
                "without sample weights. Received: dataset elements of "
                f"{count} part(s)"
            )
        if steps_per_epoch is None:
            with tf.device(where):
                cardinality = int(dataset.cardinality())
            if cardinality < 1:
                raise ValueError(
                    "The dataset's length is unknown or infinite: pass "
                    f"steps_per_epoch. Received: cardinality={cardinality}"
                )
            steps_per_epoch = cardinality
        steps_per_epoch = int(steps_per_epoch)
        if steps_per_epoch < 1:
            raise ValueError(
                f"steps_per_epoch must be >= 1. Received: {steps_per_epoch}"
            )
        self.build_for_spec(spec)
        with tf.device(where):
            return dataset.repeat(), steps_per_epoch

    def _input_device(self):
        """Where arrays given to `fit` become a dataset: the CPU of stage 0's
        task when that is another task (a TensorFlow server), else None
        (this process, whatever its logical devices)."""
        if not self.devices or _task(self.devices[0]) is None:
            return None
        spec = tf.DeviceSpec.from_string(self.devices[0])
        return spec.replace(device_type="CPU", device_index=0).to_string()

    def build_for_spec(self, spec):
        x_spec, _ = spec
        if not self.built or self._cut_shapes is None:
            self.build(tuple(x_spec.shape))
        # The compiled optimizers as `load_model` builds them (with a
        # synthesizer optimizer, each on its own variables; Keras's build
        # would put every variable in the first), so that a saved file's
        # state (`iterations`, the learning rate) loads back into them.
        self._build_optimizer()
        self._symbolic_build(data_batch=spec)

    # --------------------------------------------------------- optimizers

    def stage_optimizers(self) -> list:
        """One optimizer per stage, cloned from the compiled one, built on
        that stage's variables and (without a synthesizer optimizer) the
        synthesizer's at its output, on its device. Made on first use and
        kept (a new `compile` makes new ones)."""
        made = self._stage_optimizers
        if (
            made.optimizers is not None
            and made.source is self.optimizer
            and made.synthesizer_source is self.synthesizer_optimizer
        ):
            return made.optimizers
        own = self.synthesizer_optimizer is not None
        optimizers, synthesizer_optimizers = [], []
        for k in range(len(self.stages)):
            optimizers.append(
                self._clone_optimizer(
                    self.optimizer, k, self.stage_variables(k, synthesizer=not own)
                )
            )
            if own and k < len(self.synthesizers):
                synth = self.synthesizers[k].trainable_variables
                synthesizer_optimizers.append(
                    self._clone_optimizer(self.synthesizer_optimizer, k, synth)
                )
        made.source, made.optimizers = self.optimizer, optimizers
        made.synthesizer_source = self.synthesizer_optimizer
        made.synthesizer_optimizers = synthesizer_optimizers if own else None
        saved, self._saved_optimizers = self._saved_optimizers, None
        if saved is not None:
            self._restore_optimizers(saved)
        return optimizers

    def synthesizer_optimizers(self):
        """With `compile(synthesizer_optimizer=...)`, one clone of it per cut,
        built on that synthesizer's variables on stage k's device; else None."""
        self.stage_optimizers()
        return self._stage_optimizers.synthesizer_optimizers

    def _clone_optimizer(self, source, k, variables):
        # Made on the stage's device: Keras makes `iterations` and the
        # learning rate's variable in the constructor (an XLA stage can
        # only read variables on its own device).
        with tf.device(self.devices[k] if self.devices else None):
            optimizer = type(source).from_config(source.get_config())
        if self.devices is not None:
            place_optimizer(optimizer)
        with self._on(k):
            optimizer.build(variables)
        return optimizer

    # The stage optimizers' state (slots and `iterations`) is saved with the
    # model's own variables, under keys `stage_<k>_optimizer_<i>` (and the
    # synthesizer optimizers' under `stage_<k>_synthesizer_optimizer_<i>`),
    # and put back when the optimizers are made (on load, or at the next
    # `fit`).

    def _optimizer_keys(self):
        """(key prefix, optimizer) of every stage and synthesizer optimizer."""
        made = self._stage_optimizers
        out = [(f"stage_{k}_optimizer", o) for k, o in enumerate(made.optimizers)]
        for k, o in enumerate(made.synthesizer_optimizers or []):
            out.append((f"stage_{k}_synthesizer_optimizer", o))
        return out

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self._stage_optimizers.optimizers is None:
            return
        for prefix, optimizer in self._optimizer_keys():
            for i, v in enumerate(optimizer.variables):
                store[f"{prefix}_{i}"] = v

    def load_own_variables(self, store):
        if self._fitting:
            raise ValueError(
                "AsyncPipelinedModel cannot load weights while `fit` trains "
                "it: its stages are running. Load them before `fit` (in "
                "`on_train_begin`, as BackupAndRestore does) or after it. "
                "Received: a load during fit"
            )
        keys = list(store.keys())
        own = {key: store[key] for key in keys if not key.startswith("stage_")}
        super().load_own_variables(own)
        saved = {
            key: np.asarray(store[key]) for key in keys if key.startswith("stage_")
        }
        self._saved_optimizers = saved or None
        self._discard_runtime()
        self._stage_optimizers = _StageOptimizers()
        if saved and self.compiled:
            self.stage_optimizers()

    def _restore_optimizers(self, saved):
        keys = self._optimizer_keys()
        want = {f"{prefix}_{i}" for prefix, o in keys for i in range(len(o.variables))}
        if set(saved) != want:
            raise ValueError(
                f"The saved state of the stage optimizers has {len(saved)} "
                f"variables; this model's optimizers have {len(want)}. Received: "
                "a file saved from a different model or optimizer (or "
                "compiled with or without a synthesizer optimizer)"
            )
        for prefix, optimizer in keys:
            for i, v in enumerate(optimizer.variables):
                v.assign(saved[f"{prefix}_{i}"])

    def stage_variables(self, k, synthesizer=True) -> list:
        """Stage k's trainable variables, and (by default) the synthesizer's
        at its output."""
        parts = [self.stages[k]]
        if synthesizer and k < len(self.synthesizers):
            parts.append(self.synthesizers[k])
        seen, variables = set(), []
        for part in parts:
            for v in part.trainable_variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
        return variables

    # ---------------------------------------------------------- stage work

    def _stage_function(self, k, runtime):
        """Stage k's steps, as a `tf.function` of `count` and `n_back` (and,
        for stage 0, first the iterator of the `fit`'s batches).

        One call runs `count` steps in a `tf.while_loop` (the runtime's
        free mode passes up to `steps_per_execution`, lock-step mode 1).
        `n_back` is how many targets each step takes from the backward queue
        (-1: all that have arrived). Returns each step's batch id, target
        batch id and lag, stacked, and for the top stage the logs after the
        last step.
        """
        last = len(self.stages) - 1
        optimizer = runtime.optimizers[k]
        synth_optimizer = None
        if runtime.synthesizer_optimizers is not None and k < last:
            synth_optimizer = runtime.synthesizer_optimizers[k]
        # The stage's math: forward and backward, the synthesizer's
        # regression, the optimizer's update. With jit_compile=True each is
        # an XLA function, called under the stage's device (the whole
        # function then runs there); the queue ops, which XLA cannot
        # compile, stay outside.
        stage_step, top_step = self._stage_step, self._top_step
        synthesizer_step, apply = self._synthesizer_step, _apply
        if self.jit_compile is True:
            stage_step, top_step, synthesizer_step = (
                tf.function(f, jit_compile=True, autograph=False)
                for f in (stage_step, top_step, synthesizer_step)
            )
            apply = _compiled_apply()

        def step(n_back, iterator):
            with self._on(k):
                # The loss scale (none). Made here, on the stage's device: a
                # constant made outside the function would be captured from
                # this process and sent to the stage's server at every step.
                one = tf.constant(1.0)
                # Forward input: stage 0 reads the dataset, the others the
                # queue below them.
                if k == 0:
                    x, labels = next(iterator)
                    if self.method == "cdni":
                        labels = self._context(labels)
                    batch = runtime.counter.read_value()
                    runtime.counter.assign_add(1)
                    inputs = x
                else:
                    h, labels, batch = runtime.forward[k - 1].dequeue()
                    inputs = tf.reshape(h, (-1, *self._cut_shapes[k - 1][1:]))
                    labels = runtime.shape_labels(labels)
                # The staleness bound counts on this order: input, then the
                # stage above's progress and the targets that have arrived,
                # then the output. TensorFlow orders stateful ops only per
                # resource, so the order is made explicit.
                lag = tf.constant(0, tf.int64)
                target_batch = tf.constant(-1, tf.int64)
                if k < last:
                    with tf.control_dependencies([batch]):
                        lag = batch - runtime.done[k + 1].read_value()
                    with tf.control_dependencies([lag]):
                        # The synthesizer's target: the newest that has arrived.
                        sg_in, sg_labels, sg_target, target_batch, valid = (
                            runtime.take_newest(k, n_back)
                        )

                # Stage work, as PipelinedModel's.
                sent = []
                if k < last:
                    h, target, grads = stage_step(
                        k, inputs, labels, 1.0, one, tf.constant(True)
                    )
                    with tf.control_dependencies([target_batch]):
                        sent.append(runtime.forward[k].enqueue([h, labels, batch]))
                        sent.append(runtime.keep(k, h, labels, batch))
                    synth_grads, sg_loss = synthesizer_step(
                        k, sg_in, sg_labels, sg_target, 1.0, valid
                    )
                else:
                    _forget_losses(self.stages[:last] + self.synthesizers)
                    loss, y_pred, target, grads = top_step(
                        inputs, labels, one, tf.constant(True)
                    )
                if k > 0:
                    sent.append(runtime.send_back(k - 1, target, batch))

                # Update: the stage, and the synthesizer if it regressed.
                stage_vars = list(self.stages[k].trainable_variables)
                if k == last:
                    applied = apply(optimizer, grads, stage_vars)
                else:
                    synth_vars = list(self.synthesizers[k].trainable_variables)
                    if synth_optimizer is not None:
                        # Two optimizers; the synthesizer's counts a step
                        # without a target.
                        applied = tf.logical_and(
                            apply(optimizer, grads, stage_vars),
                            tf.cond(
                                valid,
                                lambda: apply(synth_optimizer, synth_grads, synth_vars),
                                lambda: _count_step(synth_optimizer),
                            ),
                        )
                    else:
                        applied = tf.cond(
                            valid,
                            lambda: apply(
                                optimizer,
                                grads + synth_grads,
                                stage_vars + synth_vars,
                            ),
                            lambda: apply(optimizer, grads, stage_vars),
                        )
                    weight = tf.cast(valid, tf.float32)
                    self.sg_loss_trackers[k].update_state(
                        tf.where(valid, sg_loss, 0.0), sample_weight=weight
                    )
                # Finished: what it sent is in the queues, its update made.
                with tf.control_dependencies([*sent, applied]):
                    runtime.done[k].assign_add(1)
                out = {"batch": batch, "target_batch": target_batch, "lag": lag}
                if k == last:
                    size = tf.shape(labels)[0]
                    self._loss_tracker.update_state(loss, sample_weight=size)
                    metrics = self.compute_metrics(inputs, labels, y_pred)
                    out["logs"] = metrics
                return out

        def steps(count, n_back, iterator=None):
            # Iterations run one after the other: every output of an
            # iteration waits for all of its stateful ops (tf.function's
            # automatic control dependencies), so a step starts only once
            # the previous one has sent its outputs and made its update.
            # The loop, and every tensor that enters it, on the stage's
            # device. A while loop runs its control on every device that
            # holds a node of it or an input to it: with `count` or `n_back`
            # (arguments, made in this process) entering from here, or a
            # constant captured from here, the client joined every
            # iteration on two servers, a round trip per step (12% of a
            # core in this process; the servers 92% busy, 97% without it).
            with tf.device(self.devices[k] if self.devices else None):
                count, n_back = tf.identity(count), tf.identity(n_back)
                records = tuple(tf.TensorArray(tf.int64, size=count) for _ in _RECORDS)

                def body(i, records):
                    out = step(n_back, iterator)
                    written = tuple(
                        r.write(i, out[name])
                        for r, name in zip(records, _RECORDS, strict=True)
                    )
                    return i + 1, written

                _, records = tf.while_loop(
                    lambda i, _: i < count,
                    body,
                    (tf.constant(0), records),
                    parallel_iterations=1,
                )
                out = {
                    name: r.stack() for name, r in zip(_RECORDS, records, strict=True)
                }
                if k == last:
                    # What the last step's `compute_metrics` returned (it
                    # returns `get_metrics_result()`), as Keras logs the last
                    # step of a call with `steps_per_execution`.
                    out["logs"] = self.get_metrics_result()
                return out

        # No AutoGraph: every loop and branch here is written with
        # tf.while_loop and tf.cond, and converting this code (Keras's own is
        # never converted) took most of the tracing time, seconds at the
        # first fit of a process. Stage 0 takes the iterator as an argument,
        # not as a capture, so that the next `fit` can call the same
        # function on its own batches.
        if k == 0:

            def steps_on(iterator, count, n_back):
                return steps(count, n_back, iterator)

            return tf.function(steps_on, autograph=False)
        return tf.function(steps, autograph=False)

    def _idle_function(self, k, runtime):
        """A lock-step stage without input: its optimizers count the step."""
        optimizers = [runtime.optimizers[k]]
        if runtime.synthesizer_optimizers is not None and k < len(self.synthesizers):
            optimizers.append(runtime.synthesizer_optimizers[k])

        def idle():
            with self._on(k):
                for optimizer in optimizers:
                    optimizer.iterations.assign_add(1)
            return tf.constant(0)

        return tf.function(idle, autograph=False)

    # -------------------------------------------------------- serializing

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "capacity": self.capacity,
                "lock_step": self.lock_step,
                "max_target_age": self.max_target_age,
            }
        )
        return config


# What a stage call records for each of its steps (`stage_log`).
_RECORDS = ("batch", "target_batch", "lag")


def _check_saving_callbacks(callbacks, drain):
    """Refuses callbacks that would save a state no stage was in: one saved
    between an epoch's batches (the stages are at different batches), or
    at an epoch's end without the drain (batches still in flight)."""
    for callback in callbacks.callbacks:
        if not isinstance(
            callback, keras.callbacks.ModelCheckpoint | keras.callbacks.BackupAndRestore
        ):
            continue
        name = type(callback).__name__
        if callback.save_freq not in ("epoch", False):
            raise ValueError(
                f"AsyncPipelinedModel saves one consistent state only at an "
                f"epoch's end, after the drain: between batches its stages are "
                f"at different batches. Use {name}(save_freq='epoch'). "
                f"Received: {name}(save_freq={callback.save_freq!r})"
            )
        if not drain:
            raise ValueError(
                "fit(drain=False) keeps batches in flight across epochs, so "
                f"an epoch's checkpoint would not hold one state of every "
                f"stage. Use the default drain=True with {name}. Received: "
                "drain=False"
            )


def _made_on(dataset):
    """The device a dataset lives on (None if it has none)."""
    return getattr(dataset._variant_tensor, "device", None) or None


def _task(device):
    """`(job, task)` of a device on another task, None for this process."""
    if not device:
        return None
    spec = tf.DeviceSpec.from_string(device)
    if spec.job in (None, "localhost"):
        return None
    return spec.job, spec.task or 0


def _apply(optimizer, grads, variables):
    optimizer.apply(grads, variables)
    return tf.constant(True)


def _count_step(optimizer):
    """A step without an update: only `iterations` moves, the slots stay, as
    `PipelinedModel`'s optimizer counts a step that gives it no gradient."""
    with tf.control_dependencies([optimizer.iterations.assign_add(1)]):
        return tf.constant(True)


@contextlib.contextmanager
def _uncompiled(model):
    """The model's functions made inside are not compiled by XLA."""
    jit, model._jit_compile = model._jit_compile, False
    try:
        yield
    finally:
        model._jit_compile = jit


def _compiled_apply():
    """`_apply` as XLA functions of the gradients, one per variable list
    (Keras variables cannot be arguments of a `tf.function`)."""
    compiled = {}

    def apply(optimizer, grads, variables):
        key = (id(optimizer), *(id(v) for v in variables))
        if key not in compiled:
            compiled[key] = tf.function(
                lambda g: _apply(optimizer, g, variables),
                jit_compile=True,
                autograph=False,
            )
        return compiled[key](grads)

    return apply


def _metrics_on_stages(model):
    """Puts each metric on the device of the stage that updates it: the loss
    and the compiled metrics on the top stage's, each synthesizer's loss on
    its stage's.

    Keras makes them on the default device (for a model on TensorFlow
    servers, the client's), where every step of both stages' loops would
    wait for that device's answer (docs/async.md, "Metrics where they are
    updated"). `evaluate` traces its function again if it had been traced
    on the old variables.
    """
    devices = model.devices
    if not devices:
        return
    last = len(model.stages) - 1
    placed = [(model._loss_tracker, devices[last])]
    if model._compile_metrics is not None:
        placed.append((model._compile_metrics, devices[last]))
    placed += list(zip(model.sg_loss_trackers, devices, strict=False))
    moved = [place_metric(metric, device) for metric, device in placed]
    if any(moved):
        model.test_function = None


def _unpack(data):
    if isinstance(data, tf.data.Dataset):
        return (data,)
    return tuple(data)


class _StageOptimizers:
    """The stage optimizers and the compiled optimizer they were cloned from."""

    def __init__(self):
        self.source = None
        self.optimizers = None
        self.synthesizer_source = None
        self.synthesizer_optimizers = None


class _StageFailed(Exception):
    """Carries the first error of a stage thread to the main thread."""


class _Stopping:
    """How a free-running epoch ends early, when a callback sets
    `model.stop_training` (`EarlyStopping`, `TerminateOnNaN`,
    `keras_sg.callbacks.StopOnDivergence`).

    Each stage asks `admit` before each call of its function. The first
    stage to ask after the flag is set fixes how many batches stage 0 feeds
    in this epoch: those it has fed or begun to feed, or more if a call
    already begun above it will take more (a call is never cut short, so
    none waits for a batch that will not come). Every stage then ends its
    share where those batches, and those it carried over from the last
    epoch (`carried[k]`, without the drain), run out: every batch fed is
    trained by every stage, as in a drained epoch, and the queues are left
    as the end of `fit` expects. Keras stops at the batch whose callback
    set the flag; here the top stage trains the batches that were already
    on their way up too (about `capacity + 1` calls of
    `steps_per_execution` batches).
    """

    def __init__(self, model, carried):
        self.model = model
        self.carried = carried
        self.lock = threading.Lock()
        # Batches of this epoch each stage's calls have asked for so far.
        self.asked = [0] * len(carried)
        # Stage 0's batches in this epoch, once the stop is seen.
        self.fed = None

    def admit(self, k, n):
        """How many of its next n steps stage k runs now: n, fewer, or 0 to
        end its share of the epoch."""
        with self.lock:
            if self.fed is None and self.model.stop_training:
                pairs = zip(self.asked, self.carried, strict=True)
                self.fed = max(asked - carried for asked, carried in pairs)
            if self.fed is not None:
                n = max(min(n, self.fed + self.carried[k] - self.asked[k]), 0)
            self.asked[k] += n
            return n


class _Runtime:
    """The queues and stage functions of `fit`, and the threads of one call.

    A plain object: Keras neither tracks nor saves it. The model keeps it
    from one `fit` to the next while the batches' spec and its settings stay
    the same (`AsyncPipelinedModel._runtime`): each `fit` starts it on its
    own iterator (`start`) and stops it at the end (`stop`: the threads end,
    the queues are emptied). After an error it is shut down (its queues
    closed: a closed queue cannot be reopened) and dropped.
    """

    def __init__(self, model, element_spec, iterator):
        self.model = model
        self.key = None
        devices = model.devices
        last = len(model.stages) - 1
        self.num_stages = last + 1
        x_spec, y_spec = element_spec
        self.label_spec = y_spec
        capacity = model.capacity
        # Forward queue k feeds stage k + 1, on its device; backward queue k
        # feeds the synthesizer at cut k, on stage k's device, and kept queue
        # k holds what stage k sent until its target comes back. A kept item
        # is either on its way up (at most C + 1), or its target is in the
        # backward queue (at most C + 2), or it is this step's.
        self.back_capacity = capacity + 2
        self.kept_capacity = 2 * capacity + 4
        self.forward, self.backward, self.kept, self.done = [], [], [], []
        for k in range(self.num_stages):
            with tf.device(devices[k] if devices else None):
                self.done.append(tf.Variable(0, dtype=tf.int64, trainable=False))
                if k < last:
                    self.backward.append(
                        tf.queue.FIFOQueue(
                            self.back_capacity,
                            [tf.float32, tf.int64],
                            name=f"targets_{k}",
                        )
                    )
                    self.kept.append(
                        tf.queue.FIFOQueue(
                            self.kept_capacity,
                            [tf.float32, y_spec.dtype, tf.int64],
                            name=f"kept_{k}",
                        )
                    )
                if k > 0:
                    self.forward.append(
                        tf.queue.FIFOQueue(
                            capacity,
                            [tf.float32, y_spec.dtype, tf.int64],
                            name=f"activations_{k - 1}",
                        )
                    )
                if k == 0:
                    self.counter = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.optimizers = model.stage_optimizers()
        self.synthesizer_optimizers = model.synthesizer_optimizers()
        _metrics_on_stages(model)
        # Trace every function here, one after the other: Keras's layers
        # keep Python state while they trace.
        int_spec = tf.TensorSpec([], tf.int32)
        self.steps = []
        for k in range(self.num_stages):
            fn = model._stage_function(k, self)
            args = (iterator,) if k == 0 else ()
            self.steps.append(fn.get_concrete_function(*args, int_spec, int_spec))
        # Steps per stage call: Keras's `steps_per_execution` when free
        # running; lock-step mode calls each stage one step at a time.
        self.per_call = 1 if model.lock_step else model.steps_per_execution
        self.stopping = None  # a free epoch's `_Stopping`, while it runs
        self.rates_given = {}  # the rate last given to each optimizer's clones
        self.idles = []
        if model.lock_step:
            for k in range(self.num_stages):
                self.idles.append(model._idle_function(k, self).get_concrete_function())
        self.threads = []

    def start(self, iterator):
        """Starts a `fit`: its batches, fresh batch ids and logs, the threads."""
        self.iterator = iterator
        # Batch ids count from 0 in every fit, and so does each stage's
        # progress (the lag it logs).
        self.counter.assign(0)
        for done in self.done:
            done.assign(0)
        self.log = [
            {"batch": [], "target_batch": [], "lag": []} for _ in range(self.num_stages)
        ]
        self.events = queue.Queue()
        self.inboxes = [queue.Queue() for _ in range(self.num_stages)]
        self.error = None
        self.threads = [
            threading.Thread(
                target=self._loop, args=(k,), name=f"keras_sg-stage-{k}", daemon=True
            )
            for k in range(self.num_stages)
        ]
        for thread in self.threads:
            thread.start()
        # Batches each stage finished, and targets taken at each cut, in this
        # fit (the schedule of lock-step mode is computed from them).
        self.finished = [0] * self.num_stages
        self.taken = [0] * (self.num_stages - 1)

    def follow_rates(self):
        """Gives the stage and synthesizer optimizers the compiled ones'
        learning rate, if a callback has set it (Keras's
        `LearningRateScheduler` and `ReduceLROnPlateau` set
        `model.optimizer.learning_rate`, which no stage reads). Only a rate
        held in a variable is followed; a schedule is cloned with each
        optimizer and runs on its own `iterations`."""
        pairs = [(self.model.optimizer, self.optimizers)]
        if self.synthesizer_optimizers:
            pairs.append(
                (self.model.synthesizer_optimizer, self.synthesizer_optimizers)
            )
        for i, (source, clones) in enumerate(pairs):
            if not isinstance(source._learning_rate, keras.Variable):
                continue
            # Read here, in this process; the clones (maybe on other
            # tasks) are written only when it changed.
            rate = float(source._learning_rate.numpy())
            if self.rates_given.get(i) != rate:
                for clone in clones:
                    clone._learning_rate.assign(rate)
                self.rates_given[i] = rate

    def stop(self):
        """Ends a `fit` that trained to the end: the threads end and every
        queue is emptied (batches still in flight without the drain are
        dropped), so that the next `fit` starts from nothing in flight.

        Returns whether it can be kept: False if a thread did not end in
        time or a queue could not be emptied (its worker gone, say); the
        caller then shuts it down, as `shutdown` ignores errors of closing.
        """
        if self._end_threads():
            return False
        try:
            for q in self.forward + self.backward + self.kept:
                for _ in range(int(q.size())):
                    q.dequeue()
        except tf.errors.OpError:
            return False
        return True

    # ------------------------------------------------------ in the graph

    def shape_labels(self, labels):
        shape = self.label_spec.shape
        if shape.rank is not None and shape[1:].is_fully_defined():
            return tf.reshape(labels, (-1, *shape[1:]))
        return labels

    def take_newest(self, k, n_back):
        """Takes `n_back` targets (-1: all present) from backward queue k,
        each with the activation that stage k kept for it.

        Returns the newest (input, labels, target, batch id) and whether
        there was one; the older ones are dropped. With the model's
        `max_target_age` A, it first waits (a blocking dequeue) until at
        most A - 1 of the batches this stage sent are still without their
        target: the target of batch s - A, at batch s, has arrived.
        """
        q, kept = self.backward[k], self.kept[k]
        count = tf.where(n_back < 0, q.size(), n_back)
        age = self.model.max_target_age
        if age is not None:
            # Read before this step keeps its own activation (the caller
            # orders `keep` after the take).
            count = tf.maximum(count, kept.size() - (age - 1))

        def drop(i):
            with tf.control_dependencies([q.dequeue()[1], kept.dequeue()[2]]):
                return (i + 1,)

        (dropped,) = tf.while_loop(lambda i: i < count - 1, drop, (tf.constant(0),))
        cut = self.model._cut_shapes[k]
        label_spec = self.label_spec

        def take():
            with tf.control_dependencies([dropped]):
                g, batch = q.dequeue()
                a, y, kept_batch = kept.dequeue()
            # Targets and kept activations both travel in batch order; a
            # mismatch would regress one batch's target on another's input.
            check = tf.debugging.assert_equal(
                kept_batch,
                batch,
                message=(
                    f"The target taken at cut {k} is not that of the "
                    "activation kept for it"
                ),
            )
            with tf.control_dependencies([check]):
                return tf.identity(a), y, g, batch

        def none():
            empty = tf.zeros((0, *cut[1:]), tf.float32)
            y_shape = [0] + [d or 0 for d in label_spec.shape[1:]]
            y = tf.zeros(y_shape, label_spec.dtype)
            return empty, y, empty, tf.constant(-1, tf.int64)

        valid = count > 0
        a, y, g, batch = tf.cond(valid, take, none)
        a = tf.reshape(a, (-1, *cut[1:]))
        g = tf.reshape(g, (-1, *cut[1:]))
        return a, self.shape_labels(y), g, batch, valid

    def send_back(self, k, target, batch):
        """Sends stage k + 1's target, and its batch id, to the synthesizer
        at cut k (stage k kept the activation and labels).

        The queue has room by the staleness bound; if it had none, waiting
        could deadlock, so the step fails instead.
        """
        q = self.backward[k]
        devices = self.model.devices
        # The check runs beside the queue, on stage k's device: on stage
        # k + 1's, the size would travel to it and the check's go-ahead
        # back before the enqueue, a second round trip every step.
        with tf.device(devices[k] if devices else None):
            # Read after this step's input arrived (the target depends on
            # it), not early, when the queue may still hold what the stage
            # below has not taken yet.
            with tf.control_dependencies([target]):
                size = q.size()
            check = tf.debugging.assert_less(
                size,
                self.back_capacity,
                message=(
                    f"The target queue at cut {k} is full ({self.back_capacity} "
                    "items): the staleness bound is broken"
                ),
            )
            with tf.control_dependencies([check]):
                return q.enqueue([target, batch])

    def keep(self, k, h, labels, batch):
        """Stage k keeps what it sent up, until the target for it comes back.

        Only stage k takes from this queue, so a full one would block it for
        ever: by the bound above it never fills, and if it did, the step
        fails instead.
        """
        q = self.kept[k]
        check = tf.debugging.assert_less(
            q.size(),
            self.kept_capacity,
            message=(
                f"The queue of activations kept at cut {k} is full "
                f"({self.kept_capacity} items): the staleness bound is broken"
            ),
        )
        with tf.control_dependencies([check]):
            return q.enqueue([h, labels, batch])

    # ------------------------------------------------------- the threads

    def _loop(self, k):
        last = self.num_stages - 1
        try:
            while True:
                order = self.inboxes[k].get()
                if order is None:
                    return
                kind, count, n_back = order
                while count > 0:
                    if kind == "idle":
                        self.idles[k]()
                        count -= 1
                        continue
                    n = min(count, self.per_call)
                    if self.stopping is not None:
                        n = self.stopping.admit(k, n)
                        if n == 0:
                            break  # fit was told to stop (stop_training)
                    count -= n
                    hook = self.model.stage_step_hook
                    if hook is not None:
                        hook(k, "begin", n)
                    args = (self.iterator,) if k == 0 else ()
                    out = self.steps[k](
                        *args, tf.constant(n, tf.int32), tf.constant(n_back, tf.int32)
                    )
                    if hook is not None:
                        hook(k, "end", n)
                    for name in _RECORDS:
                        self.log[k][name].extend(out[name].numpy().tolist())
                    if k == last:
                        logs = {m: float(v) for m, v in out["logs"].items()}
                        # Read in this thread, the only one that steps it.
                        step = int(self.optimizers[last].iterations.numpy())
                        self.events.put(("log", n, logs, step))
                self.events.put(("done", k))
        except Exception as error:  # noqa: BLE001 - handed to the main thread
            self.events.put(("error", k, error))

    def _wait(self, count, callbacks, state):
        """Waits for `count` stage orders to finish; calls the batch callbacks."""
        while count:
            event = self.events.get()
            if event[0] == "done":
                count -= 1
            elif event[0] == "log":
                # One call of the top stage, as Keras with
                # `steps_per_execution`: begin at its first step, end at
                # its last, with the logs after the last.
                _, n, logs, step = event
                # The compiled optimizer, which no stage steps, counts the
                # top stage's steps for the callbacks that read it.
                self.model.optimizer.iterations.assign(step)
                callbacks.on_train_batch_begin(state["batch"])
                callbacks.on_train_batch_end(state["batch"] + n - 1, logs)
                state["batch"] += n
                self.follow_rates()  # for the stages' next calls
            else:
                _, k, error = event
                self.error = (k, error)
                raise _StageFailed(k)

    def free_epoch(self, steps, drain, first, callbacks):
        """Every stage runs its share of the epoch at its own pace; a
        callback's `model.stop_training` ends it early (`_Stopping`)."""
        state = {"batch": 0}
        # Without the drain, stage k is k batches behind stage 0 at the
        # start of every epoch after the first.
        carried = [0 if (first or drain) else k for k in range(self.num_stages)]
        self.stopping = _Stopping(self.model, carried)
        try:
            for k in range(self.num_stages):
                share = steps - k if (first and not drain) else steps
                self.inboxes[k].put(("work", max(share, 0), -1))
            self._wait(self.num_stages, callbacks, state)
        finally:
            self.stopping = None

    def lock_step_epoch(self, steps, drain, first, callbacks):
        """Global steps: each stage works if its input has arrived, else idles."""
        state = {"batch": 0}
        fed, last = 0, self.num_stages - 1
        while fed < steps or (drain and self.finished[last] < self.finished[0]):
            before = list(self.finished)
            for k in range(self.num_stages):
                works = fed < steps if k == 0 else before[k - 1] > before[k]
                n_back = 0
                if works and k < last:
                    # Every target sent before this step: one per step of
                    # the stage above.
                    n_back = before[k + 1] - self.taken[k]
                    self.taken[k] += n_back
                self.finished[k] += int(works)
                self.inboxes[k].put(("work" if works else "idle", 1, n_back))
            fed += int(fed < steps)
            self._wait(self.num_stages, callbacks, state)
            if self.model.stop_training:
                steps = fed  # as Keras: no batch after the one that stopped it

    def drop_targets(self):
        """Empties the backward queues (between epochs, the threads idle).

        Targets of an epoch's last batches arrive after the stage below has
        finished the epoch; dropping them leaves nothing in flight, so the
        weights and optimizers at an epoch's end are all the next epoch
        needs, and a run resumed from a checkpoint goes on as it would have.
        """
        for k, (q, kept) in enumerate(zip(self.backward, self.kept, strict=True)):
            # After a drain every batch has its target back: one kept
            # activation per target still queued.
            if int(kept.size()) != int(q.size()):
                raise RuntimeError(
                    f"At the end of an epoch, cut {k} holds {int(q.size())} "
                    f"targets but {int(kept.size())} kept activations; "
                    "expected as many of each"
                )
            for _ in range(int(q.size())):
                q.dequeue()
                kept.dequeue()
            self.taken[k] = self.finished[k + 1]

    def shutdown(self):
        """Closes every queue (cancelling blocked enqueues and dequeues) and
        joins the threads; raises if one does not end in time."""
        for q in self.forward + self.backward + self.kept:
            with contextlib.suppress(Exception):
                q.close(cancel_pending_enqueues=True)
        stuck = self._end_threads()
        if stuck and self.error is None:
            raise RuntimeError(
                f"Stage threads did not end within {JOIN_TIMEOUT} s of "
                f"shutdown. Received: still running {stuck}"
            )

    def _end_threads(self):
        """Tells every stage thread to end and joins it; returns the names of
        those still running after JOIN_TIMEOUT."""
        for inbox in self.inboxes:
            inbox.put(None)
        stuck = []
        for thread in self.threads:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                stuck.append(thread.name)
        return stuck

    def raise_error(self):
        if self.error is not None:
            k, error = self.error
            error.add_note(f"(raised in the thread of stage {k})")
            if self.model.jit_compile is True:
                error.add_note(
                    f"(stage {k}'s math is compiled with XLA, jit_compile=True: "
                    "compile with jit_compile=False if XLA cannot compile it)"
                )
            raise error

    def log_arrays(self):
        return [
            {name: np.asarray(values, np.int64) for name, values in log.items()}
            for log in self.log
        ]
