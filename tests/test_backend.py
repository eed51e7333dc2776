"""keras_sg refuses to import under a backend other than TensorFlow."""

import os
import subprocess
import sys


def test_import_under_another_backend_names_the_backend():
    env = dict(os.environ, KERAS_BACKEND="numpy", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", "import keras_sg"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode != 0
    assert "KERAS_BACKEND='numpy'" in done.stderr
    assert "requires the TensorFlow backend" in done.stderr
