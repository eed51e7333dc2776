"""Stages on the devices of a TensorFlow cluster: other processes or machines.

TensorFlow's distributed runtime does the transport: each worker process runs a
`tf.distribute.Server`, the training process connects to them with
`tf.config.experimental_connect_to_cluster`, and a stage placed on
`/job:worker/replica:0/task:k/device:CPU:0` then keeps its variables on task k
and runs its ops there; activations and gradients cross between processes as
gRPC tensors.
"""

import os

import tensorflow as tf

from keras_sg._checks import check_int
from keras_sg._remote import failing_fast, keeping_alive, unreachable

# Sizes the inter-op pool of the eager contexts that clients create on a
# server (read when a client connects, not when the server starts).
_INTEROP_VARIABLE = "TF_NUM_INTEROP_THREADS"


def _usable_cores() -> int:
    """Cores this process may run on (its affinity, where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cluster_spec(cluster) -> tf.train.ClusterSpec:
    if isinstance(cluster, tf.distribute.cluster_resolver.ClusterResolver):
        return cluster.cluster_spec()
    if isinstance(cluster, tf.train.ClusterSpec):
        return cluster
    if isinstance(cluster, dict):
        return tf.train.ClusterSpec(cluster)
    raise TypeError(
        "Expected a tf.distribute.cluster_resolver.ClusterResolver, a "
        "tf.train.ClusterSpec or a dict such as {'worker': ['host:port', ...]}. "
        f"Received: {type(cluster).__name__}"
    )


def _check_timeout(timeout) -> float:
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(timeout, bool) or not 0 < seconds < float("inf"):
        raise ValueError(
            "`timeout` must be a positive number of seconds. "
            f"Received: timeout={timeout!r}"
        )
    return seconds


def worker_addresses(addresses: str | list[str]) -> list[str]:
    """Parses `"host:port,host:port"` (or a list) into checked addresses."""
    if isinstance(addresses, str):
        addresses = [a.strip() for a in addresses.split(",") if a.strip()]
    addresses = list(addresses)
    if not addresses:
        raise ValueError(
            f"Expected at least one worker address 'host:port'. Received: {addresses!r}"
        )
    for address in addresses:
        host, sep, port = str(address).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(
                f"Expected worker addresses as 'host:port'. Received: {address!r}"
            )
    return addresses


def start_server(
    workers: str | list[str],
    task_index: int,
    job_name: str = "worker",
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    cpus: list[int] | None = None,
) -> tf.distribute.Server:
    """Starts this process's TensorFlow server: task `task_index` of `job_name`.

    Call it before anything else in the process has used TensorFlow; the
    server owns the process's devices. `scripts/tf_server.py` wraps it.

    Args:
        workers: every task's address, `"host:port,host:port"` or a list.
        task_index: which of them this process is.
        job_name: the job's name; stages are placed on `/job:<job_name>/...`.
        intra_op_threads, inter_op_threads: the server's thread pools (None:
            TensorFlow's defaults). One intra-op thread makes the process
            behave like one accelerator that runs one op at a time.
            `inter_op_threads` also sizes the pool in which the server runs
            its clients' remote functions (see below); when it is None and
            the process may use fewer than 2 cores, that pool gets 2.
        cpus: pin the process to these CPU cores (Linux only; None: no pinning).

    Remote functions. A client's functions run on the server in the eager
    context that the client creates when it connects. TensorFlow sizes that
    context's inter-op pool from the `TF_NUM_INTEROP_THREADS` environment
    variable or, failing it, from the cores the process may use: not from
    `inter_op_threads` of the server's configuration. A server pinned to one
    core then runs its clients' functions with one thread, and a function
    that only has to move a tensor waits for the whole step of another (two
    stages of `AsyncPipelinedModel` then take turns instead of running at
    once). So this function sets `TF_NUM_INTEROP_THREADS` to
    `inter_op_threads` (when given), or to 2 when the process may use fewer
    than 2 cores and the variable is not set already.

    Returns:
        The started server; call `server.join()` to serve until killed.
    """
    workers = worker_addresses(workers)
    check_int("task_index", task_index, 0)
    if task_index >= len(workers):
        raise ValueError(
            f"Expected task_index < {len(workers)} (the number of workers). "
            f"Received: task_index={task_index}"
        )
    if cpus is not None:
        os.sched_setaffinity(0, set(cpus))
    config = tf.compat.v1.ConfigProto()
    if intra_op_threads is not None:
        config.intra_op_parallelism_threads = check_int(
            "intra_op_threads", intra_op_threads, 1
        )
    if inter_op_threads is not None:
        config.inter_op_parallelism_threads = check_int(
            "inter_op_threads", inter_op_threads, 1
        )
        os.environ[_INTEROP_VARIABLE] = str(inter_op_threads)
    elif _INTEROP_VARIABLE not in os.environ and _usable_cores() < 2:
        os.environ[_INTEROP_VARIABLE] = "2"
    return tf.distribute.Server(
        tf.train.ClusterSpec({job_name: workers}),
        job_name=job_name,
        task_index=task_index,
        protocol="grpc",
        config=config,
        start=True,
    )


def connect_to_cluster(
    cluster, job_name: str = "worker", timeout: float = 30.0
) -> list[str]:
    """Connects this process to a running cluster; returns one device per task.

    This process joins as the job `localhost` (its own devices become
    `/job:localhost/replica:0/task:0/device:CPU:0`, ...). Pass the returned
    names, or some of them, as a model's `devices`.

    Args:
        cluster: a `tf.distribute.cluster_resolver.ClusterResolver`, a
            `tf.train.ClusterSpec`, or a dict `{job_name: ["host:port", ...]}`.
        job_name: the job whose tasks run the stages.
        timeout: seconds to wait for every task's server to answer, > 0. The
            servers are probed first (a gRPC handshake, all at once), so that
            one that is down, still starting, stopped or frozen is waited for
            this long and then named, instead of TensorFlow waiting for it
            forever. 30 s leaves a server started at the same time as this
            process time to import TensorFlow. Once connected, a server that
            freezes during training without closing its connection fails
            the step within about 45 s (gRPC pings and their timeouts, set
            here through `TF_GRPC_DEFAULT_OPTIONS` unless already set; see
            docs/api.md).

    Returns:
        `["/job:<job_name>/replica:0/task:<k>/device:CPU:0" for each task k]`.

    Raises:
        ValueError: the cluster has no such job, or is empty, or `timeout`
            is not a positive number.
        ConnectionError: some task did not answer within `timeout`; the
            message names each such task and its address.
        RuntimeError: a task's device did not appear after connecting.

    Example:

    ```python
    devices = keras_sg.placement.connect_to_cluster(
        {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]})
    model = keras_sg.DecoupledModel(net, synthesizers, devices=devices)
    ```
    """
    spec = _cluster_spec(cluster)
    if job_name not in spec.jobs:
        raise ValueError(
            f"The cluster has no job {job_name!r}; its jobs are {spec.jobs}. "
            f"Received: job_name={job_name!r}"
        )
    if job_name == "localhost":
        raise ValueError(
            "The connecting process takes the job name 'localhost'; name the "
            "workers' job otherwise. Received: job_name='localhost'"
        )
    tasks = spec.task_indices(job_name)
    if not tasks:
        raise ValueError(f"The cluster's job {job_name!r} has no tasks.")
    timeout = _check_timeout(timeout)
    addresses = {
        f"/job:{job}/replica:0/task:{k}": spec.task_address(job, k)
        for job in spec.jobs
        for k in spec.task_indices(job)
    }
    down = unreachable(list(dict.fromkeys(addresses.values())), timeout)
    if down:
        lines = [
            f"{task} at {address}: {down[address]}"
            for task, address in addresses.items()
            if address in down
        ]
        raise ConnectionError(
            f"No TensorFlow server answered within timeout={timeout:g} s at "
            f"{len(lines)} of the cluster's {len(addresses)} tasks:\n  "
            + "\n  ".join(lines)
            + "\nStart one there (scripts/tf_server.py), check the address, or "
            "pass a longer timeout."
        )
    # A resolver would also make its "master" the default device; we place
    # every stage explicitly and keep the default on this process. Failing
    # fast bounds the connect itself if a server went away since the probe.
    keeping_alive()
    with failing_fast():
        tf.config.experimental_connect_to_cluster(
            spec, make_master_device_default=False
        )
    devices = [f"/job:{job_name}/replica:0/task:{k}/device:CPU:0" for k in tasks]
    known = {d.name for d in tf.config.list_logical_devices()}
    missing = [d for d in devices if d not in known]
    if missing:
        raise RuntimeError(
            f"Connected to the cluster, but TensorFlow lists no device {missing}. "
            f"Listed: {sorted(known)}"
        )
    return devices
