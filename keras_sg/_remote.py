"""Telling a lost cluster worker apart from other training errors."""

import contextlib
import os
import re
import socket
import time

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
    return _tcp_status(address, timeout) is None


def _tcp_status(address: str, timeout: float) -> str | None:
    """None if `host:port` accepts a TCP connection, else why not."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer to a TCP connect within {timeout:g} s"
    except (OSError, ValueError) as error:
        return getattr(error, "strerror", None) or str(error)


def unreachable(addresses: list[str], timeout: float) -> dict[str, str]:
    """The addresses where no gRPC server completes a handshake within `timeout` s.

    Returns `{address: reason}`. Every address is probed at once, and each
    gets the whole `timeout` to come up, so servers still starting are
    waited for. A TCP connect alone is not enough: a stopped (SIGSTOP) or
    frozen server still has its port accepted by the kernel, and TensorFlow
    would then wait on it forever. The wait is a loop of short sleeps, so
    Ctrl-C stops it at once.
    """
    import grpc

    channels = {a: grpc.insecure_channel(a) for a in addresses}
    futures = {a: grpc.channel_ready_future(c) for a, c in channels.items()}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not all(
            f.done() for f in futures.values()
        ):
            time.sleep(0.05)
        failed = {}
        for address, future in futures.items():
            if future.done():
                continue
            reason = _tcp_status(address, timeout=1.0)
            if reason is None:
                reason = (
                    "it accepts TCP connections but completed no gRPC handshake "
                    "(a stopped or frozen server, or not a TensorFlow server)"
                )
            failed[address] = reason
        return failed
    finally:
        for future in futures.values():
            future.cancel()
        for channel in channels.values():
            channel.close()


def keeping_alive():
    """Lets gRPC notice a task that froze: a stopped peer fails calls in under a minute.

    Without this a call to a server that stopped without closing its
    connection (SIGSTOP, a frozen machine) waits forever. TensorFlow reads
    `TF_GRPC_DEFAULT_OPTIONS` once, when it makes its first channel, so this
    must run before connecting; a value the user set is kept.
    """
    os.environ.setdefault("TF_GRPC_DEFAULT_OPTIONS", KEEPALIVE)


# What bounds a call to a frozen task (the gRPC inside TensorFlow 2.21):
# - Every ping a client sends (keepalive pings, and the flow-control "BDP"
#   pings sent while data arrives) must be answered within
#   grpc.http2.ping_timeout_ms, else the connection is closed with "ping
#   timeout". It defaults to 60 s once keepalive is on, and only one ping is
#   in flight at a time: the BDP ping sent just before the freeze held back
#   the keepalive pings, so keepalive_timeout_ms alone changed nothing
#   (measured: 62-86 s with 5 s or 20 s keepalive timeouts).
# - A connection with open calls that has read nothing for
#   keepalive_time_ms sends a keepalive ping. On a connection that sends
#   nothing, gRPC sends at most one ping a minute.
# - After "ping timeout" TensorFlow's calls reconnect once before failing; a
#   frozen server accepts the TCP connection but never answers the HTTP/2
#   handshake, which gRPC gives up on after grpc.min_reconnect_backoff_ms
#   (20 s by default, 5 s here).
# So a training step fails at most 20 + 15 + 5 s after the freeze, plus the
# 2 s probe (measured: 22.2-22.5 s with a BDP ping in flight, 42 s without).
# A remote call that stays silent longer than a minute is noticed later (its
# next ping comes up to a minute on). A busy task still answers pings (gRPC
# answers them on its own threads): a remote call computing for 150 s
# without sending anything passed. gRPC servers refuse pings that come more
# often than every 5 min on a connection where they send nothing
# ("too_many_pings", at the third), so a call silent for several minutes may
# be cut; set TF_GRPC_DEFAULT_OPTIONS yourself for such calls.
KEEPALIVE = ",".join(
    [
        "grpc.keepalive_time_ms=20000",
        "grpc.keepalive_timeout_ms=15000",
        "grpc.http2.ping_timeout_ms=15000",
        "grpc.min_reconnect_backoff_ms=5000",
    ]
)


@contextlib.contextmanager
def failing_fast():
    """Within: TensorFlow's gRPC calls to an unreachable task fail instead of waiting.

    Connecting to a cluster asks every task for its devices with gRPC's
    `wait_for_ready`, which waits for a channel that never connects without
    end. TensorFlow reads the environment variable `GRPC_FAIL_FAST` at each
    call and lets "true" override that; the previous value comes back on exit.
    """
    before = os.environ.get("GRPC_FAIL_FAST")
    os.environ["GRPC_FAIL_FAST"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GRPC_FAIL_FAST", None)
        else:
            os.environ["GRPC_FAIL_FAST"] = before


# The lines TensorFlow wraps a graph's error in; the cause comes after them.
_WRAPPING = re.compile(
    r"^(Graph execution error:|Detected at node|defined at|<stack traces "
    r"unavailable>|\d+ root error\(s\) found\.|File \")"
)


def _cause(text: str) -> str:
    """The first line of an error's text that is not TensorFlow's wrapping."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if not _WRAPPING.match(line):
            return line
    return lines[0] if lines else ""


def worker_lost(
    error: Exception, devices, addresses: dict[str, str] | None = None
) -> WorkerLostError | None:
    """A clear WorkerLostError for `error` if a remote task of `devices` is gone.

    The error's own text is not reliable about which task died, so every
    remote task the model uses is probed (a gRPC handshake, 2 s at most);
    tasks that no longer answer are named. An error of a model without remote
    devices, of another kind, or with every task still answering is not a
    lost worker: None.
    """
    tasks = remote_tasks(devices)
    if not tasks or not isinstance(error, _LOST_KINDS):
        return None
    addresses = task_addresses() if addresses is None else addresses
    if addresses:
        # A gRPC handshake, not a TCP connect: a frozen server's port is
        # still accepted by its kernel.
        down = unreachable([addresses[t] for t in tasks if t in addresses], 2.0)
        dead = [t for t in tasks if addresses.get(t) in down]
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
    first = _cause(str(error))
    return WorkerLostError(
        f"Lost the TensorFlow server {' and '.join(lines)}; TensorFlow said "
        f"{type(error).__name__}: {first}. Restart it at the same address and "
        "run again; scripts/train.py resumes from the newest checkpoint in its "
        "workdir."
    )
