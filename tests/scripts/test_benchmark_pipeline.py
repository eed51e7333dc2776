"""scripts/benchmark_pipeline.py in process: the fully unlocked schedule's
prediction and the table of medians, without measuring anything."""

import json
import types
from pathlib import Path

import numpy as np
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


def _profile(costs, overhead=0.0):
    """A profile of one step of 256 examples, stage k on device k, with
    these core costs and `overhead` ms in which no op ran, as a dict."""
    from keras_sg import profiling

    k = len(costs)
    return profiling.ProfileResult(
        devices=tuple(f"/cpu:{d}" for d in range(k)),
        stage_devices=tuple(range(k)),
        busy=(0.5,) * k,
        costs=tuple(costs),
        stage_costs=tuple(costs),
        unplaced=0.0,
        events=(),
        window=50.0,
        steps=1,
        wall_time=50.0 + overhead,
        batch_size=256,
        core_costs=tuple(costs),
        op_union=50.0,
    ).to_dict()


def _spec(model, **kw):
    return dict(
        {"model": model, "devices": 2, "batch_size": 256, "micro_batches": 8}, **kw
    )


def test_predictions_with_update_and_overhead_by_hand(bench):
    costs = _costs()
    costs[0]["C"] = 1.0  # other work: busy time with the backward pass
    run = {"profile": _profile(costs, overhead=5.0)}
    # Backprop: F0 0-10, F1 10-22, B1 22-44 (U1 44-50), B0 (20 + 1) 44-65,
    # U0 65-71; then 5 ms in which both wait: 76 ms.
    predicted = bench.predict(dict(run, spec=_spec("backprop")))
    assert predicted == pytest.approx(256 / 76 * 1000)
    # Pipelined DNI: each device's step, then the overhead. Device 0:
    # F + S + B + C + U = 10 + 4 + 21 + 6 = 41, device 1: 12 + 22 + 6 = 40;
    # 46 ms a step, every device on a batch.
    predicted = bench.predict(dict(run, spec=_spec("pipelined")))
    assert predicted == pytest.approx(256 / 46 * 1000)


def test_zb_h1_is_predicted_from_gpipe_costs_by_hand(bench):
    # M = 2 micro-batches: F 5 and 6, B 10 and 11 each; U 6; no overhead.
    run = {"spec": _spec("gpipe", micro_batches=2)}
    run["profile"] = _profile(_costs())
    # GPipe: device 1 runs F 5-11, 11-17, B 17-28, 28-39, U 39-45; device 0
    # B 28-38, 39-49, U 49-55.
    assert bench.predict(run) == pytest.approx(256 / 55 * 1000)
    # ZB-H1, half of each B a weight gradient W. Device 0: F 0-5, 5-10.
    # Device 1: F 5-11, B 11-16.5, F 16.5-22.5, B 22.5-28, W 28-33.5,
    # 33.5-39, U 39-45. Device 0: B 16.5-21.5, W 21.5-26.5, B 28-33,
    # W 33-38, U 38-44. 45 ms.
    assert bench.predict(run, model="zb_h1") == pytest.approx(256 / 45 * 1000)
    assert bench.zb_h1_cell(run) == f"{256 / 45 * 1000:.0f} (1.22x GPipe's prediction)"


def test_fully_unlocked_prediction_by_hand(bench):
    # Half of each F is the composed forward pass, stage on stage: 5 + 6 =
    # 11. Then the step on the other half. Device 0: F 0-5, S 5-7, B 7-27,
    # Adam 27-33; its regression (2) waits for B of stage 1. Device 1: I
    # 0-1.5, F 1.5-7.5, B 7.5-29.5, Adam 29.5-35.5, its regression (1.5)
    # 35.5-37. Device 0's regression: 33-35. With 2 ms of per-step
    # overhead: 11 + 39 = 50 ms a step of 256 examples.
    run = {"spec": _spec("unlocked"), "profile": _profile(_costs(), overhead=2.0)}
    assert bench.predict(run) == pytest.approx(256 / 50 * 1000)


# 2026-11-27 00:00 UTC, in seconds since the epoch.
MIDNIGHT = 1795737600.0


def _recorded(n):
    """What `measure` records of the n-th run (from 1): the load before and
    after it, and its start and end, a minute apart from run to run."""
    return {
        "load": [[n, 2.0 * n, 3.0 * n], [n + 0.5, 2.0 * n + 0.5, 3.0 * n + 0.5]],
        "measured_utc": [MIDNIGHT + 60.0 * n, MIDNIGHT + 60.0 * n + 30.0],
    }


def _fake_run(spec, speed, run=0):
    return {
        "spec": spec,
        "examples_per_s": speed,
        "step_ms": spec["batch_size"] / speed * 1000,
        "traced_step_ms": 1.0,
        "busy": [0.5, 0.25 + 0.1 * run],
        "costs": _costs(update=float(run)),
        "profile": _profile(_costs(update=float(run)), overhead=0.5),
        "per_step_overhead_ms": 0.5,
    }


def test_medians_table_reports_medians_of_the_runs(
    bench, parsed, monkeypatch, tmp_path
):
    from keras_sg.schedules import validation

    parsed(
        "--table_only",
        "--schedules=backprop_mp,gpipe,fully_unlocked",
        "--devices=2",
        "--repeats=3",
        f"--costs={tmp_path / 'costs.json'}",
    )
    speeds = {
        "backprop_mp": [1000.0, 3200.0, 2000.0],
        "gpipe": [900.0, 1000.0, 1100.0],
        "fully_unlocked": [5000.0, 4000.0, 4400.0],
    }
    calls = []

    def fake_measure(spec):
        name = spec["name"].split(" (")[0]
        calls.append(spec["name"])
        run = sum(c.startswith(name + " ") for c in calls) - 1
        return dict(_fake_run(spec, speeds[name][run], run), **_recorded(len(calls)))

    monkeypatch.setattr(bench, "measure", fake_measure)
    # The load while the table is written is not the runs' load.
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    table = bench.medians_table().splitlines()
    # Runs in turn: every schedule once, then again.
    assert calls == [
        f"{name} (K=2, run {r})"
        for r in (1, 2, 3)
        for name in ("backprop_mp", "gpipe", "fully_unlocked")
    ]
    backprop, gpipe, zb_h1, unlocked = (row[2:-2].split(" | ") for row in table[2:6])
    assert backprop[:2] == ["2", "backprop_mp"]
    assert backprop[2] == "2000 (1000, 3200, 2000)"
    assert backprop[3] == "1.00x"
    assert gpipe[2] == "1000 (900, 1000, 1100)"
    assert zb_h1[1] == "zb_h1 (simulated, not measured)"
    assert zb_h1[2:7] == ["–"] * 5
    assert unlocked[2] == "4400 (5000, 4000, 4400)"
    assert unlocked[3] == "2.20x"
    # Busy, overhead and prediction of the median run (run 3: update 2 ms).
    assert unlocked[4] == "50%, 45%"
    assert unlocked[5] == "13%"  # (4 + 0) / (10 + 20)
    assert unlocked[6] == "0.5"
    # The composed forward pass on half of each F: 5 + 6 = 11. Then device
    # 0: F 0-5, S 5-7, B 7-27, U 27-29, R 29.5-31.5; device 1: I 0-1.5, F
    # 1.5-7.5, B 7.5-29.5, U 29.5-31.5, R 31.5-33; + 0.5 ms: 11 + 33.5.
    predicted = 256 / 44.5 * 1000
    assert unlocked[7] == f"{predicted:.0f} ({(predicted - 4400) / 4400:+.0%})"
    # The load before the first of the 9 runs and after the last, as they
    # recorded it.
    assert table[-1].startswith(
        "Measured 2026-11-27 00:01 to 2026-11-27 00:09 UTC. Load average (1, 5"
        " and 15 min, `os.getloadavg`) at the start: 1.00, 2.00, 3.00; at the"
        " end: 9.50, 18.50, 27.50; on "
    )
    # With --costs, the median runs' costs go to a file the validation reads.
    costs = validation.read_measured_costs(tmp_path / "costs.json")
    assert [(c.name, c.examples_per_s) for c in costs] == [
        ("backprop_mp (K=2)", 2000.0),
        ("gpipe (K=2)", 1000.0),
        ("fully_unlocked (K=2)", 4400.0),
    ]
    assert costs[2].predict() == pytest.approx(predicted)


def test_every_table_of_the_report_holds_medians_of_the_repeats(
    bench, parsed, monkeypatch, tmp_path
):
    from keras_sg.schedules import validation

    output = tmp_path / "bench.md"
    parsed(
        "--devices=2",
        "--repeats=3",
        f"--output={output}",
        f"--figures={tmp_path}",
        "--cdni_learning_rates=3e-4",
    )
    calls, specs = [], {}

    def fake_measure(spec):
        calls.append(spec["name"])
        specs[spec["name"]] = spec
        run = int(spec["name"].rsplit("run ", 1)[1][:-1])
        if spec.get("mnist"):
            seconds = {1: 30.0, 2: None, 3: 20.0}[run]
            curve = [(1, 10.0 * run, 0.9), (2, 20.0 * run, 0.98)]
            return {"spec": spec, "curve": curve, "seconds": seconds}
        speed = 1000.0 * (1 + (run * 2) % 3)  # 3000, 2000, 1000
        result = _fake_run(spec, speed, run - 1)
        result.update(cpu=[0.5, 0.5], client=0.25)
        if spec.get("cluster") and spec["model"] == "async":
            group = {"before": f"send {run}", "after": "next", "gaps": 9}
            result["idle_gaps"] = [
                [dict(group, ms_per_step=1.0 + run)],
                [dict(group, ms_per_step=2.5)],
            ]
        return result

    def recorded(spec):
        # Runs in the order measured; the last one is an accuracy run.
        return dict(fake_measure(spec), **_recorded(len(calls)))

    monkeypatch.setattr(bench, "measure", recorded)
    monkeypatch.setattr(bench, "draw", lambda results, path: None)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    bench.main([])
    # The command shown measures the same: every flag not its default.
    assert (
        "python scripts/benchmark_pipeline.py --devices=2 --width=1024 "
        "--batch_size=256 --micro_batches=8 --rank=64 --steps=20 "
        "--profile_steps=4 --repeats=3\n" in output.read_text()
    )
    parsed("--devices=2", "--async_steps_per_execution=32", "--async_jit")
    assert bench.command_line().endswith(
        "--repeats=3 --async_steps_per_execution=32 --async_jit"
    )
    # Each table's measurements in turn, three times.
    logical = [f"{n} (K=2, run 1)" for n, _, _ in bench.SCHEDULES]
    logical.append("plain Keras, default threading (run 1)")
    assert calls[: len(logical)] == logical
    # To accuracy: 4 schedules, 2 at the extra rate, 2 with the warm-up, and
    # the runtime in its recommended setting.
    assert len(calls) == 3 * (len(bench.SCHEDULES) * 2 + 1 + 9)
    for name in ("pipelined_cdni", "async_cdni"):
        assert "warmup_steps" not in specs[f"{name} (run 1)"]
        assert specs[f"{name}, warm-up 500 (run 2)"]["warmup_steps"] == 500
        assert specs[f"{name}, warm-up 500 (run 2)"]["cdni"] is True
    recommended = specs[f"{bench.RECOMMENDED_ASYNC_NAME} (run 3)"]
    assert {k: recommended[k] for k in ("model", "synth", "cdni")} == {
        "model": "async",
        "synth": "linear",
        "cdni": True,
    }
    assert recommended["capacity"] == 1
    assert recommended["steps_per_execution"] == 32
    assert recommended["jit"] is True
    assert recommended["warmup_steps"] == 500
    assert recommended["clipvalue"] == 0.01
    assert recommended["max_target_age"] == 2
    assert "max_target_age" not in specs["async_cdni (run 3)"]
    # The other async rows keep the flags' setting (--capacity 2, N = 1).
    assert specs["async_cdni (run 3)"]["capacity"] == 2
    assert "clipvalue" not in specs["async_cdni (run 3)"]
    assert "steps_per_execution" not in specs["async_cdni (run 3)"]
    # Seeds vary over the accuracy runs (run r, seed r - 1), not the others.
    assert "seed" not in specs["backprop_mp (run 1)"]
    assert specs["backprop_mp (run 2)"]["seed"] == 1
    assert specs["backprop_mp (run 3)"]["seed"] == 2
    assert "seed" not in specs["backprop_mp (K=2, run 3)"]
    assert calls[len(logical)] == "backprop_mp (K=2, run 2)"
    report = output.read_text()
    # The load before the first of the 72 runs and after the last.
    assert (
        "Measured 2026-11-27 00:01 to 2026-11-27 01:12 UTC. Load average (1, 5"
        " and 15 min, `os.getloadavg`) at the start: 1.00, 2.00, 3.00; at the"
        " end: 72.50, 144.50, 216.50" in report
    )
    # And each table's own, under it: the seven schedules on logical devices
    # (runs 1 to 23, plain Keras's 24th not among them), the servers' (runs
    # 25 to 45) and the accuracy runs' (46 to 72).
    logical, servers = report.split("## K = 2 devices")[1].split("## K = 2 logical")[
        ::-1
    ]
    assert (
        "Measured 2026-11-27 00:01 to 2026-11-27 00:23 UTC. Load average (1, 5"
        " and 15 min, `os.getloadavg`) at the start: 1.00, 2.00, 3.00; at"
        " the end: 23.50, 46.50, 69.50" in logical
    )
    assert (
        "Measured 2026-11-27 00:25 to 2026-11-27 00:45 UTC. Load average (1, 5"
        " and 15 min, `os.getloadavg`) at the start: 25.00, 50.00, 75.00; at"
        " the end: 45.50, 90.50, 135.50" in servers
    )
    assert (
        "Measured 2026-11-27 00:46 to 2026-11-27 01:12 UTC. Load average (1, 5"
        " and 15 min, `os.getloadavg`) at the start: 46.00, 92.00, 138.00; at"
        " the end: 72.50, 144.50, 216.50" in report.split("## Wall time to")[1]
    )
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    medians = [r for r in rows if "2000 (3000, 2000, 1000)" in r]
    # Seven schedules on logical devices and seven on the servers.
    assert len(medians) == 14
    assert sum("zb_h1 (simulated, not measured)" in r for r in rows) == 2
    assert "plain` of the same layers" not in report
    assert "2000 (3000, 2000, 1000) examples/s (median (runs))" in report
    # Where the runtime's servers idle: the median run's (run 2) gaps.
    assert "| 0 | 3.00 | 9 | `send 2` | `next` |" in rows
    assert "| 1 | 2.50 | 9 | `send 2` | `next` |" in rows
    # Time to accuracy: the median of 30, not reached and 20 s is 30 s.
    accuracy = [r for r in rows if r.startswith("| backprop_mp | 0.001")]
    assert accuracy == [
        "| backprop_mp | 0.001 | 30 (30, not reached, 20) | 2 (2, –, 2) |"
        " 0.9000, 0.9800 |"
    ]
    assert "Run r of each row initializes the weights" in report
    # The costs file: the median run's costs and overhead, read back by the
    # simulator's validation, which recomputes the predictions.
    costs = validation.read_measured_costs(tmp_path / "bench.json")
    assert [c.setting for c in costs] == ["logical"] * 7 + ["servers"] * 7
    # The asynchronous runtime: --capacity (default 2) in its specs only,
    # and in the costs file, for the simulator's "async" schedule.
    assert [c.queue_capacity for c in costs] == [None] * 6 + [2] + [None] * 6 + [2]
    assert costs[6].name == "async_dni_low_rank (K=2)"
    assert costs[6].model == "async"
    assert costs[6].transfer == (0.0,)  # the fake runs have no T
    assert "async_cdni (run 1)" in calls
    gpipe = costs[1]
    assert gpipe.name == "gpipe (K=2)"
    assert gpipe.examples_per_s == 2000.0
    assert gpipe.costs == tuple(_costs(update=1.0))  # run 2
    assert gpipe.per_step_overhead == 0.5
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["load_average"] == {
        "start": [1.0, 2.0, 3.0],
        "end": [72.5, 144.5, 216.5],
    }
    assert written["measured_utc"] == [MIDNIGHT + 60.0, MIDNIGHT + 60.0 * 72 + 30.0]
    assert [r["examples_per_s"] for r in written["measurements"][1]["runs"]] == [
        3000.0,
        2000.0,
        1000.0,
    ]
    for row, predicted, _ in validation.validate_measured_costs(
        tmp_path / "bench.json"
    ):
        entry = next(
            m
            for m in written["measurements"]
            if m["name"] == row.name and m["setting"] == row.setting
        )
        assert predicted == pytest.approx(entry["predicted_examples_per_s"])


def test_measured_transfers_go_to_the_simulator_by_hand(bench):
    # Backprop model-parallel, device 0 spends 1 ms a step on transfers and
    # device 1 3 ms: 4 ms over the 2 messages across the cut, 2 ms each. The
    # naive schedule: F0 10, the activation (2 on device 1), F1 12, B1 22,
    # the gradient (2 on device 0), B0 20: 68 ms, updates 0.
    costs = [
        {"F": 10.0, "B": 20.0, "S": 0.0, "I": 0.0, "U": 0.0, "T": 1.0, "C": 0.0},
        {"F": 12.0, "B": 22.0, "S": 0.0, "I": 0.0, "U": 0.0, "T": 3.0, "C": 0.0},
    ]
    run = {"spec": _spec("backprop"), "profile": _profile(costs)}
    assert bench.transfers(run) == [2.0]
    assert bench.predict(run) == pytest.approx(256 / 68 * 1000)
    # GPipe: 2 M = 16 messages a step.
    assert bench.transfers(dict(run, spec=_spec("gpipe"))) == [4.0 / 16]
    # Runs measured before T existed: no transfer.
    old = [{k: v for k, v in c.items() if k != "T"} for c in costs]
    run = dict(run, profile=_profile(old))
    assert bench.transfers(run) == [0.0]
    assert bench.predict(run) == pytest.approx(256 / 64 * 1000)


def test_async_prediction_is_the_async_schedule_with_the_capacity(bench):
    from keras_sg.schedules import simulate

    costs = [dict(c, T=1.0) for c in _costs()]
    spec = _spec("async", capacity=3)
    run = {"spec": spec, "profile": _profile(costs, overhead=0.5)}
    sim = simulate(
        "async",
        2,
        8,
        [10.0, 12.0],
        [20.0, 22.0],
        [4.0, 0.0],
        update=[6.0, 6.0],
        transfer=[1.0],  # (1 + 1) / 2 messages
        per_step_overhead=0.5,
        queue_capacity=3,
    )
    assert bench.predict(run) == pytest.approx(8 * 256 / sim.step_time * 1000)
    # Per batch, each device receives one message (device 1 the activation,
    # device 0 the target): device 0 F + S + B + U + overhead + 1 and
    # device 1 F + B + U + overhead + 1 are both 41.5 ms.
    assert sim.step_time / 8 == pytest.approx(10 + 4 + 20 + 6 + 0.5 + 1.0)
    assert sim.step_time / 8 == pytest.approx(12 + 22 + 6 + 0.5 + 1.0)


def _tiny(model, **spec):
    """The spec of a tiny cDNI model of `build`, K = 2."""
    return dict(
        devices=2,
        width=8,
        batch_size=4,
        micro_batches=2,
        rank=2,
        model=model,
        synth="linear",
        cdni=True,
        **spec,
    )


def test_warmup_steps_give_the_stages_a_linear_warm_up(bench):
    import keras

    import keras_sg

    spec = _tiny("pipelined", learning_rate=1e-3)
    flat = bench.build(spec, keras, keras_sg, None, 5)
    assert float(flat.optimizer.learning_rate) == pytest.approx(1e-3)
    warm = bench.build(dict(spec, warmup_steps=10), keras, keras_sg, None, 5)
    schedule = warm.optimizer._learning_rate
    rates = [float(schedule(step)) for step in (0, 5, 10, 1000)]
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 1e-3], rel=1e-4)


def test_async_runs_on_logical_devices_keep_their_second_window(bench, monkeypatch):
    import keras_sg

    windows = []

    def fake_profile(model, data, **window):
        windows.append(window)
        return "profile"

    monkeypatch.setattr(keras_sg.profiling, "profile", fake_profile)
    spec = dict(_tiny("async", capacity=2), profile_steps=4, steps_per_execution=32)
    # Queues full after (K - 1)(C + 1) + 1 = 4 batches: one call of 32 to
    # skip; 4 steps fit in one call. A window thrown away, then the kept one.
    assert bench.profile_logical(keras_sg, None, None, spec) == "profile"
    assert windows == [dict(steps=1, skip=1, batch_size=4, discard=1)]
    windows.clear()
    # One step a call: 4 calls in each window, 4 of them skipped.
    spec = dict(spec, steps_per_execution=1, devices=2, capacity=2)
    bench.profile_logical(keras_sg, None, None, spec)
    assert windows == [dict(steps=4, skip=4, batch_size=4, discard=1)]
    windows.clear()
    # The other schedules: one window of --profile_steps steps after one.
    pipelined = dict(_tiny("pipelined"), profile_steps=4)
    bench.profile_logical(keras_sg, None, None, pipelined)
    assert windows == [dict(steps=4, skip=1, batch_size=4)]


def test_a_cached_async_run_on_logical_devices_from_a_first_trace_is_stale(
    bench, parsed, monkeypatch, tmp_path
):
    parsed(f"--cache={tmp_path}")
    spec = {
        "name": "async_dni_low_rank (K=2, run 1)",
        "model": "async",
        "devices": 2,
        "capacity": 2,
    }
    old = {
        "spec": spec,
        "examples_per_s": 1.0,
        "per_step_overhead_ms": 0.1,
        "profile": {"core_costs": [], "core_time": 1.0},
        **_recorded(1),
    }
    cache = tmp_path / "async_dni_low_rank_K_2_run_1_.json"
    cache.write_text(json.dumps(old))
    measured = []

    def run(command, **kwargs):
        measured.append(command)
        line = json.dumps(dict(old, examples_per_s=2.0, profiler_warmed=True))
        return types.SimpleNamespace(returncode=0, stdout=line + "\n")

    monkeypatch.setattr(bench.subprocess, "run", run)
    assert bench.measure(spec)["examples_per_s"] == 2.0 and len(measured) == 1
    # Once traced so, it is kept; a run of another schedule never was stale.
    assert bench.measure(spec)["examples_per_s"] == 2.0 and len(measured) == 1
    other = dict(spec, name="pipelined_dni_low_rank (K=2, run 1)", model="pipelined")
    (tmp_path / "pipelined_dni_low_rank_K_2_run_1_.json").write_text(
        json.dumps(dict(old, spec=other))
    )
    assert bench.measure(other)["examples_per_s"] == 1.0 and len(measured) == 1


def test_clipping_of_a_spec_reaches_the_optimizer(bench):
    import keras

    import keras_sg

    spec = _tiny("async", capacity=2)
    assert bench.build(spec, keras, keras_sg, None, 5).optimizer.global_clipnorm is None
    clipped = bench.build(dict(spec, global_clipnorm=1.5), keras, keras_sg, None, 5)
    assert clipped.optimizer.global_clipnorm == 1.5
    assert clipped.optimizer.clipvalue is None
    by_value = bench.build(dict(spec, clipvalue=0.01), keras, keras_sg, None, 5)
    assert by_value.optimizer.clipvalue == 0.01
    assert by_value.optimizer.global_clipnorm is None


def _fit_to_accuracy(bench, *, jump, target, epochs, max_loss_growth, rollbacks=0):
    """A linear classifier of 3 classes on 32 examples (4 batches an epoch),
    trained by SGD at 0.05 for its first epoch and at `jump` after it."""
    import keras
    import tensorflow as tf

    import keras_sg

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2)).astype("float32")
    y = rng.integers(0, 3, size=32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    rate = keras.optimizers.schedules.PiecewiseConstantDecay([4], [0.05, jump])
    model.compile(
        optimizer=keras.optimizers.SGD(rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    result = bench.fit_to_accuracy(
        keras,
        keras_sg,
        model,
        data,
        data,
        epochs=epochs,
        target=target,
        max_loss_growth=max_loss_growth,
        rollbacks=rollbacks,
    )
    return result, model.history.history["loss"]


def test_a_time_to_accuracy_run_that_diverged_stops_and_never_reached(bench):
    # Epoch 1 at a sound rate, then a rate of 1e4: the logits blow up and
    # the epoch mean loss of epoch 2 is far above 10 times epoch 1's.
    result, losses = _fit_to_accuracy(
        bench, jump=1e4, target=1.01, epochs=4, max_loss_growth=10.0
    )
    assert losses[1] > 10 * losses[0] and np.isfinite(losses[1])
    assert [epoch for epoch, _, _ in result["curve"]] == [1, 2]  # not 4
    assert result["seconds"] is None
    diverged = result["diverged"]
    assert diverged["epoch"] == 2 and diverged["batch"] is None
    assert diverged["reason"] == "grew"
    assert diverged["losses"]["loss"] == pytest.approx(losses[1])
    assert "max_growth=10.0" in diverged["message"]
    # The guard off: the same run trains all its epochs, still finite.
    result, losses = _fit_to_accuracy(
        bench, jump=1e4, target=1.01, epochs=3, max_loss_growth=0.0
    )
    assert len(result["curve"]) == 3 and result["diverged"] is None
    assert np.isfinite(losses).all() and losses[2] > 10 * losses[0]
    # A sound run that reaches its target stops there, with its time.
    result, _ = _fit_to_accuracy(
        bench, jump=0.05, target=0.0, epochs=4, max_loss_growth=10.0
    )
    assert len(result["curve"]) == 1 and result["diverged"] is None
    assert result["seconds"] == result["curve"][0][1] > 0


def test_a_rolled_back_run_goes_on_and_a_second_divergence_stops_it(bench):
    # The rate's jump to 1e4 comes with step 5: epoch 2 blows up and is put
    # back to the end of epoch 1, its step count with it, so epoch 3 jumps
    # again; with one rollback allowed, that second divergence stops the run.
    with pytest.warns(UserWarning, match="end of epoch 1"):
        result, losses = _fit_to_accuracy(
            bench, jump=1e4, target=1.01, epochs=5, max_loss_growth=10.0, rollbacks=1
        )
    assert [epoch for epoch, _, _ in result["curve"]] == [1, 2, 3]
    assert [r["restored_epoch"] for r in result["rollbacks"]] == [1]
    assert result["rollbacks"][0]["epoch"] == 2
    assert result["diverged"]["epoch"] == 3 and result["seconds"] is None
    assert losses[1] > 2 * losses[0] and losses[2] > 2 * losses[0]
    lines = bench.divergence_section({"row": [dict(result, spec={"name": "row"})]})
    assert lines[1] == "Runs rolled back and trained on (--rollbacks):"
    assert lines[2].startswith("- row, seed 0: Training diverged in epoch 2")
    assert lines[2].endswith("Put back epoch 1.")
    assert lines[4] == "Runs that diverged and were stopped:"
    assert lines[5].startswith("- row, seed 0: Training diverged in epoch 3")
    # A sound run: no rollback, and its time.
    result, _ = _fit_to_accuracy(
        bench, jump=0.05, target=0.0, epochs=4, max_loss_growth=10.0, rollbacks=1
    )
    assert result["rollbacks"] == [] and result["seconds"] > 0


def test_staleness_of_the_targets_by_hand(bench):
    import numpy as np

    # Cut 0: five steps, the first two without a target (-1); the others
    # took batches 0, 1 and 1 at batches 2, 3 and 4: ages 2, 2 and 3.
    log = {
        "batch": np.array([0, 1, 2, 3, 4]),
        "target_batch": np.array([-1, -1, 0, 1, 1]),
        "lag": np.array([0, 1, 2, 2, 1]),
    }
    top = {name: np.array([0, 1, 2, 3, 4]) for name in log}
    (cut,) = bench.staleness([log, top])
    assert cut["steps"] == 5
    assert cut["with_target"] == pytest.approx(0.6)
    assert cut["mean_age"] == pytest.approx(7 / 3)
    assert cut["max_age"] == 3
    assert cut["mean_lag"] == pytest.approx(1.2)


def test_device_costs_are_their_core_shares(bench):
    # Server 0's summed op durations are 60 ms a step, but two ops shared
    # its one core: its core shares (keras_sg.profiling.core_shares) add up
    # to its busy time, 40 ms. Those are the simulator's costs.
    costs = [
        {"F": 12.0, "B": 30.0, "S": 3.0, "U": 9.0, "T": 6.0},
        {"F": 10.0, "B": 14.0, "U": 6.0},
    ]
    core = [
        {"F": 12.0, "B": 15.0, "S": 2.0, "U": 7.0, "T": 4.0},
        {"F": 10.0, "B": 14.0, "U": 6.0},
    ]
    run = {
        "spec": _spec("pipelined", cluster=True),
        "costs": costs,
        "profile": _profile(core),
    }
    assert bench.device_costs(run) == core
    # The transfer per message comes from the core share of T: 4 ms over 2
    # messages.
    assert bench.transfers(run) == pytest.approx([2.0])
    # On logical devices too: two ops of a device that ran at once on the
    # two cores take the device for the time they ran, not for its sum.
    logical = dict(run, spec=_spec("pipelined"))
    assert bench.device_costs(logical) == core


def test_a_run_records_its_load_and_a_cached_run_without_it_is_stale(
    bench, parsed, monkeypatch, tmp_path
):
    parsed(f"--cache={tmp_path}")
    spec = {"name": "plain Keras (run 1)", "model": "plain"}
    loads = iter([(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)])
    clock = iter([MIDNIGHT, MIDNIGHT + 42.0])
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        line = json.dumps({"spec": spec, "examples_per_s": 1000.0})
        return types.SimpleNamespace(returncode=0, stdout=f"noise\n{line}\n")

    monkeypatch.setattr(bench.subprocess, "run", run)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: next(loads))
    monkeypatch.setattr(bench.time, "time", lambda: next(clock))
    result = bench.measure(spec)
    assert result["load"] == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert result["measured_utc"] == [MIDNIGHT, MIDNIGHT + 42.0]
    # Cached with it: measured again only when the spec changes.
    assert bench.measure(spec) == result
    assert len(commands) == 1
    # A run cached before loads were recorded is measured again.
    (cached,) = tmp_path.glob("*.json")
    cached.write_text(json.dumps({"spec": spec, "examples_per_s": 1.0}))
    loads = iter([(7.0, 7.0, 7.0), (8.0, 8.0, 8.0)])
    clock = iter([MIDNIGHT + 100.0, MIDNIGHT + 142.0])
    assert bench.measure(spec)["load"] == [[7.0, 7.0, 7.0], [8.0, 8.0, 8.0]]
    assert len(commands) == 2
    # A report needs every run's load.
    with pytest.raises(ValueError, match="plain Keras"):
        bench.measured_load({"plain": [{"spec": spec, "examples_per_s": 1.0}]})


def test_async_input_on_stage0_only_for_the_servers_async_rows(bench, parsed):
    parsed("--async_input=stage0")
    assert bench.command_line().endswith("--async_input=stage0")
    base = dict(bench.base_spec(), devices=2, model="async", synth="low_rank")
    assert bench.with_capacity(dict(base, cluster=True))["input"] == "stage0"
    assert "input" not in bench.with_capacity(base)  # logical devices
    mnist = dict(base, cluster=True, mnist=True)
    assert bench.with_capacity(mnist)["input"] == "stage0"  # shuffled_epochs
    recommended = bench.recommended_async(bench.with_capacity(mnist))
    assert recommended["input"] == "stage0" and recommended["jit"]
    assert "input" not in bench.with_capacity(dict(base, mnist=True))
    assert "input" not in bench.with_capacity(dict(base, model="pipelined"))
    parsed()
    assert "input" not in bench.with_capacity(dict(base, cluster=True))


def test_async_xla_row_on_the_servers_beside_the_profiled_one(
    bench, parsed, monkeypatch, tmp_path
):
    from keras_sg.schedules import validation

    output = tmp_path / "bench.md"
    parsed(
        "--devices=2",
        "--repeats=3",
        f"--output={output}",
        f"--figures={tmp_path}",
        "--skip_accuracy",
        "--async_steps_per_execution=32",
        "--async_input=stage0",
        "--async_xla_row",
    )
    specs = {}

    def fake_measure(spec):
        specs[spec["name"]] = spec
        run = int(spec["name"].rsplit("run ", 1)[1][:-1])
        # The XLA row is the fastest: 9000, 8000, 7000.
        speed = 10000.0 - 1000.0 * run if spec.get("jit") else 1000.0 * (1 + run)
        result = dict(_fake_run(spec, speed, run - 1), cpu=[0.9, 0.8], client=0.1)
        if spec.get("jit"):
            # Its programs' runs read as ops, of kind C (other work).
            programs = [{"F": 0.0, "B": 0.0, "C": 28.0, "T": 1.0}]
            programs.append({"F": 0.0, "B": 0.0, "C": 29.5, "T": 1.0})
            result.update(
                xla_traced=True,
                costs=programs,
                profile=_profile(programs, overhead=0.5),
            )
        return dict(result, **_recorded(len(specs)))

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(bench, "draw", lambda results, path: None)
    bench.main([])
    xla = specs["async_dni_low_rank xla (2 servers, run 2)"]
    profiled = specs["async_dni_low_rank (2 servers, run 2)"]
    assert xla["jit"] is True and "jit" not in profiled
    assert {k: v for k, v in xla.items() if k not in ("jit", "name")} == {
        k: v for k, v in profiled.items() if k != "name"
    }
    assert xla["input"] == "stage0" and xla["steps_per_execution"] == 32
    assert not any("xla" in name for name in specs if "K=2" in name)
    report = output.read_text()
    assert report.count("async_dni_low_rank xla") == 2  # the row and its words
    (row,) = [
        r for r in report.splitlines() if r.startswith("| async_dni_low_rank xla")
    ]
    # Against backprop's median 3000: 8000 / 3000; of the trace, the median
    # run's busy fractions, no synthesizer overhead (its programs' work is
    # not told apart), and the simulator's prediction: each device's
    # program runs as one unit, the slower device's 29.5 ms, the overhead
    # 0.5 and a message received, (1 + 1) / 2 = 1 ms: 31 ms a batch.
    predicted = 256 / 31.0 * 1000
    assert row.removesuffix(" |").split(" | ")[1:10] == [
        "8000 (9000, 8000, 7000)",
        "2.67x",
        "2.67x",
        "50%, 35%",
        "–",
        "0.5",
        f"{predicted:.0f} (+3%)",
        "90%, 80%",
        "10% of a core",
    ]
    assert "--async_xla_row" in report
    assert "On the two servers: 8000 examples/s" in report
    # The costs file holds it, and the simulator's validation recomputes it.
    costs = validation.read_measured_costs(tmp_path / "bench.json")
    assert [c.setting for c in costs] == ["logical"] * 7 + ["servers"] * 8
    assert costs[-1].name == "async_dni_low_rank xla (2 servers)"
    assert costs[-1].queue_capacity == 2
    *_, (row, again, error) = validation.validate_measured_costs(
        tmp_path / "bench.json"
    )
    assert row.name == costs[-1].name
    assert again == pytest.approx(predicted)
    assert error == pytest.approx(predicted / 8000 - 1)


def test_server_intra_op_threads_reach_each_server_command(bench, parsed, monkeypatch):
    commands = []

    class Server:
        pid = 1

        def __init__(self, command, **kwargs):
            commands.append(command)
            self.stdout = types.SimpleNamespace(readline=lambda: "serving\n")

    monkeypatch.setattr(bench.subprocess, "Popen", Server)
    parsed()
    # The default is left out of the spec: runs cached before the flag match.
    assert "server_intra_op_threads" not in bench.base_spec()
    bench.start_servers(2, {})
    assert all("--intra_op_threads=1" in c for c in commands)
    parsed("--server_intra_op_threads=2")
    spec = bench.base_spec()
    assert spec["server_intra_op_threads"] == 2
    commands.clear()
    bench.start_servers(2, {}, spec["server_intra_op_threads"])
    assert [c.count("--intra_op_threads=2") for c in commands] == [1, 1]
    # Each server is still pinned to one core.
    assert all(c[-1].startswith("--cpus=") for c in commands)
    with pytest.raises(flags.IllegalFlagValueError):
        parsed("--server_intra_op_threads=0")


def test_a_cached_xla_run_on_the_servers_traced_before_programs_counted_is_stale(
    bench, parsed, monkeypatch, tmp_path
):
    parsed(f"--cache={tmp_path}")
    spec = {
        "name": "async_dni_low_rank xla (2 servers, run 1)",
        "devices": 2,
        "model": "async",
        "cluster": True,
        "jit": True,
    }
    old = {
        "spec": spec,
        "load": [[0.0] * 3] * 2,
        "per_step_overhead_ms": 1.0,
        "profile": {"core_costs": []},
    }
    measured = []

    def fresh(command, **kwargs):
        measured.append(command)
        line = json.dumps(dict(old, xla_traced=True))
        return types.SimpleNamespace(returncode=0, stdout=line + "\n")

    monkeypatch.setattr(bench, "start_servers", lambda *args: [])
    monkeypatch.setattr(bench.subprocess, "run", fresh)
    cache = tmp_path / "async_dni_low_rank_xla_2_servers_run_1_.json"
    cache.write_text(json.dumps(old))
    assert bench.measure(spec)["xla_traced"] and len(measured) == 1
    # Once traced so, it is kept; the same run without XLA never was stale.
    bench.measure(spec)
    cache.write_text(json.dumps(dict(old, spec=dict(spec, jit=False))))
    assert bench.measure(dict(spec, jit=False)) == dict(old, spec=dict(spec, jit=False))
    assert len(measured) == 1
