"""Times a small remote call made while a long one runs on the same server.

Run as a subprocess by test_server_threads.py (connecting resets TensorFlow's
context; the test's timeout bounds it). Prints one JSON line:

    threads_client.py ADDRESS
"""

import json
import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_sg  # noqa: E402

(device,) = keras_sg.placement.connect_to_cluster({"worker": [sys.argv[1]]})

import tensorflow as tf  # noqa: E402

with tf.device(device):
    weights = tf.Variable(tf.random.normal((512, 512), stddev=512**-0.5))


@tf.function
def long_call():
    # A chain of matrix products on the server: one op after the other.
    with tf.device(device):
        x = tf.ones((256, 512))
        for _ in range(600):
            x = tf.tanh(tf.matmul(x, weights))
        return tf.reduce_sum(x)


@tf.function
def short_call():
    with tf.device(device):
        return weights[0, 0] + 1.0


long_call().numpy(), short_call().numpy()  # traced and warm
long_seconds = []


def run_long_call():
    start = time.perf_counter()
    long_call().numpy()
    long_seconds.append(time.perf_counter() - start)


running = threading.Thread(target=run_long_call)
running.start()
time.sleep(0.05)
short_seconds = []
for _ in range(3):
    start = time.perf_counter()
    short_call().numpy()
    short_seconds.append(time.perf_counter() - start)
overlapped = running.is_alive()
running.join()
print(
    json.dumps(
        {
            "long_seconds": long_seconds[0],
            "short_seconds": short_seconds,
            "long_call_still_running": overlapped,
        }
    ),
    flush=True,
)
