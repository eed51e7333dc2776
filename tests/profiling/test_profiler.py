"""Profiling tiny placed models on two logical CPU devices (in a subprocess:
devices and threads are fixed when TensorFlow starts), and the callback's
and result's own checks in this process."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sg
from keras_sg.profiling import Profile, ProfileResult, profile, union_length

WORKER = Path(__file__).with_name("profile_worker.py")
ROOT = Path(__file__).resolve().parents[2]
KINDS = ("dni", "gpipe", "pipelined", "unlocked", "async", "async_spe")
# Trained weights per device (see profile_worker.build): stage 0 is a dense
# layer 16 -> 32 (544), its gradient synthesizer 32 -> 32 (1056); stage 1 a
# dense layer 32 -> 4 (132), UnlockedModel's input synthesizer 16 -> 32
# (544) beside it.
WEIGHTS = {
    "dni": (1600, 132),
    "gpipe": (544, 132),
    "pipelined": (1600, 132),
    "unlocked": (1600, 676),
    "async": (1600, 132),
    "async_spe": (1600, 132),
}
# Steps per call of each stage (`steps_per_execution`, see profile_worker).
PER_CALL = {"async_spe": 2}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile")
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, str(WORKER), str(folder), *KINDS],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", KINDS)
def test_profile_of_a_placed_model(profiled, kind):
    raw = profiled["results"][kind]
    extra = ("examples_per_second", "stage_0_batches", "hook_left")
    result = ProfileResult.from_dict({k: v for k, v in raw.items() if k not in extra})
    # profile(steps=3, skip=2) profiles 3 calls after 2; a call of an
    # async_spe stage runs 2 steps, and the result counts steps.
    per_call = PER_CALL.get(kind, 1)
    steps = profiled["steps"] * per_call
    assert result.devices == ("/device:CPU:0", "/device:CPU:1")
    assert result.stage_devices == (0, 1)
    assert result.steps == steps
    assert all(0 < b <= 1 for b in result.busy)
    if kind.startswith("async"):
        # The wall time is that of stage 0's steps; the stage above may run
        # on while the profiler stops, so the window may be a little longer.
        assert result.window > 0
        # 2 + 3 calls, then (capacity + 1) more batches keep stage 1 busy
        # to the window's end; the profiler's hook is removed after fit.
        assert raw["stage_0_batches"] == (2 + profiled["steps"]) * per_call + 3
        assert raw["hook_left"] is False
    else:
        assert 0 < result.window <= result.wall_time
    assert raw["examples_per_second"] == pytest.approx(
        32 * steps / result.wall_time * 1000
    )
    assert result.step_time == pytest.approx(result.wall_time / steps)
    for cost in result.stage_costs:
        assert cost["F"] > 0 and cost["B"] > 0
    synth = [c["S"] for c in result.stage_costs]
    if kind == "gpipe":
        assert synth == [0, 0]
    else:
        assert synth[0] > 0 and synth[1] == 0  # no synthesizer above the top
    inputs = [c["I"] for c in result.stage_costs]
    assert (inputs[1] > 0) == (kind == "unlocked") and inputs[0] == 0
    # The optimizer's update, shared by the weights on each device; the
    # asynchronous model's stage optimizers run in the stage's scope, on
    # its device.
    update = [c["U"] for c in result.costs]
    assert update[0] > 0 and update[1] > 0
    if not kind.startswith("async"):
        assert update[0] / update[1] == pytest.approx(
            WEIGHTS[kind][0] / WEIGHTS[kind][1], rel=1e-9
        )
    # Activations cross from device 0 to 1: sends, a kind of their own.
    assert sum(c["T"] for c in result.costs) > 0
    assert all(t >= 0 for t in result.cut_transfers(messages=2))
    # The work traced fits in the wall time of two one-op-at-a-time devices.
    total = sum(sum(c.values()) for c in result.costs) * steps
    assert total <= result.wall_time * result.num_devices
    # Every op of the trace counts in the per-step overhead: on logical
    # devices the optimizer's update, which carries no device, is not in the
    # timeline but is in the time in which some op ran.
    timeline = union_length([(e.start, e.end) for e in result.events])
    assert result.op_union >= timeline
    if not kind.startswith("async"):
        assert timeline < result.op_union <= result.wall_time
        assert result.per_step_overhead == pytest.approx(
            (result.wall_time - result.op_union) / steps
        )
    # The core time: at least the time some op ran (one core or more then),
    # at most every op's duration (placed, and not) summed.
    assert result.cores is not None and result.core_time is not None
    summed = sum(sum(c.values()) for c in result.costs) + result.unplaced
    assert result.op_union / steps <= result.core_time + 1e-9
    assert result.core_time <= summed + 1e-9
    # Where each device waited: its largest idle groups, no more idle time
    # than the device had.
    assert len(result.idle_groups) == 2
    for d, groups in enumerate(result.idle_groups):
        assert 1 <= len(groups) <= 3
        waited = sum(g["ms_per_step"] for g in groups) * steps
        assert 0 < waited <= (1 - result.busy[d]) * result.window + 1e-6
    # The timeline is the busy fraction's source.
    for d, intervals in enumerate(result.intervals()):
        assert all(0 <= s <= e <= result.window + 1e-9 for s, e, _ in intervals)
        assert union_length(intervals) / result.window == pytest.approx(
            result.busy[d], rel=1e-9
        )


def test_smoke_profile_draws_the_measured_timeline(profiled):
    png = Path(profiled["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tiny_model():
    keras.utils.set_random_seed(0)
    net = keras_sg.models.fully_connected((4,), 2, depth=2, units=4)
    model = keras_sg.DecoupledModel(net, method="backprop")
    model.compile(optimizer="sgd", loss="mse")
    return model


def _data():
    x = np.zeros((16, 4), "float32")
    return tf.data.Dataset.from_tensor_slices((x, np.zeros((16, 2)))).batch(4)


def test_too_few_steps_to_profile_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    callback = Profile(steps=3, skip=2)
    with pytest.raises(ValueError, match=r"ran 4 steps, fewer than the skip \+ steps"):
        _tiny_model().fit(
            _data(), epochs=1, verbose=0, shuffle=False, callbacks=[callback]
        )
    assert callback.result is None
    assert list(tmp_path.iterdir()) == []  # its temporary trace deleted
    # The profiler was stopped: another profile can start.
    result = profile(_tiny_model(), _data().repeat(), steps=1, skip=1)
    assert result.devices == ("default",) and result.batch_size == 4


def test_discarded_windows_are_traced_first_and_thrown_away(tmp_path, monkeypatch):
    starts, fits = [], []
    start = tf.profiler.experimental.start

    def counted(logdir, *args, **kwargs):
        starts.append(str(logdir))
        start(logdir, *args, **kwargs)

    monkeypatch.setattr(tf.profiler.experimental, "start", counted)
    model = _tiny_model()
    fit = model.fit

    def counted_fit(*args, **kwargs):
        fits.append(kwargs["steps_per_epoch"])
        return fit(*args, **kwargs)

    monkeypatch.setattr(model, "fit", counted_fit)
    kept = tmp_path / "kept"
    result = profile(model, _data().repeat(), steps=2, skip=1, logdir=kept, discard=2)
    # Three fits of skip + steps steps, each traced once; only the last
    # trace is kept, where asked, and it is the result's.
    assert fits == [3, 3, 3]
    assert len(starts) == 3 and starts[-1] == str(kept)
    assert all(not Path(s).exists() for s in starts[:-1])
    assert result.steps == 2 and result.batch_size == 4
    assert len(list(kept.rglob("*.xplane.pb"))) == 1
    with pytest.raises(ValueError, match="Received: discard=-1"):
        profile(model, _data().repeat(), steps=1, discard=-1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "Received: steps=0"),
        ({"skip": -1}, "Received: skip=-1"),
        ({"steps": 2.0}, "Received: steps=2.0"),
        ({"batch_size": 0}, "Received: batch_size=0"),
    ],
)
def test_bad_profile_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Profile(**kwargs)


def test_a_model_without_stages_is_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="Received: Sequential"):
        profile(model, _data().repeat(), steps=1)


def test_arrays_are_cut_into_whole_batches_and_profiled():
    x = np.ones((10, 4), "float32")  # two whole batches of 4, then 2 left
    result = profile(_tiny_model(), x, np.zeros((10, 2)), batch_size=4, steps=3)
    assert result.batch_size == 4 and result.steps == 3
    assert result.devices == ("default",) and result.stage_devices == (0, 0)
    assert all(c["F"] > 0 and c["B"] > 0 for c in result.stage_costs)
    assert result.examples_per_second == pytest.approx(4 * 3 / result.wall_time * 1000)


@pytest.mark.parametrize("lead_ms", [-1.0, True, "500"])
def test_a_bad_lead_before_the_servers_trace_is_named(tmp_path, lead_ms):
    from keras_sg.profiling import trace_servers

    with pytest.raises(ValueError, match=r"Received: lead_ms="):
        trace_servers(
            None, None, ["127.0.0.1:1"], 1.0, lead_ms=lead_ms, logdir=tmp_path
        )
