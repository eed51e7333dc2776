"""Times asynchronous stages: each stage trains at its own pace, linked by queues.

The asynchronous stage runtime of DNI (Jaderberg et al. 2016,
arXiv:1608.05343) that issue 12 asks for: every stage runs its own training
loop on its own device, with no step shared by all devices. Stage k takes
batch b's activation from its input queue, runs F_k (forward), S_k (its
gradient synthesizer, forward and backward; absent on the last stage), B_k
(backward from the synthetic gradient, or from the loss on the last stage)
and U_k (its optimizer's update), then takes the next batch. Its output
activations go into a queue of capacity C read by stage k + 1.

- F_k on batch b waits for F_{k-1} on b (the input queue is empty until
  then), plus the message latency.
- A stage blocks when its output queue is full: C batches it produced are
  still waiting there. After F_k on batch b it can go on only when F_{k+1}
  has ended on batch b - C (a slot is freed when the stage above has read
  the batch, which the simulator counts at the end of that forward).
- The synthesizers' targets travel back through queues that never block: a
  synthesizer trains on the newest target it has (bootstrapped targets are
  stale by design), so S_k waits for nothing on another device.
- After each of its batches a stage spends `per_step_overhead` (its loop's
  own dispatch cost) before the next.

In steady state every stage runs at the pace of the slowest one: the time per
batch is max_k (F_k + S_k + B_k + U_k + per-step overhead + transfers), the
other stages wait on their queues. The queues buffer bursts, not throughput:
their capacity bounds the staleness of the activations (and memory), not the
steady rate.
"""

from collections.abc import Sequence

from keras_sg.schedules.engine import list_schedule, with_transfers
from keras_sg.schedules.pipelined_dni import steady_state_result
from keras_sg.schedules.timeline import (
    Event,
    SimulationResult,
)

AsyncOp = tuple[str, int, int]  # (kind, batch, stage)


def async_orders(num_devices: int, num_batches: int) -> list[list[AsyncOp]]:
    """Returns per device its (kind, batch, stage) operations, batch by batch.

    Args:
        num_devices: number of devices K, one stage each.
        num_batches: number of batches each stage trains on.

    Returns:
        Per device k: F, S (not on the last device), B and U of batches
        0..num_batches-1.
    """
    orders = []
    for k in range(num_devices):
        kinds = ("F", "B", "U") if k == num_devices - 1 else ("F", "S", "B", "U")
        orders.append([(kind, b, k) for b in range(num_batches) for kind in kinds])
    return orders


def _async_dependencies(
    op: AsyncOp,
    num_devices: int,
    comm_latency: float,
    capacity: int | None = None,
    per_step_overhead: float = 0.0,
) -> list[tuple[AsyncOp, float]]:
    """The operations `op` waits for; `capacity` None gives the messages only."""
    kind, b, k = op
    deps = []
    if kind == "F" and k > 0:
        deps.append((("F", b, k - 1), comm_latency))
    if capacity is None:
        return deps
    if kind == "F" and b > 0:
        deps.append((("U", b - 1, k), per_step_overhead))
    after_forward = "S" if k < num_devices - 1 else "B"
    if kind == after_forward and k < num_devices - 1 and b - capacity >= 0:
        deps.append((("F", b - capacity, k + 1), 0.0))
    return deps


def simulate_async(
    forward: Sequence[float],
    backward: Sequence[float],
    synth: Sequence[float],
    *,
    num_microbatches: int,
    queue_capacity: int = 1,
    microbatch_size: int = 1,
    comm_latency: float = 0.0,
    update: Sequence[float] | None = None,
    transfer: Sequence[float] | None = None,
    per_step_overhead: float = 0.0,
    cores: int | None = None,
) -> SimulationResult:
    """Times asynchronous stages: warm-up, then `num_microbatches` batches.

    Args:
        forward: per-stage forward cost F_k, one stage per device.
        backward: per-stage backward cost B_k.
        synth: per-stage synthesizer cost S_k (0 for the last stage).
        num_microbatches: batches measured in steady state M.
        queue_capacity: capacity C >= 1 of each activation queue.
        microbatch_size: examples per batch.
        comm_latency: delay of every message between two devices.
        update: per-stage optimizer update cost U_k, every batch.
        transfer: per cut, the receiving device's time per message.
        per_step_overhead: time each stage spends between two of its
            batches (counted as idle).
        cores: None, or the cores the devices share (`simulate`).

    Returns:
        The SimulationResult. The timeline holds the warm-up batches and the
        M measured ones. `step_time` is the longest over devices of the time
        from the start of its first measured batch to the start of the batch
        after its last, so the time per batch is `step_time / M`. The
        measured batches start after (K - 1) (C + 1) warm-up batches, enough
        for every queue to fill. `warmup` covers time 0 to the last
        device's first forward.
    """
    num_devices = len(forward)
    zeros = [0.0] * num_devices
    update = zeros if update is None else update
    transfer = zeros[1:] if transfer is None else transfer
    costs = {"F": forward, "S": synth, "B": backward, "U": update}
    warmup_batches = (num_devices - 1) * (queue_capacity + 1)
    last = warmup_batches + num_microbatches  # only its start times are used

    def messages(op):
        return _async_dependencies(op, num_devices, comm_latency)

    placed = list_schedule(
        async_orders(num_devices, last + 1),
        with_transfers(lambda op: costs[op[0]][op[2]], messages, lambda s: s, transfer),
        lambda op: _async_dependencies(
            op, num_devices, comm_latency, queue_capacity, per_step_overhead
        ),
        cores=cores,
    )
    by_op = {
        (kind, b, k): Event(device, start, end, kind, b, k, step=b)
        for (kind, b, k), (device, start, end) in placed.items()
        if b < last and (end > start or kind not in ("S", "U"))
    }
    return steady_state_result(
        "async",
        placed,
        by_op,
        messages,
        num_microbatches=num_microbatches,
        microbatch_size=microbatch_size,
        first=warmup_batches,
        last=last,
        warmup_end=placed[("F", 0, num_devices - 1)][1],
    )
