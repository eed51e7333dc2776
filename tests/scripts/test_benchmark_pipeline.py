"""scripts/benchmark_pipeline.py in process: the fully unlocked schedule's
prediction and the table of medians, without measuring anything."""

from pathlib import Path

import pytest
from absl import flags
from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_pipeline.py"


@pytest.fixture(scope="module")
def bench():
    """The script as a module; its absl flags are removed afterwards, so that
    other scripts' tests can define their own."""
    with script_module(SCRIPT, "keras_sg_benchmark") as module:
        yield module


@pytest.fixture
def parsed(bench):
    def parse(*argv):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["benchmark_pipeline.py", *argv])

    yield parse
    flags.FLAGS.unparse_flags()


def test_smoke_timelines_drawn_from_saved_measurements(bench, tmp_path):
    # A measurement keeps its profile as a dict (JSON); the figure is drawn
    # from those, one panel per run, two steps of each.
    from keras_sg import profiling
    from keras_sg.schedules import Event

    def run(name, kinds):
        events = tuple(
            Event(d, 2.0 * i, 2.0 * i + 1.5, kind, -1, d, -1)
            for i, kind in enumerate(kinds)
            for d in (0, 1)
        )
        profile = profiling.ProfileResult(
            devices=("/cpu:0", "/cpu:1"),
            stage_devices=(0, 1),
            busy=(0.75, 0.75),
            costs=({"F": 1.5}, {"F": 1.5}),
            stage_costs=({"F": 1.5}, {"F": 1.5}),
            unplaced=0.0,
            events=events,
            window=2.0 * len(kinds) - 0.5,
            steps=2,
            wall_time=10.0,
        )
        return {"spec": {"name": name}, "profile": profile.to_dict()}

    path = tmp_path / "timelines.png"
    bench.draw([run("a", "FBSU"), run("b", "FBC")], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _costs(update=6.0):
    return [
        {"F": 10.0, "B": 20.0, "S": 4.0, "I": 0.0, "U": update},
        {"F": 12.0, "B": 22.0, "S": 0.0, "I": 3.0, "U": update},
    ]


def test_fully_unlocked_prediction_by_hand(bench):
    spec = {"model": "unlocked", "devices": 2, "batch_size": 256}
    # Device 0: F 0-10, S 10-12, B 12-32; its regression (2) waits for B of
    # stage 1. Device 1: I 0-1.5, F 1.5-13.5, B 13.5-35.5, its regression
    # (1.5) 35.5-37. Device 0's regression: 35.5-37.5. Then Adam, 6 ms, on
    # every device at once: 43.5 ms a step of 256 examples.
    predicted = bench.predict({"spec": spec, "costs": _costs()})
    assert predicted == pytest.approx(256 / 43.5 * 1000)


def test_medians_table_reports_medians_of_the_runs(bench, parsed, monkeypatch):
    parsed(
        "--table_only",
        "--schedules=backprop_mp,fully_unlocked",
        "--devices=2",
        "--repeats=3",
    )
    speeds = {"backprop_mp": [1000.0, 3200.0, 2000.0], "fully_unlocked": [5000.0]}
    speeds["fully_unlocked"] += [4000.0, 4400.0]
    calls = []

    def fake_measure(spec):
        name = spec["name"].split(" (")[0]
        calls.append(spec["name"])
        run = sum(c.startswith(name + " ") for c in calls) - 1
        return {
            "spec": spec,
            "examples_per_s": speeds[name][run],
            "busy": [0.5, 0.25 + 0.1 * run],
            "costs": _costs(update=float(run)),
        }

    monkeypatch.setattr(bench, "measure", fake_measure)
    table = bench.medians_table().splitlines()
    # Runs in turn: every schedule once, then again.
    assert calls == [
        f"{name} (K=2, run {r})"
        for r in (1, 2, 3)
        for name in ("backprop_mp", "fully_unlocked")
    ]
    backprop, unlocked = (row[2:-2].split(" | ") for row in table[2:4])
    assert backprop[:2] == ["2", "backprop_mp"]
    assert backprop[2] == "2000 (1000, 3200, 2000)"
    assert backprop[3] == "1.00x"
    assert unlocked[2] == "4400 (5000, 4000, 4400)"
    assert unlocked[3] == "2.20x"
    # Busy, overhead and prediction of the median run (run 3: update 2 ms).
    assert unlocked[4] == "50%, 45%"
    assert unlocked[5] == "13%"  # (4 + 0) / (10 + 20)
    predicted = 256 / 39.5 * 1000
    assert unlocked[6] == f"{predicted:.0f} ({(predicted - 4400) / 4400:+.0%})"
