"""scripts/train.py end to end: configs, smoke runs, event files, resume."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TRAIN, run_train, script_module, train_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ("mnist_fcn", "mnist_cnn")
METHODS = ("backprop", "dni", "cdni", "no_bprop")
sys.path.insert(0, str(ROOT))


def _tags(folder: Path):
    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return set(accumulator.Tags()["tensors"]) | set(accumulator.Tags()["scalars"])


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("depth", [3, 4])
def test_every_config_variant_loads(name, method, depth):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config(f"{method},depth={depth}")
    assert config.method == method and config.model.depth == depth
    assert config.batch_size == 256 and config.optimizer.name == "adam"
    smoke = module.get_config(f"{method},smoke")
    assert smoke.data.name == "synthetic"
    json.loads(config.to_json_best_effort())


def test_unknown_variant_token_is_named():
    module = importlib.import_module("configs.mnist_fcn")
    with pytest.raises(ValueError, match="'dpeth'"):
        module.get_config("dni,dpeth=4")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("method", METHODS)
def test_smoke_variant_trains_and_writes_logs(tmp_path, name, method):
    # In this process: the command line itself is run by the tests below.
    done = train_in_process(
        [f"--config=configs/{name}.py:{method},smoke", f"--workdir={tmp_path}"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["steps"] == 16
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert json.loads((tmp_path / "config.json").read_text())["method"] == method
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch-0001.keras",
        "epoch-0002.keras",
    ]
    train_tags = _tags(tmp_path / "tb" / "train")
    assert {"epoch_loss", "epoch_accuracy"} <= train_tags
    if method in ("dni", "cdni"):
        assert {"epoch_cut_1_sg_loss", "epoch_cut_2_sg_loss"} <= train_tags
        diagnostics = _tags(tmp_path / "tb" / "diagnostics")
        assert {
            "sg/cut_1/cosine",
            "sg/cut_2/norm_ratio",
            "sg/stage_0/sg_grad_norm",
        } <= (diagnostics)
    assert f"{method}: test error" in done.stdout


def test_misspelled_override_is_named(tmp_path):
    done = run_train(
        [
            "--config=configs/mnist_fcn.py:dni,smoke",
            f"--workdir={tmp_path}",
            "--config.optimiser.learning_rate=0.1",
        ]
    )
    assert done.returncode != 0
    assert "optimiser" in done.stderr


def _final_weights(workdir: Path, epochs: int):
    model = keras.models.load_model(workdir / "ckpt" / f"epoch-{epochs:04d}.keras")
    return model.get_weights(), int(model.optimizer.iterations.numpy())


def test_sigkill_then_rerun_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    epochs = 4
    args = [
        "--config=configs/mnist_fcn.py:dni,smoke",
        f"--config.epochs={epochs}",
        "--config.data.train_examples=2048",
    ]
    straight = tmp_path / "straight"
    done = run_train([*args, f"--workdir={straight}"])
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), *args, f"--workdir={killed}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 240
    try:
        while not (killed / "ckpt" / "epoch-0002.keras").exists():
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint of epoch 2 in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()

    resumed = run_train([*args, f"--workdir={killed}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = json.loads((killed / "metrics.json").read_text())["resumed_from_epoch"]
    assert 2 <= start < epochs
    assert f"from epoch {start}" in resumed.stdout

    want, want_steps = _final_weights(straight, epochs)
    got, got_steps = _final_weights(killed, epochs)
    assert got_steps == want_steps == epochs * 32
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_config_dilation_rate_reaches_the_conv_synthesizers():
    config = importlib.import_module("configs.mnist_cnn").get_config("cdni,smoke")
    config.synthesizer.dilation_rate = 2
    with script_module(TRAIN, "train_for_dilation") as train:
        model = train.build_model(config, (28, 28, 1), 10, steps_per_epoch=4)
    rates = [s.dilation_rate for s in model.synthesizers]
    assert rates == [2] * (config.model.depth - 1)
    assert all(s.head.dilation_rate == (2, 2) for s in model.synthesizers)
