"""scripts/train_sequence.py in process: each config's smoke variant, resume
(steps and the copy curriculum), divergence and bad values."""

import csv
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import script_module

import keras_sg

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_sequence.py"
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def script():
    with script_module(SCRIPT, "keras_sg_train_sequence") as module:
        yield module


def train(script, config, workdir, *overrides):
    """Runs the script's main on `configs/<config>` into `workdir`."""
    argv = [
        "train_sequence.py",
        f"--config={ROOT / 'configs' / config}",
        f"--workdir={workdir}",
        "--config.deterministic=False",  # op determinism is process-wide
        *overrides,
    ]
    saved = sys.argv
    sys.argv = argv  # config_flags reads the overrides from sys.argv
    try:
        for name in [n for n in script.FLAGS if n.startswith("config.")]:
            delattr(script.FLAGS, name)  # defined anew by each parse
        script.FLAGS.unparse_flags()
        script.parse_flags(argv)
        script.main([])
    finally:
        sys.argv = saved
    return json.loads((Path(workdir) / "metrics.json").read_text())


@pytest.mark.parametrize(
    "config",
    ["copy.py:dni,smoke", "copy.py:bptt,smoke,task=repeat_copy,truncation=2"],
)
def test_copy_smoke_records_the_curriculum(script, tmp_path, config):
    metrics = train(script, config, tmp_path)
    method = config.split(":")[1].split(",")[0]
    assert metrics["method"] == method and metrics["status"] == "finished"
    assert metrics["task"] == ("repeat_copy" if "repeat" in config else "copy")
    assert metrics["truncation"] == (2 if "truncation=2" in config else 4)
    # 6 steps in epochs of 3; the smoke threshold (100 bits) is always met,
    # so N grows from 1 at every epoch.
    assert metrics["steps"] == 6 and metrics["epochs"] == 2
    assert metrics["largest_n"] == 2
    assert metrics["n_curve"] == [[3, 1], [6, 2]]
    assert metrics["length_curve"] == [[3, 1], [6, 2]]
    assert metrics["seconds"] > 0
    errors = [h["error"] for h in metrics["curriculum"]["history"]]
    # 8 random bits predicted near 1/2: about 8 bits per character.
    assert all(6.0 < e < 10.0 for e in errors), errors


def test_ptb_smoke_records_a_test_bpc_curve(script, tmp_path):
    metrics = train(script, "ptb_char.py:dni_aux,smoke", tmp_path)
    assert metrics["method"] == "dni_aux" and metrics["truncation"] == 8
    assert metrics["steps"] == 4
    steps, bpc = zip(*metrics["test_bpc_curve"], strict=True)
    assert steps == (2, 4)
    # An untrained model is near uniform over the generated text's characters.
    ceiling = math.log2(metrics["vocabulary_size"])
    assert all(0.8 * ceiling < b < 1.1 * ceiling for b in bpc), (bpc, ceiling)
    assert metrics["final_test_bpc"] == bpc[-1]
    assert metrics["test_characters"] == 800
    # 8 streams of 100 characters, 3 windows of 32: 96 scored a stream.
    assert metrics["test_characters_scored"] == 8 * 96
    window_steps, window_bpc = zip(*metrics["test_bpc_window_curve"], strict=True)
    assert window_steps == (2, 4)

    # The curve is the stream's: the last model, run by Keras's own layers
    # over each of the 8 test streams in one unrolled pass of 96 steps.
    config = importlib.import_module("configs.ptb_char").get_config("dni_aux,smoke")
    test = script.ptb_corpus(config).test
    model, epoch = keras_sg.callbacks.load_latest(tmp_path / "ckpt")
    assert epoch == 2
    rows = test.reshape(8, 100)
    h = rows[:, :96]
    for layer in model.network.layers:
        h = layer(h)
    unrolled = _numpy_bits(np.asarray(h), rows[:, 1:97]).mean()
    np.testing.assert_allclose(bpc[-1], unrolled, rtol=0, atol=1e-5)
    # The per-window curve resets the state at each window of 32.
    windows = [
        _numpy_bits(
            np.asarray(model.network(rows[:, w : w + 32])), rows[:, w + 1 : w + 33]
        )
        for w in (0, 32, 64)
    ]
    np.testing.assert_allclose(window_bpc[-1], np.mean(windows), rtol=0, atol=1e-5)


def _numpy_bits(logits, targets):
    """−log₂ softmax(logits)[target], in NumPy."""
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return -np.log2(np.take_along_axis(p, targets[..., None], -1)[..., 0])


def test_ptb_resume_refuses_a_history_without_the_stream_measure(script, tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss,val_loss\n0,3.0,3.1\n")
    with pytest.raises(SystemExit, match=r"no `test_bpc` column"):
        train(script, "ptb_char.py:bptt,smoke,truncation=4", tmp_path)


def test_clocks_smoke_records_accuracies(script, tmp_path):
    metrics = train(script, "clocks.py:bptt,smoke", tmp_path)
    assert metrics["method"] == "bptt" and metrics["truncation"] is None
    assert metrics["steps"] == 8  # 2 epochs of ceil(32 / 8)
    curve = metrics["test_accuracy_curve"]
    assert [s for s, _ in curve] == [4, 8]
    accuracy = metrics["test_accuracy"]
    assert 0.0 <= accuracy <= 1.0 and accuracy == pytest.approx(curve[-1][1])
    # 16 test sequences: 4 scored steps of the first blocks, 4 later ones.
    whole = (metrics["test_accuracy_first_blocks"] + metrics["test_accuracy_later"]) / 2
    assert whole == pytest.approx(accuracy)


def _history(workdir):
    with open(Path(workdir) / "history.csv") as f:
        return list(csv.DictReader(f))


def test_copy_resume_continues_steps_and_curriculum(script, tmp_path):
    first = train(script, "copy.py:dni,smoke", tmp_path, "--config.steps=3")
    assert first["steps"] == 3 and first["largest_n"] == 1
    second = train(script, "copy.py:dni,smoke", tmp_path, "--config.steps=9")
    assert second["resumed_from_epoch"] == 1
    assert second["steps"] == 9  # the optimizer's count, restored from epoch 1
    # N went on from the restored curriculum: 2 and 3, not 1 again.
    assert second["length_curve"] == [[3, 1], [6, 2], [9, 3]]
    assert second["largest_n"] == 3
    history = second["curriculum"]["history"]
    assert [h["length"] for h in history] == [1, 2, 3]
    assert history[0] == first["curriculum"]["history"][0]
    assert [int(r["epoch"]) for r in _history(tmp_path)] == [0, 1, 2]


def test_ptb_resume_continues_the_curve(script, tmp_path):
    train(script, "ptb_char.py:bptt,smoke,truncation=4", tmp_path, "--config.steps=2")
    metrics = train(
        script, "ptb_char.py:bptt,smoke,truncation=4", tmp_path, "--config.steps=6"
    )
    assert metrics["resumed_from_epoch"] == 1 and metrics["steps"] == 6
    assert [s for s, _ in metrics["test_bpc_curve"]] == [2, 4, 6]


def test_resume_with_another_model_is_refused(script, tmp_path):
    train(script, "copy.py:dni,smoke", tmp_path, "--config.steps=3")
    with pytest.raises(SystemExit, match=r"truncation=4 -> 2"):
        train(script, "copy.py:dni,smoke,truncation=2", tmp_path)


def test_divergence_exits_nonzero_with_status_diverged(script, tmp_path, monkeypatch):
    real = script.clock_data

    def poisoned(config):
        (x, y), test = real(config)
        return (np.full_like(x, np.nan), y), test

    monkeypatch.setattr(script, "clock_data", poisoned)
    with pytest.raises(SystemExit, match=r"diverged at epoch 1, batch 1"):
        train(script, "clocks.py:dni,smoke", tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["steps"] == 1
    assert metrics["diverged"]["losses"]["loss"] == "nan"
    assert metrics["newest_finite_checkpoint"] is None


def test_a_nan_synthesizer_loss_alone_stops_the_run(script, tmp_path, monkeypatch):
    """The library's StopOnDivergence watches `sg_loss` (the script has no
    check of its own): a synthesizer of NaN weights makes the first step's
    synthesizer loss NaN while its task loss, computed before the update,
    is finite."""
    real = script.build_model

    def poisoned(config, vocabulary_size=None):
        model = real(config, vocabulary_size)
        synth = model.synthesizer
        synth.set_weights([np.full_like(w, np.nan) for w in synth.get_weights()])
        return model

    monkeypatch.setattr(script, "build_model", poisoned)
    with pytest.raises(SystemExit, match=r"diverged at epoch 1, batch 1"):
        train(script, "ptb_char.py:dni,smoke", tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["steps"] == 1
    assert metrics["diverged"]["losses"] == {"sg_loss": "nan"}
    assert "the synthesizer loss (sg_loss=nan)" in metrics["diverged"]["message"]
    assert metrics["newest_finite_checkpoint"] is None
    assert not list((tmp_path / "ckpt").glob("*.keras"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.truncation=0", "Received: truncation=0"),
        ("--config.curriculum.threshold=-1.0", "curriculum.threshold=-1.0"),
        ("--config.sg_scale=1.5", "Received: sg_scale=1.5"),
        ("--config.method=dni_aux", None),  # valid: no error
    ],
)
def test_bad_values_are_named(script, tmp_path, override, message):
    if message is None:
        config = importlib.import_module("configs.copy").get_config("smoke")
        config.method = "dni_aux"
        importlib.import_module("configs.sequence").validate(config)
        return
    with pytest.raises(SystemExit, match=message):
        train(script, "copy.py:dni,smoke", tmp_path / "w", override)
    assert not (tmp_path / "w").exists()  # refused before writing anything


def test_config_variants_parse():
    copy = importlib.import_module("configs.copy")
    config = copy.get_config("dni_aux,truncation=8,task=repeat_copy,units=64")
    assert (config.method, config.truncation, config.task) == (
        "dni_aux",
        8,
        "repeat_copy",
    )
    assert config.curriculum.threshold == 0.15 and config.model.units == 64
    assert config.sg_scale == 0.5  # the discount measured on Copy
    with pytest.raises(ValueError, match="task='ptb_char'"):
        copy.get_config("task=ptb_char")
    clocks = importlib.import_module("configs.clocks")
    with pytest.raises(ValueError, match="dni_aux"):
        clocks.get_config("dni_aux")
    ptb = importlib.import_module("configs.ptb_char")
    config = ptb.get_config("bptt,truncation=4,eval_every=100")
    assert config.steps_per_epoch == 100 and config.data.sequence_length == 32
    assert not config.data.generated and ptb.get_config("smoke").data.generated


def test_command_line_smoke_and_bad_value_exit_status(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")

    def run(*args):
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=ROOT,
        )

    done = run("--config=configs/clocks.py:dni,smoke", f"--workdir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["status"] == "finished"
    bad = run(
        "--config=configs/clocks.py:dni,smoke",
        f"--workdir={tmp_path}/b",
        "--config.steps=0",
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        "train_sequence.py: bad config: `steps` must be an integer >= 1. "
        "Received: steps=0"
    )


def test_wall_clock_cap_and_max_length_stop_a_run(script, tmp_path):
    capped = train(
        script, "copy.py:bptt,smoke", tmp_path / "a", "--config.max_seconds=1e-9"
    )
    # The cap is read at epoch ends: one epoch of 3 steps, then a stop.
    assert capped["stopped"] == "wall_clock" and capped["status"] == "finished"
    assert capped["steps"] == 3 and capped["epochs"] == 1
    solved = train(
        script,
        "copy.py:bptt,smoke",
        tmp_path / "b",
        "--config.curriculum.max_length=2",
        "--config.steps=30",
    )
    # N = 1 and N = 2 solved (the smoke threshold), then nothing left to grow.
    assert solved["stopped"] == "max_length" and solved["largest_n"] == 2
    assert solved["steps"] == 6 and solved["n_curve"] == [[3, 1], [6, 2]]
