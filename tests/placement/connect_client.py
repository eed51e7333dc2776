"""Connects to a cluster with a timeout; prints how it ended, as one JSON line.

Run as a subprocess by test_connect.py, so that a connect that hangs is
killed by the test's own timeout instead of hanging the suite:

    connect_client.py ADDRESSES TIMEOUT
"""

import faulthandler
import json
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# SIGUSR1 prints every thread's stack to stderr: the test sends it before
# killing a client that hung, so that its failure says where.
faulthandler.register(signal.SIGUSR1, all_threads=True)
# Ctrl-C raises KeyboardInterrupt, as in a terminal, even when the suite was
# started with SIGINT ignored (a background job of a non-interactive shell
# is), which a child inherits and Python then leaves ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

import keras_sg  # noqa: E402

addresses, timeout = sys.argv[1].split(","), float(sys.argv[2])
print("connecting", flush=True)  # the test may send Ctrl-C from here on
start = time.monotonic()
try:
    devices = keras_sg.placement.connect_to_cluster(
        {"worker": addresses}, timeout=timeout
    )
    result = {"devices": devices}
except ConnectionError as error:
    result = {"error": str(error)}
result["seconds"] = time.monotonic() - start
print(json.dumps(result), flush=True)
