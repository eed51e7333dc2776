"""Simulates a training step of a pipeline schedule: `simulate`."""

from collections.abc import Sequence

from keras_sg.schedules import _validation as checks
from keras_sg.schedules.async_stages import simulate_async
from keras_sg.schedules.flush import simulate_flush
from keras_sg.schedules.orders import (
    gpipe_orders,
    interleaved_orders,
    naive_orders,
    one_f_one_b_orders,
    zb_h1_orders,
)
from keras_sg.schedules.pipelined_dni import simulate_pipelined_dni
from keras_sg.schedules.timeline import SimulationResult
from keras_sg.schedules.unlocked import simulate_unlocked

SCHEDULES = (
    "naive",
    "gpipe",
    "1f1b",
    "interleaved_1f1b",
    "zb_h1",
    "pipelined_dni",
    "dni",
    "fully_unlocked",
    "async",
)
DEFAULT_WEIGHT_GRAD_FRACTION = 0.5
DEFAULT_QUEUE_CAPACITY = 1

Costs = float | Sequence[float]


def _check_schedule(schedule) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(
            f"`schedule` must be one of {SCHEDULES}. Received: schedule={schedule!r}"
        )
    return schedule


def simulate(
    schedule: str,
    num_devices: int,
    num_microbatches: int,
    forward: Costs,
    backward: Costs,
    synth: Costs | None = None,
    *,
    input_synth: Costs | None = None,
    num_chunks: int = 1,
    comm_latency: float = 0.0,
    microbatch_size: int = 1,
    update: Costs | None = None,
    transfer: Costs = 0.0,
    per_step_overhead: float = 0.0,
    weight_grad_fraction: float | None = None,
    queue_capacity: int | None = None,
    update_before_send: bool = False,
    cores: int | None = None,
) -> SimulationResult:
    """Simulates one training step of a pipeline schedule.

    Schedules (K devices, M micro-batches per step):

    - "naive": plain model-parallel backprop; the whole batch (M micro-batches,
      costing M times a micro-batch) is one unit that goes forward through
      the K devices, then backward.
    - "gpipe": GPipe (Huang et al. 2019, arXiv:1811.06965): all M forwards
      pipelined, then all M backwards, then a flush.
    - "1f1b": PipeDream-Flush / Megatron-LM's non-interleaved 1F1B (Narayanan
      et al. 2019, 2021): warm-up forwards, one forward one backward, cool-down
      backwards, then a flush.
    - "interleaved_1f1b": Megatron-LM's interleaved 1F1B (Narayanan et al.
      2021, arXiv:2104.04473) with `num_chunks` chunks per device; M must be
      a multiple of K.
    - "zb_h1": Zero Bubble pipeline parallelism's ZB-H1 (Qi et al. 2023,
      arXiv:2401.10241): 1F1B with each backward split into B (input
      gradient) and W (weight gradient), the W's postponed into 1F1B's
      bubbles; 1F1B's memory, bubble (K - 1)(F + B - W) instead of
      (K - 1)(F + B + W) with even stages and W <= F + B. See
      `keras_sg.schedules.orders.zb_h1_orders`.
    - "pipelined_dni": DNI (Jaderberg et al. 2016, arXiv:1608.05343) with
      every device on a different batch; see
      `keras_sg.schedules.pipelined_dni`. M is the number of steady-state
      steps measured after the K - 1 warm-up steps; one batch per step.
    - "dni": DNI one batch per step, as `DecoupledModel` trains it: each
      stage updates from its synthetic gradient without waiting for the
      backward pass above, but still waits for the forward pass below. M is
      the number of steps; see `keras_sg.schedules.unlocked`.
    - "fully_unlocked": DNI (cDNI) with synthetic inputs, as `UnlockedModel`
      trains it: every stage starts on the step's batch at once, from its
      input synthesizer's prediction; only the synthesizers' regressions
      wait for other devices. No warm-up. M is the number of steps.
    - "async": asynchronous DNI stages, each training at its own pace and
      linked by activation queues of capacity `queue_capacity`, with no
      step shared by the devices; see `keras_sg.schedules.async_stages`. M
      is the number of batches measured in steady state, after a warm-up
      long enough to fill the queues; the time per batch is the slowest
      stage's F + S + B + U + per-step overhead (+ transfers).

    Costs beyond the stages' compute (all 0 by default, which gives the
    results of the bare model):

    - `update`: the optimizer update of each stage, once per step: after
      the stage's last backward for the flushed schedules (naive, GPipe,
      1F1B, interleaved, ZB-H1; each device as soon as its own backwards
      are done), after every backward for the DNI schedules (every step,
      every batch for "async").
    - `transfer`: per cut and per message (one micro-batch's activation or
      gradient), the time the receiving device spends taking the message
      in; it is busy time, unlike `comm_latency`, a delay that holds no
      device.
    - `per_step_overhead`: a fixed time per training step in which every
      device waits (for the client to start the next step, for example: 10
      ms on the two TensorFlow servers of docs/benchmarks.md). Flushed
      schedules add it once per step; "dni" and "fully_unlocked" between
      steps (all devices wait) and after the last; "pipelined_dni" and
      "async" after each step of each device.
    - `update_before_send` ("naive", "gpipe" and "1f1b" only): each stage's
      update runs before the gradient of its last backward is sent down, so
      the stage below waits for that update too. This is what TensorFlow's
      executor did in some runs on the two one-core servers of
      docs/benchmarks.md before `keras_sg.models.steps.arrived`: the
      update's ops are ready as soon as each weight gradient is, and they
      ran before the send of the input gradient (docs/simulation.md). Off,
      the update overlaps the backward of the stages below, as a runtime
      that sends first has it.

    Shared cores: with `cores` below `num_devices`, the devices share that
    many cores, as K logical devices of one process do on fewer cores (the
    K = 4 rows of docs/benchmarks.md, on 2): while n devices run an
    operation each, each advances at min(1, cores / n) of its speed alone
    (processor sharing), and the costs are each operation's work on a core
    of its own. None (the default) gives every device a core of its own.

    Gradient synthesizer costs only matter to "pipelined_dni", "dni" and
    "fully_unlocked"; the other schedules have no synthesizers and ignore
    them. Input synthesizer costs are taken by "fully_unlocked" only.

    Args:
        schedule: one of `SCHEDULES`.
        num_devices: number of devices K >= 1.
        num_microbatches: micro-batches per step M >= 1.
        forward: forward cost of each stage: a number (every stage) or one
            per stage. There are `num_devices * num_chunks` stages; stage s
            runs on device s % num_devices.
        backward: backward cost of each stage (input and weight gradients).
        synth: synthesizer cost (forward and backward) at each stage's
            output: None (0), a number (every cut), one per cut, or one per
            stage with 0 for the last.
        input_synth: input synthesizer cost (forward and backward) at each
            stage's input, "fully_unlocked" only: None (0), a number (every
            stage but the first), one per cut (for stages 1..K-1), or one
            per stage with 0 for the first.
        num_chunks: model chunks per device v >= 1; above 1 only with
            "interleaved_1f1b".
        comm_latency: delay of each message between two devices, >= 0.
        microbatch_size: examples per micro-batch, for `examples_per_time`.
        update: optimizer update cost of each stage per step: None (0), a
            number (every stage) or one per stage (with "naive" it is not
            scaled by M: one update per step).
        transfer: time the receiving device spends per message across a cut
            between two devices: a number (every cut) or one per cut
            (`num_devices * num_chunks - 1` entries); scaled by M for
            "naive", whose unit is the whole batch.
        per_step_overhead: time per training step in which the devices wait.
        weight_grad_fraction: "zb_h1" only: the share W / (B + W) of each
            stage's `backward` that is the weight gradient, in [0, 1]; None
            gives 0.5 (for a dense layer the two gradients are two matrix
            products of the same size).
        queue_capacity: "async" only: capacity C >= 1 of each activation
            queue; None gives 1.
        update_before_send: "naive", "gpipe" and "1f1b" only: whether the
            gradient of each stage's last backward leaves after the stage's
            update.
        cores: None, or the number of cores the devices share, >= 1 (see
            "Shared cores" above).

    Returns:
        The SimulationResult: timeline, step time, per-device busy time and
        idle fraction, bubble fraction and throughput.

    Raises:
        ValueError: naming the argument and the value received, for a bad
            argument.
    """
    _check_schedule(schedule)
    checks.check_int("num_devices", num_devices, 1)
    checks.check_int("num_microbatches", num_microbatches, 1)
    checks.check_int("num_chunks", num_chunks, 1)
    checks.check_int("microbatch_size", microbatch_size, 1)
    if num_chunks != 1 and schedule != "interleaved_1f1b":
        raise ValueError(
            "`num_chunks` above 1 needs schedule='interleaved_1f1b'. "
            f"Received: num_chunks={num_chunks!r} with schedule={schedule!r}"
        )
    if schedule == "interleaved_1f1b" and num_microbatches % num_devices:
        raise ValueError(
            "`num_microbatches` must be a multiple of num_devices="
            f"{num_devices} for interleaved 1F1B, as in Megatron-LM. "
            f"Received: num_microbatches={num_microbatches!r}"
        )
    latency = checks.check_latency(comm_latency)
    num_stages = num_devices * num_chunks
    fwd = checks.stage_costs("forward", forward, num_stages)
    bwd = checks.stage_costs("backward", backward, num_stages)
    syn = checks.synth_costs(synth, num_stages)
    if input_synth is not None and schedule != "fully_unlocked":
        raise ValueError(
            "`input_synth` needs schedule='fully_unlocked', the only schedule "
            f"with input synthesizers. Received: input_synth={input_synth!r} "
            f"with schedule={schedule!r}"
        )
    inp = checks.input_synth_costs(input_synth, num_stages)
    extra = dict(
        update=None
        if update is None
        else checks.stage_costs("update", update, num_stages),
        transfer=checks.cut_costs("transfer", transfer, num_stages),
        per_step_overhead=checks.check_nonnegative(
            "per_step_overhead", per_step_overhead
        ),
    )
    if weight_grad_fraction is not None and schedule != "zb_h1":
        raise ValueError(
            "`weight_grad_fraction` needs schedule='zb_h1', the only schedule "
            "that splits the backward pass. "
            f"Received: weight_grad_fraction={weight_grad_fraction!r} with "
            f"schedule={schedule!r}"
        )
    if queue_capacity is not None and schedule != "async":
        raise ValueError(
            "`queue_capacity` needs schedule='async', the only schedule with "
            f"queues. Received: queue_capacity={queue_capacity!r} with "
            f"schedule={schedule!r}"
        )
    if not isinstance(update_before_send, bool):
        raise ValueError(
            "`update_before_send` must be True or False. "
            f"Received: update_before_send={update_before_send!r}"
        )
    if update_before_send and schedule not in ("naive", "gpipe", "1f1b"):
        raise ValueError(
            "`update_before_send` needs schedule 'naive', 'gpipe' or '1f1b' "
            "(one stage per device, the backward not split). "
            f"Received: update_before_send=True with schedule={schedule!r}"
        )
    if cores is not None:
        checks.check_int("cores", cores, 1)
    common = dict(
        num_microbatches=num_microbatches,
        microbatch_size=microbatch_size,
        comm_latency=latency,
        cores=cores,
        **extra,
    )

    if schedule in ("dni", "fully_unlocked"):
        return simulate_unlocked(schedule, fwd, bwd, syn, inp, **common)
    if schedule == "pipelined_dni":
        return simulate_pipelined_dni(fwd, bwd, syn, **common)
    if schedule == "async":
        capacity = DEFAULT_QUEUE_CAPACITY if queue_capacity is None else queue_capacity
        checks.check_int("queue_capacity", capacity, 1)
        return simulate_async(fwd, bwd, syn, queue_capacity=capacity, **common)
    weight_grad = None
    if schedule == "zb_h1":
        fraction = checks.check_fraction(
            "weight_grad_fraction",
            DEFAULT_WEIGHT_GRAD_FRACTION
            if weight_grad_fraction is None
            else weight_grad_fraction,
        )
        weight_grad = [fraction * b for b in bwd]
    orders = {
        "naive": lambda: naive_orders(num_devices),
        "gpipe": lambda: gpipe_orders(num_devices, num_microbatches),
        "1f1b": lambda: one_f_one_b_orders(num_devices, num_microbatches),
        "interleaved_1f1b": lambda: interleaved_orders(
            num_devices, num_microbatches, num_chunks
        ),
        "zb_h1": lambda: zb_h1_orders(num_devices, num_microbatches),
    }[schedule]()
    return simulate_flush(
        schedule,
        orders,
        fwd,
        bwd,
        num_chunks=num_chunks,
        cost_scale=float(num_microbatches) if schedule == "naive" else 1.0,
        weight_grad=weight_grad,
        update_before_send=update_before_send,
        **common,
    )
