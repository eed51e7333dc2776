"""Tests of the pipeline schedule simulator against the closed forms."""

import itertools

import pytest

from keras_sg.schedules import (
    SCHEDULES,
    draw_timeline,
    list_schedule,
    simulate,
)

F, B = 1.0, 2.0


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: the simulator has no Keras."""
    yield


def _kwargs(schedule, num_devices):
    """Chunks for interleaved 1F1B, synthesizers for DNI, nothing otherwise."""
    if schedule == "interleaved_1f1b":
        return {"num_chunks": 2}
    if schedule in ("pipelined_dni", "dni"):
        return {"synth": [0.25 * (k + 1) for k in range(num_devices - 1)]}
    if schedule == "async":
        return {
            "synth": [0.25 * (k + 1) for k in range(num_devices - 1)],
            "queue_capacity": 2,
        }
    if schedule == "zb_h1":
        return {"weight_grad_fraction": 0.4}
    if schedule == "fully_unlocked":
        return {
            "synth": [0.25 * (k + 1) for k in range(num_devices - 1)],
            "input_synth": [0.4 + 0.3 * k for k in range(num_devices - 1)],
        }
    return {}


def _uneven(schedule, num_devices):
    """Unequal stage costs, so that dependencies bind in many places."""
    stages = num_devices * _kwargs(schedule, num_devices).get("num_chunks", 1)
    forward = [0.5 + 0.37 * ((3 * s) % 5) for s in range(stages)]
    backward = [1.0 + 0.61 * ((2 * s) % 7) for s in range(stages)]
    return forward, backward


# --- closed forms, equal stage costs ----------------------------------------


@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
@pytest.mark.parametrize("num_microbatches", [1, 8])
def test_naive_idles_each_device_k_minus_1_over_k(num_devices, num_microbatches):
    r = simulate("naive", num_devices, num_microbatches, F, B)
    k, m = num_devices, num_microbatches
    assert r.idle_fraction == pytest.approx([(k - 1) / k] * k)
    assert r.step_time == pytest.approx(k * m * (F + B))
    assert r.busy_time == pytest.approx([m * (F + B)] * k)
    assert r.throughput == pytest.approx(m / (k * m * (F + B)))


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
@pytest.mark.parametrize("num_microbatches", [1, 3, 8, 16])
def test_gpipe_and_1f1b_bubble(schedule, num_devices, num_microbatches):
    k, m = num_devices, num_microbatches
    r = simulate(schedule, k, m, F, B)
    assert r.step_time == pytest.approx((m + k - 1) * (F + B))
    assert r.bubble_fraction == pytest.approx((k - 1) / (m + k - 1))
    assert r.idle_fraction == pytest.approx([(k - 1) / (m + k - 1)] * k)
    assert r.bubble_time / (m * (F + B)) == pytest.approx((k - 1) / m)
    assert r.throughput == pytest.approx(m / ((m + k - 1) * (F + B)))


@pytest.mark.parametrize("num_devices", [2, 4, 8])
@pytest.mark.parametrize("num_chunks", [2, 3, 4])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_interleaved_bubble_is_1f1b_bubble_over_v(num_devices, num_chunks, groups):
    k, v, m = num_devices, num_chunks, groups * num_devices
    r = simulate("interleaved_1f1b", k, m, F / v, B / v, num_chunks=v)
    assert r.bubble_time == pytest.approx((k - 1) * (F + B) / v)
    assert r.step_time == pytest.approx(m * (F + B) + (k - 1) * (F + B) / v)
    one_f_one_b = simulate("1f1b", k, m, F, B)
    assert r.bubble_time == pytest.approx(one_f_one_b.bubble_time / v)
    assert len(r.events) == 2 * m * k * v


def test_interleaved_with_one_chunk_is_1f1b():
    r = simulate("interleaved_1f1b", 4, 8, F, B, num_chunks=1)
    assert r.events == simulate("1f1b", 4, 8, F, B).events


@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
def test_pipelined_dni_without_synthesizer_cost_never_idles(num_devices):
    r = simulate("pipelined_dni", num_devices, 8, F, B, 0.0)
    assert r.idle_fraction == pytest.approx([0.0] * num_devices, abs=1e-12)
    assert r.step_time / 8 == pytest.approx(F + B)
    assert r.bubble_fraction == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("num_devices", [2, 4, 8])
@pytest.mark.parametrize("synth", [0.1, 0.5])
def test_pipelined_dni_steady_state_step_is_f_plus_b_plus_s(num_devices, synth):
    k, m = num_devices, 6
    r = simulate("pipelined_dni", k, m, F, B, synth)
    assert r.step_time / m == pytest.approx(F + B + synth)
    assert r.throughput == pytest.approx(1 / (F + B + synth))
    # Every device with a synthesizer is busy all the time; the last stage has
    # none, so it waits S per step for its input.
    assert r.idle_fraction[:-1] == pytest.approx([0.0] * (k - 1), abs=1e-12)
    assert r.idle_fraction[-1] == pytest.approx(synth / (F + B + synth))
    assert r.busy_time == pytest.approx([m * (F + B + synth)] * (k - 1) + [m * (F + B)])


@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
def test_pipelined_dni_warmup_is_reported_apart(num_devices):
    k = num_devices
    r = simulate("pipelined_dni", k, 5, F, B, 0.3)
    assert r.warmup.steps == k - 1
    # Only the forwards ripple down: device k starts its first step at k * F.
    assert r.warmup.time == pytest.approx((k - 1) * F)
    expected = [d / (k - 1) for d in range(k)] if k > 1 else [0.0]
    assert r.warmup.idle_fraction == pytest.approx(expected)
    first = {d: min(e.start for e in r.events if e.device == d) for d in range(k)}
    assert [first[d] for d in range(k)] == pytest.approx([d * F for d in range(k)])
    # One batch per device per step, M steady steps after the warm-up.
    assert sum(e.kind == "F" for e in r.events) == sum(k - 1 + 5 - d for d in range(k))


def test_pipelined_dni_runs_at_the_slowest_device():
    forward, backward, synth = [1.0, 2.0, 1.0, 1.0], [2.0, 2.0, 2.0, 3.0], 0.3
    r = simulate("pipelined_dni", 4, 8, forward, backward, synth)
    per_step = [
        f + b + s for f, b, s in zip(forward, backward, [0.3] * 3 + [0.0], strict=True)
    ]
    period = max(per_step)
    assert r.step_time / 8 == pytest.approx(period)
    assert r.idle_fraction == pytest.approx([1 - c / period for c in per_step])


def test_comm_latency_adds_two_messages_per_hop():
    k, m, c = 4, 8, 0.25
    gpipe = simulate("gpipe", k, m, F, B, comm_latency=c)
    assert gpipe.step_time == pytest.approx((m + k - 1) * (F + B) + 2 * (k - 1) * c)
    naive = simulate("naive", k, m, F, B, comm_latency=c)
    assert naive.step_time == pytest.approx(k * m * (F + B) + 2 * (k - 1) * c)
    # DNI hides a latency shorter than a forward: its step is unchanged.
    dni = simulate("pipelined_dni", k, m, F, B, 0.2, comm_latency=c)
    assert dni.step_time / m == pytest.approx(F + B + 0.2)
    assert dni.warmup.time == pytest.approx((k - 1) * (F + c))


def test_examples_per_time_scales_with_microbatch_size():
    r = simulate("gpipe", 4, 8, F, B, microbatch_size=32)
    assert r.examples_per_time == pytest.approx(32 * 8 / (11 * (F + B)))


# --- invariants of every timeline --------------------------------------------


def _cases():
    for schedule, k in itertools.product(SCHEDULES, [1, 3, 4]):
        m = 2 * k if schedule == "interleaved_1f1b" else 5
        yield schedule, k, m


@pytest.mark.parametrize("schedule,num_devices,num_microbatches", list(_cases()))
@pytest.mark.parametrize("comm_latency", [0.0, 0.3])
def test_dependencies_are_respected(
    schedule, num_devices, num_microbatches, comm_latency
):
    forward, backward = _uneven(schedule, num_devices)
    kwargs = _kwargs(schedule, num_devices)
    r = simulate(
        schedule,
        num_devices,
        num_microbatches,
        forward,
        backward,
        comm_latency=comm_latency,
        **kwargs,
    )
    if schedule == "pipelined_dni":
        _check_dni_dependencies(r, comm_latency)
        return
    if schedule in ("dni", "fully_unlocked"):
        _check_unlocked_dependencies(r, comm_latency, forward, backward, kwargs)
        return
    if schedule == "async":
        _check_async_dependencies(r, comm_latency, kwargs["queue_capacity"])
        return
    _check_flush_dependencies(r, comm_latency, forward, backward, kwargs)


def _check_flush_dependencies(r, comm_latency, forward, backward, kwargs):
    """F, B (and W for ZB-H1) of every micro-batch and stage, each once,
    on its device, after what it depends on, with its cost."""
    num_devices, schedule = r.num_devices, r.schedule
    stages = num_devices * kwargs.get("num_chunks", 1)
    units = 1 if schedule == "naive" else r.num_microbatches
    fraction = kwargs.get("weight_grad_fraction", 0.0)
    kinds = 3 if schedule == "zb_h1" else 2
    ev = {(e.kind, e.microbatch, e.stage): e for e in r.events}
    assert len(ev) == len(r.events) == kinds * units * stages
    for m, s in itertools.product(range(units), range(stages)):
        assert ev["F", m, s].device == s % num_devices
        assert ev["F", m, s].end <= ev["B", m, s].start + 1e-12
        if s + 1 < stages:
            lag = comm_latency if num_devices > 1 else 0.0
            assert ev["F", m, s].end + lag <= ev["F", m, s + 1].start + 1e-12
            assert ev["B", m, s + 1].end + lag <= ev["B", m, s].start + 1e-12
        scale = r.num_microbatches if schedule == "naive" else 1
        assert ev["F", m, s].duration == pytest.approx(forward[s] * scale)
        assert ev["B", m, s].duration == pytest.approx(
            backward[s] * scale * (1 - fraction)
        )
        if schedule == "zb_h1":
            assert ev["W", m, s].device == s % num_devices
            assert ev["B", m, s].end <= ev["W", m, s].start + 1e-12
            assert ev["W", m, s].duration == pytest.approx(backward[s] * fraction)


def _check_async_dependencies(r, comm_latency, capacity):
    """Each stage takes its batches in order, F S B per batch; a forward
    waits for the same batch's forward below; a stage goes on after F only
    when the stage above has read the batch C before."""
    k = r.num_devices
    ev = {(e.kind, e.step, e.stage): e for e in r.events}
    for (kind, b, s), e in ev.items():
        assert e.device == s and e.microbatch == b
        if kind == "F" and s > 0:
            assert ev["F", b, s - 1].end + comm_latency <= e.start + 1e-12
        if kind == "S" and b >= capacity:
            assert ev["F", b - capacity, s + 1].end <= e.start + 1e-12
        if kind == "B":
            before = ev.get(("S", b, s), ev["F", b, s])
            assert before.end <= e.start + 1e-12
        if kind == "F" and ("B", b - 1, s) in ev:
            assert ev["B", b - 1, s].end <= e.start + 1e-12
    assert not any(e.kind == "S" and e.stage == k - 1 for e in r.events)


def _check_dni_dependencies(r, comm_latency):
    k = r.num_devices
    ev = {(e.kind, e.step, e.stage): e for e in r.events}
    for (kind, t, s), e in ev.items():
        assert e.device == s and e.microbatch == t - s
        if kind == "F" and s > 0:
            assert ev["F", t - 1, s - 1].end + comm_latency <= e.start + 1e-12
        if kind == "S" and ("B", t - 1, s + 1) in ev:
            assert ev["B", t - 1, s + 1].end + comm_latency <= e.start + 1e-12
        if kind == "B":
            before = ev.get(("S", t, s), ev["F", t, s])
            assert ev["F", t, s].end <= before.start + 1e-12 or before.kind == "F"
            assert before.end <= e.start + 1e-12
    assert not any(e.kind == "S" and e.stage == k - 1 for e in r.events)


def _check_unlocked_dependencies(r, comm_latency, forward, backward, kwargs):
    """One batch per step, each step after the last; within a step, only the
    dependencies of the schedule (see keras_sg.schedules.unlocked)."""
    k, unlocked = r.num_devices, r.schedule == "fully_unlocked"
    synth = list(kwargs["synth"]) + [0.0]
    inputs = [0.0] + list(kwargs.get("input_synth", [0.0] * (k - 1)))
    ev = {(e.kind, e.step, e.stage): e for e in r.events}
    steps = r.num_microbatches
    for t, s in itertools.product(range(steps), range(k)):
        mine = [e for e in r.events if e.step == t and e.device == s]
        kinds = [e.kind for e in sorted(mine, key=lambda e: e.start)]
        expected = ["I"] if unlocked and s > 0 else []
        expected += ["F", "S", "B", "R"] if s < k - 1 else ["F", "B"]
        if unlocked and s == k - 1 and k > 1:
            expected.append("R")
        assert kinds == expected, (t, s)
        assert all(e.microbatch == t and e.device == s for e in mine)
        assert ev["F", t, s].duration == pytest.approx(forward[s])
        assert ev["B", t, s].duration == pytest.approx(backward[s])
        if ("R", t, s) in ev:
            assert ev["R", t, s].duration == pytest.approx((synth[s] + inputs[s]) / 2)
        if t > 0:  # a step starts after every device ended the step before
            assert (
                min(e.start for e in mine)
                >= max(e.end for e in r.events if e.step == t - 1) - 1e-12
            )
        if s > 0 and not unlocked:
            assert ev["F", t, s - 1].end + comm_latency <= ev["F", t, s].start + 1e-12
        if s + 1 < k:
            assert ev["B", t, s + 1].end + comm_latency <= ev["R", t, s].start + 1e-12
        if s > 0 and unlocked:
            assert ev["F", t, s - 1].end + comm_latency <= ev["R", t, s].start + 1e-12


@pytest.mark.parametrize("schedule,num_devices,num_microbatches", list(_cases()))
def test_no_device_runs_two_events_at_once(schedule, num_devices, num_microbatches):
    forward, backward = _uneven(schedule, num_devices)
    r = simulate(
        schedule,
        num_devices,
        num_microbatches,
        forward,
        backward,
        comm_latency=0.1,
        **_kwargs(schedule, num_devices),
    )
    for d in range(num_devices):
        mine = sorted((e for e in r.events if e.device == d), key=lambda e: e.start)
        assert mine, f"device {d} has no events"
        for a, b in zip(mine[:-1], mine[1:], strict=True):
            assert a.end <= b.start + 1e-12
        assert r.busy_time[d] <= r.step_time + 1e-9
    assert all(0.0 <= f <= 1.0 for f in r.idle_fraction)


def test_list_schedule_reports_a_deadlock():
    orders = [[("B", 0, 0), ("F", 0, 0)]]
    with pytest.raises(RuntimeError, match="deadlocks"):
        list_schedule(orders, lambda op: 1.0, lambda op: [(("F", 0, 0), 0.0)])


# --- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        (("gpipe", 0, 4, F, B), {}, "Received: num_devices=0"),
        (("gpipe", True, 4, F, B), {}, "Received: num_devices=True"),
        (("gpipe", 4, 0, F, B), {}, "Received: num_microbatches=0"),
        (("gpipe", 4, 2.5, F, B), {}, "Received: num_microbatches=2.5"),
        (("1f1b", 4, 8, [1.0] * 3, B), {}, r"Received: forward=\[1.0, 1.0, 1.0\]"),
        (("1f1b", 4, 8, F, [2.0, -1.0, 2.0, 2.0]), {}, "Received: backward="),
        (("1f1b", 4, 8, F, float("nan")), {}, "Received: backward=nan"),
        (("1f1b", 4, 8, "1.0", B), {}, "Received: forward='1.0'"),
        (("pipelined_dni", 4, 8, F, B, [0.1] * 5), {}, "Received: synth="),
        (("pipelined_dni", 4, 8, F, B, [0.1] * 4), {}, "0 for the last stage"),
        (("pipelined_dni", 4, 8, F, B, -0.1), {}, "Received: synth=-0.1"),
        (("pipedream", 4, 8, F, B), {}, "Received: schedule='pipedream'"),
        (("gpipe", 4, 8, F, B), {"num_chunks": 2}, "Received: num_chunks=2"),
        (("interleaved_1f1b", 4, 6, F, B), {"num_chunks": 2}, "num_microbatches=6"),
        (("interleaved_1f1b", 4, 8, F, B), {"num_chunks": 0}, "num_chunks=0"),
        (("gpipe", 4, 8, F, B), {"comm_latency": -1.0}, "comm_latency=-1.0"),
        (("gpipe", 4, 8, F, B), {"microbatch_size": 0}, "microbatch_size=0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate(*args, **kwargs)


def test_interleaved_cost_lists_have_one_entry_per_chunk():
    with pytest.raises(ValueError, match="8 entries"):
        simulate("interleaved_1f1b", 4, 8, [F] * 4, B, num_chunks=2)
    r = simulate("interleaved_1f1b", 4, 8, [F] * 8, B, num_chunks=2)
    assert {e.stage for e in r.events} == set(range(8))


# --- drawing ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_draw_timeline_writes_a_png(schedule, tmp_path):
    r = simulate(schedule, 4, 8, F, B, **_kwargs(schedule, 4))
    path = draw_timeline(r, tmp_path / f"{schedule}.png", title="t")
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
