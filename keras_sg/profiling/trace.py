"""Pure functions over profiler traces: op names to kinds, unions of
intervals, and the per-device and per-stage numbers of a trace.

No TensorFlow here: the inputs are (name, start, end, device) tuples, so a
test can write a trace by hand. `keras_sg.profiling.xplane` reads them from
TensorFlow's XPlane files.
"""

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence

from keras_sg._checks import check_int
from keras_sg.schedules.timeline import Event

# Kinds of measured work. F, B, S and I as in the simulator's timelines
# (keras_sg.schedules.KINDS); U, T and C exist only in measured ones.
MEASURED_KINDS = ("F", "B", "S", "I", "U", "T", "C")
KIND_NAMES = {
    "F": "forward",
    "B": "backward",
    "S": "synthesizer",
    "I": "input synthesizer",
    "U": "optimizer update",
    "T": "transfer",
    "C": "other",
}

# Every op of stage k runs in the name scope `stage_k` (DecoupledModel._on);
# a scope entered again in one graph becomes stage_k_1, stage_k_2, ...
STAGE = re.compile(r"(?:^|/)stage_(\d+)(?:_\d+)?/")
# An op's event in a trace: "scope/name:OpType" (wrappers such as
# "ExecutorState::Process" or "FunctionRun: __inference_..." are not ops).
OP_EVENT = re.compile(r"[^:\s][^:]*:[A-Za-z_]\w*")
# The name scopes of Keras's optimizers (their default names), entered again
# as adam_1, adam_2, ... when several models share a process; and any scope
# with "optimizer" in its name (loss_scale_optimizer, yours).
OPTIMIZER_NAMES = (
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "ftrl",
    "lamb",
    "lion",
    "muon",
    "nadam",
    "rmsprop",
    "sgd",
)
OPTIMIZER = re.compile(
    rf"(?:^|/)(?:{'|'.join(OPTIMIZER_NAMES)}|[^/]*optimizer[^/]*)(?:_\d+)?/",
    re.IGNORECASE,
)
# Grappler's rewrites name their ops in a scope of the rewriter, such as
# ArithmeticOptimizer/ or LayoutOptimizer/: not an optimizer's scope.
GRAPPLER = re.compile(r"(?<![^/])[A-Z][A-Za-z]*Optimizer/")
# Op types that move a tensor between devices or tasks: the send and receive
# of a cross-device edge (on logical devices and between servers), and the
# queue ops of AsyncPipelinedModel's activation and target queues. Only
# `_Send` shows in the traces seen so far on logical devices: `_Recv` and
# the queue ops are asynchronous kernels, which TensorFlow's executor does
# not trace as ops (their waiting time is in no op).
TRANSFER_TYPES = re.compile(
    r"_Send|_Recv|_HostSend|_HostRecv|Queue(?:Enqueue|Dequeue)\w*"
)
# A call of a program compiled by XLA (`jit_compile=True`) on a CPU: the
# profiler's event for the whole run of the program, on the executor thread
# that launched it. Its HLO ops are no TensorFlow ops and carry no scope, so
# the program is read as one op of this name (kind "C"): whole, not split
# into forward, backward and update.
XLA_EXECUTABLE_EVENT = "CpuExecutable::ExecuteAsyncOnStream"
XLA_OP_NAME = "xla/CpuExecutable:XlaProgram"


@dataclasses.dataclass(frozen=True)
class Op:
    """One op event of a trace.

    Attributes:
        name: the event's name, "scope/name:OpType".
        start: start time (ms).
        end: end time (ms).
        device: the timeline row (device) that ran it, or None when the trace
            does not tell (logical devices of one process: there the op's
            `stage_k` scope places it).
    """

    name: str
    start: float
    end: float
    device: int | None = None


@dataclasses.dataclass(frozen=True)
class TraceSummary:
    """What a trace says, per device and per stage.

    Attributes:
        busy: per device, the length of the union of its op intervals over
            `window` (ops that run at once on one device count once).
        costs: per device, the summed durations of its ops by kind (see
            `op_kind`; transfers "T" apart), in ms per step.
        stage_costs: per stage, the same from the ops of its `stage_k` scope;
            the optimizer update ("U") and other work ("C") of a device are
            shared by the stages on it.
        core_costs: per device, its busy time by kind, in ms per step, with
            the time in which several of its ops run at once shared equally
            by them (`core_shares`): the costs of a device that runs on one
            core, where two ops at once each run at about half speed and
            each one's duration counts the other's work too. They add up to
            the device's busy time (plus its share of an update that no
            device claims, as in `costs`).
        unplaced: ms per step of ops that neither carry a stage scope nor
            run on a known device (on logical devices: the loss, metrics,
            step counters); in no device's numbers.
        events: the ops placed on a device, as timeline events with times in
            ms from the window's start (microbatch and step are -1: a trace
            does not tell them; stage is -1 for ops without a stage scope).
        window: ms from the first placed op's start to the last one's end.
        steps: training steps the trace covers.
        op_union: ms in which at least one op of the trace ran, placed or
            not (the union of every op's interval; see `per_step_overhead`).
        idle_groups: per device, the largest groups of its idle time, by
            the ops on either side of each gap (`idle_groups`, top 3).
        work_costs: with `cores`, per device, `core_costs` as the work of a
            device with a core of its own, the devices sharing `cores`
            cores (`shared_work`): the costs for `simulate(..., cores=...)`.
            Empty without `cores`.
        cores: the cores the devices shared, or None.
        core_time: with `cores`, ms of core time per step that every op of
            the trace used, placed or not (`core_time`); None without.
    """

    busy: tuple[float, ...]
    costs: tuple[dict[str, float], ...]
    stage_costs: tuple[dict[str, float], ...]
    unplaced: float
    events: tuple[Event, ...]
    window: float
    steps: float
    core_costs: tuple[dict[str, float], ...] = ()
    op_union: float | None = None
    idle_groups: tuple[list[dict], ...] = ()
    work_costs: tuple[dict[str, float], ...] = ()
    cores: int | None = None
    core_time: float | None = None


def is_op(name: str) -> bool:
    """Whether a trace event's name is an op's ("scope/name:OpType")."""
    return OP_EVENT.fullmatch(name) is not None


def stage_of(name: str) -> int | None:
    """The k of the first `stage_k` scope in an op's name, None without one."""
    found = STAGE.search(name)
    return int(found.group(1)) if found else None


def op_kind(name: str) -> str:
    """The kind of work an op does, from its name.

    Returns:
        "T" (a transfer: an op of a type in `TRANSFER_TYPES`, in any
        scope); "U" (the optimizer's update: the scope of a Keras optimizer,
        "adam/", "adam_1/", "sgd/", ..., or a scope with "optimizer" in its
        name, also under a stage scope, where AsyncPipelinedModel's stage
        optimizers run); "F" (a stage's forward), "B" (its backward: under
        a gradient scope), "S" (a gradient synthesizer: prediction and
        regression), "I" (an input synthesizer), all four under a `stage_k`
        scope; or "C" (anything else: the loss, bookkeeping, and a whole
        XLA program, `XLA_OP_NAME`).
    """
    if TRANSFER_TYPES.fullmatch(name.rsplit(":", 1)[-1]):
        return "T"
    name = GRAPPLER.sub("", name)
    stage = STAGE.search(name)
    if stage and OPTIMIZER.search(name, stage.end() - 1):
        return "U"
    if stage:
        if "input_synthesizer" in name:
            return "I"
        if "synthesizer" in name:
            return "S"
        return "B" if "gradient" in name.lower() else "F"
    if OPTIMIZER.search(name):
        return "U"
    return "C"


def union_length(
    intervals: Iterable[Sequence[float]],
    begin: float = -math.inf,
    end: float = math.inf,
) -> float:
    """Length of the union of intervals, clipped to [begin, end].

    Args:
        intervals: (start, end, ...) tuples in any order; items after the
            first two are ignored.
        begin: the window's start.
        end: the window's end.

    Returns:
        The time within [begin, end] covered by at least one interval.
    """
    covered, last_end = 0.0, begin
    for interval in sorted(intervals, key=lambda i: (i[0], i[1])):
        start = max(interval[0], last_end)
        stop = min(interval[1], end)
        if stop > start:
            covered += stop - start
            last_end = stop
    return covered


@dataclasses.dataclass(frozen=True)
class Gap:
    """A time in which a device ran no op.

    Attributes:
        start: when its last running op ended (ms).
        end: when its next op started (ms).
        before: the name of the op whose end began the gap: of the ops that
            started before it, the one that ended last.
        after: the name of the op that ended it.
    """

    start: float
    end: float
    before: str
    after: str

    @property
    def length(self) -> float:
        return self.end - self.start


def idle_gaps(ops: Iterable[Op], device: int | None = None) -> list[Gap]:
    """The times within a trace in which a device ran no op, in order.

    What a device waits for shows in the ops on either side of its gaps: a
    gap that always follows the send of a cross-device edge and ends with
    the next step's first op is a wait for the other side. Group the gaps
    by (before, after) names to see where the idle time goes.

    Args:
        ops: the trace's op events (`Op`), in any order.
        device: read only the ops of this device (`Op.device`); None: all
            of `ops`, which should then be one device's.

    Returns:
        The gaps between the first op's start and the last op's end.
    """
    mine = sorted(
        (op for op in ops if device is None or op.device == device),
        key=lambda op: (op.start, op.end),
    )
    gaps = []
    if not mine:
        return gaps
    last = mine[0]
    for op in mine[1:]:
        if op.start > last.end:
            gaps.append(Gap(last.end, op.start, last.name, op.name))
        if op.end > last.end:
            last = op
    return gaps


# The scopes of loops and branches, in the names of the ops inside them.
LOOP_SCOPES = re.compile(r"while/body/_\d+/while/|cond(?:_\d+)?/(?:then|else)/_\d+/")


def short_op_name(name: str) -> str:
    """An op's trace name without the scopes of the loops and branches it
    runs in: "while/body/_1/while/stage_1/x:Op" -> "stage_1/x:Op"."""
    return LOOP_SCOPES.sub("", name)


def idle_groups(
    ops: Iterable[Op], steps: float, device: int | None = None, top: int = 3
) -> list[dict]:
    """A device's idle time, grouped by the ops on either side of each gap.

    The gaps of `idle_gaps`, keyed by the names of the op that began and
    the op that ended each one, without their loop and branch scopes
    (`short_op_name`): every step of a loop then falls in the same group.

    Args:
        ops: the trace's op events (`Op`), names included.
        steps: training steps the trace covers (the groups' times are per
            step).
        device: read only the ops of this device; None: all of `ops`, which
            should then be one device's.
        top: how many groups to return.

    Returns:
        The `top` largest groups, largest first, each a dict of "before" and
        "after" (the shortened names), "ms_per_step" (their idle ms per
        step) and "gaps" (their count).
    """
    if not steps > 0:
        raise ValueError(f"`steps` must be positive. Received: steps={steps!r}")
    groups = {}
    for gap in idle_gaps(ops, device):
        key = (short_op_name(gap.before), short_op_name(gap.after))
        total, count = groups.get(key, (0.0, 0))
        groups[key] = (total + gap.length, count + 1)
    largest = sorted(groups.items(), key=lambda item: -item[1][0])[:top]
    return [
        {"before": b, "after": a, "ms_per_step": total / steps, "gaps": count}
        for (b, a), (total, count) in largest
    ]


def per_step_overhead(
    intervals: Iterable[Sequence[float]], wall_time: float, steps: float
) -> float:
    """The per-step overhead: ms per step in which no op runs, on any device.

    In the wall time of some traced steps, the time in which the trace shows
    no op running (the union of every op's interval is the time in which at
    least one device works), per step:

        (wall_time - length of the union of the ops' intervals) / steps.

    It is the idle time in which every device waits: for the client to
    finish one step and start the next (Python, Keras's callbacks, the
    dispatch of the step's function and of its input), for messages in
    flight while no device works, and between one op and the next when no
    other runs (the executor's dispatch; more ops, more such gaps). The
    simulator adds it to each step (`simulate(..., per_step_overhead=)`).

    Args:
        intervals: (start, end, ...) of every op of the trace, in ms; only
            their union counts, so ops that overlap (two devices) count once.
        wall_time: ms of wall time of the traced steps (on the servers, the
            trace's window).
        steps: training steps in that time (may be fractional).

    Returns:
        ms per step.

    Raises:
        ValueError: if `steps` is not positive, or the ops cover more than
            `wall_time` (ops from outside the timed steps).
    """
    if not steps > 0:
        raise ValueError(f"`steps` must be positive. Received: steps={steps!r}")
    busy = union_length(intervals)
    check_ops_within(busy, wall_time)
    return (wall_time - busy) / steps


def check_ops_within(busy: float, wall_time: float):
    """Raises if `busy` ms of ops do not fit in the traced steps' wall time
    (ops from outside the timed steps)."""
    if busy > wall_time * (1 + 1e-9):
        raise ValueError(
            "The ops of the trace cover more time than the traced steps' "
            f"wall time: some ran outside them. Received: wall_time={wall_time!r} "
            f"with {busy!r} ms of ops"
        )


def core_shares(intervals: Iterable[Sequence]) -> dict[str, float]:
    """One device's busy time by kind, overlapping ops sharing it equally.

    While n ops run at once, each is given 1/n of that time, so the kinds'
    times add up to the union of the intervals (`union_length`). On a device
    with one core this is the work each kind did: two ops that overlap share
    the core, and their summed durations count the shared time twice.

    Args:
        intervals: (start, end, kind, ...) tuples of one device, in any
            order; items after the third are ignored.

    Returns:
        A dict from each kind of `intervals` to its time.
    """
    # One device alone on a core: every instant counts in full.
    (shares,), _ = shared_work([intervals], [], cores=1)
    return shares


def core_time(intervals: Iterable[Sequence], cores: int) -> float:
    """The core time some ops used on `cores` cores: at each instant, n ops
    running use min(n, cores) cores.

    Unlike a device's busy time, this counts the work of ops that ran at
    once on several cores in full: a logical device whose ops run two at a
    time on two cores (GPipe's micro-batches, on a process's shared pool of
    threads) used two cores, not one. The step of a model on `cores` cores
    can then take no less than this over `cores`.

    Args:
        intervals: (start, end, ...) of the ops, in any order.
        cores: the cores they shared, >= 1.

    Returns:
        The core time, in the intervals' unit.
    """
    check_int("cores", cores, 1)
    points = []
    for start, end, *_ in intervals:
        if end > start:
            points += [(start, 1), (end, -1)]
    total, running, last = 0.0, 0, None
    for time, change in sorted(points):  # ends before starts at one instant
        if last is not None:
            total += min(running, cores) * (time - last)
        last = time
        running += change
    return total


def shared_work(
    placed: Sequence[Iterable[Sequence]],
    unplaced: Iterable[Sequence],
    cores: int,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Devices' busy time by kind as work, when they share `cores` cores.

    The inverse of `keras_sg.schedules.simulate(..., cores=...)`'s
    processor sharing. At each instant, n is the number of devices that run
    at least one op plus the number of ops that no device claims, and each
    of them advances at min(1, cores / n) of its speed alone; a device's
    time then counts as that much work, shared equally by its ops that run
    at once (as `core_shares`), and an unclaimed op's time likewise. With n
    <= `cores` throughout, the devices' work is `core_shares`.

    Args:
        placed: per device, its (start, end, kind, ...) intervals.
        unplaced: (start, end, kind, ...) intervals of ops on no device.
        cores: the cores the devices share, >= 1.

    Returns:
        (per device, a dict of work by kind; the unclaimed ops' work by kind).
    """
    check_int("cores", cores, 1)
    owners, kinds, points = [], [], []
    groups = [*placed, unplaced]
    free = len(groups) - 1  # the owner index of unclaimed ops
    for owner, intervals in enumerate(groups):
        for start, end, kind, *_ in intervals:
            i = len(kinds)
            owners.append(owner)
            kinds.append(kind)
            if end > start:
                points += [(start, 1, i), (end, -1, i)]
    work: list[dict[str, float]] = [{} for _ in groups]
    for owner, kind in zip(owners, kinds, strict=True):
        work[owner].setdefault(kind, 0.0)
    running: list[set[int]] = [set() for _ in groups]
    last = None
    # At one instant, ends before starts: touching ops do not overlap.
    for time, change, i in sorted(points, key=lambda p: (p[0], p[1])):
        if last is not None and time > last:
            n = sum(1 for g in range(free) if running[g]) + len(running[free])
            if n:
                worked = min(1.0, cores / n) * (time - last)
                for g in range(free):
                    for j in running[g]:
                        work[g][kinds[j]] += worked / len(running[g])
                for j in running[free]:
                    work[free][kinds[j]] += worked
        last = time
        if change > 0:
            running[owners[i]].add(i)
        else:
            running[owners[i]].discard(i)
    return work[:free], work[free]


def summarize(
    ops: Iterable[Op],
    *,
    num_devices: int,
    stage_devices: Sequence[int],
    steps: float,
    update_shares: Sequence[float] | None = None,
    cores: int | None = None,
) -> TraceSummary:
    """Busy fractions, costs and timeline of a trace.

    An op is placed on its `device` if the trace tells it; else on the
    device of its stage (`stage_devices[k]` for a `stage_k` scope). On
    logical devices the optimizer's ops carry neither: their total is shared
    out by `update_shares` (each device's share of the trained weights, for
    an update whose cost grows with the weights) and they are not in the
    timeline or the busy fractions. Other ops without a device are
    `unplaced`.

    Args:
        ops: the trace's op events.
        num_devices: number of devices (timeline rows).
        stage_devices: the device of each stage.
        steps: training steps the trace covers (costs are per step).
        update_shares: per device, its share of the unplaced optimizer
            update; by default equal shares.
        cores: the cores the devices shared (logical devices of one
            process), for `work_costs` and `core_time`; None leaves them
            out.

    Returns:
        A TraceSummary.
    """
    num_stages = len(stage_devices)
    if steps <= 0:
        raise ValueError(f"`steps` must be positive. Received: steps={steps}")
    for device in stage_devices:
        if not 0 <= device < num_devices:
            raise ValueError(
                f"Every stage's device must be in [0, {num_devices}). "
                f"Received: stage_devices={list(stage_devices)}"
            )
    if update_shares is None:
        update_shares = [1.0 / num_devices] * num_devices
    if len(update_shares) != num_devices or abs(sum(update_shares) - 1) > 1e-9:
        raise ValueError(
            f"`update_shares` must hold {num_devices} shares summing to 1. "
            f"Received: update_shares={list(update_shares)}"
        )
    placed = [[] for _ in range(num_devices)]
    named = [[] for _ in range(num_devices)]
    costs = [dict.fromkeys(MEASURED_KINDS, 0.0) for _ in range(num_devices)]
    stage_costs = [dict.fromkeys(MEASURED_KINDS, 0.0) for _ in range(num_stages)]
    update = unplaced = 0.0
    every, loose = [], []
    for op in ops:
        every.append((op.start, op.end))
        kind, stage = op_kind(op.name), stage_of(op.name)
        if stage is not None and stage >= num_stages:
            stage = None
        device = op.device
        if device is None and stage is not None:
            device = stage_devices[stage]
        duration = op.end - op.start
        if device is None:
            if kind == "U":
                update += duration
            else:
                unplaced += duration
            loose.append((op.start, op.end, kind))
            continue
        placed[device].append((op.start, op.end, kind, -1 if stage is None else stage))
        named[device].append(op)
        costs[device][kind] += duration
        if stage is not None:
            stage_costs[stage][kind] += duration
    if not any(placed):
        raise ValueError(
            "The trace holds no op of a stage (name scope `stage_k`) or of a "
            "known device: was a keras_sg model trained while it was taken?"
        )
    core = [dict.fromkeys(MEASURED_KINDS, 0.0) for _ in range(num_devices)]
    for device in range(num_devices):
        costs[device]["U"] += update * update_shares[device]
        core[device].update(core_shares(placed[device]))
        core[device]["U"] += update * update_shares[device]
    work = []
    if cores is not None:
        work, loose_work = shared_work(placed, loose, cores)
        for device in range(num_devices):
            work[device] = dict(dict.fromkeys(MEASURED_KINDS, 0.0), **work[device])
            work[device]["U"] += loose_work.get("U", 0.0) * update_shares[device]
    # A device's update and other work, shared by its stages (the update
    # is under a stage scope only with AsyncPipelinedModel's per-stage
    # optimizers, one stage per device in its use so far).
    for k, device in enumerate(stage_devices):
        mine = sum(d == device for d in stage_devices)
        for kind in ("U", "C"):
            stage_costs[k][kind] = costs[device][kind] / mine
    begin = min(start for ivs in placed for start, *_ in ivs)
    finish = max(end for ivs in placed for _, end, *_ in ivs)
    window = finish - begin
    busy = tuple(
        union_length(ivs, begin) / window if window > 0 else 0.0 for ivs in placed
    )
    events = sorted(
        (
            Event(d, s - begin, e - begin, kind, -1, stage, -1)
            for d, ivs in enumerate(placed)
            for s, e, kind, stage in ivs
        ),
        key=lambda e: (e.start, e.device, e.end),
    )

    def per_step(cost):
        return {kind: value / steps for kind, value in cost.items()}

    return TraceSummary(
        busy=busy,
        costs=tuple(per_step(c) for c in costs),
        stage_costs=tuple(per_step(c) for c in stage_costs),
        unplaced=unplaced / steps,
        events=tuple(events),
        window=window,
        steps=steps,
        core_costs=tuple(per_step(c) for c in core),
        op_union=union_length(every),
        idle_groups=tuple(idle_groups(ops, steps) for ops in named),
        work_costs=tuple(per_step(c) for c in work),
        cores=cores,
        core_time=None if cores is None else core_time(every, cores) / steps,
    )


def cut_transfers(
    costs: Sequence[dict[str, float]],
    stage_devices: Sequence[int],
    messages: float,
) -> list[float]:
    """Per cut, ms a message across it costs: the simulator's `transfer`.

    A device's transfer time ("T" of its `costs`, sends and receives in both
    directions) is shared equally by the cuts between it and another device;
    a cut's cost is the sum of its two devices' shares over the messages that
    cross it per step. A cut within one device costs 0.

    Args:
        costs: per device, ms per step by kind (`TraceSummary.costs`).
        stage_devices: the device of each stage; cut k lies between stages k
            and k + 1.
        messages: messages across each cut per step: 2 for a step with one
            activation forward and one gradient (or target) back, 2 M for M
            micro-batches.

    Returns:
        One cost per cut (len(stage_devices) - 1 of them), in ms per message.
    """
    if not messages > 0:
        raise ValueError(f"`messages` must be positive. Received: messages={messages}")
    for device in stage_devices:
        if not 0 <= device < len(costs):
            raise ValueError(
                f"Every stage's device must be in [0, {len(costs)}). "
                f"Received: stage_devices={list(stage_devices)}"
            )
    crossing = [
        (a, b) for a, b in zip(stage_devices[:-1], stage_devices[1:], strict=True)
    ]
    touching = [0] * len(costs)
    for a, b in crossing:
        if a != b:
            touching[a] += 1
            touching[b] += 1
    result = []
    for a, b in crossing:
        if a == b:
            result.append(0.0)
            continue
        shares = (
            costs[a].get("T", 0.0) / touching[a] + costs[b].get("T", 0.0) / touching[b]
        )
        result.append(shares / messages)
    return result
