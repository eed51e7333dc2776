"""Profiles training steps of a placed keras_sg model: a Keras callback, a
function that trains and profiles, and the same for a model whose stages run
on TensorFlow servers."""

import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from keras_sg.profiling.result import ProfileResult
from keras_sg.profiling.trace import Op, check_ops_within, summarize
from keras_sg.profiling.xplane import read_ops, trace_files


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )


def _same_device(a: str, b: str) -> bool:
    """Whether two device strings name one device (unset fields match)."""
    a, b = tf.DeviceSpec.from_string(a), tf.DeviceSpec.from_string(b)
    for field in ("job", "replica", "task", "device_type", "device_index"):
        x, y = getattr(a, field), getattr(b, field)
        if x is not None and y is not None and str(x).upper() != str(y).upper():
            return False
    return True


def placement_of(model) -> tuple[list[str], list[int]]:
    """The devices of a keras_sg model (timeline rows) and each stage's row.

    A model without placement (`devices=None`) is one row, "default".
    """
    stages = getattr(model, "stages", None)
    if stages is None:
        raise TypeError(
            "profiling needs a keras_sg model with stages (DecoupledModel, "
            f"PipelinedModel, GPipeModel, UnlockedModel, ...). Received: "
            f"{type(model).__name__}"
        )
    placed = getattr(model, "devices", None)
    if placed is None:
        return ["default"], [0] * len(stages)
    devices, rows = [], []
    for device in placed:
        if device not in devices:
            devices.append(device)
        rows.append(devices.index(device))
    return devices, rows


def update_shares(model, devices) -> list[float]:
    """Each device's share of the model's trained weights (by element count).

    The optimizer's update is element-wise over every weight and its slots,
    on the weight's device, so its cost on a device grows with the weights
    there; equal shares if no weight sits on a listed device.
    """
    sizes = [0] * len(devices)
    for variable in model.trainable_variables:
        where = getattr(variable, "value", variable).device
        for row, device in enumerate(devices):
            if len(devices) == 1 or _same_device(where, device):
                sizes[row] += math.prod(variable.shape)
                break
    total = sum(sizes)
    if total == 0:
        return [1.0 / len(devices)] * len(devices)
    return [s / total for s in sizes]


def _wait(logs):
    """Blocks until a step's outputs exist (its ops have run)."""
    for value in (logs or {}).values():
        keras.ops.convert_to_numpy(value)


class Profile(keras.callbacks.Callback):
    """Profiles `steps` training steps of a keras_sg model after `skip` steps.

    The TensorFlow profiler runs from the start of step `skip` (counted from
    0 in each `fit`) to the end of step `skip + steps - 1`; then the trace is
    read and `result` holds a ProfileResult: per-device busy fractions,
    per-device and per-stage costs by kind, the measured timeline and the
    wall time of the profiled steps (profiler overhead included).

    Stages are told apart by their `stage_k` name scope (every keras_sg
    model runs stage k's work and its synthesizer's in it); on logical
    devices a stage's ops are counted on the stage's device. The optimizer's
    ops carry no stage scope: their cost is shared by the devices in
    proportion to the weights they hold, and they are not in the busy
    fractions. Work compiled by XLA (AsyncPipelinedModel with
    `jit_compile=True`) is not traced as ops: it is in no number (a
    warning says so). With `steps_per_execution` > 1, `steps` and `skip` count
    calls, and each call counts the steps it ran (`steps_per_execution`;
    with AsyncPipelinedModel, stage 0's calls, whose last in an epoch may
    be shorter).

    Args:
        steps: training steps to profile.
        skip: steps to run first (tracing, warm-up).
        batch_size: examples per step, for `result.examples_per_second`.
        logdir: folder of the trace, kept; by default a temporary folder,
            deleted once the trace is read.

    Example:

    ```python
    profile = keras_sg.profiling.Profile(steps=4, skip=2, batch_size=256)
    model.fit(data, steps_per_epoch=6, callbacks=[profile])
    profile.result.busy, profile.result.stage_costs
    profile.result.draw("timeline.png")
    ```
    """

    def __init__(
        self,
        steps: int = 4,
        skip: int = 1,
        batch_size: int | None = None,
        logdir: str | os.PathLike | None = None,
    ):
        super().__init__()
        _check_count("steps", steps, 1)
        _check_count("skip", skip, 0)
        if batch_size is not None:
            _check_count("batch_size", batch_size, 1)
        self.steps = steps
        self.skip = skip
        self.batch_size = batch_size
        self.logdir = None if logdir is None else os.fspath(logdir)
        self.result: ProfileResult | None = None
        self._calls = 0
        self._tracing = None
        self._traced = None
        self._traced_steps = 0

    def on_train_begin(self, logs=None):
        placement_of(self.model)  # a keras_sg model, before any step
        self.result = None
        self._calls = 0
        self._tracing = None
        self._traced = None
        self._traced_steps = 0
        if _is_async(self.model):
            self.model.stage_step_hook = self._stage_step

    def _stage_step(self, k, phase, steps):
        """An asynchronous model's window: stage 0's calls, in its thread.

        Its batch callbacks run in the main thread whenever the top stage's
        results arrive there, well after the steps ran, so they cannot
        bound a window; stage 0's own calls do (with bounded queues, the
        stages above keep its pace). A call runs `steps` steps (up to
        `steps_per_execution`); the result counts the steps of the
        profiled calls. The trace is read in the main thread.
        """
        if k != 0:
            return
        if phase == "begin":
            self._start()
            return
        self._calls += 1
        if self._tracing:
            self._traced_steps += steps
        if self._tracing and self._calls == self.skip + self.steps:
            logdir, start = self._tracing
            wall = 1000 * (time.perf_counter() - start)
            tf.profiler.experimental.stop()
            self._tracing = None
            self._traced = (logdir, wall, self._traced_steps)

    def _read_traced(self):
        logdir, wall, steps = self._traced
        self._traced = None
        try:
            self.result = read_result(
                logdir,
                self.model,
                steps=steps,
                wall_time=wall,
                batch_size=self.batch_size,
            )
        finally:
            if self.logdir is None:
                shutil.rmtree(logdir, ignore_errors=True)

    def on_train_batch_begin(self, batch, logs=None):
        if not _is_async(self.model):  # else see _stage_step
            self._start()

    def _start(self):
        if self._calls == self.skip and self.result is None and not self._tracing:
            logdir = self.logdir or tempfile.mkdtemp(prefix="keras_sg_profile_")
            # The trace is read once the steps are done; a temporary one
            # is deleted then.
            tf.profiler.experimental.start(logdir)
            self._tracing = (logdir, time.perf_counter())
            self._traced_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        if _is_async(self.model):
            if self._traced:
                self._read_traced()
            return
        self._calls += 1
        if self._tracing and self._calls == self.skip + self.steps:
            _wait(logs)
            logdir, start = self._tracing
            wall = 1000 * (time.perf_counter() - start)
            tf.profiler.experimental.stop()
            self._tracing = None
            per_call = getattr(self.model, "steps_per_execution", 1) or 1
            try:
                self.result = read_result(
                    logdir,
                    self.model,
                    steps=self.steps * int(per_call),
                    wall_time=wall,
                    batch_size=self.batch_size,
                )
            finally:
                if self.logdir is None:
                    shutil.rmtree(logdir, ignore_errors=True)

    def on_train_end(self, logs=None):
        if _is_async(self.model):
            self.model.stage_step_hook = None
            if self._traced:
                self._read_traced()
        if self._tracing:
            tf.profiler.experimental.stop()
            if self.logdir is None:
                shutil.rmtree(self._tracing[0], ignore_errors=True)
            self._tracing = None
        if self.result is None:
            raise ValueError(
                f"Training ran {self._calls} steps, fewer than the "
                f"skip + steps = {self.skip + self.steps} to profile. "
                f"Received: steps={self.steps}, skip={self.skip}"
            )


def _is_async(model) -> bool:
    """Whether a model runs its stages in threads of their own
    (`keras_sg.AsyncPipelinedModel`: it has a `stage_step_hook`)."""
    return hasattr(model, "stage_step_hook")


def _warn_if_compiled(model, servers=False):
    """XLA's work is missing from the numbers, or not split by kind: said,
    not left silent."""
    if getattr(model, "_jit_compile", None) is not True:
        return
    if servers:
        message = (
            "keras_sg.profiling reads each run of a program compiled by XLA "
            "on a server as one op of kind C (XLA_OP_NAME): it counts in the "
            "busy fractions and timelines, but its forward, backward, "
            "synthesizer and update work is not told apart in the costs. "
        )
    else:
        message = (
            "keras_sg.profiling reads TensorFlow's op events; work compiled "
            "by XLA runs as unnamed XLA executables (CpuExecutable events), "
            "not ops, so it is in no busy fraction, cost or timeline. "
        )
    warnings.warn(message + "Received: a model with jit_compile=True", stacklevel=3)


def read_result(
    logdir: str | os.PathLike,
    model,
    steps: float,
    wall_time: float,
    batch_size: int | None = None,
) -> ProfileResult:
    """The ProfileResult of a local trace of `steps` steps of `model`.

    Its devices are taken to share this process's cores (`process_cores`),
    for the result's `work_costs`.

    Args:
        logdir: the folder given to `tf.profiler.experimental.start`.
        model: the keras_sg model that was traced.
        steps: training steps in the trace.
        wall_time: their wall-clock ms.
        batch_size: examples per step, if known.
    """
    _warn_if_compiled(model)
    devices, rows = placement_of(model)
    ops = [
        Op(name, start, end)
        for path in trace_files(logdir)
        for name, start, end in read_ops(path)
    ]
    summary = summarize(
        ops,
        num_devices=len(devices),
        stage_devices=rows,
        steps=steps,
        update_shares=update_shares(model, devices),
        cores=process_cores(),
    )
    # An asynchronous model's stages above stage 0 run on while the profiler
    # stops (see `Profile`); any other model's ops all ran in `wall_time`.
    if not _is_async(model):
        check_ops_within(summary.op_union, wall_time)
    return ProfileResult.from_summary(summary, devices, rows, wall_time, batch_size)


def process_cores() -> int:
    """The cores this process may run on: what its devices share."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _as_dataset(x, y, batch_size):
    """(dataset, batch size) of fit-style inputs: a dataset as it is."""
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError(
                "`y` must be None when `x` is a dataset. Received: "
                f"y of type {type(y).__name__}"
            )
        if batch_size is None:
            first = next(iter(x.take(1)))
            inputs = first[0] if isinstance(first, tuple) else first
            batch_size = int(tf.nest.flatten(inputs)[0].shape[0])
        return x, batch_size
    batch_size = batch_size or 32
    data = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    return data.batch(batch_size, drop_remainder=True).repeat(), batch_size


def profile(
    model,
    x,
    y=None,
    *,
    steps: int = 4,
    skip: int = 1,
    batch_size: int | None = None,
    logdir: str | os.PathLike | None = None,
    discard: int = 0,
) -> ProfileResult:
    """Trains a compiled keras_sg model `skip + steps` steps, profiling the last.

    With `steps_per_execution` N, `skip + steps` calls of N steps each.

    Args:
        model: a compiled keras_sg model, placed or not.
        x: a `tf.data.Dataset` of (inputs, targets) batches with at least
            `skip + steps` batches (repeat it), or input arrays.
        y: target arrays when `x` holds arrays.
        steps: training steps to profile.
        skip: steps to run first (tracing, warm-up).
        batch_size: examples per step; by default the first batch's size
            (datasets) or 32 (arrays, cut into whole batches and repeated).
        logdir: folder of the trace, kept; by default a temporary folder.
        discard: first profile this many windows the same way (each in a
            `fit` of its own, its trace deleted) and throw them away. A
            process's first trace can run slower, the more the longer it
            is: `AsyncPipelinedModel` on two logical devices ran up to 71%
            slower than untraced in a first window of 128 steps, and within
            12% in a second (docs/simulation.md, "The profiler's first
            trace").

    Returns:
        A ProfileResult (see `Profile`), of the last window.
    """
    _check_count("discard", discard, 0)
    data, batch_size = _as_dataset(x, y, batch_size)
    # The window counts calls, each of `steps_per_execution` steps.
    per_call = int(getattr(model, "steps_per_execution", 1) or 1)
    more = 0
    if _is_async(model):
        # Stage 0 runs up to capacity + 1 batches ahead of the stage above:
        # batches after the window keep the stages above busy to its end.
        more = (len(model.stages) - 1) * (model.capacity + 1)
    for window in range(discard + 1):
        # A discarded window's trace goes to a temporary folder.
        keep = logdir if window == discard else None
        callback = Profile(steps=steps, skip=skip, batch_size=batch_size, logdir=keep)
        model.fit(
            data,
            steps_per_epoch=(skip + steps) * per_call + more,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=[callback],
        )
    return callback.result


def profile_servers(
    model,
    x,
    addresses,
    y=None,
    *,
    steps: int = 20,
    skip: int = 5,
    duration_ms: int = 1000,
    batch_size: int | None = None,
    logdir: str | os.PathLike | None = None,
) -> ProfileResult:
    """Profiles a model whose stages run on TensorFlow servers, from the servers.

    Each server (`keras_sg.placement.start_server`, or any
    `tf.distribute.Server`) serves TensorFlow's profiler on its own port.
    This runs `skip` steps, times `steps` steps (the step time), then keeps
    training in a thread while it traces every server for `duration_ms`
    (`tf.profiler.experimental.client.trace`). Each server is one device (a
    timeline row), in the order of `addresses`; every op it runs counts: the
    stages', the optimizer's and the transfers'. Each server writes its
    trace into `logdir` itself, so the folder must be one the servers reach
    (their machine is this one, or a shared file system); and the window is
    the span of all servers' ops, which assumes one clock (one machine).

    Args:
        model: a compiled keras_sg model placed on the servers' tasks.
        x: a `tf.data.Dataset` of batches (repeat it), or input arrays.
        addresses: "host:port" of each server, one device each.
        y: target arrays when `x` holds arrays.
        steps: timed steps that give the step time.
        skip: steps to run first (tracing, warm-up).
        duration_ms: length of the servers' traces.
        batch_size: examples per step (see `profile`).
        logdir: folder of the traces, kept; by default a temporary folder.

    Returns:
        A ProfileResult whose `steps` is the trace's window over the step
        time (a fraction of a step at each end), `wall_time` that window.
    """
    _check_count("steps", steps, 1)
    _check_count("skip", skip, 0)
    data, batch_size = _as_dataset(x, y, batch_size)
    fit = dict(epochs=1, verbose=0, shuffle=False)
    if skip:
        model.fit(data, steps_per_epoch=skip, **fit)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, **fit)
    step_ms = 1000 * (time.perf_counter() - start) / steps
    return trace_servers(
        model,
        data,
        addresses,
        step_ms,
        duration_ms=duration_ms,
        batch_size=batch_size,
        logdir=logdir,
    )


def trace_servers(
    model,
    data,
    addresses,
    step_time: float,
    *,
    duration_ms: int = 1000,
    batch_size: int | None = None,
    logdir: str | os.PathLike | None = None,
    lead_ms: float = 500.0,
) -> ProfileResult:
    """Traces the servers for `duration_ms` while training goes on.

    The part of `profile_servers` after the timing, for a caller that timed
    the steps itself: training runs in a thread (0.5 s before the trace
    starts, to after it ends) and every server is traced from here.

    Args:
        model: a compiled keras_sg model placed on the servers' tasks.
        data: a repeated `tf.data.Dataset` of batches.
        addresses: "host:port" of each server, one device each.
        step_time: the model's ms per step (the trace's steps are its
            window over this).
        duration_ms: length of the servers' traces.
        batch_size: examples per step, if known.
        logdir: folder of the traces, kept; by default a temporary folder,
            deleted once the traces are read.
        lead_ms: ms between the start of training and the trace's, and
            about as much training after it; longer for a model whose `fit`
            takes long to start (AsyncPipelinedModel traces its stage
            functions in each `fit`).
    """
    _check_count("duration_ms", duration_ms, 1)
    if not step_time > 0:
        raise ValueError(f"`step_time` must be positive. Received: {step_time=}")
    addresses = [a.removeprefix("grpc://") for a in addresses]
    if logdir is None:
        with tempfile.TemporaryDirectory(prefix="keras_sg_profile_") as folder:
            return trace_servers(
                model,
                data,
                addresses,
                step_time,
                duration_ms=duration_ms,
                batch_size=batch_size,
                logdir=folder,
                lead_ms=lead_ms,
            )
    logdir = os.fspath(logdir)
    _check_lead(lead_ms)
    lead = lead_ms  # ms of training before the trace starts, and after it ends
    failed = []

    def train():
        try:
            more = int((duration_ms + 2 * lead) / step_time) + 10
            model.fit(data, steps_per_epoch=more, epochs=1, verbose=0, shuffle=False)
        except Exception as error:  # raised below, in the caller's thread
            failed.append(error)

    runner = threading.Thread(target=train)
    runner.start()
    time.sleep(lead / 1000)
    tf.profiler.experimental.client.trace(
        ",".join(f"grpc://{a}" for a in addresses), logdir, duration_ms
    )
    runner.join()
    if failed:
        raise failed[0]
    return read_servers(logdir, model, addresses, step_time, batch_size)


def _check_lead(lead_ms):
    number = not isinstance(lead_ms, bool) and isinstance(lead_ms, int | float)
    if not number or not lead_ms >= 0:
        raise ValueError(f"`lead_ms` must be a number >= 0. Received: {lead_ms=}")


def read_servers(
    logdir: str | os.PathLike,
    model,
    addresses,
    step_time: float,
    batch_size: int | None = None,
) -> ProfileResult:
    """The ProfileResult of the servers' traces under `logdir`.

    Trace files are named `<host>_<port>.xplane.pb`; server k is the one
    whose port is that of `addresses[k]`. Only TensorFlow's executor threads
    (lines `tf_Compute...`) are read.
    """
    _warn_if_compiled(model, servers=True)
    addresses = [a.removeprefix("grpc://") for a in addresses]
    ops = read_server_ops(logdir, addresses)
    if getattr(model, "devices", None) is None:
        raise ValueError(
            "read_servers needs a model placed on the servers' tasks. "
            "Received: a model with devices=None"
        )
    if not ops:
        raise ValueError(f"The servers' traces under {os.fspath(logdir)!r} hold no op")
    rows = [_server_of(d, addresses) for d in model.devices]
    window = max(op.end for op in ops) - min(op.start for op in ops)
    summary = summarize(
        ops,
        num_devices=len(addresses),
        stage_devices=rows,
        steps=window / step_time,
    )
    return ProfileResult.from_summary(
        summary, list(addresses), rows, summary.window, batch_size
    )


def read_server_ops(logdir: str | os.PathLike, addresses) -> list[Op]:
    """The ops, names included, of the servers' traces under `logdir`.

    Trace files are named `<host>_<port>.xplane.pb`; server k is the one
    whose port is that of `addresses[k]`, and its ops have device k. Only
    TensorFlow's executor threads (lines `tf_Compute...`) are read; a run of
    a program compiled by XLA is one op there, `XLA_OP_NAME`.
    """
    ports = [a.removeprefix("grpc://").rsplit(":", 1)[-1] for a in addresses]
    ops = []
    for path in trace_files(logdir):
        port = path.name.split(".xplane")[0].rsplit("_", 1)[-1]
        if port not in ports:
            raise ValueError(
                f"The trace {path.name} is of no server listed. "
                f"Received: addresses={list(addresses)}"
            )
        device = ports.index(port)
        ops += [
            Op(name, start, end, device)
            for name, start, end in read_ops(path, line_prefix="tf_Compute", xla=True)
        ]
    return ops


def _server_of(device: str, addresses) -> int:
    """The index of the server of a "/job:worker/task:k/..." device: task k."""
    task = tf.DeviceSpec.from_string(device).task
    if task is None or not 0 <= task < len(addresses):
        raise ValueError(
            f"A stage's device must name a task of the {len(addresses)} "
            f"servers. Received: device={device!r}"
        )
    return task


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
