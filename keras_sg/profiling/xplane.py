"""Reads op events from TensorFlow profiler traces (XPlane files).

`tf.profiler.experimental.start(logdir)` / `stop()` (and
`tf.profiler.experimental.client.trace` for remote servers) write
`logdir/plugins/profile/<run>/<host>.xplane.pb`: an `XSpace` protobuf, the
file TensorBoard's profile plugin reads. Each plane (here `/host:CPU`) holds
lines (threads; TensorFlow's executor threads are named `tf_Compute/...`),
each line events with an offset and a duration in picoseconds from the
line's start (`timestamp_ns`).
"""

import os
from collections.abc import Iterator
from pathlib import Path

from keras_sg.profiling.trace import XLA_EXECUTABLE_EVENT, XLA_OP_NAME, is_op


def trace_files(logdir: str | os.PathLike) -> list[Path]:
    """The XPlane files under a profiler log folder, sorted by path.

    Raises:
        FileNotFoundError: if the folder holds none.
    """
    files = sorted(Path(logdir).rglob("*.xplane.pb"))
    if not files:
        raise FileNotFoundError(
            f"No profiler trace (*.xplane.pb) under logdir={os.fspath(logdir)!r}"
        )
    return files


def read_ops(
    path: str | os.PathLike, line_prefix: str = "", xla: bool = False
) -> Iterator[tuple[str, float, float]]:
    """Yields (name, start ms, end ms) of every op event in an XPlane file.

    Args:
        path: the `.xplane.pb` file.
        line_prefix: read only the lines (threads) whose name starts with
            it, e.g. "tf_Compute" for TensorFlow's executor threads.
        xla: also yield each run of an XLA-compiled program (the event
            `XLA_EXECUTABLE_EVENT`), named `XLA_OP_NAME`: one op for the
            whole program. Its HLO ops carry no stage scope, so this is for
            traces whose every op belongs to one device (a server's).

    Yields:
        Op events only (see `keras_sg.profiling.trace.is_op`), with times in
        ms on the trace's clock.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith(line_prefix):
                continue
            for event in line.events:
                name = names[event.metadata_id].name
                if xla and name == XLA_EXECUTABLE_EVENT:
                    name = XLA_OP_NAME
                if is_op(name):  # not executor or function wrappers
                    start = (line.timestamp_ns * 1000 + event.offset_ps) / 1e9
                    yield name, start, start + event.duration_ps / 1e9
