"""The timeline of a simulated schedule and the numbers measured on it."""

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence

KINDS = ("F", "B", "W", "U", "S", "I", "R")


@dataclasses.dataclass(frozen=True)
class Event:
    """One operation run by one device.

    Attributes:
        device: index of the device that runs it, 0 the first pipeline device.
        start: start time.
        end: end time (`start` plus the operation's cost).
        kind: "F" (stage forward), "B" (stage backward: input and weight
            gradients; the input gradient only in "zb_h1"), "W" (the weight
            gradient, "zb_h1"), "U" (a stage's optimizer update, when its
            cost is given), "S" (gradient synthesizer: forward and backward in
            pipelined DNI, its prediction only in "dni" and
            "fully_unlocked"), "I" (input synthesizer's prediction,
            "fully_unlocked") or "R" (the regressions of a device's
            synthesizers, "dni" and "fully_unlocked").
        microbatch: index of the micro-batch the operation works on. For
            pipelined DNI: the index of the batch (each step feeds one new
            batch into the first stage); for "dni" and "fully_unlocked", the
            step's batch, equal to `step`.
        stage: index of the model stage (for interleaved 1F1B, chunk c of
            device d is stage c * num_devices + d).
        step: training step the operation belongs to (0 for the schedules
            that flush after every step).
    """

    device: int
    start: float
    end: float
    kind: str
    microbatch: int
    stage: int
    step: int = 0

    @property
    def duration(self) -> float:
        """The event's length, `end - start`."""
        return self.end - self.start


@dataclasses.dataclass(frozen=True)
class Warmup:
    """The warm-up of pipelined DNI, reported apart from its steady state.

    Attributes:
        steps: number of warm-up steps (num_devices - 1): steps in which some
            downstream device has no input yet.
        time: length of the warm-up, from 0 to the start of the last
            device's first operation (when every device has an input).
        busy_time: per-device busy time during the warm-up.
        idle_fraction: per-device `1 - busy_time / time` (0 when `time` is 0).
    """

    steps: int
    time: float
    busy_time: tuple[float, ...]
    idle_fraction: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """A simulated schedule: its timeline and its per-step numbers.

    Attributes:
        schedule: the schedule's name.
        num_devices: number of pipeline devices K.
        num_microbatches: micro-batches per training step M (for pipelined
            DNI: the number of steady-state steps measured, one batch each).
        num_chunks: model chunks per device (v; 1 except interleaved 1F1B).
        microbatch_size: examples per micro-batch.
        events: the timeline, sorted by start time then device.
        step_time: time to process `num_microbatches` micro-batches: the
            makespan of one flushed step, or for pipelined DNI the length of
            `num_microbatches` steady-state steps.
        busy_time: per-device busy time within `step_time`.
        idle_fraction: per-device `1 - busy_time / step_time`.
        warmup: pipelined DNI's warm-up, None for the other schedules.
        messages: what the devices wait for: every dependency between two
            devices, as (the event waited for, the event that waits), in the
            order of the waiting event's start. The end of a step, which
            "dni" and "fully_unlocked" wait for on every device, is not
            listed.
    """

    schedule: str
    num_devices: int
    num_microbatches: int
    num_chunks: int
    microbatch_size: int
    events: tuple[Event, ...]
    step_time: float
    busy_time: tuple[float, ...]
    idle_fraction: tuple[float, ...]
    warmup: Warmup | None = None
    messages: tuple[tuple[Event, Event], ...] = ()

    @property
    def makespan(self) -> float:
        """End time of the last event of the whole timeline (warm-up included)."""
        return max((e.end for e in self.events), default=0.0)

    @property
    def bubble_time(self) -> float:
        """Mean idle time per device within `step_time`."""
        return self.step_time - sum(self.busy_time) / self.num_devices

    @property
    def bubble_fraction(self) -> float:
        """Share of device time spent idle within `step_time` (mean idle fraction)."""
        return sum(self.idle_fraction) / self.num_devices

    @property
    def throughput(self) -> float:
        """Micro-batches per time unit."""
        if self.step_time == 0:
            return float("inf")
        return self.num_microbatches / self.step_time

    @property
    def examples_per_time(self) -> float:
        """Examples per time unit: `throughput * microbatch_size`."""
        return self.throughput * self.microbatch_size


def busy_in_window(
    events: Sequence[Event], num_devices: int, start: float, end: float
) -> tuple[float, ...]:
    """Returns each device's busy time within the window [start, end].

    Args:
        events: the timeline.
        num_devices: number of devices.
        start: window start.
        end: window end.

    Returns:
        A tuple with, per device, the total overlap of its events with the window.
    """
    busy = [0.0] * num_devices
    for e in events:
        busy[e.device] += max(0.0, min(e.end, end) - max(e.start, start))
    return tuple(busy)


def cross_device_messages(
    placed: Mapping[Hashable, tuple[int, float, float]],
    dependencies: Callable[[Hashable], Sequence[tuple[Hashable, float]]],
    events: Mapping[Hashable, Event],
) -> tuple[tuple[Event, Event], ...]:
    """Returns the dependencies between events on two different devices.

    Args:
        placed: each operation's (device, start, end), from `list_schedule`.
        dependencies: the operations an operation waits for, with delays.
        events: the event of each operation kept in the timeline.

    Returns:
        (the event waited for, the event that waits) pairs, ordered by the
        waiting event's start, then by device.
    """
    pairs = [
        (events[dep], event)
        for op, event in events.items()
        for dep, _ in dependencies(op)
        if dep in events and placed[dep][0] != placed[op][0]
    ]
    return tuple(sorted(pairs, key=lambda p: (p[1].start, p[1].device, p[0].start)))


def idle_fractions(busy: Sequence[float], window: float) -> tuple[float, ...]:
    """Returns `1 - busy / window` per device (0 for an empty window).

    Args:
        busy: per-device busy time.
        window: the length of the time window.

    Returns:
        A tuple of idle fractions in [0, 1].
    """
    if window <= 0:
        return tuple(0.0 for _ in busy)
    return tuple(max(0.0, 1.0 - b / window) for b in busy)
