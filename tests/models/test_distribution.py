"""Data parallelism: MirroredStrategy on two logical CPUs matches one device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("mirrored_worker.py")
CASES = ["dni:decoupled", "cdni:decoupled", "cdni:pipelined"]
# Pipelined cDNI with Adam for the model and SGD for the synthesizers.
WITH_SYNTH_OPTIMIZER = "cdni:pipelined:synthesizer_optimizer"


def test_mirrored_strategy_matches_a_single_device():
    # One subprocess runs every case: logical devices must be set before
    # TensorFlow starts, and each start costs seconds of CPU.
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        # This checkout's keras_sg, whichever one is installed.
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, str(WORKER), *CASES, WITH_SYNTH_OPTIMIZER],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted([*CASES, WITH_SYNTH_OPTIMIZER])
    for case, result in results.items():
        assert result["replicas"] == 2, case
        assert result["max_weight_change"] > 1e-2, case  # both runs really trained
        assert result["max_weight_diff"] < 1e-5, case
        np.testing.assert_allclose(
            result["loss_mirrored"], result["loss_single"], rtol=1e-5, err_msg=case
        )
        np.testing.assert_allclose(
            result["sg_mirrored"], result["sg_single"], rtol=1e-4, err_msg=case
        )
    result = results[WITH_SYNTH_OPTIMIZER]
    assert result["synth_iterations"] == 8  # 2 epochs of 4 batches
    # The model optimizer holds no slots of the synthesizers' variables.
    mirrored_count, single_count = result["optimizer_variables"]
    assert mirrored_count == single_count
