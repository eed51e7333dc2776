"""Reading XPlane files: hand-written XSpace protobufs, as the profiler writes
them, read into op events, a local result and the servers' result."""

import types

import pytest
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from keras_sg.profiling import (
    XLA_OP_NAME,
    read_ops,
    read_result,
    read_servers,
    trace_files,
)
from keras_sg.profiling.trace import XLA_EXECUTABLE_EVENT


def _write(path, lines):
    """An XSpace with one plane; lines: {name: (timestamp_ns, [(event name,
    offset ps, duration ps), ...])}."""
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    ids = {}
    for line_name, (timestamp, events) in lines.items():
        line = plane.lines.add(name=line_name, timestamp_ns=timestamp)
        for name, offset, duration in events:
            if name not in ids:
                ids[name] = len(ids) + 1
                plane.event_metadata[ids[name]].id = ids[name]
                plane.event_metadata[ids[name]].name = name
            line.events.add(
                metadata_id=ids[name], offset_ps=offset, duration_ps=duration
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(space.SerializeToString())
    return path


MS = 10**9  # picoseconds


def _local(folder):
    return _write(
        folder / "plugins" / "profile" / "run" / "host.xplane.pb",
        {
            "tf_Compute/1": (
                2_000_000,  # 2 ms
                [
                    ("ExecutorState::Process", 0, 9 * MS),
                    ("s/stage_0/block/MatMul:MatMul", 0, 4 * MS),
                    ("s/stage_1/block/MatMul:MatMul", 4 * MS, 2 * MS),
                    ("s/adam/Sub:Sub", 7 * MS, 2 * MS),
                ],
            ),
            "tf_Compute/2": (
                3_000_000,  # 3 ms
                [
                    ("s/gradient_tape/stage_1/block/MatMul:MatMul", 3 * MS, MS),
                    ("FunctionRun: __inference_step_1", 0, MS),
                ],
            ),
            "python": (0, [("EagerLocalExecute: Foo", 0, MS)]),
        },
    )


def test_op_events_in_ms_and_wrappers_left_out(tmp_path):
    path = _local(tmp_path)
    assert trace_files(tmp_path) == [path]
    assert list(read_ops(path)) == [
        ("s/stage_0/block/MatMul:MatMul", 2.0, 6.0),
        ("s/stage_1/block/MatMul:MatMul", 6.0, 8.0),
        ("s/adam/Sub:Sub", 9.0, 11.0),
        ("s/gradient_tape/stage_1/block/MatMul:MatMul", 6.0, 7.0),
    ]
    assert [op[0] for op in read_ops(path, line_prefix="tf_Compute/2")] == [
        "s/gradient_tape/stage_1/block/MatMul:MatMul"
    ]


def test_no_trace_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="No profiler trace"):
        trace_files(tmp_path)


def _variable(device, shape):
    return types.SimpleNamespace(
        value=types.SimpleNamespace(device=device), shape=shape
    )


def test_result_of_a_local_trace(tmp_path):
    _local(tmp_path)
    model = types.SimpleNamespace(
        stages=[object(), object()],
        devices=["/device:CPU:0", "/cpu:1"],
        trainable_variables=[
            _variable("/job:localhost/replica:0/task:0/device:CPU:0", (3, 10)),
            _variable("/job:localhost/replica:0/task:0/device:CPU:1", (10,)),
        ],
    )
    result = read_result(tmp_path, model, steps=2, wall_time=10.0, batch_size=8)
    assert result.devices == ("/device:CPU:0", "/cpu:1")
    assert result.window == 6.0  # 2 ms to 8 ms
    assert result.busy == (4.0 / 6.0, 2.0 / 6.0)  # [2, 6]; [6, 8] and [6, 7]
    # The update (2 ms) shared 30:10 by the weights on each device.
    assert result.costs[0] == {
        "F": 2.0,
        "B": 0,
        "S": 0,
        "I": 0,
        "U": 0.75,
        "T": 0,
        "C": 0,
    }
    assert result.costs[1] == {
        "F": 1.0,
        "B": 0.5,
        "S": 0,
        "I": 0,
        "U": 0.25,
        "T": 0,
        "C": 0,
    }
    assert result.step_time == 5.0
    assert result.traced_step_time == 3.0
    assert result.examples_per_second == 8 * 2 / 10.0 * 1000


def test_result_of_the_servers_traces(tmp_path):
    # One file per server, named host_port; every op counts, on its server.
    run = tmp_path / "plugins" / "profile" / "run"
    _write(
        run / "127.0.0.1_2222.xplane.pb",
        {
            "tf_Compute/1": (
                1_000_000,
                [
                    ("s/stage_1/block/MatMul:MatMul", 0, 2 * MS),
                    ("s/_Recv:_Recv", 2 * MS, MS),
                ],
            ),
            "python": (0, [("s/stage_1/ignored:MatMul", 0, 50 * MS)]),
        },
    )
    _write(
        run / "127.0.0.1_1111.xplane.pb",
        {
            "tf_Compute/1": (
                0,
                [
                    ("s/stage_0/block/MatMul:MatMul", 0, 3 * MS),
                    ("s/adam/Sub:Sub", 3 * MS, MS),
                ],
            )
        },
    )
    model = types.SimpleNamespace(
        stages=[object(), object()],
        devices=[
            "/job:worker/replica:0/task:0/device:CPU:0",
            "/job:worker/replica:0/task:1/device:CPU:0",
        ],
    )
    addresses = ["127.0.0.1:1111", "grpc://127.0.0.1:2222"]
    result = read_servers(tmp_path, model, addresses, step_time=2.0, batch_size=4)
    assert result.devices == ("127.0.0.1:1111", "127.0.0.1:2222")
    assert result.window == 4.0
    assert result.steps == 2.0  # 4 ms over 2 ms a step
    assert result.busy == (1.0, 0.75)
    assert result.costs[0] == {
        "F": 1.5,
        "B": 0,
        "S": 0,
        "I": 0,
        "U": 0.5,
        "T": 0,
        "C": 0,
    }
    # The receive is a transfer, its time the message's on the receiver.
    assert result.costs[1] == {
        "F": 1.0,
        "B": 0,
        "S": 0,
        "I": 0,
        "U": 0,
        "T": 0.5,
        "C": 0,
    }
    assert result.cut_transfers(messages=2) == [0.25]
    assert result.step_time == 2.0
    assert result.examples_per_second == 2000.0


def test_a_stage_off_the_servers_is_named(tmp_path):
    _write(
        tmp_path / "127.0.0.1_1111.xplane.pb",
        {"tf_Compute/1": (0, [("s/stage_0/x:MatMul", 0, MS)])},
    )
    model = types.SimpleNamespace(stages=[object()], devices=["/device:CPU:0"])
    with pytest.raises(ValueError, match="Received: device='/device:CPU:0'"):
        read_servers(tmp_path, model, ["127.0.0.1:1111"], step_time=1.0)


def test_a_servers_xla_program_counts_as_one_op(tmp_path):
    # A run of a program compiled by XLA is one event on the executor thread
    # that launched it; read from a server's trace, it is an op of kind C.
    run = tmp_path / "plugins" / "profile" / "run"
    path = _write(
        run / "127.0.0.1_1111.xplane.pb",
        {
            "tf_Compute/1": (
                0,
                [
                    ("ExecutorState::Process", 0, 8 * MS),
                    (XLA_EXECUTABLE_EVENT, MS, 5 * MS),
                    ("s/stage_0/QueueEnqueueV2:QueueEnqueueV2", 6 * MS, MS),
                ],
            ),
            "tf_Compute/2": (0, [(XLA_EXECUTABLE_EVENT, 3 * MS, 5 * MS)]),
            # Its HLO ops, on Eigen's threads: not read.
            "tf_numa_-1_Eigen/1": (0, [("MatMul.2", MS, 4 * MS)]),
        },
    )
    # Left out by default (a local trace: no device to give it).
    assert [op[0] for op in read_ops(path)] == [
        "s/stage_0/QueueEnqueueV2:QueueEnqueueV2"
    ]
    assert list(read_ops(path, xla=True)) == [
        (XLA_OP_NAME, 1.0, 6.0),
        ("s/stage_0/QueueEnqueueV2:QueueEnqueueV2", 6.0, 7.0),
        (XLA_OP_NAME, 3.0, 8.0),
    ]
    model = types.SimpleNamespace(
        stages=[object()],
        devices=["/job:worker/replica:0/task:0/device:CPU:0"],
        _jit_compile=True,
    )
    with pytest.warns(UserWarning, match="one op of kind C"):
        result = read_servers(tmp_path, model, ["127.0.0.1:1111"], step_time=3.5)
    assert result.window == 7.0  # 1 ms to 8 ms
    assert result.busy == (1.0,)
    # Per step (7 ms over 3.5 ms a step: 2 steps): two programs of 5 ms,
    # one enqueue of 1 ms.
    assert result.costs[0]["C"] == 5.0 and result.costs[0]["T"] == 0.5
    assert result.costs[0]["F"] == result.costs[0]["B"] == result.costs[0]["U"] == 0
    # Sharing the core: [1, 3] one program, [3, 6] both (1.5 each), [6, 7]
    # the second with the enqueue (0.5 each), [7, 8] the second alone.
    assert result.core_costs[0]["C"] == pytest.approx((2 + 3 + 0.5 + 1) / 2)
    assert result.core_costs[0]["T"] == pytest.approx(0.5 / 2)
