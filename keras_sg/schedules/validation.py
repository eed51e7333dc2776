"""The simulator against the schedules measured in docs/benchmarks.md.

`MEASURED` holds, for every schedule measured by `scripts/benchmark_pipeline.py`
and committed in docs/benchmarks.md, its measured examples/s and the
simulator's examples/s printed beside it. That prediction came from the
run's own per-stage costs, read from its profiler trace: forward, backward,
synthesizer, the transfers (counted with the backward) and the optimizer
update (added where it sits in each schedule; see `predict` in the script).
The per-stage costs themselves were not committed, only the prediction.

What the prediction leaves out is the per-step overhead: the time per
training step in which every device waits (on the two TensorFlow servers,
about 10 ms in which the client ends one step and starts the next). Every
schedule benchmarked runs one training step per batch (GPipe one step of 8
micro-batches, pipelined DNI one step per batch in steady state), and
`simulate(..., per_step_overhead=h)` adds h to each step of each of them, so
with the overhead the prediction is

    examples/s = batch / (batch / predicted + h).

`fit_per_step_overhead` fits ONE h per setting (the two servers; the logical
devices of one process, K = 2 and 4 together), never one per schedule.
"""

import dataclasses
import math
from collections.abc import Sequence

BATCH_SIZE = 256
SOURCE = (
    "docs/benchmarks.md, tables 'K = 2 devices: two TensorFlow server "
    "processes', 'K = 2 logical devices', 'K = 4 logical devices' (commit "
    "b2230fb, 2026-11-25) and 'The fully unlocked step on placed devices' "
    "(commit 00edf12, 2026-11-27, medians of 3 runs on a loaded machine)"
)
SETTINGS = ("servers", "logical", "logical (loaded)")


@dataclasses.dataclass(frozen=True)
class Measured:
    """One measured schedule.

    Attributes:
        setting: "servers" (two TensorFlow servers, one core each),
            "logical" (K logical CPU devices in one process) or "logical
            (loaded)" (the same, measured while the machine's load average
            was 5 to 10 on 2 cores).
        num_devices: K.
        schedule: the benchmark's schedule name.
        examples_per_s: measured examples/s.
        predicted: the simulator's examples/s printed beside it (no
            per-step overhead).
    """

    setting: str
    num_devices: int
    schedule: str
    examples_per_s: float
    predicted: float


MEASURED = (
    Measured("servers", 2, "backprop_mp", 4008, 5360),
    Measured("servers", 2, "gpipe", 3477, 4918),
    Measured("servers", 2, "dni_unlocked", 4090, 5015),
    Measured("servers", 2, "pipelined_dni_linear", 4987, 6334),
    Measured("servers", 2, "pipelined_dni_low_rank", 6123, 8679),
    Measured("logical", 2, "backprop_mp", 6931, 5693),
    Measured("logical", 2, "gpipe", 6366, 5041),
    Measured("logical", 2, "dni_unlocked", 8062, 4356),
    Measured("logical", 2, "pipelined_dni_linear", 7051, 6625),
    Measured("logical", 2, "pipelined_dni_low_rank", 8513, 9530),
    Measured("logical", 4, "backprop_mp", 3530, 2494),
    Measured("logical", 4, "gpipe", 2860, 2068),
    Measured("logical", 4, "dni_unlocked", 3765, 1917),
    Measured("logical", 4, "pipelined_dni_linear", 3005, 2864),
    Measured("logical", 4, "pipelined_dni_low_rank", 3919, 3704),
    Measured("logical (loaded)", 2, "backprop_mp", 1765, 971),
    Measured("logical (loaded)", 2, "dni_unlocked", 1699, 614),
    Measured("logical (loaded)", 2, "pipelined_dni_low_rank", 1409, 995),
    Measured("logical (loaded)", 2, "fully_unlocked", 1338, 1320),
    Measured("logical (loaded)", 4, "backprop_mp", 734, 972),
    Measured("logical (loaded)", 4, "dni_unlocked", 603, 270),
    Measured("logical (loaded)", 4, "pipelined_dni_low_rank", 757, 656),
    Measured("logical (loaded)", 4, "fully_unlocked", 694, 602),
)


def with_overhead(row: Measured, per_step_overhead_ms: float) -> float:
    """Returns the simulator's examples/s for `row` with a per-step overhead.

    Args:
        row: a measured schedule.
        per_step_overhead_ms: the overhead per training step, in ms (>= 0).

    Returns:
        `batch / (batch / row.predicted + overhead)`, in examples/s.
    """
    if not (math.isfinite(per_step_overhead_ms) and per_step_overhead_ms >= 0):
        raise ValueError(
            "`per_step_overhead_ms` must be a finite, non-negative number. "
            f"Received: per_step_overhead_ms={per_step_overhead_ms!r}"
        )
    seconds = BATCH_SIZE / row.predicted + per_step_overhead_ms / 1000.0
    return BATCH_SIZE / seconds


def relative_error(row: Measured, per_step_overhead_ms: float = 0.0) -> float:
    """Returns (predicted - measured) / measured, with the overhead added."""
    predicted = with_overhead(row, per_step_overhead_ms)
    return (predicted - row.examples_per_s) / row.examples_per_s


def fit_per_step_overhead(
    rows: Sequence[Measured], max_ms: float = 100.0, resolution_ms: float = 0.01
) -> float:
    """Fits one per-step overhead to `rows`: least squares of log(pred / measured).

    The overhead is searched on a grid from 0 to `max_ms` (it cannot be
    negative: a per-step cost cannot make the prediction faster).

    Args:
        rows: the measured schedules of one setting.
        max_ms: the largest overhead tried, in ms.
        resolution_ms: the grid step, in ms.

    Returns:
        The overhead in ms that minimises the sum of squared log ratios.
    """
    if not rows:
        raise ValueError("`rows` must hold at least one measured schedule.")

    def loss(h):
        return sum(math.log(with_overhead(r, h) / r.examples_per_s) ** 2 for r in rows)

    steps = int(round(max_ms / resolution_ms))
    return min((i * resolution_ms for i in range(steps + 1)), key=loss)


def validation_table(
    overheads_ms: dict[str, float],
) -> list[tuple[Measured, float, float]]:
    """Returns every measured schedule with its error without and with overhead.

    Args:
        overheads_ms: per setting, the per-step overhead in ms (a setting
            left out gets 0).

    Returns:
        (row, error without the overhead, error with it) per measured schedule.
    """
    unknown = set(overheads_ms) - set(SETTINGS)
    if unknown:
        raise ValueError(
            f"`overheads_ms` keys must be settings of {SETTINGS}. "
            f"Received: overheads_ms={overheads_ms!r}"
        )
    return [
        (r, relative_error(r), relative_error(r, overheads_ms.get(r.setting, 0.0)))
        for r in MEASURED
    ]
