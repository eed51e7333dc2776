"""AsyncPipelinedModel on two TensorFlow servers: lock-step parity; a lost
or frozen worker; resuming from a checkpoint after a lost one.

Uses the two-server fixture of test_cluster.py; the client runs in a
subprocess (connecting resets TensorFlow's context), with a timeout.
"""

import os
import signal
from pathlib import Path

import numpy as np
from test_cluster import TASK_1, cluster, interrupted, run_client  # noqa: F401 - fixture

CLIENT = Path(__file__).with_name("async_cluster_worker.py")


def test_lock_step_on_two_servers_equals_pipelined_model(cluster):  # noqa: F811
    result = run_client(CLIENT, "parity", cluster.spec)
    assert result["variable_devices"] == [
        ["/job:worker/replica:0/task:0/device:CPU:0"],
        [f"{TASK_1}/device:CPU:0"],
    ]
    assert result["moved"] > 1e-3
    # From arrays and from a dataset made on stage 0's server.
    assert max(result["max_weight_diff"]) < 1e-6
    assert result["iterations"] == [10, 10]
    # Shuffled epochs made on stage 0's server: PipelinedModel's weights on
    # the same batches made in the client.
    assert result["shuffled_weight_diff"] < 1e-6
    # Stage 0 read both on its own server, and so the free-running fits'
    # dataset and the shuffled epochs made there; then a dataset made in the
    # client (the same stage functions, another iterator).
    server_cpu = "/job:worker/replica:0/task:0/device:CPU:0"
    assert result["iterator_devices"][:4] == [server_cpu] * 4
    assert result["iterator_devices"][4].startswith("/job:localhost/")
    for loss in result["client_dataset_loss"], result["free_loss"]:
        assert len(loss) == 1
        assert np.isfinite(loss[0])
    placed, unplaced = result["remote_dataset_errors"]
    assert placed is not None and unplaced is not None
    assert f"dataset on '{TASK_1}" in placed
    assert "stage 0's task ('/job:worker/replica:0/task:0/device:CPU:0')" in placed
    assert f"made in this process. Received: a dataset on '{TASK_1}" in unplaced


def test_killed_worker_stops_fit_with_worker_lost_error(cluster):  # noqa: F811
    result, killed_at = interrupted(
        CLIENT, ["lost", cluster.spec], "training", lambda: cluster.kill(1)
    )
    assert result["error"] == "WorkerLostError", result
    lost = f"Lost the TensorFlow server {TASK_1} at {cluster.addresses[1]}"
    assert f"{lost} (it holds stage 1)" in result["message"]
    assert result["threads_left"] == 0
    assert result["at"] - killed_at < 60


def test_killed_worker_in_lock_step_and_training_resumes_from_the_checkpoint(
    cluster,  # noqa: F811
    tmp_path,
):
    """Lock-step with a checkpoint per epoch: the server of stage 1 killed in
    the third epoch ends `fit` with WorkerLostError; on the restarted server
    a model loads the second epoch's checkpoint (weights and every stage
    optimizer's state) and ends where a run never interrupted ends."""
    result, killed_at = interrupted(
        CLIENT,
        ["checkpointed", cluster.spec, str(tmp_path)],
        "saved",
        lambda: cluster.kill(1),
    )
    assert result["error"] == "WorkerLostError", result
    assert f"Lost the TensorFlow server {TASK_1}" in result["message"]
    assert result["threads_left"] == 0
    assert result["at"] - killed_at < 60
    assert (tmp_path / "epoch-02.keras").exists()
    assert not (tmp_path / "epoch-04.keras").exists()

    cluster.start(1)  # the same address again
    resumed = run_client(
        CLIENT, "resume", cluster.spec, str(tmp_path / "epoch-02.keras")
    )
    assert resumed["resumed_from"] == 2
    # 4 epochs of 20 batches and one drain step each, every stage counting.
    assert resumed["iterations"] == resumed["straight_iterations"] == [84, 84]
    assert resumed["max_weight_diff"] < 1e-6


def test_frozen_worker_stops_fit_with_worker_lost_error(cluster):  # noqa: F811
    """SIGSTOP keeps the server's connections open: only gRPC pings notice,
    in a stage thread's call or in the shutdown's closing of its queues."""
    server = cluster.servers[1]
    try:
        result, stopped_at = interrupted(
            CLIENT,
            ["lost", cluster.spec],
            "training",
            lambda: os.kill(server.pid, signal.SIGSTOP),
            timeout=150,
        )
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert result["error"] == "WorkerLostError", result
    lost = f"Lost the TensorFlow server {TASK_1} at {cluster.addresses[1]}"
    assert f"{lost} (it holds stage 1)" in result["message"]
    assert result["threads_left"] == 0
    # As for the other models (test_cluster.py): at most 20 s without
    # reads, 15 s for the ping's answer, then the probe.
    assert result["at"] - stopped_at < 45
