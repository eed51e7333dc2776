"""The simulator's predictions from measured costs (docs/benchmarks.json)."""

import json

import pytest

from keras_sg.schedules import validation as v


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: the simulator has no Keras."""
    yield


# ------------------------------------ predictions recomputed from measured costs

# ms per step. C (other work) is busy time added to B: 16 + 2 on device 0.
COSTS = [
    {"F": 8.0, "B": 16.0, "S": 4.0, "I": 0.0, "U": 3.0, "C": 2.0},
    {"F": 10.0, "B": 18.0, "S": 0.0, "I": 3.0, "U": 5.0, "C": 0.0},
]


def _entry(model, name, examples_per_s, **kw):
    return dict(
        {
            "setting": "logical",
            "name": name,
            "model": model,
            "devices": 2,
            "batch_size": 100,
            "micro_batches": 2,
            "examples_per_s": examples_per_s,
            "costs": COSTS,
            "per_step_overhead_ms": 4.0,
            "transfer_ms": None,
            "runs": [{"examples_per_s": examples_per_s}],
        },
        **kw,
    )


def test_validate_measured_costs_by_hand(tmp_path):
    # Step times by hand, 4 ms of overhead each:
    # backprop: F0 0-8, F1 8-18, B1 18-36 (U1 36-41), B0 36-54, U0 54-57: 61.
    # With 1 ms per message on the cut: F1 8-19, B1 19-37, B0 37-56, U0
    # 56-59: 63.
    # GPipe, 2 micro-batches (F 4 and 5, B 9 and 9): device 1 F 4-9, 9-14,
    # B 14-23, 23-32, U 32-37; device 0 B 23-32, 32-41, U 41-44: 48.
    # dni: device 0 F 0-8, S/2 8-10, B 10-28, U 28-31, regression (S/2)
    # after B1; device 1 F 8-18, B 18-36, U 36-41; device 0's regression
    # 36-38: 45.
    # fully unlocked: first the composed forward pass on half of each F,
    # stage on stage: 4 + 5 = 9. Then the unlocked step on the other half:
    # device 1 I/2 0-1.5, F 1.5-6.5, B 6.5-24.5, U 24.5-29.5, its regression
    # (I/2) 29.5-31; device 0 F 0-4, S/2 4-6, B 6-24, U 24-27, its
    # regression after B1 (24.5): 27-29. 9 + 31 + 4 = 44.
    # pipelined DNI: device 0 F + S + B + U = 8 + 4 + 18 + 3 = 33, device 1
    # 10 + 18 + 5 = 33; with the overhead, 37 a step, one batch each.
    entries = [
        _entry("backprop", "backprop", 2000.0),
        _entry("backprop", "backprop, transfers", 2000.0, transfer_ms=[1.0]),
        _entry("gpipe", "gpipe", 2500.0),
        _entry("dni", "dni", 2000.0),
        _entry("unlocked", "unlocked", 2000.0),
        _entry("pipelined", "pipelined", 3000.0),
    ]
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps({"repeats": 3, "measurements": entries}))
    table = v.validate_measured_costs(path)
    steps = [61.0, 63.0, 48.0, 45.0, 44.0, 37.0]
    assert [row.name for row, _, _ in table] == [e["name"] for e in entries]
    for (row, predicted, error), step, entry in zip(table, steps, entries, strict=True):
        assert predicted == pytest.approx(100 / step * 1000), row.name
        measured = entry["examples_per_s"]
        assert error == pytest.approx((100 / step * 1000 - measured) / measured)
    # ZB-H1 on GPipe's costs (half of each B the weight gradient W). Device
    # 1: F 4-9, B 9-13.5, F 13.5-18.5, B 18.5-23, W 23-27.5, 27.5-32, U
    # 32-37. Device 0: F 0-4, 4-8, B 13.5-18, W 18-22.5, B 23-27.5, W
    # 27.5-32, U 32-35. 37 + 4 = 41.
    gpipe = table[2][0]
    assert gpipe.predict("zb_h1") == pytest.approx(100 / 41 * 1000)


def test_validate_measured_costs_on_shared_cores_by_hand(tmp_path):
    """Entries with work costs (logical devices) are simulated on their
    `cores` with `shared_cores=True`; the others as before."""
    # Backprop on one core, work halved on device 1: F0 0-8, F1 8-13, B1
    # 13-22; then device 1's update (2.5) shares the core with B0 (18): it
    # ends at 27, B0 has 15.5 left and ends at 42.5, U0 42.5-45.5; with the
    # overhead 49.5. Without sharing (the core costs): 61.
    work = [dict(COSTS[0]), {k: v / 2 for k, v in COSTS[1].items()}]
    entries = [
        _entry("backprop", "shared", 2000.0, work_costs=work, cores=1),
        _entry("backprop", "servers", 2000.0),
    ]
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps({"measurements": entries}))
    shared = v.validate_measured_costs(path)
    assert shared[0][1] == pytest.approx(100 / 49.5 * 1000)
    assert shared[1][1] == pytest.approx(100 / 61 * 1000)
    plain = v.validate_measured_costs(path, shared_cores=False)
    assert [p for _, p, _ in plain] == pytest.approx([100 / 61 * 1000] * 2)
    assert shared[0][0].cores == 1 and shared[0][0].work_costs[1]["F"] == 5.0
    with pytest.raises(ValueError, match="needs the measurement's work_costs"):
        shared[1][0].predict(shared_cores=True)


def test_core_time_bounds_a_prediction_on_shared_cores(tmp_path):
    """A step takes at least core_time / cores + the overhead: GPipe's
    simulated step on two cores is 48 ms (as above, each device a core);
    had its ops used 120 ms of core time, two cores need 60 + 4 = 64 ms.
    Under the simulated step the bound changes nothing."""
    gpipe = dict(micro_batches=2, per_step_overhead=4.0, batch_size=100, cores=2)
    assert v.predict_examples_per_s("gpipe", COSTS, **gpipe) == pytest.approx(
        100 / 48 * 1000
    )
    assert v.predict_examples_per_s(
        "gpipe", COSTS, core_time=120.0, **gpipe
    ) == pytest.approx(100 / 64 * 1000)
    assert v.predict_examples_per_s(
        "gpipe", COSTS, core_time=80.0, **gpipe
    ) == pytest.approx(100 / 48 * 1000)
    # Pipelined DNI: 37 ms a batch; 90 ms of core time on 2 cores: 49.
    assert v.predict_examples_per_s(
        "pipelined", COSTS, core_time=90.0, **gpipe
    ) == pytest.approx(100 / 49 * 1000)
    # From a costs file: only with shared cores.
    entry = _entry("gpipe", "gpipe", 2000.0, work_costs=COSTS, cores=2)
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"measurements": [dict(entry, core_time_ms=120.0)]}))
    ((row, predicted, _),) = v.validate_measured_costs(path)
    assert row.core_time == 120.0 and predicted == pytest.approx(100 / 64 * 1000)
    ((_, plain, _),) = v.validate_measured_costs(path, shared_cores=False)
    assert plain == pytest.approx(100 / 48 * 1000)
    path.write_text(json.dumps({"measurements": [entry]}))
    assert v.read_measured_costs(path)[0].core_time is None
    with pytest.raises(ValueError, match="needs `cores`.*core_time=120.0"):
        v.predict_examples_per_s("gpipe", COSTS, batch_size=100, core_time=120.0)
    for bad in (-1.0, float("nan"), "120"):
        with pytest.raises(
            ValueError, match="`core_time` must be a finite, non-negative"
        ):
            v.predict_examples_per_s("gpipe", COSTS, core_time=bad, **gpipe)


def test_predictions_with_the_update_before_the_gradient_is_sent():
    # Backprop as in the test above, but B0 waits for U1 (36-41): B0 41-59,
    # U0 59-62, + 4: 66. GPipe: device 0's second backward waits for U1
    # (32-37): 37-46, U0 46-49, + 4: 53.
    for model, step in (("backprop", 66.0), ("gpipe", 53.0)):
        predicted = v.predict_examples_per_s(
            model,
            COSTS,
            batch_size=100,
            micro_batches=2,
            per_step_overhead=4.0,
            update_before_send=True,
        )
        assert predicted == pytest.approx(100 / step * 1000), model
    with pytest.raises(ValueError, match="model='dni'"):
        v.predict_examples_per_s("dni", COSTS, batch_size=100, update_before_send=True)


def test_read_measured_costs_errors(tmp_path):
    path = tmp_path / "costs.json"
    entry = _entry("gpipe", "gpipe", 1.0)
    del entry["per_step_overhead_ms"]
    path.write_text(json.dumps({"measurements": [entry]}))
    with pytest.raises(ValueError, match="'per_step_overhead_ms'"):
        v.read_measured_costs(path)
    path.write_text(json.dumps({"measurements": []}))
    with pytest.raises(ValueError, match="no measurement"):
        v.read_measured_costs(path)


def test_predict_examples_per_s_errors():
    with pytest.raises(ValueError, match="model='1f1b'"):
        v.predict_examples_per_s("1f1b", COSTS, batch_size=100)
    with pytest.raises(ValueError, match="batch_size=0"):
        v.predict_examples_per_s("gpipe", COSTS, batch_size=0)
    with pytest.raises(ValueError, match="'X'"):
        v.predict_examples_per_s(
            "gpipe", [{"F": 1.0, "B": 1.0, "X": 1.0}], batch_size=1
        )
    with pytest.raises(ValueError, match="at least F and B"):
        v.predict_examples_per_s("gpipe", [{"F": 1.0}], batch_size=1)
