"""scripts/epochs_to_accuracy.py: its flags load beside the benchmark's, and
its warm-up is the one the benchmark uses."""

import sys
from pathlib import Path

import keras
import pytest
from absl import flags
from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "epochs_to_accuracy.py"


@pytest.fixture
def script():
    # The script imports benchmark_pipeline by name: a copy cached by another
    # test would not define its flags again.
    sys.modules.pop("benchmark_pipeline", None)
    with script_module(SCRIPT, "keras_sg_epochs_to_accuracy") as module:
        yield module
    sys.modules.pop("benchmark_pipeline", None)
    flags.FLAGS.unparse_flags()


def test_warm_up_rises_linearly_to_the_rate_then_stays(script):
    flags.FLAGS(["epochs_to_accuracy.py", "--warmup_steps=10", "--learning_rate=2e-3"])
    schedule = script.learning_rate(keras)
    rates = [float(schedule(step)) for step in (0, 5, 10, 10_000)]
    assert rates == pytest.approx([0.0, 1e-3, 2e-3, 2e-3], rel=1e-4)
    # The benchmark's flags, shared: capacity and target.
    assert flags.FLAGS.capacity == 2 and flags.FLAGS.target_accuracy == 0.975


def test_no_warm_up_is_a_constant_rate_and_a_negative_one_is_refused(script):
    flags.FLAGS(["epochs_to_accuracy.py", "--warmup_steps=0", "--learning_rate=2e-3"])
    assert script.learning_rate(keras) == 2e-3
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["epochs_to_accuracy.py", "--warmup_steps=-3"])
    with pytest.raises(ValueError, match="Received: warmup_steps=-3"):
        script.learning_rate(keras)


def test_a_decay_follows_the_warm_up_down_to_a_tenth(script):
    flags.FLAGS(
        [
            "epochs_to_accuracy.py",
            "--warmup_steps=10",
            "--decay_steps=20",
            "--learning_rate=2e-3",
        ]
    )
    schedule = script.learning_rate(keras)
    rates = [float(schedule(step)) for step in (0, 5, 10, 20, 30, 1000)]
    # Half-way through the cosine (step 20): the mean of 2e-3 and 2e-4.
    assert rates == pytest.approx([0.0, 1e-3, 2e-3, 1.1e-3, 2e-4, 2e-4], rel=1e-4)


def test_runtime_options_are_refused_for_the_other_models(script, monkeypatch):
    flags.FLAGS(["epochs_to_accuracy.py", "--model=pipelined", "--jit_compile"])
    with pytest.raises(ValueError, match="Received: --model=pipelined"):
        script.main([])
