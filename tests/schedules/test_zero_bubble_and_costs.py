"""ZB-H1, the asynchronous stages and the cost terms of the simulator, by hand."""

import itertools

import pytest

from keras_sg.schedules import SCHEDULES, simulate, zb_h1_orders
from keras_sg.schedules.orders import one_f_one_b_orders

F, B = 1.0, 2.0


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: the simulator has no Keras."""
    yield


def _times(result):
    return {(e.kind, e.microbatch, e.stage): (e.start, e.end) for e in result.events}


# --- ZB-H1 -------------------------------------------------------------------


def test_zb_h1_order_is_the_hand_schedule():
    # Device d: K - d - 1 warm-up forwards; W(i - d) after B(i) from i = d on.
    assert zb_h1_orders(3, 3) == [
        [("F", 0, 0), ("F", 1, 0), ("F", 2, 0), ("B", 0, 0), ("W", 0, 0)]
        + [("B", 1, 0), ("W", 1, 0), ("B", 2, 0), ("W", 2, 0)],
        [("F", 0, 1), ("F", 1, 1), ("B", 0, 1), ("F", 2, 1), ("B", 1, 1)]
        + [("W", 0, 1), ("B", 2, 1), ("W", 1, 1), ("W", 2, 1)],
        [("F", 0, 2), ("B", 0, 2), ("F", 1, 2), ("B", 1, 2), ("F", 2, 2)]
        + [("B", 2, 2), ("W", 0, 2), ("W", 1, 2), ("W", 2, 2)],
    ]


def test_zb_h1_two_devices_by_hand():
    # F = B = W = 1. Device 1: F0 1-2, B0 2-3, F1 3-4, B1 4-5, W0 5-6, W1
    # 6-7. Device 0: F0 0-1, F1 1-2, B0 waits for B0 above: 3-4, W0 4-5, B1
    # waits for B1 above (5): 5-6, W1 6-7. 1F1B (B + W in one) takes 9.
    r = simulate("zb_h1", 2, 2, 1.0, 2.0)
    t = _times(r)
    assert t["B", 0, 0] == pytest.approx((3.0, 4.0))
    assert t["W", 0, 0] == pytest.approx((4.0, 5.0))
    assert t["B", 1, 0] == pytest.approx((5.0, 6.0))
    assert t["F", 1, 1] == pytest.approx((3.0, 4.0))
    assert t["W", 0, 1] == pytest.approx((5.0, 6.0))
    assert t["W", 1, 1] == pytest.approx((6.0, 7.0))
    assert r.step_time == pytest.approx(7.0)
    assert r.busy_time == pytest.approx([6.0, 6.0])
    assert simulate("1f1b", 2, 2, 1.0, 2.0).step_time == pytest.approx(9.0)


def test_zb_h1_uneven_split_by_hand():
    # F = 1, B = W = 1.5. Device 1: F0 1-2, B0 2-3.5, F1 3.5-4.5, B1 4.5-6,
    # W0 6-7.5, W1 7.5-9. Device 0: B0 3.5-5, W0 5-6.5, B1 6.5-8, W1 8-9.5.
    r = simulate("zb_h1", 2, 2, 1.0, 3.0)
    t = _times(r)
    assert t["B", 1, 0] == pytest.approx((6.5, 8.0))
    assert t["W", 1, 1] == pytest.approx((7.5, 9.0))
    assert r.step_time == pytest.approx(9.5)
    # A fraction of 0.2: B = 2.4, W = 0.6.
    r = simulate("zb_h1", 2, 1, 1.0, 3.0, weight_grad_fraction=0.2)
    t = _times(r)
    assert t["B", 0, 1] == pytest.approx((2.0, 4.4))
    assert t["B", 0, 0] == pytest.approx((4.4, 6.8))
    assert t["W", 0, 0] == pytest.approx((6.8, 7.4))
    assert r.step_time == pytest.approx(7.4)


@pytest.mark.parametrize("num_devices", [2, 3, 4, 8])
@pytest.mark.parametrize("extra", [0, 1, 5, 12])
def test_zb_h1_bubble_is_the_papers_when_f_b_w_are_equal(num_devices, extra):
    # Qi et al. 2023: ZB-H1's bubble is (K - 1)(F + B - W), a rate of
    # (K - 1) / 3M of the compute when F = B = W (the authors' README:
    # "(p-1)/3m"), against (K - 1) / M for 1F1B. Needs M >= K.
    k, m, t = num_devices, num_devices + extra, 0.7
    r = simulate("zb_h1", k, m, t, 2 * t)
    assert r.step_time == pytest.approx(3 * m * t + (k - 1) * t)
    assert r.bubble_time == pytest.approx((k - 1) * (t + t - t))
    assert r.bubble_time / (3 * m * t) == pytest.approx((k - 1) / (3 * m))
    one_f_one_b = simulate("1f1b", k, m, t, 2 * t)
    assert one_f_one_b.bubble_time / (3 * m * t) == pytest.approx((k - 1) / m)


@pytest.mark.parametrize("num_devices", [1, 2, 3, 5])
def test_zb_h1_is_never_slower_than_1f1b(num_devices):
    k = num_devices
    grid = itertools.product(
        [1, 2, 4, 7], [0.0, 0.25, 0.5, 0.8, 1.0], [(1.0, 2.0), (1.0, 1.0), (2.0, 1.0)]
    )
    for m, fraction, (f, b) in grid:
        zb = simulate("zb_h1", k, m, f, b, weight_grad_fraction=fraction)
        base = simulate("1f1b", k, m, f, b)
        assert zb.step_time <= base.step_time + 1e-9, (m, fraction, f, b)
        # Same work on every device.
        assert zb.busy_time == pytest.approx(base.busy_time)
        if fraction == 0.0:  # no W to move: the 1F1B step
            assert zb.step_time == pytest.approx(base.step_time)
        if k > 1 and m >= k and 0 < fraction and f > 0:
            assert zb.step_time < base.step_time - 1e-9, (m, fraction, f, b)


def _peak_in_flight(orders, release):
    """Per device, the most micro-batches forwarded and not yet released."""
    peaks = []
    for order in orders:
        held, peak = 0, 0
        for kind, _, _ in order:
            held += kind == "F"
            held -= kind == release
            peak = max(peak, held)
        peaks.append(peak)
    return peaks


@pytest.mark.parametrize("num_devices,num_microbatches", [(2, 2), (4, 8), (8, 8)])
def test_zb_h1_holds_no_more_activations_than_1f1b(num_devices, num_microbatches):
    k, m = num_devices, num_microbatches
    # 1F1B frees a micro-batch's activations at its backward, ZB-H1 at its W.
    base = _peak_in_flight(one_f_one_b_orders(k, m), "B")
    zb = _peak_in_flight(zb_h1_orders(k, m), "W")
    assert base == [k - d for d in range(k)]
    assert zb == [k] * k
    assert max(zb) == max(base)


# --- the update, transfers and the per-step overhead ---------------------------


def test_naive_with_update_and_transfer_by_hand():
    # K = 2, F = 1, B = 2, U = (0.5, 0.7), transfer 0.25 per message.
    # Device 1: F 1-2.25 (receives), B 2.25-4.25, U 4.25-4.95. Device 0:
    # B 4.25-6.5 (receives the gradient), U 6.5-7.
    r = simulate("naive", 2, 1, F, B, update=[0.5, 0.7], transfer=0.25)
    t = _times(r)
    assert t["F", 0, 1] == pytest.approx((1.0, 2.25))
    assert t["U", 0, 1] == pytest.approx((4.25, 4.95))
    assert t["B", 0, 0] == pytest.approx((4.25, 6.5))
    assert r.step_time == pytest.approx(7.0)
    assert r.busy_time == pytest.approx([1.0 + 2.25 + 0.5, 1.25 + 2.0 + 0.7])
    # The batch of M micro-batches is one unit: its messages are M times larger;
    # the update is once per step.
    r = simulate("naive", 2, 4, F, B, update=[0.5, 0.7], transfer=0.25)
    assert r.step_time == pytest.approx(4 * (2 * (F + B) + 2 * 0.25) + 0.5)


def test_gpipe_updates_after_the_flush_by_hand():
    # K = 2, M = 2: device 1 B0 3-5, B1 5-7, U 7-8; device 0 B0 5-7, B1 7-9,
    # U 9-10.
    r = simulate("gpipe", 2, 2, F, B, update=1.0)
    assert _times(r)["U", 0, 0] == pytest.approx((9.0, 10.0))
    assert r.step_time == pytest.approx(10.0)
    r = simulate("gpipe", 2, 2, F, B, update=1.0, per_step_overhead=2.5)
    assert r.step_time == pytest.approx(12.5)
    assert r.idle_fraction == pytest.approx([1 - 7 / 12.5, 1 - 7 / 12.5])


def test_the_update_before_the_gradient_is_sent_by_hand():
    # As test_naive_with_update_and_transfer_by_hand, but device 0's
    # backward also waits for device 1's update (4.95): B 4.95-7.2, U 7.2-7.7.
    r = simulate(
        "naive", 2, 1, F, B, update=[0.5, 0.7], transfer=0.25, update_before_send=True
    )
    t = _times(r)
    assert t["U", 0, 1] == pytest.approx((4.25, 4.95))
    assert t["B", 0, 0] == pytest.approx((4.95, 7.2))
    assert r.step_time == pytest.approx(7.7)
    # The update waits only once, no transfer for it: the busy time is as
    # without it.
    assert r.busy_time == pytest.approx([1.0 + 2.25 + 0.5, 1.25 + 2.0 + 0.7])
    # K = 3, U = 0.5: B2 3-5, U2 5-5.5, B1 5.5-7.5, U1 7.5-8, B0 8-10, U0
    # 10-10.5 (without: B1 5-7, B0 7-9, U0 9-9.5).
    r = simulate("naive", 3, 1, F, B, update=0.5, update_before_send=True)
    assert r.step_time == pytest.approx(10.5)
    assert simulate("naive", 3, 1, F, B, update=0.5).step_time == pytest.approx(9.5)
    # GPipe, K = 2, M = 2 (see test_gpipe_updates_after_the_flush_by_hand):
    # device 0's first backward 5-7 does not wait; its last, on the
    # micro-batch of device 1's last backward, waits for U 7-8: 8-10, U
    # 10-11.
    r = simulate("gpipe", 2, 2, F, B, update=1.0, update_before_send=True)
    t = _times(r)
    assert t["B", 0, 0] == pytest.approx((5.0, 7.0))
    assert t["B", 1, 0] == pytest.approx((8.0, 10.0))
    assert r.step_time == pytest.approx(11.0)


def test_dni_update_and_overhead_by_hand():
    # K = 2, S = 0.4, U = 0.5. Device 0: F 0-1, S 1-1.2, B 1.2-3.2, U
    # 3.2-3.7, R waits for B above (4): 4-4.2. Device 1: F 1-2, B 2-4, U
    # 4-4.5. A step: 4.5, then 1 of overhead; two steps: 11.
    r = simulate("dni", 2, 2, F, B, 0.4, update=0.5, per_step_overhead=1.0)
    t = {(e.kind, e.step, e.stage): (e.start, e.end) for e in r.events}
    assert t["U", 0, 0] == pytest.approx((3.2, 3.7))
    assert t["R", 0, 0] == pytest.approx((4.0, 4.2))
    assert t["F", 1, 0] == pytest.approx((5.5, 6.5))
    assert r.step_time == pytest.approx(11.0)


@pytest.mark.parametrize("num_devices", [4, 8])
def test_pipelined_dni_step_with_update_transfer_and_overhead(num_devices):
    k, m, s, u, c, h = num_devices, 6, 0.3, 0.4, 0.1, 0.5
    r = simulate(
        "pipelined_dni", k, m, F, B, s, update=u, transfer=c, per_step_overhead=h
    )
    # A middle device per step: F + S + B + U, two messages received (the
    # activation and the synthesizer's target), and the overhead. (The
    # devices near the top get no target in their first steady step; device
    # 1 has it from its first.)
    busy = F + s + B + u + 2 * c
    assert r.step_time / m == pytest.approx(busy + h)
    assert r.idle_fraction[1] == pytest.approx(h / (busy + h))


@pytest.mark.parametrize("schedule", ["naive", "gpipe", "1f1b", "zb_h1"])
@pytest.mark.parametrize("num_devices", [1, 3])
def test_flushed_step_grows_by_the_overhead_once(schedule, num_devices):
    base = simulate(schedule, num_devices, 4, F, B, update=0.3)
    r = simulate(schedule, num_devices, 4, F, B, update=0.3, per_step_overhead=0.9)
    assert r.step_time == pytest.approx(base.step_time + 0.9)
    assert r.events == base.events


@pytest.mark.parametrize("schedule", ["dni", "fully_unlocked"])
def test_one_batch_per_step_schedules_pay_the_overhead_every_step(schedule):
    kwargs = {"input_synth": 0.2} if schedule == "fully_unlocked" else {}
    base = simulate(schedule, 3, 5, F, B, 0.4, **kwargs)
    r = simulate(schedule, 3, 5, F, B, 0.4, per_step_overhead=0.9, **kwargs)
    assert r.step_time == pytest.approx(base.step_time + 5 * 0.9)


def _args(schedule):
    if schedule == "interleaved_1f1b":
        return {"num_chunks": 2}
    if schedule == "fully_unlocked":
        return {"synth": 0.3, "input_synth": 0.2}
    if schedule in ("pipelined_dni", "dni", "async"):
        return {"synth": 0.3}
    return {}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_zero_cost_terms_change_nothing(schedule):
    kwargs = _args(schedule)
    forward = [1.0, 2.0, 1.5, 1.0] * kwargs.get("num_chunks", 1)
    base = simulate(schedule, 4, 8, forward, B, **kwargs)
    zero = simulate(
        schedule,
        4,
        8,
        forward,
        B,
        update=0.0,
        transfer=0.0,
        per_step_overhead=0.0,
        **kwargs,
    )
    assert zero == base


# --- asynchronous stages ---------------------------------------------------------


def test_async_slow_top_stage_by_hand():
    # K = 2, C = 1, F = 1, B = (1, 3), no synthesizer cost. Device 1 takes 4
    # a batch. Device 0: batch 0 F 0-1, B 1-2; batch 1 F 2-3, then waits for
    # device 1 to read batch 0 (its F ends at 2): B 3-4; batch 2 F 4-5, waits
    # for device 1's F on batch 1 (5-6): B 6-7; batch 3 F 7-8, waits until 10.
    r = simulate("async", 2, 6, F, [1.0, 3.0])
    t = {(e.kind, e.step, e.stage): (e.start, e.end) for e in r.events}
    assert t["F", 1, 1] == pytest.approx((5.0, 6.0))
    assert t["B", 2, 0] == pytest.approx((6.0, 7.0))
    assert t["F", 3, 0] == pytest.approx((7.0, 8.0))
    assert t["B", 3, 0] == pytest.approx((10.0, 11.0))
    assert r.step_time / 6 == pytest.approx(4.0)
    assert r.idle_fraction == pytest.approx([0.5, 0.0])


@pytest.mark.parametrize("capacity", [1, 2, 3])
@pytest.mark.parametrize("slow", [0, 2, 3])
def test_async_runs_at_the_slowest_stage(capacity, slow):
    k, m, s, u, h = 4, 8, 0.3, 0.2, 0.4
    backward = [B + (1.5 if d == slow else 0.0) for d in range(k)]
    r = simulate(
        "async",
        k,
        m,
        F,
        backward,
        s,
        update=u,
        per_step_overhead=h,
        queue_capacity=capacity,
    )
    per_batch = [
        F + b + (s if d < k - 1 else 0.0) + u + h for d, b in enumerate(backward)
    ]
    assert r.step_time / m == pytest.approx(max(per_batch))
    assert r.busy_time == pytest.approx([m * (c - h) for c in per_batch])


@pytest.mark.parametrize("capacity", [1, 2, 4])
def test_async_queue_capacity_bounds_the_lead_of_a_fast_stage(capacity):
    # Stage 0 is fast, stage 1 slow: stage 0 runs ahead until its queue is
    # full; it never finishes batch b before stage 1 has read batch b - C.
    r = simulate("async", 2, 10, F, [0.5, 4.0], queue_capacity=capacity)
    t = {(e.kind, e.step, e.stage): e for e in r.events}
    leads = []
    for (kind, b, stage), e in t.items():
        if kind == "B" and stage == 0 and ("F", b - capacity, 1) in t:
            assert e.start >= t["F", b - capacity, 1].end - 1e-12
        if kind == "B" and stage == 0:
            read = [x for (k2, x2, s2), x in t.items() if k2 == "F" and s2 == 1]
            read_by_now = sum(x.end <= e.start + 1e-12 for x in read)
            leads.append(b + 1 - read_by_now)
    # Batches stage 0 produced and stage 1 had not yet read, when stage 0
    # goes on to its backward: at most C, the queue's capacity, reached.
    assert max(leads) == capacity
    assert r.step_time / 10 == pytest.approx(F + 4.0)


def test_async_latency_is_hidden_by_the_queue():
    r = simulate("async", 3, 6, F, B, 0.2, comm_latency=0.5, queue_capacity=2)
    assert r.step_time / 6 == pytest.approx(F + B + 0.2)
    assert r.warmup.time == pytest.approx(2 * (F + 0.5))


# --- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        (("1f1b", 4, 8, F, B), {"weight_grad_fraction": 0.5}, "schedule='1f1b'"),
        (("zb_h1", 4, 8, F, B), {"weight_grad_fraction": 1.5}, "fraction=1.5"),
        (("zb_h1", 4, 8, F, B), {"weight_grad_fraction": "a"}, "fraction='a'"),
        (("gpipe", 4, 8, F, B), {"queue_capacity": 2}, "queue_capacity=2"),
        (("async", 4, 8, F, B), {"queue_capacity": 0}, "queue_capacity=0"),
        (("gpipe", 4, 8, F, B), {"update": [1.0] * 3}, r"update=\[1.0, 1.0, 1.0\]"),
        (("gpipe", 4, 8, F, B), {"update": -1.0}, "update=-1.0"),
        (("gpipe", 4, 8, F, B), {"transfer": [0.1] * 4}, "with 4 entries"),
        (("gpipe", 4, 8, F, B), {"transfer": None}, "transfer=None"),
        (("gpipe", 4, 8, F, B), {"per_step_overhead": -2}, "overhead=-2"),
        (("async", 4, 8, F, B), {"per_step_overhead": float("inf")}, "overhead=inf"),
        (("zb_h1", 4, 8, F, B), {"update_before_send": True}, "schedule='zb_h1'"),
        (("dni", 4, 8, F, B), {"update_before_send": True}, "schedule='dni'"),
        (("naive", 4, 8, F, B), {"update_before_send": 1}, "update_before_send=1"),
    ],
)
def test_bad_cost_terms_raise_value_error_naming_them(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate(*args, **kwargs)


def test_interleaved_transfer_has_one_entry_per_chunk_cut():
    # 2 devices, 2 chunks: 4 stages, 3 cuts, all between devices.
    r = simulate("interleaved_1f1b", 2, 2, F, B, num_chunks=2, transfer=[0.1] * 3)
    base = simulate("interleaved_1f1b", 2, 2, F, B, num_chunks=2)
    # Each stage but the first receives M activations, each but the last M
    # gradients: 2 * M * 3 messages of 0.1 in all.
    assert sum(r.busy_time) == pytest.approx(sum(base.busy_time) + 2 * 2 * 3 * 0.1)
    assert all(
        a == b
        for a, b in itertools.zip_longest(
            sorted(e.kind for e in r.events), sorted(e.kind for e in base.events)
        )
    )
