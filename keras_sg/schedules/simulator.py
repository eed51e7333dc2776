"""Simulates a training step of a pipeline schedule: `simulate`."""

from collections.abc import Sequence

from keras_sg.schedules import _validation as checks
from keras_sg.schedules.flush import simulate_flush
from keras_sg.schedules.orders import (
    gpipe_orders,
    interleaved_orders,
    naive_orders,
    one_f_one_b_orders,
)
from keras_sg.schedules.pipelined_dni import simulate_pipelined_dni
from keras_sg.schedules.timeline import SimulationResult
from keras_sg.schedules.unlocked import simulate_unlocked

SCHEDULES = (
    "naive",
    "gpipe",
    "1f1b",
    "interleaved_1f1b",
    "pipelined_dni",
    "dni",
    "fully_unlocked",
)

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

    if schedule in ("dni", "fully_unlocked"):
        return simulate_unlocked(
            schedule,
            fwd,
            bwd,
            syn,
            inp,
            num_microbatches=num_microbatches,
            microbatch_size=microbatch_size,
            comm_latency=latency,
        )

    if schedule == "pipelined_dni":
        return simulate_pipelined_dni(
            fwd,
            bwd,
            syn,
            num_microbatches=num_microbatches,
            microbatch_size=microbatch_size,
            comm_latency=latency,
        )
    orders = {
        "naive": lambda: naive_orders(num_devices),
        "gpipe": lambda: gpipe_orders(num_devices, num_microbatches),
        "1f1b": lambda: one_f_one_b_orders(num_devices, num_microbatches),
        "interleaved_1f1b": lambda: interleaved_orders(
            num_devices, num_microbatches, num_chunks
        ),
    }[schedule]()
    return simulate_flush(
        schedule,
        orders,
        fwd,
        bwd,
        num_microbatches=num_microbatches,
        num_chunks=num_chunks,
        microbatch_size=microbatch_size,
        comm_latency=latency,
        cost_scale=float(num_microbatches) if schedule == "naive" else 1.0,
    )
