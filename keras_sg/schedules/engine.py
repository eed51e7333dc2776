"""List scheduling: times a fixed per-device order of operations.

Every device runs its operations one at a time, in the order its schedule
gives; an operation starts as soon as its device is free and every operation
it depends on has ended (plus a delay, the message latency when the two run on
different devices). This is how pipeline runtimes (GPipe, PipeDream,
Megatron-LM) execute a schedule, and it times any deadlock-free order exactly.

With `cores` below the number of devices, the devices share that many cores
(K logical devices of one process on fewer cores): while n devices run an
operation each, each one advances at min(1, cores / n) of its speed alone,
the processor sharing of an operating system's scheduler, and an operation's
cost is its work on a core of its own.
"""

from collections.abc import Callable, Hashable, Sequence

Dependency = tuple[Hashable, float]


def list_schedule(
    orders: Sequence[Sequence[Hashable]],
    duration: Callable[[Hashable], float],
    dependencies: Callable[[Hashable], Sequence[Dependency]],
    cores: int | None = None,
) -> dict[Hashable, tuple[int, float, float]]:
    """Returns the device, start and end time of every operation.

    Args:
        orders: per device, its operations in the order it runs them. Each
            operation (any hashable key) must appear once over all devices.
        duration: the cost of an operation.
        dependencies: the operations an operation waits for, each with the
            delay between that operation's end and the earliest start.
        cores: None (each device runs at full speed), or the number of cores
            the devices share (see the module's docstring); at least the
            number of devices is the same as None.

    Returns:
        A dict from each operation to (device, start, end).

    Raises:
        RuntimeError: if the orders deadlock or depend on a missing operation.
        ValueError: for `cores` that is not None or an integer >= 1.
    """
    if cores is not None:
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise ValueError(
                f"`cores` must be None or an integer >= 1. Received: cores={cores!r}"
            )
        if cores < len(orders):
            return _shared_schedule(orders, duration, dependencies, cores)
    placed: dict[Hashable, tuple[int, float, float]] = {}
    free = [0.0] * len(orders)
    position = [0] * len(orders)
    remaining = sum(len(order) for order in orders)
    while remaining:
        progressed = False
        for device, order in enumerate(orders):
            while position[device] < len(order):
                op = order[position[device]]
                deps = dependencies(op)
                if any(dep not in placed for dep, _ in deps):
                    break
                start = max([free[device]] + [placed[d][2] + lag for d, lag in deps])
                end = start + duration(op)
                placed[op] = (device, start, end)
                free[device] = end
                position[device] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = [
                order[p]
                for order, p in zip(orders, position, strict=True)
                if p < len(order)
            ]
            raise RuntimeError(f"The schedule deadlocks; waiting operations: {stuck}")
    return placed


def _shared_schedule(orders, duration, dependencies, cores):
    """`list_schedule` on `cores` shared cores: an event-driven simulation in
    which the running operations advance together, each at
    min(1, cores / running) units of work per unit of time."""
    placed: dict[Hashable, tuple[int, float, float]] = {}
    position = [0] * len(orders)
    running: dict[int, list] = {}  # device: [op, start, work left]
    remaining = sum(len(order) for order in orders)
    now = 0.0
    while remaining:
        # Start every operation that can start now; note when the next
        # waiting one can.
        next_ready = None
        started = True
        while started:
            started = False
            for device, order in enumerate(orders):
                if device in running or position[device] >= len(order):
                    continue
                op = order[position[device]]
                deps = dependencies(op)
                if any(dep not in placed for dep, _ in deps):
                    continue
                ready = max([now] + [placed[d][2] + lag for d, lag in deps])
                if ready > now:
                    next_ready = ready if next_ready is None else min(next_ready, ready)
                    continue
                work = duration(op)
                position[device] += 1
                if work <= 0:
                    placed[op] = (device, now, now)
                    remaining -= 1
                    started = True  # it may free a waiting operation
                else:
                    running[device] = [op, now, work]
        if not running:
            if not remaining:
                break  # the last operations took no time
            if next_ready is None:
                stuck = [
                    order[p]
                    for order, p in zip(orders, position, strict=True)
                    if p < len(order)
                ]
                raise RuntimeError(
                    f"The schedule deadlocks; waiting operations: {stuck}"
                )
            now = next_ready
            continue
        rate = min(1.0, cores / len(running))
        least = min(left for _, _, left in running.values())
        first_end = now + least / rate
        ends = next_ready is None or first_end <= next_ready
        until = first_end if ends else next_ready
        done = []
        for device, state in running.items():
            # The operations with the least work left end at `first_end`
            # (compared before subtracting, free of rounding).
            if ends and state[2] <= least * (1 + 1e-12):
                done.append(device)
            state[2] -= (until - now) * rate
        now = until
        for device in done:
            op, start, _ = running.pop(device)
            placed[op] = (device, start, now)
            remaining -= 1
    return placed


def with_transfers(
    duration: Callable[[Hashable], float],
    messages: Callable[[Hashable], Sequence[Dependency]],
    device_of: Callable[[int], int],
    transfer: Sequence[float],
) -> Callable[[Hashable], float]:
    """Adds the cost of receiving messages to the operations that receive them.

    A message between stages s and s + 1 crosses cut s. When the two stages
    sit on different devices, the receiving operation also spends
    `transfer[s]` of its device's time on the message (copying it in: a
    gRPC receive on TensorFlow servers), on top of the delay `comm_latency`,
    which holds no device.

    Args:
        duration: the cost of an operation without transfers.
        messages: the operations an operation waits for (keys whose third
            item is the stage), with their delays; only the messages, not
            the end of a step.
        device_of: the device of a stage.
        transfer: per cut, the receiving device's time per message.

    Returns:
        The cost of an operation with its transfers.
    """

    def total(op):
        stage = op[2]
        extra = sum(
            transfer[min(stage, dep[2])]
            for dep, _ in messages(op)
            if device_of(dep[2]) != device_of(stage)
        )
        return duration(op) + extra

    return total
