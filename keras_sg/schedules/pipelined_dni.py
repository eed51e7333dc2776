"""Times pipelined DNI: every device trains its stage on a different batch.

With decoupled neural interfaces (Jaderberg et al. 2016, arXiv:1608.05343)
stage k needs neither the forward of stage k - 1 nor the backward of stage
k + 1 of the current step: it reads the activation stage k - 1 produced one
step earlier, and its synthesizer, which predicts the gradient at its output,
is trained on the gradient stage k + 1 sent one step earlier (the bootstrapped
target). So in step t device k runs, on batch t - k: F_k (forward), S_k
(synthesizer forward and backward, absent on the last stage), B_k
(backward from the synthetic gradient) and U_k (the optimizer update, when
its cost is given). The only cross-device
dependencies go from one step to the next:

- F_k at step t waits for F_{k-1} at step t - 1 (its input activation);
- S_k at step t waits for B_{k+1} at step t - 1 (the synthesizer's target).

Batch 0 enters device 0 at step 0 and reaches device k at step k, so in the
first K - 1 steps (the warm-up) the downstream devices have nothing to do; the
result reports the warm-up apart from the steady state that follows it.
"""

from collections.abc import Sequence

from keras_sg.schedules.engine import list_schedule, with_transfers
from keras_sg.schedules.timeline import (
    Event,
    SimulationResult,
    Warmup,
    busy_in_window,
    cross_device_messages,
    idle_fractions,
)

DniOp = tuple[str, int, int]  # (kind, step, stage)


def dni_orders(num_devices: int, num_steps: int) -> list[list[DniOp]]:
    """Returns per device its (kind, step, stage) operations, F then S then B.

    Args:
        num_devices: number of devices K, one stage each.
        num_steps: number of global steps simulated; device k runs steps k and on.

    Returns:
        Per device k: F, S (not on the last device), B and U of steps
        k..num_steps-1.
    """
    orders = []
    for k in range(num_devices):
        kinds = ("F", "B", "U") if k == num_devices - 1 else ("F", "S", "B", "U")
        orders.append([(kind, t, k) for t in range(k, num_steps) for kind in kinds])
    return orders


def _dni_dependencies(
    op: DniOp, num_devices: int, comm_latency: float, per_step_overhead=None
) -> list[tuple[DniOp, float]]:
    """The operations `op` waits for. `per_step_overhead` None leaves out
    the wait after the device's own step before (not a message)."""
    kind, t, k = op
    deps = []
    if kind == "F" and per_step_overhead is not None and t > k:
        deps.append((("U", t - 1, k), per_step_overhead))
    if kind == "F" and k > 0:
        deps.append((("F", t - 1, k - 1), comm_latency))
    if kind == "S" and k + 1 <= t - 1:  # device k + 1 has run step t - 1
        deps.append((("B", t - 1, k + 1), comm_latency))
    return deps


def simulate_pipelined_dni(
    forward: Sequence[float],
    backward: Sequence[float],
    synth: Sequence[float],
    *,
    num_microbatches: int,
    microbatch_size: int = 1,
    comm_latency: float = 0.0,
    update: Sequence[float] | None = None,
    transfer: Sequence[float] | None = None,
    per_step_overhead: float = 0.0,
    cores: int | None = None,
) -> SimulationResult:
    """Times the warm-up and `num_microbatches` steady-state steps of pipelined DNI.

    Args:
        forward: per-stage forward cost F_k, one stage per device.
        backward: per-stage backward cost B_k.
        synth: per-stage synthesizer cost S_k (0 for the last stage).
        num_microbatches: steady-state steps measured M; each step brings one
            new batch (of `microbatch_size` examples) into the pipeline, and
            each device updates its weights once per step.
        microbatch_size: examples per batch.
        comm_latency: delay of every message between two devices.
        update: per-stage optimizer update cost U_k, every step.
        transfer: per cut, the receiving device's time per message.
        per_step_overhead: time each device waits after each of its steps
            before the next (counted as idle).
        cores: None, or the cores the devices share (`simulate`).

    Returns:
        The SimulationResult. Its timeline holds the K - 1 warm-up steps and
        the M steady-state steps. `step_time` is the time a device takes for
        its M steady-state steps (the longest over devices, from the start of
        its first steady step to the start of the step after its last, which
        is simulated for that and left out of the timeline), so the time per
        step is `step_time / M`; `busy_time` and `idle_fraction` are over
        those steps. `warmup` covers time 0 to the first operation of the
        last device, when the pipeline is full.
    """
    num_devices = len(forward)
    warmup_steps = num_devices - 1
    last_step = warmup_steps + num_microbatches  # only its start times are used
    zeros = [0.0] * num_devices
    update = zeros if update is None else update
    transfer = zeros[1:] if transfer is None else transfer
    costs = {"F": forward, "S": synth, "B": backward, "U": update}

    def dependencies(op):
        return _dni_dependencies(op, num_devices, comm_latency)

    placed = list_schedule(
        dni_orders(num_devices, last_step + 1),
        with_transfers(
            lambda op: costs[op[0]][op[2]], dependencies, lambda s: s, transfer
        ),
        lambda op: _dni_dependencies(op, num_devices, comm_latency, per_step_overhead),
        cores=cores,
    )
    by_op = {
        (kind, t, k): Event(device, start, end, kind, t - k, k, step=t)
        for (kind, t, k), (device, start, end) in placed.items()
        if t < last_step and (end > start or kind not in ("S", "U"))
    }
    # Warm-up: until the last device starts its first step (the pipeline is full).
    warmup_end = placed[("F", warmup_steps, num_devices - 1)][1]
    return steady_state_result(
        "pipelined_dni",
        placed,
        by_op,
        dependencies,
        num_microbatches=num_microbatches,
        microbatch_size=microbatch_size,
        first=warmup_steps,
        last=last_step,
        warmup_end=warmup_end,
    )


def steady_state_result(
    schedule,
    placed,
    by_op,
    dependencies,
    *,
    num_microbatches,
    microbatch_size,
    first,
    last,
    warmup_end,
) -> SimulationResult:
    """The result of a schedule without a flush (pipelined DNI, async stages).

    Steady state: each device's steps `first` to `last - 1` (its M steps),
    timed from the start of its step `first` to the start of its step `last`,
    so that devices running at the same period but with different phases all
    measure it. `warmup_end` ends the warm-up window, from time 0.
    """
    num_devices = 1 + max(k for _, _, k in placed)
    events = tuple(sorted(by_op.values(), key=lambda e: (e.start, e.device)))
    warmup_busy = busy_in_window(events, num_devices, 0.0, warmup_end)
    windows = [
        placed[("F", last, k)][1] - placed[("F", first, k)][1]
        for k in range(num_devices)
    ]
    busy = [0.0] * num_devices
    for e in events:
        if e.step >= first:
            busy[e.device] += e.duration
    step_time = max(windows)
    return SimulationResult(
        schedule=schedule,
        num_devices=num_devices,
        num_microbatches=num_microbatches,
        num_chunks=1,
        microbatch_size=microbatch_size,
        events=events,
        step_time=step_time,
        busy_time=tuple(busy),
        idle_fraction=idle_fractions(busy, step_time),
        warmup=Warmup(
            steps=num_devices - 1,
            time=warmup_end,
            busy_time=warmup_busy,
            idle_fraction=idle_fractions(warmup_busy, warmup_end),
        ),
        messages=cross_device_messages(placed, dependencies, by_op),
    )
