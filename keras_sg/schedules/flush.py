"""Times a schedule that flushes the pipeline at the end of every step."""

from collections.abc import Sequence

from keras_sg.schedules.engine import list_schedule, with_transfers
from keras_sg.schedules.orders import OpKey
from keras_sg.schedules.timeline import (
    Event,
    SimulationResult,
    busy_in_window,
    cross_device_messages,
    idle_fractions,
)


def _flush_dependencies(
    op: OpKey,
    num_stages: int,
    num_devices: int,
    comm_latency: float,
    last_backward: dict[int, int] | None = None,
) -> list[tuple[OpKey, float]]:
    kind, m, stage = op

    def lag(other: int) -> float:
        return comm_latency if other % num_devices != stage % num_devices else 0.0

    if kind == "F":
        return [(("F", m, stage - 1), lag(stage - 1))] if stage > 0 else []
    if kind == "W":
        return [(("B", m, stage), 0.0)]
    if kind == "U":  # after the device's last operation, by its order
        return []
    deps = [(("F", m, stage), 0.0)]
    if stage < num_stages - 1:
        deps.append((("B", m, stage + 1), lag(stage + 1)))
        if last_backward is not None and last_backward[stage + 1] == m:
            # The gradient that the stage above's last backward sends down
            # leaves after that stage's update.
            deps.append((("U", 0, stage + 1), lag(stage + 1)))
    return deps


def simulate_flush(
    schedule: str,
    orders: Sequence[Sequence[OpKey]],
    forward: Sequence[float],
    backward: Sequence[float],
    *,
    num_microbatches: int,
    num_chunks: int = 1,
    microbatch_size: int = 1,
    comm_latency: float = 0.0,
    cost_scale: float = 1.0,
    weight_grad: Sequence[float] | None = None,
    update: Sequence[float] | None = None,
    transfer: Sequence[float] | None = None,
    per_step_overhead: float = 0.0,
    cores: int | None = None,
    update_before_send: bool = False,
) -> SimulationResult:
    """Times one training step of a flushed schedule and measures it.

    Dependencies: F of stage s on micro-batch m waits for F of stage s - 1 on
    m; B of stage s on m waits for F of stage s on m and B of stage s + 1 on
    m. A message between two devices adds `comm_latency`. With W operations
    (ZB-H1), B is the input gradient only and W of stage s on m, the weight
    gradient, waits for B of stage s on m. The update U of each stage runs
    on its device after the device's last operation of the step. With
    `update_before_send`, the gradient of each stage's last backward is sent
    down only after the stage's update (one stage per device, no W).

    Args:
        schedule: the schedule's name, stored in the result.
        orders: per device, its operations (kind, micro-batch, stage) in order.
        forward: per-stage forward cost.
        backward: per-stage backward cost.
        num_microbatches: micro-batches per step M.
        num_chunks: model chunks per device v (stage s runs on device s % K).
        microbatch_size: examples per micro-batch.
        comm_latency: delay of every message between two devices.
        cost_scale: factor applied to every F, B and W cost (M for naive
            backprop, whose single unit is the whole batch).
        weight_grad: per-stage W cost, for orders with W operations; B then
            costs `backward - weight_grad`.
        update: per-stage optimizer update cost, once per step (not scaled).
        transfer: per cut, the receiving device's time per message.
        per_step_overhead: time every device waits at the end of the step
            (counted as idle).
        cores: None, or the cores the devices share (`simulate`).
        update_before_send: whether the B of stage s - 1 on the micro-batch
            of stage s's last backward also waits for stage s's update.

    Returns:
        The SimulationResult of one step; `step_time` is its makespan plus
        `per_step_overhead`.
    """
    num_devices = len(orders)
    num_stages = len(forward)
    zeros = [0.0] * num_stages
    weight_grad = zeros if weight_grad is None else weight_grad
    update = zeros if update is None else update
    transfer = [0.0] * max(0, num_stages - 1) if transfer is None else transfer
    transfer = [t * cost_scale for t in transfer]  # naive: M micro-batches a unit
    costs = {
        "F": forward,
        "B": [b - w for b, w in zip(backward, weight_grad, strict=True)],
        "W": weight_grad,
    }
    # Each device updates its stages after its last operation of the step.
    orders = [
        list(order) + [("U", 0, s) for s in sorted({op[2] for op in order})]
        for order in orders
    ]

    last_backward = None
    if update_before_send:
        if num_stages != num_devices or any(op[0] == "W" for o in orders for op in o):
            raise ValueError(
                "`update_before_send` needs one stage per device and no "
                "separate weight-gradient operations (W)."
            )
        last_backward = {
            op[2]: op[1] for order in orders for op in order if op[0] == "B"
        }

    def dependencies(op):
        return _flush_dependencies(
            op, num_stages, num_devices, comm_latency, last_backward
        )

    def messages(op):  # what an op receives: no update is sent anywhere
        return [d for d in dependencies(op) if d[0][0] != "U"]

    def base(op):
        if op[0] == "U":
            return update[op[2]]
        return costs[op[0]][op[2]] * cost_scale

    placed = list_schedule(
        orders,
        with_transfers(base, messages, lambda s: s % num_devices, transfer),
        dependencies,
        cores=cores,
    )
    by_op = {
        op: Event(device, start, end, op[0], op[1], op[2])
        for op, (device, start, end) in placed.items()
        if op[0] != "U" or end > start
    }
    events = tuple(sorted(by_op.values(), key=lambda e: (e.start, e.device)))
    makespan = max((e.end for e in events), default=0.0) + per_step_overhead
    busy = busy_in_window(events, num_devices, 0.0, makespan)
    return SimulationResult(
        schedule=schedule,
        num_devices=num_devices,
        num_microbatches=num_microbatches,
        num_chunks=num_chunks,
        microbatch_size=microbatch_size,
        events=events,
        step_time=makespan,
        busy_time=busy,
        idle_fraction=idle_fractions(busy, makespan),
        messages=cross_device_messages(placed, messages, by_op),
    )
