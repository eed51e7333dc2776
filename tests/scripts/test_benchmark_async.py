"""scripts/benchmark_async.py --accuracy: which rows it measures, and with
which schedule, clipping and runtime options."""

import sys
from pathlib import Path

import pytest
from absl import flags
from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_async.py"


@pytest.fixture
def parse():
    # The script imports benchmark_pipeline by name: a copy cached by another
    # test would not define its flags again.
    sys.modules.pop("benchmark_pipeline", None)
    with script_module(SCRIPT, "keras_sg_benchmark_async") as module:

        def parsed(*argv):
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["benchmark_async.py", *argv])
            return module

        yield parsed
    sys.modules.pop("benchmark_pipeline", None)
    flags.FLAGS.unparse_flags()


def test_the_cdni_rows_get_warm_up_and_clipping_backprop_neither(parse):
    script = parse(
        "--accuracy",
        "--warmup_steps=500",
        "--global_clipnorm=1",
        "--variants=32+jit",
        "--capacities=1",
    )
    specs = script.accuracy_specs()
    assert list(specs) == ["backprop_mp", "pipelined_cdni", "async_cdni"]
    backprop = specs["backprop_mp"]
    assert "warmup_steps" not in backprop and "global_clipnorm" not in backprop
    assert backprop["name"] == "backprop_mp"
    for key in ("pipelined_cdni", "async_cdni"):
        assert specs[key]["warmup_steps"] == 500
        assert specs[key]["global_clipnorm"] == 1.0
        assert specs[key]["cdni"] and specs[key]["synth"] == "linear"
        assert "decay_steps" not in specs[key]
    runtime = specs["async_cdni"]
    assert runtime["name"] == "async_cdni C=1 N=32 xla, warm-up 500, clip 1"
    assert runtime["capacity"] == 1 and runtime["steps_per_execution"] == 32
    assert runtime["jit"] is True


def test_a_decay_is_every_rows_schedule_backprop_included(parse):
    script = parse("--accuracy", "--warmup_steps=250", "--decay_steps=452")
    specs = script.accuracy_specs()
    for spec in specs.values():
        assert spec["warmup_steps"] == 250 and spec["decay_steps"] == 452
        assert "global_clipnorm" not in spec
    assert specs["backprop_mp"]["name"] == "backprop_mp, warm-up 250, decay 452"


def test_clipping_by_value_goes_to_the_cdni_rows(parse):
    script = parse("--accuracy", "--clipvalue=0.01", "--warmup_steps=0")
    specs = script.accuracy_specs()
    assert "clipvalue" not in specs["backprop_mp"]
    assert specs["async_cdni"]["clipvalue"] == 0.01
    assert specs["pipelined_cdni"]["name"] == "pipelined_cdni, clipvalue 0.01"


def test_schedules_are_chosen_and_an_unknown_one_is_refused(parse):
    script = parse("--accuracy", "--accuracy_schedules=async_cdni,backprop_mp")
    assert list(script.accuracy_specs()) == ["async_cdni", "backprop_mp"]
    script = parse("--accuracy", "--accuracy_schedules=async_dni")
    with pytest.raises(ValueError, match=r"Received: \['async_dni'\]"):
        script.accuracy_specs()


def test_every_row_once_per_optimizer(parse):
    script = parse("--optimizers=adam,fused_adam", "--variants=32")
    specs = script.specs()
    assert "optimizer" not in specs["backprop_mp"]
    fused = specs["backprop_mp fused Adam"]
    assert fused["optimizer"] == "fused_adam"
    assert fused["name"] == "backprop_mp fused Adam (2 servers)"
    assert (
        specs["plain fused Adam"]["name"] == "plain Keras, default threading fused Adam"
    )
    assert len(specs) == 2 * 5
    script = parse("--accuracy", "--optimizers=fused_adam", "--warmup_steps=0")
    names = [spec["name"] for spec in script.accuracy_specs().values()]
    assert names[0] == "backprop_mp fused Adam"
    assert all(
        spec["optimizer"] == "fused_adam" for spec in script.accuracy_specs().values()
    )
    script = parse("--optimizers=sgd")
    with pytest.raises(ValueError, match=r"Received: \['sgd'\]"):
        script.specs()


def test_vary_seed_gives_each_run_its_own_seed(parse, monkeypatch):
    script = parse("--accuracy", "--vary_seed")
    seen = []
    monkeypatch.setattr(script.bp, "measure", lambda spec: seen.append(spec) or {})
    script.bp.in_turn({"a": {"name": "a"}, "b": {"name": "b"}}, 3, vary_seed=True)
    # Run 1 keeps no key (its cached runs still match); both specs share each
    # run's seed.
    assert [(s["name"], s.get("seed")) for s in seen] == [
        ("a (run 1)", None),
        ("b (run 1)", None),
        ("a (run 2)", 1),
        ("b (run 2)", 1),
        ("a (run 3)", 2),
        ("b (run 3)", 2),
    ]
    seen.clear()
    script.bp.in_turn({"a": {"name": "a"}}, 2)
    assert [s.get("seed") for s in seen] == [None, None]


def test_one_runtime_row_per_capacity_side_by_side(parse):
    script = parse(
        "--accuracy",
        "--variants=32+jit",
        "--capacities=1,2",
        "--clipvalue=0.01",
        "--warmup_steps=250",
        "--accuracy_schedules=backprop_mp,async_cdni",
    )
    specs = script.accuracy_specs()
    assert list(specs) == ["backprop_mp", "async_cdni C=1", "async_cdni C=2"]
    for capacity in (1, 2):
        spec = specs[f"async_cdni C={capacity}"]
        assert spec["capacity"] == capacity
        assert spec["steps_per_execution"] == 32 and spec["jit"] is True
        assert spec["clipvalue"] == 0.01 and spec["warmup_steps"] == 250
        assert spec["name"] == (
            f"async_cdni C={capacity} N=32 xla, warm-up 250, clipvalue 0.01"
        )
    # One capacity keeps the row's key (and its cached runs' names).
    script = parse("--accuracy", "--capacities=1")
    assert "async_cdni" in script.accuracy_specs()


def _run(name, seconds, epochs, age=None):
    run = {
        "spec": {"name": name},
        "seconds": seconds,
        "curve": [(e + 1, 10.0 * (e + 1), 0.9 + 0.01 * e) for e in range(epochs)],
        "load": [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]],
        "measured_utc": [0.0, 60.0],
    }
    if age is not None:
        run["staleness"] = [{"mean_age": age}]
    return run


def test_the_accuracy_table_takes_true_medians_and_counts_a_miss_as_slowest(parse):
    script = parse("--accuracy")
    runs = {
        # Four runs: the median is the mean of the middle two, 45 and 47.
        "backprop_mp": [
            _run("backprop_mp (run 1)", 47.0, 3),
            _run("backprop_mp (run 2)", 60.0, 4),
            _run("backprop_mp (run 3)", 44.0, 3),
            _run("backprop_mp (run 4)", 45.0, 3),
        ],
        # One run did not get there: it counts as the slowest, so the median
        # is the mean of 35 and 36.
        "async_cdni": [
            _run("async_cdni C=1 (run 1)", 36.0, 3, age=2.1),
            _run("async_cdni C=1 (run 2)", None, 8, age=2.9),
            _run("async_cdni C=1 (run 3)", 35.0, 3, age=2.0),
            _run("async_cdni C=1 (run 4)", 30.0, 2, age=2.2),
        ],
    }
    lines = script.accuracy_table(runs, script.bp.measured_load(runs))
    backprop, runtime = (line.split(" | ") for line in lines[2:4])
    assert backprop[1] == "46.0 (47.0, 60.0, 44.0, 45.0)"
    assert backprop[2] == "1.000x" and backprop[3] == "3, 4, 3, 3"
    assert backprop[4] == "–"
    assert runtime[1] == "35.5 (36.0, not reached, 35.0, 30.0)"
    assert runtime[2] == f"{35.5 / 46.0:.3f}x"
    assert runtime[3] == "3, –, 3, 2" and runtime[4] == "2.10, 2.90, 2.00, 2.20"
    # More misses than reaches in the middle: no median.
    runs["async_cdni"][0]["seconds"] = None
    lines = script.accuracy_table(runs, script.bp.measured_load(runs))
    runtime = lines[3].split(" | ")
    assert runtime[1].startswith("not reached (") and runtime[2] == "–"


def test_a_diverged_run_is_named_in_the_table_and_the_script_exits_with_it(parse):
    script = parse("--accuracy")
    collapsed = _run("async_cdni C=1 (run 2)", None, 3, age=2.8)
    collapsed["spec"]["seed"] = 1
    collapsed["diverged"] = {
        "epoch": 3,
        "batch": None,
        "losses": {"loss": 34.2},
        "reason": "grew",
        "message": "Training diverged in epoch 3: the task loss grew.",
    }
    runs = {
        "backprop_mp": [_run("backprop_mp (run 1)", 47.0, 3)] * 2,
        "async_cdni": [_run("async_cdni C=1 (run 1)", 36.0, 3, age=2.1), collapsed],
    }
    lines = script.accuracy_table(runs, script.bp.measured_load(runs))
    runtime = lines[3].split(" | ")
    assert runtime[1] == "not reached (36.0, diverged (epoch 3))"
    assert runtime[3] == "3, –"
    assert "- async_cdni C=1 (run 2), seed 1: Training diverged in epoch 3" in (
        "\n".join(lines)
    )
    with pytest.raises(SystemExit, match=r"1 time-to-accuracy run\(s\) diverged"):
        script.bp.exit_if_diverged(runs)
    del collapsed["diverged"]
    script.bp.exit_if_diverged(runs)  # none diverged: returns
    lines = script.accuracy_table(runs, script.bp.measured_load(runs))
    assert not any("diverged" in line for line in lines)


def test_a_loss_growth_guard_goes_into_every_accuracy_spec(parse):
    for spec in parse("--accuracy").accuracy_specs().values():
        assert spec["max_loss_growth"] == 10.0
    specs = parse("--accuracy", "--max_loss_growth=0").accuracy_specs()
    assert {spec["max_loss_growth"] for spec in specs.values()} == {0.0}
    with pytest.raises(flags.IllegalFlagValueError, match="max_loss_growth"):
        parse("--accuracy", "--max_loss_growth=1")


def test_rollbacks_go_into_the_accuracy_specs_only_when_asked(parse):
    # Without the flag the specs (the cache's keys) are those of before it.
    assert all(
        "rollbacks" not in s for s in parse("--accuracy").accuracy_specs().values()
    )
    specs = parse("--accuracy", "--rollbacks=2").accuracy_specs()
    assert {spec["rollbacks"] for spec in specs.values()} == {2}
    with pytest.raises(flags.IllegalFlagValueError, match="rollbacks"):
        parse("--accuracy", "--rollbacks=-1")


def _same_but(key, changed, plain):
    """The two specs measure the same but for `key`, which only `changed`
    has (and so their names differ)."""
    assert key not in plain  # cached runs of the plain row still match
    assert {k: v for k, v in changed.items() if k not in (key, "name")} == {
        k: v for k, v in plain.items() if k != "name"
    }


def test_one_async_row_per_input_place_and_stage0_needs_servers(parse):
    script = parse("--variants=32", "--inputs=client,stage0")
    specs = script.specs()
    client = specs["async_dni_low_rank C=2 N=32 (2 servers)"]
    stage0 = specs["async_dni_low_rank C=2 N=32 (2 servers, input on stage 0)"]
    assert "input" not in client  # cached client runs still match
    assert stage0["input"] == "stage0"
    _same_but("input", stage0, client)
    assert len(specs) == 3 + 2 + 1  # baselines, the two async rows, plain Keras
    run = stage0["name"][:-1] + ", run 2)"
    assert script.display_name(run) == stage0["name"]
    with pytest.raises(ValueError, match=r"Received: --logical"):
        parse("--inputs=stage0", "--logical").specs()
    with pytest.raises(ValueError, match=r"Received: \['server'\]"):
        parse("--inputs=server").specs()


def test_accuracy_runtime_rows_per_input_place(parse):
    script = parse(
        "--accuracy",
        "--variants=32+jit",
        "--capacities=1",
        "--accuracy_schedules=backprop_mp,async_cdni",
        "--inputs=client,stage0",
    )
    specs = script.accuracy_specs()
    assert list(specs) == ["backprop_mp", "async_cdni", "async_cdni stage0"]
    client, stage0 = specs["async_cdni"], specs["async_cdni stage0"]
    assert "input" not in client  # cached client runs still match
    assert "input" not in specs["backprop_mp"]
    assert stage0["input"] == "stage0"
    assert stage0["name"] == client["name"] + ", input on stage 0"
    _same_but("input", stage0, client)
    with pytest.raises(ValueError, match=r"Received: --logical"):
        parse("--accuracy", "--inputs=stage0", "--logical").accuracy_specs()


def test_one_runtime_row_per_target_age(parse):
    script = parse(
        "--accuracy",
        "--variants=32+jit",
        "--capacities=1",
        "--max_target_ages=0,2",
        "--accuracy_schedules=backprop_mp,async_cdni",
    )
    specs = script.accuracy_specs()
    assert list(specs) == ["backprop_mp", "async_cdni age 0", "async_cdni age 2"]
    plain, aged = specs["async_cdni age 0"], specs["async_cdni age 2"]
    assert "max_target_age" not in specs["backprop_mp"]
    assert aged["max_target_age"] == 2
    assert aged["name"] == plain["name"] + ", max age 2"
    _same_but("max_target_age", aged, plain)
    # One age keeps the row's key; the throughput rows are named before
    # their place in brackets.
    assert list(parse("--accuracy", "--max_target_ages=2").accuracy_specs())[-1] == (
        "async_cdni"
    )
    names = list(parse("--variants=8", "--max_target_ages=2").specs())
    assert "async_dni_low_rank C=2 N=8, max age 2 (2 servers)" in names
    for bad in ("1", "x", ""):
        with pytest.raises(ValueError, match="--max_target_ages"):
            parse("--accuracy", f"--max_target_ages={bad}").accuracy_specs()


def _speed_run(name, speed, busy, jit=False, **extra):
    return {
        "spec": dict({"name": name}, **({"jit": True} if jit else {})),
        "examples_per_s": speed,
        "busy": busy,
        "per_step_overhead_ms": 2.0,
        "cpu": [0.9, 0.95],
        "client": 0.02,
        "load": [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]],
        "measured_utc": [0.0, 60.0],
        **extra,
    }


def test_an_xla_rows_busy_fractions_are_shown_once_its_programs_are_traced(parse):
    script = parse()
    runs = {
        "backprop_mp": [
            _speed_run("backprop_mp (2 servers, run 1)", 1000.0, [0.5, 0.5])
        ],
        "gpipe": [_speed_run("gpipe (2 servers, run 1)", 800.0, [0.6, 0.7])],
        # Runs 1 and 3 around the median run 2, whose busy fractions show.
        "async xla": [
            _speed_run(
                "async C=2 N=32 xla (run 1)", 3000.0, [0.1, 0.1], True, xla_traced=True
            ),
            _speed_run(
                "async C=2 N=32 xla (run 2)",
                2000.0,
                [0.92, 0.97],
                True,
                xla_traced=True,
            ),
            _speed_run(
                "async C=2 N=32 xla (run 3)", 1500.0, [0.1, 0.1], True, xla_traced=True
            ),
        ],
        # Traced before its programs were read: its busy would be wrong.
        "async xla before": [
            _speed_run("async C=2 N=32 xla, before (run 1)", 2000.0, [0.04, 0.04], True)
        ],
    }
    lines = script.throughput_table(runs, script.bp.measured_load(runs))
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:6]}
    (xla,) = [r for name, r in rows.items() if name.endswith("xla")]
    assert xla[1:4] == ["2000 (3000, 2000, 1500)", "2.00x", "2.50x"]
    assert xla[4:7] == ["92%, 97%", "–", "90%, 95%"]
    (before,) = [r for name, r in rows.items() if "before" in name]
    assert before[4:6] == ["–", "–"]
    (backprop,) = [r for name, r in rows.items() if name.startswith("backprop")]
    assert backprop[4:6] == ["50%, 50%", "2.0"]
