"""Profiling: where the time of a placed keras_sg model's training steps goes.

Profiles N training steps with TensorFlow's profiler and reads the trace:
each device's busy fraction, each stage's forward, backward, synthesizer,
update and transfer costs (told apart by the `stage_k` name scope every keras_sg model
runs stage k in), the step time and the measured timeline, drawn in the
colours of the simulator's (`keras_sg.schedules`).

    result = keras_sg.profiling.profile(model, dataset, steps=4)
    result.busy, result.stage_costs, result.examples_per_second
    result.draw("timeline.png")

or, inside your own `fit`, the callback `Profile(steps=4, skip=1)`. A model
whose stages run on TensorFlow servers is traced from the servers with
`profile_servers`. The trace arithmetic (`op_kind`, `union_length`,
`core_shares`, `shared_work`, `core_time`, `summarize`, `idle_groups`,
`per_step_overhead`) is pure Python, and
`result.predict_examples_per_s("gpipe")` asks the simulator what another
schedule would do with the measured costs.
"""

from keras_sg.profiling.drawing import COLORS, draw_timelines
from keras_sg.profiling.profiler import (
    Profile,
    cpu_seconds,
    placement_of,
    process_cores,
    profile,
    profile_servers,
    read_result,
    read_server_ops,
    read_servers,
    trace_servers,
    update_shares,
)
from keras_sg.profiling.result import ProfileResult
from keras_sg.profiling.trace import (
    KIND_NAMES,
    MEASURED_KINDS,
    TRANSFER_TYPES,
    XLA_OP_NAME,
    Gap,
    Op,
    TraceSummary,
    core_shares,
    core_time,
    cut_transfers,
    idle_gaps,
    idle_groups,
    is_op,
    op_kind,
    per_step_overhead,
    shared_work,
    short_op_name,
    stage_of,
    summarize,
    union_length,
)
from keras_sg.profiling.xplane import read_ops, trace_files

__all__ = [
    "COLORS",
    "Gap",
    "KIND_NAMES",
    "MEASURED_KINDS",
    "Op",
    "Profile",
    "ProfileResult",
    "TRANSFER_TYPES",
    "XLA_OP_NAME",
    "TraceSummary",
    "core_shares",
    "core_time",
    "cpu_seconds",
    "cut_transfers",
    "draw_timelines",
    "idle_gaps",
    "idle_groups",
    "is_op",
    "op_kind",
    "per_step_overhead",
    "placement_of",
    "process_cores",
    "profile",
    "profile_servers",
    "read_ops",
    "read_result",
    "read_server_ops",
    "read_servers",
    "shared_work",
    "short_op_name",
    "stage_of",
    "summarize",
    "trace_files",
    "trace_servers",
    "union_length",
    "update_shares",
]
