"""Shared helpers for the keras_sg tests."""

import contextlib
import gc
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sg  # noqa: E402

# pytest-xdist runs one worker per core plus one, and TensorFlow would give
# each worker's ops as many threads as there are cores: six op threads on two
# cores. A worker's ops run on one thread each; the workers are the
# parallelism (the suite took 642 s before and 555 s after, one run each, on a
# 2-core AVX2 machine). Tests of threading run in subprocesses of their own,
# which this does not touch.
tf.config.threading.set_intra_op_parallelism_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train.py"


# The longest tests (most of their time is spent waiting on subprocesses,
# servers and timeouts) run first: pytest-xdist gives each worker a run of
# the collection and idle workers take tests from the end of a busy one's,
# so a long test left there would run alone at the end of the suite.
LONGEST_FIRST = (
    "tests/placement/test_cluster.py::"
    "test_killed_worker_fails_clearly_and_training_resumes",
    "tests/scripts/test_train.py::"
    "test_sigkill_then_rerun_ends_with_the_weights_of_an_uninterrupted_run",
    "tests/test_lesson.py::test_lesson_runs_top_to_bottom_in_the_small_setting_smoke",
    "tests/placement/test_async_cluster.py::"
    "test_frozen_worker_stops_fit_with_worker_lost_error",
    "tests/placement/test_cluster.py::test_frozen_worker_fails_the_step_within_a_bound",
    "tests/placement/test_async_cluster.py::"
    "test_killed_worker_in_lock_step_and_training_resumes_from_the_checkpoint",
    "tests/scripts/test_train_faults.py::"
    "test_lock_then_sigkill_mid_write_then_a_damaged_file_then_resume",
)


def pytest_collection_modifyitems(config, items):
    rank = {nodeid: i for i, nodeid in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    # A worker's heap grows with the tests it has run (TensorFlow's graphs),
    # and a full collection scans all of it: `gc.collect()` after every test
    # took 0.3 to 1 s a test, and Python's own full collections, rarer, up
    # to 20 s each on a loaded machine. This test's garbage is collected
    # here, and what is left is frozen (`gc.freeze`): later collections
    # scan only the objects made since.
    keras.backend.clear_session(free_memory=False)
    gc.collect()
    gc.freeze()


def mlp(widths, input_dim, activation="tanh", out_units=None, interfaces=True):
    """A Sequential MLP with an interface after every hidden layer."""
    layers = [keras.Input((input_dim,))]
    for i, width in enumerate(widths):
        layers.append(
            keras.layers.Dense(width, activation=activation, name=f"dense_{i}")
        )
        if interfaces:
            layers.append(keras_sg.Interface(name=f"cut_{i + 1}"))
    if out_units is not None:
        layers.append(keras.layers.Dense(out_units, name="top"))
    return keras.Sequential(layers)


def linear_synth(**kwargs):
    return keras_sg.DenseSynthesizer(hidden_layers=0, use_batch_norm=False, **kwargs)


def classification_data(n=64, dim=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    y = rng.integers(0, classes, size=n)
    return x, y


def weights_of(layers):
    return [np.array(w) for layer in layers for w in layer.get_weights()]


def run_train(args, timeout=300):
    """Runs scripts/train.py with `args` from the repository root, in a
    subprocess with a timeout; returns it finished, its output as text."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def train_in_process(args):
    """Runs scripts/train.py's `main` with `args` in this process: what
    `run_train` checks, without starting a Python and TensorFlow (about 5 s
    of CPU a run, in a suite that is CPU-bound on two cores).

    The run gets `--config.deterministic=False` (op determinism is
    process-wide, and would stay on for the worker's later tests); a config
    path relative to the repository root is made absolute. Returns a
    `subprocess.CompletedProcess`: exit status 0, or the `SystemExit`'s code
    (1 with its message on stderr when the script ended with one), and what
    the run printed.
    """
    argv = ["train.py"]
    for arg in args:
        if arg.startswith("--config=configs/"):
            arg = f"--config={ROOT / arg.removeprefix('--config=')}"
        argv.append(arg)
    argv.append("--config.deterministic=False")
    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved = sys.argv
    sys.argv = argv  # config_flags reads the overrides from sys.argv
    try:
        with (
            script_module(TRAIN, "keras_sg_train") as module,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                module.parse_flags(argv)
                module.main([])
            except SystemExit as exit:
                if exit.code is None or isinstance(exit.code, int):
                    code = exit.code or 0
                else:
                    code = 1
                    print(exit.code, file=sys.stderr)
            finally:
                while module._LOCK:  # the workdir's lock, released at exit
                    os.close(module._LOCK.pop())
    finally:
        sys.argv = saved
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def set_field(config, field, value):
    """Sets a dotted field of a ConfigDict: `set_field(c, "log.update_freq", 5)`."""
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


@contextlib.contextmanager
def script_module(path, name):
    """Runs the script at `path` as module `name` and yields it; the absl flags
    it defined are removed afterwards, even when it failed to load.

    Scripts define their flags on the global `absl.flags.FLAGS`, and two
    scripts may both define `--workdir` or `--learning_rate`: a flag left
    behind makes the next script's import fail (pytest-xdist runs tests of
    several files in one process, in any order).
    """
    from absl import flags

    before = set(flags.FLAGS)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        for flag in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, flag)
