"""Stages on two TensorFlow servers: same weights as local; a killed worker.

Each test starts two `scripts/tf_server.py` processes on free ports of
127.0.0.1 and always stops them. The training client runs in a subprocess too,
since connecting to a cluster resets TensorFlow's context.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_sg._remote import WorkerLostError, worker_lost

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "scripts" / "tf_server.py"
TRAIN = ROOT / "scripts" / "train.py"
CLIENT = Path(__file__).with_name("cluster_worker.py")
# PYTHONPATH: the subprocesses run this checkout's keras_sg, not the one installed.
ENV = dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL="3",
    KERAS_BACKEND="tensorflow",
    PYTHONPATH=str(ROOT),
)
TASK_1 = "/job:worker/replica:0/task:1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Two TensorFlow servers, one per task of the job `worker`."""

    def __init__(self):
        self.addresses = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
        self.servers = [None, None]

    def start(self, *tasks: int):
        """Starts the servers of `tasks`, all at once (each takes seconds to
        import TensorFlow), and waits until each serves."""
        for task in tasks:
            self.servers[task] = subprocess.Popen(
                [
                    sys.executable,
                    str(SERVER),
                    f"--workers={','.join(self.addresses)}",
                    f"--task={task}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=ENV,
            )
        for task in tasks:
            line = self.servers[task].stdout.readline()  # until it serves (or dies)
            assert line.startswith("serving"), f"server {task} did not start: {line!r}"

    def kill(self, task: int):
        server = self.servers[task]
        if server is not None and server.poll() is None:
            server.kill()
        if server is not None:
            server.wait(timeout=30)

    @property
    def spec(self) -> str:
        return ",".join(self.addresses)


@pytest.fixture
def cluster():
    cluster = Cluster()
    try:
        cluster.start(0, 1)
        yield cluster
    finally:
        for task in range(2):
            cluster.kill(task)


def interrupted(client, args, line, interrupt, timeout=90):
    """Runs the script `client` with `args` until it prints `line`, then
    calls `interrupt()` (a server killed or stopped) and waits up to
    `timeout` s for the client to end.

    Returns the client's last line, as JSON, and the time of the interrupt.
    The client has 120 s to print `line`, and is killed if it is still
    running when this returns or fails.
    """
    process = subprocess.Popen(
        [sys.executable, str(client), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, f"the client did not print {line!r} within 120 s"
        assert process.stdout.readline().strip() == line
        interrupt()
        at = time.time()
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    return json.loads(stdout.strip().splitlines()[-1]), at


def run_client(client, *args):
    """Runs the script `client` with `args` (240 s at most); returns its
    last line, as JSON."""
    done = subprocess.run(
        [sys.executable, str(client), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _client(*args):
    return run_client(CLIENT, *args)


def _train(*args):
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=ROOT,
    )


def test_stage_on_the_second_task_trains_like_a_local_run(cluster):
    result = _client("parity", cluster.spec)
    assert result["devices"] == [
        "/job:worker/replica:0/task:0/device:CPU:0",
        f"{TASK_1}/device:CPU:0",
    ]
    stage_0, stage_1, synth_0 = result["variables"]
    assert stage_0 == ["/job:worker/replica:0/task:0/device:CPU:0"]
    assert stage_1 == [f"{TASK_1}/device:CPU:0"]
    assert synth_0 == stage_0  # a synthesizer lives with the stage below its cut
    assert {d.split("/device:")[0] for d in result["matmul_devices"]} == {
        "/job:worker/replica:0/task:0",
        TASK_1,
    }
    assert result["steps"] == 12
    assert result["max_weight_diff"] < 1e-5


def test_killed_worker_fails_clearly_and_training_resumes(cluster, tmp_path):
    args = [
        "--config=configs/mnist_fcn.py:dni,smoke",
        "--config.epochs=3",
        "--config.data.train_examples=1024",
        f"--config.placement.workers={cluster.spec}",
    ]
    workdir = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, str(TRAIN), *args, f"--workdir={workdir}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "ckpt" / "epoch-0001.keras").exists():
            assert trainer.poll() is None, trainer.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint of epoch 1 in time"
            time.sleep(0.02)
        cluster.kill(1)
        killed_at = time.monotonic()
        # Bounded: the client must fail, not hang on the dead task.
        _, stderr = trainer.communicate(timeout=60)
        waited = time.monotonic() - killed_at
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    assert trainer.returncode == 1, stderr[-3000:]
    lost = f"Lost the TensorFlow server {TASK_1} at {cluster.addresses[1]}"
    assert f"{lost} (it holds stage 1)" in stderr
    assert "resumes from the newest checkpoint" in stderr
    assert "Traceback" not in stderr
    assert waited < 60
    assert not (workdir / "metrics.json").exists()

    cluster.start(1)  # the same address again
    resumed = _train(*args, f"--workdir={workdir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert 1 <= metrics["resumed_from_epoch"] < 3
    assert f"from epoch {metrics['resumed_from_epoch']}" in resumed.stdout

    # The resumed cluster run ends where an uninterrupted local run ends.
    local = tmp_path / "local"
    straight = _train(*args[:-1], f"--workdir={local}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    compared = _client(
        "compare",
        cluster.spec,
        str(workdir / "ckpt" / "epoch-0003.keras"),
        str(local / "ckpt" / "epoch-0003.keras"),
    )
    assert compared["steps"] == [3 * 16, 3 * 16]
    assert compared["max_weight_diff"] < 1e-5


def test_frozen_worker_fails_the_step_within_a_bound(cluster):
    """SIGSTOP keeps the server's connections open: only gRPC pings notice."""
    server = cluster.servers[1]
    try:
        result, stopped_at = interrupted(
            CLIENT,
            ["freeze", cluster.spec],
            "training",
            lambda: os.kill(server.pid, signal.SIGSTOP),
        )
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert result["error"] == "WorkerLostError", result
    lost = f"Lost the TensorFlow server {TASK_1} at {cluster.addresses[1]}"
    assert f"{lost} (it holds stage 1)" in result["message"]
    # At most 20 s without reads, 15 s for the ping's answer, 5 s for the
    # reconnect and 2 s for the probe (keras_sg._remote.KEEPALIVE).
    assert result["at"] - stopped_at < 45


def test_lost_worker_error_names_the_dead_task_and_its_stages():
    import tensorflow as tf

    task_0 = "/job:worker/replica:0/task:0"
    devices = [f"{task_0}/device:CPU:0", f"{TASK_1}/device:CPU:0"] + [
        f"{TASK_1}/device:CPU:0"
    ]
    raw = tf.errors.InternalError(None, None, "Remote address ... poisoned\nmore")
    from concurrent import futures

    import grpc

    # Task 0 still answers (a gRPC server: the probe is a gRPC handshake);
    # task 1's port is shut.
    alive = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = alive.add_insecure_port("127.0.0.1:0")
    alive.start()
    try:
        addresses = {
            task_0: f"127.0.0.1:{port}",
            TASK_1: f"127.0.0.1:{_free_port()}",
        }
        lost = worker_lost(raw, devices, addresses)
        assert isinstance(lost, WorkerLostError)
        assert str(lost).startswith(
            f"Lost the TensorFlow server {TASK_1} at {addresses[TASK_1]} "
            "(it holds stage 1, 2); TensorFlow said InternalError: Remote "
            "address ... poisoned. Restart it"
        )
        # Every task answers: not a lost worker, the error stays as it was.
        assert (
            worker_lost(
                raw, devices, {task_0: addresses[task_0]} | {TASK_1: addresses[task_0]}
            )
            is None
        )
    finally:
        alive.stop(None)
    # Not a cluster model, or not an error a lost peer gives: left alone.
    assert worker_lost(raw, ["/device:CPU:0", "/device:CPU:1"], addresses) is None
    other = tf.errors.InvalidArgumentError(None, None, "x")
    assert worker_lost(other, devices, addresses) is None
    # Without the cluster's addresses, the task named in the message is trusted.
    named = tf.errors.UnavailableError(
        None, None, f"reset by peer from remote target {TASK_1}/device:CPU:0"
    )
    assert "server /job:worker/replica:0/task:1 (it holds stage 1, 2)" in str(
        worker_lost(named, devices, {})
    )
