"""Telling a lost cluster worker apart from other training errors."""

import re
import socket

import tensorflow as tf

_REMOTE_TASK = re.compile(r"/job:([^/\s:]+)/replica:(\d+)/task:(\d+)")

# How a dead peer shows up: gRPC says UNAVAILABLE (connection refused or
# reset); the step in flight may instead end CANCELLED, ABORTED or INTERNAL
# ("remote address ... poisoned"), depending on which op noticed first.
_LOST_KINDS = (
    tf.errors.UnavailableError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.InternalError,
)


class WorkerLostError(RuntimeError):
    """A TensorFlow server that holds stages stopped answering during training."""


def remote_tasks(devices) -> list[str]:
    """The `/job:<job>/replica:<r>/task:<k>` part of each remote device name."""
    tasks = []
    for device in devices or ():
        found = _REMOTE_TASK.search(device)
        if found and found.group(1) != "localhost" and found.group(0) not in tasks:
            tasks.append(found.group(0))
    return tasks


def task_addresses() -> dict[str, str]:
    """`{"/job:<job>/replica:0/task:<k>": "host:port"}` of the connected cluster."""
    # The eager context is the one place that keeps the cluster it connected to.
    from tensorflow.python.eager import context

    server_def = context.context().get_server_def()
    if server_def is None:
        return {}
    return {
        f"/job:{job.name}/replica:0/task:{k}": address
        for job in server_def.cluster.job
        for k, address in job.tasks.items()
    }


def answers(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at `host:port`."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def worker_lost(
    error: Exception, devices, addresses: dict[str, str] | None = None
) -> WorkerLostError | None:
    """A clear WorkerLostError for `error` if a remote task of `devices` is gone.

    The error's own text is not reliable about which task died, so every
    remote task the model uses is probed (a TCP connect, at most 2 s each);
    tasks that no longer answer are named. An error of a model without remote
    devices, of another kind, or with every task still answering is not a
    lost worker: None.
    """
    tasks = remote_tasks(devices)
    if not tasks or not isinstance(error, _LOST_KINDS):
        return None
    addresses = task_addresses() if addresses is None else addresses
    if addresses:
        dead = [t for t in tasks if t in addresses and not answers(addresses[t])]
        if not dead:
            return None
    else:  # not connected through connect_to_cluster: trust the message
        found = _REMOTE_TASK.search(str(error))
        dead = [found.group(0)] if found and found.group(0) in tasks else tasks
    lines = []
    for task in dead:
        stages = [str(k) for k, d in enumerate(devices) if d.startswith(task)]
        where = f" at {addresses[task]}" if task in addresses else ""
        lines.append(f"{task}{where} (it holds stage {', '.join(stages)})")
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return WorkerLostError(
        f"Lost the TensorFlow server {' and '.join(lines)}; TensorFlow said "
        f"{type(error).__name__}: {first}. Restart it at the same address and "
        "run again; scripts/train.py resumes from the newest checkpoint in its "
        "workdir."
    )
