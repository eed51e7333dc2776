"""Data parallelism: MirroredStrategy on two logical CPUs matches one device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("mirrored_worker.py")


@pytest.mark.parametrize(
    "method, model",
    [("dni", "decoupled"), ("cdni", "decoupled"), ("cdni", "pipelined")],
)
def test_mirrored_strategy_matches_a_single_device(method, model):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    done = subprocess.run(
        [sys.executable, str(WORKER), method, model],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["max_weight_change"] > 1e-2  # both runs really trained
    assert result["max_weight_diff"] < 1e-5
    np.testing.assert_allclose(
        result["loss_mirrored"], result["loss_single"], rtol=1e-5
    )
    np.testing.assert_allclose(result["sg_mirrored"], result["sg_single"], rtol=1e-4)
