"""Connecting to a cluster ends within its timeout, naming each server that is down.

Every connect runs in a subprocess with a timeout of its own: a regression
that hangs fails the test instead of hanging the suite.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

import keras_sg
from keras_sg._remote import WorkerLostError, unreachable, worker_lost

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("connect_client.py")
ENV = dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL="3",
    KERAS_BACKEND="tensorflow",
    PYTHONPATH=str(ROOT),  # this checkout's keras_sg, not the one installed
)
TIMEOUT = 3.0  # seconds the client waits; the tests' subprocesses allow 60


def _free_address() -> str:
    """An address where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class FrozenServer:
    """A port the kernel accepts connections on, but nothing ever answers:
    what a SIGSTOP'd or frozen TensorFlow server looks like from outside."""

    def __enter__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.address = f"127.0.0.1:{self.socket.getsockname()[1]}"
        return self.address

    def __exit__(self, *exc):
        self.socket.close()


class GrpcServer:
    """A gRPC server with no services: it completes the handshake."""

    def __enter__(self):
        from concurrent import futures

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc):
        self.server.stop(None)


def _connect(addresses, timeout=TIMEOUT):
    done = subprocess.run(
        [sys.executable, str(CLIENT), ",".join(addresses), str(timeout)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_nothing_listening_fails_within_the_timeout_naming_each_address():
    refused, nowhere = _free_address(), "no-such-host.invalid:2222"
    result = _connect([refused, nowhere])
    error = result["error"]
    assert error.startswith(
        f"No TensorFlow server answered within timeout={TIMEOUT:g} s at 2 of "
        "the cluster's 2 tasks:"
    )
    assert f"/job:worker/replica:0/task:0 at {refused}: Connection refused" in error
    assert f"/job:worker/replica:0/task:1 at {nowhere}: " in error
    assert "pass a longer timeout" in error
    assert TIMEOUT <= result["seconds"] < TIMEOUT + 10


def test_a_frozen_server_is_named_not_waited_for():
    with FrozenServer() as frozen, GrpcServer() as alive:
        result = _connect([alive, frozen])
    error = result["error"]
    assert "at 1 of the cluster's 2 tasks" in error
    assert (
        f"/job:worker/replica:0/task:1 at {frozen}: it accepts TCP connections "
        "but completed no gRPC handshake"
    ) in error
    assert alive not in error
    assert TIMEOUT <= result["seconds"] < TIMEOUT + 10


def test_ctrl_c_stops_a_connect_that_waits():
    client = subprocess.Popen(
        [sys.executable, str(CLIENT), _free_address(), "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert client.stdout.readline().strip() == "connecting"
        time.sleep(1.0)  # inside the wait
        client.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            _, stderr = client.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Say where it hung.
            client.send_signal(signal.SIGUSR1)
            time.sleep(2.0)
            client.kill()
            _, stderr = client.communicate(timeout=30)
            pytest.fail(f"Ctrl-C did not stop the client in 30 s:\n{stderr[-6000:]}")
        waited = time.monotonic() - sent
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert waited < 5


def test_train_py_stops_with_one_line_naming_the_unreachable_worker(tmp_path):
    address = _free_address()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            "--config=configs/mnist_fcn.py:dni,smoke",
            f"--config.placement.workers={address}",
            f"--config.placement.connect_timeout={TIMEOUT}",
            f"--workdir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert (
        "train.py: No TensorFlow server answered within timeout=3 s at 1 of the "
        f"cluster's 1 tasks:\n  /job:worker/replica:0/task:0 at {address}: "
        "Connection refused"
    ) in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), "soon", None])
def test_timeout_must_be_a_positive_number(timeout):
    with pytest.raises(ValueError, match=rf"Received: timeout={timeout!r}"):
        keras_sg.placement.connect_to_cluster(
            {"worker": ["127.0.0.1:1"]}, timeout=timeout
        )


def test_probe_tells_a_frozen_server_from_a_live_one():
    with FrozenServer() as frozen, GrpcServer() as alive:
        start = time.monotonic()
        down = unreachable([alive, frozen, _free_address()], timeout=1.0)
        seconds = time.monotonic() - start
    assert alive not in down
    assert "completed no gRPC handshake" in down[frozen]
    assert len(down) == 2
    assert seconds < 5


def test_lost_worker_names_a_frozen_task():
    import tensorflow as tf

    task_0, task_1 = "/job:worker/replica:0/task:0", "/job:worker/replica:0/task:1"
    devices = [f"{task_0}/device:CPU:0", f"{task_1}/device:CPU:0"]
    raw = tf.errors.UnavailableError(None, None, "ping timeout")
    with FrozenServer() as frozen, GrpcServer() as alive:
        lost = worker_lost(raw, devices, {task_0: alive, task_1: frozen})
    assert isinstance(lost, WorkerLostError)
    assert str(lost).startswith(
        f"Lost the TensorFlow server {task_1} at {frozen} (it holds stage 1); "
        "TensorFlow said UnavailableError: ping timeout."
    )


def test_lost_worker_quotes_the_cause_not_the_graph_error_wrapping():
    import tensorflow as tf

    task_0, task_1 = "/job:worker/replica:0/task:0", "/job:worker/replica:0/task:1"
    devices = [f"{task_0}/device:CPU:0", f"{task_1}/device:CPU:0"]
    # What `fit` raised when task 1 was stopped with SIGSTOP (measured).
    raw = tf.errors.UnavailableError(
        None,
        None,
        "Graph execution error:\n\nDetected at node GroupCrossDeviceControlEdges_1"
        " defined at (most recent call last):\n<stack traces unavailable>\n"
        "2 root error(s) found.\n  (0) UNAVAILABLE:  ping timeout\nAdditional",
    )
    with FrozenServer() as frozen, GrpcServer() as alive:
        lost = worker_lost(raw, devices, {task_0: alive, task_1: frozen})
    assert "TensorFlow said UnavailableError: (0) UNAVAILABLE:  ping timeout." in str(
        lost
    )
