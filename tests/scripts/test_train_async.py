"""scripts/train.py with `runtime=async`: keras_sg.AsyncPipelinedModel from a
config, its settings, a bit-equal resume in lock-step mode, the learning-rate
schedule on every stage optimizer, and bad settings named before training."""

import importlib
import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import script_module, set_field, train_in_process

import keras_sg

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "scripts" / "train.py"
sys.path.insert(0, str(ROOT))

from configs import common  # noqa: E402


def _config(variant):
    return importlib.import_module("configs.mnist_fcn").get_config(variant)


def _load(path):
    return keras.models.load_model(path)


def _state(model):
    """Every weight, then every stage and synthesizer optimizer variable."""
    optimizers = model.stage_optimizers() + (model.synthesizer_optimizers() or [])
    return model.get_weights() + [
        np.asarray(v) for o in optimizers for v in o.variables
    ]


def test_free_running_takes_its_settings_from_the_config(tmp_path):
    done = train_in_process(
        [
            "--config=configs/mnist_fcn.py:cdni,smoke,runtime=async",
            f"--workdir={tmp_path}",
            "--config.async_runtime.capacity=2",
            "--config.async_runtime.max_target_age=2",
            "--config.async_runtime.steps_per_execution=2",
            "--config.synthesizer_optimizer.name=sgd",
            "--config.synthesizer_optimizer.learning_rate=0.01",
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 512 examples in batches of 64, two epochs: 16 steps of every stage.
    assert metrics["status"] == "finished" and metrics["steps"] == 16
    assert metrics["learning_rate_schedule"]["boundaries"] == [9, 12]
    assert len(metrics["final_cut_cosines"]) == 2
    model = _load(tmp_path / "ckpt" / "epoch-0002.keras")
    assert type(model) is keras_sg.AsyncPipelinedModel
    assert (model.method, model.capacity, model.lock_step) == ("cdni", 2, False)
    assert model.max_target_age == 2 and model.steps_per_execution == 2
    assert [int(o.iterations) for o in model.stage_optimizers()] == [16] * 3
    assert len(model.synthesizer_optimizers()) == 2
    assert isinstance(model.synthesizer_optimizers()[0], keras.optimizers.SGD)
    # Each stage moved from its initial weights and the history has a row
    # per epoch with the synthesizers' losses.
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert len(rows) == 3 and "cut_1_sg_loss" in rows[0]


def test_lock_step_resumes_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """A run of 3 epochs; then its last checkpoint and results are removed,
    as if it had been killed after epoch 2, and the same command resumes it:
    every weight and optimizer variable ends bit-equal."""
    args = [
        "--config=configs/mnist_fcn.py:cdni,smoke,runtime=async",
        "--config.async_runtime.lock_step=True",
        "--config.epochs=3",
        f"--workdir={tmp_path}",
    ]
    done = train_in_process(args)
    assert done.returncode == 0, done.stderr[-3000:]
    last = tmp_path / "ckpt" / "epoch-0003.keras"
    want = _state(_load(last))
    steps = json.loads((tmp_path / "metrics.json").read_text())["steps"]
    # 8 batches and 2 drain steps an epoch, which every stage counts, and
    # so the schedule's 60% and 80% marks.
    assert steps == 30
    shutil.move(last, tmp_path / "uninterrupted.keras")
    (tmp_path / "metrics.json").unlink()

    resumed = train_in_process(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from epoch 2" in resumed.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 2 and metrics["steps"] == steps
    assert metrics["learning_rate_schedule"]["boundaries"] == [18, 24]
    got = _state(_load(last))
    assert len(got) == len(want)
    moved = np.abs(got[0] - _state(_load(tmp_path / "ckpt" / "epoch-0002.keras"))[0])
    assert moved.max() > 0  # the resumed epoch trained
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_resume_gives_every_stage_optimizer_the_config_schedule(tmp_path):
    """On resume the script sets the schedule of the config (epochs may have
    changed) on the optimizers that step: for the async runtime, the
    stages' and synthesizers' clones, not only the compiled ones."""
    with script_module(TRAIN, "keras_sg_train") as train:
        config = _config("cdni,smoke,runtime=async")
        config.synthesizer_optimizer.name = "sgd"
        config.synthesizer_optimizer.learning_rate = 0.01
        model = train.build_model(config, (784,), 10, steps_per_epoch=8)
        model.fit(
            np.zeros((16, 784), "float32"),
            np.zeros(16, "int64"),
            batch_size=8,
            verbose=0,
        )
        path = tmp_path / "m.keras"
        model.save(path)
        model = keras.models.load_model(path)
        config.epochs = 5
        train.follow_schedule(model, config, 8)
    stage, synth = model.stage_optimizers(), model.synthesizer_optimizers()
    assert len(stage) == 3 and len(synth) == 2
    for optimizer, rate in [(o, 1e-3) for o in stage] + [(o, 0.01) for o in synth]:
        schedule = optimizer._learning_rate
        assert list(schedule.boundaries) == [24, 32], optimizer.name
        assert schedule.values[0] == pytest.approx(rate)


def test_a_workdir_made_before_the_runtime_fields_resumes(tmp_path):
    """A config.json recorded before `runtime` existed trained the step
    runtime: a rerun with the defaults is accepted, one with async is not."""
    with script_module(TRAIN, "keras_sg_train") as train:
        config = _config("dni,smoke")
        recorded = json.loads(config.to_json_best_effort())
        del recorded["runtime"], recorded["async_runtime"]
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "epoch-0001.keras").write_bytes(b"")
        (tmp_path / "config.json").write_text(json.dumps(recorded))
        train.check_same_config(tmp_path, config)
        with pytest.raises(SystemExit) as caught:
            train.check_same_config(tmp_path, _config("dni,smoke,runtime=async"))
    assert "runtime='step' -> 'async'" in str(caught.value)


@pytest.mark.parametrize(
    "variant, field, value, expected",
    [
        ("dni", "runtime", "threads", "`runtime` must be one of ('step', 'async')"),
        ("backprop,runtime=async", None, None, "needs method 'dni' or 'cdni'"),
        ("dni,runtime=async,update_probability=0.5", None, None, "no update_prob"),
        ("dni,runtime=async", "async_runtime.capacity", 0, "an integer >= 1"),
        ("dni,runtime=async", "async_runtime.max_target_age", 1, "[2, 2]"),
        ("dni,runtime=async", "async_runtime.max_target_age", 3, "[2, 2]"),
        ("dni,runtime=async", "async_runtime.steps_per_execution", 0, ">= 1"),
    ],
)
def test_validate_names_bad_runtime_values(variant, field, value, expected):
    config = _config(f"{variant},smoke")
    if field:
        set_field(config, field, value)
    with pytest.raises(ValueError) as caught:
        common.validate(config)
    assert expected in str(caught.value)
    assert "Received: " in str(caught.value)
    if field:
        assert f"{field}={value!r}" in str(caught.value)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            [
                "--config.async_runtime.capacity=2",
                "--config.async_runtime.lock_step=True",
            ],
            "`async_runtime.capacity` must be 1 with async_runtime.lock_step=True",
        ),
        (
            [
                "--config.async_runtime.steps_per_execution=4",
                "--config.async_runtime.lock_step=True",
            ],
            "`async_runtime.steps_per_execution` must be 1 with",
        ),
    ],
)
def test_lock_step_conflicts_are_named_before_training(tmp_path, overrides, expected):
    workdir = tmp_path / "run"
    done = train_in_process(
        [
            "--config=configs/mnist_fcn.py:dni,smoke,runtime=async",
            f"--workdir={workdir}",
            *overrides,
        ]
    )
    assert done.returncode == 1
    assert expected in done.stderr and "bad config" in done.stderr
    assert not workdir.exists()


def test_tensorboard_profiles_the_steps_the_config_names(tmp_path):
    """`log.profile_batch="2,4"` (the command line gives text) reaches
    TensorBoard as steps 2 to 4, here with the async runtime, whose batch
    callbacks come from its top stage; it writes a trace."""
    done = train_in_process(
        [
            "--config=configs/mnist_fcn.py:cdni,smoke,runtime=async",
            f"--workdir={tmp_path}",
            "--config.log.profile_batch=2,4",
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "tb" / "train").rglob("*.xplane.pb"))
    with script_module(TRAIN, "keras_sg_train") as train:
        assert train.profile_steps("0") == 0
        assert train.profile_steps("10") == 10
        assert train.profile_steps("2,4") == (2, 4)
