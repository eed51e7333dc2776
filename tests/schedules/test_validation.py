"""The simulator's errors against the schedules measured in docs/benchmarks.md."""

import pytest

from keras_sg.schedules import simulate
from keras_sg.schedules import validation as v


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: the simulator has no Keras."""
    yield


def _rows(setting):
    return [r for r in v.MEASURED if r.setting == setting]


def test_errors_without_overhead_are_the_ones_printed_in_benchmarks_md():
    # The "(error)" column of docs/benchmarks.md, table by table.
    printed = {
        "servers": [34, 41, 23, 27, 42],
        "logical": [-18, -21, -46, -6, 12, -29, -28, -49, -5, -5],
        "logical (loaded)": [-45, -64, -29, -1, 32, -55, -13, -13],
    }
    for setting, errors in printed.items():
        got = [round(100 * v.relative_error(r)) for r in _rows(setting)]
        assert got == errors, setting


def test_with_overhead_by_hand():
    row = v.MEASURED[0]  # backprop_mp on the servers: 5360 predicted
    # 256 / 5360 s = 47.761 ms a step; with 10 ms more, 57.761 ms.
    assert v.with_overhead(row, 10.0) == pytest.approx(256 / (256 / 5360 + 0.010))
    assert v.with_overhead(row, 10.0) == pytest.approx(4432.1, abs=0.1)
    assert v.with_overhead(row, 0.0) == pytest.approx(5360)
    with pytest.raises(ValueError, match="per_step_overhead_ms=-1.0"):
        v.with_overhead(row, -1.0)


@pytest.mark.parametrize("schedule", ["naive", "gpipe", "pipelined_dni", "dni"])
def test_with_overhead_is_what_simulate_gives(schedule):
    # One step per batch: the simulator adds the overhead once per batch.
    m = 8 if schedule == "gpipe" else 1
    steps = 4 if schedule in ("pipelined_dni", "dni") else 1
    costs = dict(update=[3.0, 2.5], transfer=0.4)
    synth = 1.5 if schedule in ("pipelined_dni", "dni") else None
    base = simulate(
        schedule, 2, max(m, steps), [6.0, 5.0], [20.0, 18.0], synth, **costs
    )
    slow = simulate(
        schedule,
        2,
        max(m, steps),
        [6.0, 5.0],
        [20.0, 18.0],
        synth,
        per_step_overhead=13.76,
        **costs,
    )
    per_batch = base.step_time / steps  # ms per batch of 256
    row = v.Measured("servers", 2, schedule, 1.0, 256 / per_batch * 1000)
    assert 256 / (slow.step_time / steps) * 1000 == pytest.approx(
        v.with_overhead(row, 13.76)
    )


def test_fit_recovers_a_known_overhead():
    rows = [
        v.Measured(
            "servers", 2, str(p), v.with_overhead(v.Measured("", 2, "", 1, p), 7.5), p
        )
        for p in (3000.0, 5000.0, 9000.0)
    ]
    assert v.fit_per_step_overhead(rows) == pytest.approx(7.5)


def test_one_overhead_for_the_servers_brings_four_of_five_within_10_percent():
    h = v.fit_per_step_overhead(_rows("servers"))
    assert h == pytest.approx(13.76, abs=0.005)
    errors = [round(100 * v.relative_error(r, h), 1) for r in _rows("servers")]
    assert errors == [3.8, 11.9, -3.4, -5.2, -3.3]


def test_logical_devices_are_slower_in_the_simulator_and_no_overhead_helps():
    # Most predictions are already too slow: the fit stays at 0.
    assert v.fit_per_step_overhead(_rows("logical")) == 0.0
    within = [abs(v.relative_error(r)) <= 0.10 for r in _rows("logical")]
    assert sum(within) == 3


def test_validation_table_rows_and_errors():
    table = v.validation_table({"servers": 13.76})
    assert len(table) == len(v.MEASURED) == 23
    row, without, with_h = table[1]  # GPipe on the servers
    assert row.schedule == "gpipe"
    assert without == pytest.approx(4918 / 3477 - 1)
    assert with_h == pytest.approx(256 / (256 / 4918 + 0.01376) / 3477 - 1)
    assert table[5][1] == table[5][2]  # logical: no overhead given
    with pytest.raises(ValueError, match="'tpu'"):
        v.validation_table({"tpu": 1.0})
