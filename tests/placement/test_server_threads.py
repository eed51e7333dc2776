"""A server pinned to one core runs its clients' remote functions side by side.

TensorFlow sizes the pool that runs a client's functions on a server from
TF_NUM_INTEROP_THREADS or the process's cores, not from the server's
configuration; `start_server` sets the variable (see its docstring).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from test_cluster import ENV, SERVER, _free_port

from keras_sg.placement import cluster as cluster_module

CLIENT = Path(__file__).with_name("threads_client.py")


class _FakeServer:
    def __init__(self, *args, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def no_server(monkeypatch):
    """start_server without a server: it only sets its configuration."""
    monkeypatch.setattr(tf.distribute, "Server", _FakeServer)
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)


def test_inter_op_threads_size_the_remote_function_pool(no_server):
    server = cluster_module.start_server(["127.0.0.1:1"], 0, inter_op_threads=3)
    assert server.kwargs["config"].inter_op_parallelism_threads == 3
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "3"


def test_a_one_core_server_gets_two_threads_by_default(no_server, monkeypatch):
    monkeypatch.setattr(cluster_module, "_usable_cores", lambda: 1)
    cluster_module.start_server(["127.0.0.1:1"], 0)
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "2"


def test_the_variable_set_by_the_user_is_kept(no_server, monkeypatch):
    monkeypatch.setattr(cluster_module, "_usable_cores", lambda: 1)
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "5")
    cluster_module.start_server(["127.0.0.1:1"], 0)
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "5"


def test_many_cores_and_no_setting_leave_tensorflow_defaults(no_server, monkeypatch):
    monkeypatch.setattr(cluster_module, "_usable_cores", lambda: 4)
    server = cluster_module.start_server(["127.0.0.1:1"], 0)
    assert "TF_NUM_INTEROP_THREADS" not in os.environ
    assert server.kwargs["config"].inter_op_parallelism_threads == 0


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity"), reason="pinning needs Linux's affinity"
)
def test_a_short_call_does_not_wait_for_a_long_one_on_a_pinned_server():
    address = f"127.0.0.1:{_free_port()}"
    core = min(os.sched_getaffinity(0))
    env = {k: v for k, v in ENV.items() if k != "TF_NUM_INTEROP_THREADS"}
    server = subprocess.Popen(
        [
            sys.executable,
            str(SERVER),
            f"--workers={address}",
            "--task=0",
            "--intra_op_threads=1",
            "--inter_op_threads=2",
            f"--cpus={core}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert server.stdout.readline().startswith("serving")
        done = subprocess.run(
            [sys.executable, str(CLIENT), address],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
    finally:
        server.kill()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # The long call was still running when the short ones had returned: they
    # ran beside it. With one thread for the client's functions, the first
    # short call waits for the rest of the long one (about 0.9 of it).
    assert result["long_call_still_running"], result
    assert max(result["short_seconds"]) < result["long_seconds"] / 4, result
