"""scripts/epochs_to_accuracy.py: its flags load beside the benchmark's, its
warm-up is the one the benchmark uses, and a run that diverged stops."""

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
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


def test_a_run_that_diverged_stops_is_recorded_and_exits_with_an_error(
    script, monkeypatch, tmp_path, capsys
):
    # The script's loop on 512 random "images" (2 batches of 256 an epoch)
    # and a linear model, at Adam 1e4: the weights grow by about the rate
    # each step, so the epoch mean loss of epoch 2 is more than 1.5 times
    # epoch 1's (finite: cross-entropy from logits).
    import keras_sg

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(512, 28, 28, 1)).astype("uint8")
    labels = rng.integers(0, 10, size=512)
    test = tf.data.Dataset.from_tensor_slices(
        (images.reshape(512, -1).astype("float32") / 255, labels)
    ).batch(256)
    monkeypatch.setattr(keras_sg.data, "manual_dir_from_env", lambda name: None)
    monkeypatch.setattr(keras_sg.data, "load_split", lambda *a, **k: (images, labels))
    monkeypatch.setattr(keras_sg.data, "image_dataset", lambda *a, **k: test)
    monkeypatch.setattr(
        script.benchmark_pipeline,
        "build",
        lambda *a, **k: keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)]),
    )
    runs = tmp_path / "runs.jsonl"
    flags.FLAGS(
        [
            "epochs_to_accuracy.py",
            "--model=backprop",
            "--learning_rate=1e4",
            "--warmup_steps=0",
            "--max_loss_growth=1.5",
            "--max_epochs=5",
            f"--runs_file={runs}",
        ]
    )
    with pytest.raises(SystemExit, match=r"Training diverged in epoch 2: the task"):
        script.main([])
    assert "epochs to 97.5%: diverged" in capsys.readouterr().out
    run = json.loads(runs.read_text())
    assert len(run["curve"]) == 2  # stopped after epoch 2 of 5
    assert run["flags"]["max_loss_growth"] == 1.5
    assert run["diverged"].startswith("Training diverged in epoch 2")
    assert "above max_growth=1.5" in run["diverged"]
