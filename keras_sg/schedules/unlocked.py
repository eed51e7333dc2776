"""Times DNI and the fully unlocked step: one batch per step, all stages on it.

Both schedules run one training step per batch, as `DecoupledModel` (method
"dni" or "cdni") and `UnlockedModel` do under `fit`: step m + 1 starts when
every device has finished step m (Keras waits for a step's results before it
starts the next). Within a step, device k runs its stage k and the
synthesizers that live with it:

- "I": the input synthesizer of stage k (k > 0, fully unlocked only)
  predicts the stage's input from x;
- "F": stage k's forward pass;
- "S": the gradient synthesizer at stage k's output predicts the gradient
  there (k < K - 1);
- "B": stage k's backward pass from that synthetic gradient (the top stage:
  from the loss), which also gives the bootstrapped target of the cut below;
- "U": the optimizer update of stage k's weights (when its cost is given),
  right after its backward: it waits for no other device;
- "R": the regressions of the device's synthesizers: the gradient
  synthesizer's on the target that stage k + 1 sent down, and the input
  synthesizer's on the activation that stage k - 1 produced.

Dependencies between devices, each a message (`comm_latency`):

- "dni": F_k waits for F_{k-1} (its input is the true activation: the
  forward pass is still locked); R_k waits for B_{k+1} (the target).
- "fully_unlocked": F_k waits for nothing on another device (its input comes
  from x through I_k); R_k waits for B_{k+1} (the gradient synthesizer's
  target) and for F_{k-1} (the input synthesizer's target).

No stage waits for another's forward or backward pass before its own update
in "fully_unlocked"; only the synthesizers' regressions do, at the end of the
step. A synthesizer's cost (forward and backward, as given to `simulate`) is
split in half between its prediction ("S" or "I") and its regression ("R"):
the regression needs the synthesizer's weight gradients but not its input
gradient, so its backward pass costs about what its forward pass does.
"""

from collections.abc import Sequence

from keras_sg.schedules.engine import list_schedule, with_transfers
from keras_sg.schedules.timeline import (
    Event,
    SimulationResult,
    busy_in_window,
    cross_device_messages,
    idle_fractions,
)

UnlockedOp = tuple[str, int, int]  # (kind, step, stage)
SCHEDULE_NAMES = ("dni", "fully_unlocked")


def unlocked_orders(
    num_devices: int, num_steps: int, forward_unlocked: bool
) -> list[list[UnlockedOp]]:
    """Returns per device its (kind, step, stage) operations, step by step.

    Within a step device k runs I (fully unlocked, k > 0), F, S (k < K - 1),
    B, U, and R (if the device has a synthesizer).

    Args:
        num_devices: number of devices K, one stage each.
        num_steps: number of steps M, one batch each.
        forward_unlocked: whether the stages above the first have input
            synthesizers ("fully_unlocked") or not ("dni").

    Returns:
        Per device k: its operations of steps 0..num_steps-1, in order.
    """
    orders = []
    for k in range(num_devices):
        has_input = forward_unlocked and k > 0
        has_synth = k < num_devices - 1
        kinds = ["I"] if has_input else []
        kinds += ["F", "S", "B", "U"] if has_synth else ["F", "B", "U"]
        if has_input or has_synth:
            kinds.append("R")
        orders.append([(kind, t, k) for t in range(num_steps) for kind in kinds])
    return orders


def _dependencies(
    op: UnlockedOp,
    step_ends: Sequence[Sequence[UnlockedOp]] | None,
    num_devices: int,
    forward_unlocked: bool,
    comm_latency: float,
    per_step_overhead: float = 0.0,
) -> list[tuple[UnlockedOp, float]]:
    """The operations `op` waits for, with the delay after each one's end.

    `step_ends[t]` holds, per device, its last operation of step t; None
    leaves out the end of the step before (the barrier).
    """
    kind, t, k = op
    first = "I" if forward_unlocked and k > 0 else "F"
    deps = []
    if kind == first and t > 0 and step_ends is not None:
        # A step starts when every device has ended the step before: Keras
        # waits for a training step's results before it starts the next.
        deps += [(end, per_step_overhead) for end in step_ends[t - 1]]
    if kind == "F" and k > 0 and not forward_unlocked:
        deps.append((("F", t, k - 1), comm_latency))
    if kind == "R":
        if k < num_devices - 1:
            deps.append((("B", t, k + 1), comm_latency))
        if forward_unlocked and k > 0:
            deps.append((("F", t, k - 1), comm_latency))
    return deps


def simulate_unlocked(
    schedule: str,
    forward: Sequence[float],
    backward: Sequence[float],
    synth: Sequence[float],
    input_synth: Sequence[float],
    *,
    num_microbatches: int,
    microbatch_size: int = 1,
    comm_latency: float = 0.0,
    update: Sequence[float] | None = None,
    transfer: Sequence[float] | None = None,
    per_step_overhead: float = 0.0,
    cores: int | None = None,
) -> SimulationResult:
    """Times `num_microbatches` steps of "dni" or "fully_unlocked".

    Args:
        schedule: "dni" (update unlocked: stages still wait for the forward
            pass below them) or "fully_unlocked" (input synthesizers too).
        forward: per-stage forward cost F_k, one stage per device.
        backward: per-stage backward cost B_k.
        synth: per-stage gradient synthesizer cost S_k, forward and backward
            (0 for the last stage).
        input_synth: per-stage input synthesizer cost I_k, forward and
            backward (0 for the first stage; all 0 for "dni").
        num_microbatches: steps M, one batch (of `microbatch_size` examples)
            each; every device updates its weights once per step.
        microbatch_size: examples per batch.
        comm_latency: delay of every message between two devices.
        update: per-stage optimizer update cost U_k, every step.
        transfer: per cut, the receiving device's time per message.
        per_step_overhead: time every device waits between two steps, after
            the last device ends one and before any starts the next, and
            after the last step (counted as idle).
        cores: None, or the cores the devices share (`simulate`).

    Returns:
        The SimulationResult. `step_time` is the makespan of the M steps
        (there is no warm-up: step 0 is a full step) plus one
        `per_step_overhead` per step; `busy_time` and `idle_fraction` are
        over it.
    """
    if schedule not in SCHEDULE_NAMES:
        raise ValueError(
            f"`schedule` must be one of {SCHEDULE_NAMES}. "
            f"Received: schedule={schedule!r}"
        )
    forward_unlocked = schedule == "fully_unlocked"
    num_devices = len(forward)
    zeros = [0.0] * num_devices
    update = zeros if update is None else update
    transfer = zeros[1:] if transfer is None else transfer
    costs = {
        "I": [c / 2 for c in input_synth],
        "F": forward,
        "S": [c / 2 for c in synth],
        "B": backward,
        "U": update,
        "R": [(s + i) / 2 for s, i in zip(synth, input_synth, strict=True)],
    }
    orders = unlocked_orders(num_devices, num_microbatches, forward_unlocked)
    per_step = [len(order) // num_microbatches for order in orders]
    step_ends = [
        [order[n * (t + 1) - 1] for order, n in zip(orders, per_step, strict=True)]
        for t in range(num_microbatches)
    ]

    def messages(op):
        return _dependencies(op, None, num_devices, forward_unlocked, comm_latency)

    placed = list_schedule(
        orders,
        with_transfers(lambda op: costs[op[0]][op[2]], messages, lambda s: s, transfer),
        lambda op: _dependencies(
            op,
            step_ends,
            num_devices,
            forward_unlocked,
            comm_latency,
            per_step_overhead,
        ),
        cores=cores,
    )
    by_op = {
        (kind, t, k): Event(device, start, end, kind, t, k, step=t)
        for (kind, t, k), (device, start, end) in placed.items()
        if end > start or kind in ("F", "B")
    }
    events = tuple(sorted(by_op.values(), key=lambda e: (e.start, e.device)))
    makespan = max((e.end for e in events), default=0.0) + per_step_overhead
    busy = busy_in_window(events, num_devices, 0.0, makespan)
    return SimulationResult(
        schedule=schedule,
        num_devices=num_devices,
        num_microbatches=num_microbatches,
        num_chunks=1,
        microbatch_size=microbatch_size,
        events=events,
        step_time=makespan,
        busy_time=busy,
        idle_fraction=idle_fractions(busy, makespan),
        messages=cross_device_messages(placed, messages, by_op),
    )
