"""Stages and their synthesizers run on the devices they are placed on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keras_sg

WORKER = Path(__file__).with_name("placement_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _worker(mode, *args):
    # PYTHONPATH: this checkout's keras_sg, not the one installed.
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, str(WORKER), mode, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_variables_and_ops_live_on_the_requested_devices(tmp_path):
    result = _worker("place", tmp_path)
    assert result["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    assert [d.split("/")[-1] for d in result["variables"]["stage_0"]] == [
        "device:CPU:0"
    ]
    assert [d.split("/")[-1] for d in result["variables"]["stage_1"]] == [
        "device:CPU:1"
    ]
    assert [d.split("/")[-1] for d in result["variables"]["synth_0"]] == [
        "device:CPU:0"
    ]
    assert result["matmul_devices"] == ["/device:CPU:0", "/device:CPU:1"]
    # Adam's two slots per variable live with the variable, and its update
    # math runs there (Keras alone would put both on the default device).
    on_0 = result["stage_weights"][0] + result["synth_weights"]
    want = {"device:CPU:0": 2 * on_0, "device:CPU:1": 2 * result["stage_weights"][1]}
    assert result["slots"] == want
    assert result["loaded_slots"] == want
    assert result["loaded_optimizer_equal"] is True
    # GPipe accumulates each stage's gradients on that stage's device.
    sums = result["gpipe_sum_devices"]
    assert len(sums) >= 6  # (4 - 1) sums for each of several variables
    assert {d.split("/")[-1] for d in sums} == {"device:CPU:0", "device:CPU:1"}
    assert [d.split("/")[-1] for d in result["sqrt_devices"]] == [
        "device:CPU:0",
        "device:CPU:1",
    ]
    assert result["jit"] is False
    # Backprop and GPipe: each of stage 1's gradients waits, on CPU:1, for an
    # op on CPU:0 that reads the gradient sent down from CPU:1 (GPipe: those
    # of all 4 micro-batches); the update runs once they have arrived.
    send_first = result["send_first"]
    for kind, messages in (("backprop", 1), ("gpipe", 4)):
        gates = send_first[kind]
        assert len(gates) == send_first["stage_1_variables"], kind
        for device, gate, reads, read in gates:
            assert device.endswith("CPU:1") and gate.endswith("CPU:0"), kind
            assert len(reads) == 1 and reads[0].endswith("CPU:1"), kind
            assert read == messages, kind
    # Placement changes where the math runs, not the math.
    assert result["max_weight_diff"] < 1e-5


# Devices TensorFlow does not have after split_cpu(2) (soft placement would
# run their ops on CPU:0 without a word), and names it does have.
MISSING = [
    "/device:CPU:3",
    "/device:GPU:7",
    "/gpu:0",
    "/job:worker/replica:0/task:1/device:CPU:0",
    "/job:localhost/replica:0/task:1/device:CPU:0",
]
PRESENT = ["/device:CPU:1", "/cpu:1", "CPU:1", "/job:localhost/device:CPU:1"]


@pytest.fixture(scope="module")
def device_errors():
    return _worker("bad_devices", *MISSING, *PRESENT)


@pytest.mark.parametrize("device", MISSING)
def test_a_device_tensorflow_does_not_have_is_named(device_errors, device):
    error = device_errors[device]
    assert error is not None, f"{device} was accepted"
    assert f"TensorFlow has no device {device!r}" in error
    assert "it sees ['/device:CPU:0', '/device:CPU:1']" in error
    assert error.endswith(f"Received: device={device!r}")


@pytest.mark.parametrize("device", PRESENT)
def test_every_spelling_of_a_present_device_is_accepted(device_errors, device):
    assert device_errors[device] is None


def test_split_cpu_after_tensorflow_started_says_so():
    result = _worker("too_late")
    assert "split_cpu must run before TensorFlow initialises" in result["error"]


def test_device_list_must_match_the_stages():
    net = keras_sg.models.fully_connected((6,), 3, depth=3, units=4)
    with pytest.raises(ValueError, match=r"3 stages.*devices=\['/cpu:0'\]"):
        keras_sg.DecoupledModel(net, method="backprop", devices=["/cpu:0"])


def test_xla_is_turned_off_on_a_placed_model():
    net = keras_sg.models.fully_connected((6,), 3, depth=2, units=4)
    model = keras_sg.DecoupledModel(net, method="backprop", devices=["/cpu:0"] * 2)
    with pytest.warns(UserWarning, match="jit_compile=False"):
        model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    assert model.jit_compile is False
