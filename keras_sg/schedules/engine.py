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
