"""List scheduling: times a fixed per-device order of operations.

Every device runs its operations one at a time, in the order its schedule
gives; an operation starts as soon as its device is free and every operation
it depends on has ended (plus a delay, the message latency when the two run on
different devices). This is how pipeline runtimes (GPipe, PipeDream,
Megatron-LM) execute a schedule, and it times any deadlock-free order exactly.
"""

from collections.abc import Callable, Hashable, Sequence

Dependency = tuple[Hashable, float]


def list_schedule(
    orders: Sequence[Sequence[Hashable]],
    duration: Callable[[Hashable], float],
    dependencies: Callable[[Hashable], Sequence[Dependency]],
) -> dict[Hashable, tuple[int, float, float]]:
    """Returns the device, start and end time of every operation.

    Args:
        orders: per device, its operations in the order it runs them. Each
            operation (any hashable key) must appear once over all devices.
        duration: the cost of an operation.
        dependencies: the operations an operation waits for, each with the
            delay between that operation's end and the earliest start.

    Returns:
        A dict from each operation to (device, start, end).

    Raises:
        RuntimeError: if the orders deadlock or depend on a missing operation.
    """
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
