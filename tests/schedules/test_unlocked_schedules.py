"""The one-batch-per-step schedules "dni" and "fully_unlocked", by hand."""

import pytest

from keras_sg.schedules import simulate

F, B, S, IN = 1.0, 2.0, 0.4, 0.6  # IN: an input synthesizer


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: the simulator has no Keras."""
    yield


def _event(result, kind, step, stage):
    (found,) = [
        e for e in result.events if (e.kind, e.step, e.stage) == (kind, step, stage)
    ]
    return found


@pytest.mark.parametrize("num_devices", [3, 4, 8])
@pytest.mark.parametrize("num_steps", [1, 5])
def test_fully_unlocked_step_is_f_plus_b_plus_both_synthesizers(num_devices, num_steps):
    k, m = num_devices, num_steps
    r = simulate("fully_unlocked", k, m, F, B, S, input_synth=IN)
    # A middle device runs I = IN/2, F, S/2, B, then (S + IN)/2 of regressions,
    # never waiting: the step is F + B + S + IN whatever K.
    assert r.step_time == pytest.approx(m * (F + B + S + IN))
    assert r.throughput == pytest.approx(1 / (F + B + S + IN))
    # The first device has no input synthesizer and the last no gradient
    # synthesizer: each idles that share of the step.
    period = F + B + S + IN
    expected = [IN / period] + [0.0] * (k - 2) + [S / period]
    assert r.idle_fraction == pytest.approx(expected, abs=1e-12)
    assert r.warmup is None
    # No warm-up: every device starts at time 0, on batch 0.
    for d in range(k):
        first = min((e for e in r.events if e.device == d), key=lambda e: e.start)
        assert first.start == 0.0 and first.microbatch == 0
    # Backprop model-parallel takes K (F + B) a batch.
    naive = simulate("naive", k, m, F, B)
    assert naive.step_time == pytest.approx(m * k * (F + B))


def test_fully_unlocked_latency_delays_the_regressions_once_a_step():
    k, m, c = 4, 3, 0.1
    r = simulate("fully_unlocked", k, m, F, B, S, input_synth=IN, comm_latency=c)
    # A middle device's regression waits for the backward above it, which
    # ends with its own, plus one message.
    assert r.step_time == pytest.approx(m * (F + B + S + IN + c))


def test_fully_unlocked_uneven_timeline_by_hand():
    # Device 0 forwards for 3; a stage that waited for it would start at 3.
    r = simulate(
        "fully_unlocked",
        3,
        2,
        [3.0, 1.0, 1.0],
        [1.0, 1.0, 1.0],
        [0.2, 0.2],
        input_synth=[0.4, 0.4],
    )
    times = {(e.kind, e.step, e.stage): (e.start, e.end) for e in r.events}
    # Step 0. Device 0: F 0-3, S 3-3.1, B 3.1-4.1, then its regression waits
    # for B of stage 1 (ended at 2.3): 4.1-4.2.
    assert times["F", 0, 0] == pytest.approx((0.0, 3.0))
    assert times["R", 0, 0] == pytest.approx((4.1, 4.2))
    # Device 1: I 0-0.2, F 0.2-1.2 (not after device 0's forward), S 1.2-1.3,
    # B 1.3-2.3; the regression of its input synthesizer waits for the true
    # activation, F of stage 0 (ends at 3): 3-3.3.
    assert times["I", 0, 1] == pytest.approx((0.0, 0.2))
    assert times["F", 0, 1] == pytest.approx((0.2, 1.2))
    assert times["B", 0, 1] == pytest.approx((1.3, 2.3))
    assert times["R", 0, 1] == pytest.approx((3.0, 3.3))
    # Device 2 (top): I 0-0.2, F 0.2-1.2, B 1.2-2.2, R 2.2-2.4.
    assert times["B", 0, 2] == pytest.approx((1.2, 2.2))
    assert times["R", 0, 2] == pytest.approx((2.2, 2.4))
    # Step 1 starts on every device when step 0 has ended everywhere (4.2).
    assert times["F", 1, 0][0] == pytest.approx(4.2)
    assert times["I", 1, 1][0] == pytest.approx(4.2)
    assert times["I", 1, 2][0] == pytest.approx(4.2)
    assert r.step_time == pytest.approx(8.4)
    assert r.busy_time == pytest.approx([2 * 4.2, 2 * 2.6, 2 * 2.4])


@pytest.mark.parametrize("num_devices", [2, 4, 8])
@pytest.mark.parametrize("num_steps", [1, 3])
def test_dni_still_waits_for_the_forward_pass_below(num_devices, num_steps):
    k, m = num_devices, num_steps
    r = simulate("dni", k, m, F, B, S)
    # Forwards in sequence (K F), then the top stage's backward; the stage
    # below regresses after it (S/2), since F >= S/2 here.
    assert r.step_time == pytest.approx(m * (k * F + B + S / 2))
    for d in range(k):
        assert _event(r, "F", 0, d).start == pytest.approx(d * F)
        # The update does not wait for the backward above.
        assert _event(r, "B", 0, d).end == pytest.approx(
            (d + 1) * F + B + (S / 2 if d < k - 1 else 0.0)
        )
    assert not any(e.kind == "I" for e in r.events)


def test_dni_regression_waits_for_the_target_from_above():
    # A slow top backward: the synthesizer below must wait for its target.
    r = simulate("dni", 2, 1, [1.0, 1.0], [1.0, 5.0], [0.4])
    assert _event(r, "B", 0, 0).end == pytest.approx(2.2)
    assert _event(r, "B", 0, 1).end == pytest.approx(7.0)
    assert _event(r, "R", 0, 0).start == pytest.approx(7.0)
    assert r.step_time == pytest.approx(7.2)


def test_input_synth_forms_and_errors():
    one = simulate("fully_unlocked", 3, 1, F, B, S, input_synth=IN)
    per_cut = simulate("fully_unlocked", 3, 1, F, B, S, input_synth=[IN, IN])
    per_stage = simulate("fully_unlocked", 3, 1, F, B, S, input_synth=[0.0, IN, IN])
    assert one.events == per_cut.events == per_stage.events
    with pytest.raises(ValueError, match=r"0 for the first stage"):
        simulate("fully_unlocked", 3, 1, F, B, S, input_synth=[IN, IN, IN])
    with pytest.raises(ValueError, match=r"Received: input_synth=\[0.6\]"):
        simulate("fully_unlocked", 3, 1, F, B, S, input_synth=[IN])
    with pytest.raises(ValueError, match="Received: input_synth=-1.0"):
        simulate("fully_unlocked", 3, 1, F, B, S, input_synth=-1.0)
    with pytest.raises(ValueError, match="schedule='dni'"):
        simulate("dni", 3, 1, F, B, S, input_synth=IN)


def _keys(result):
    return sorted(
        ((a.kind, a.step, a.stage), (b.kind, b.step, b.stage))
        for a, b in result.messages
    )


def test_messages_list_what_each_stage_waits_for():
    k, m = 3, 2
    unlocked = simulate("fully_unlocked", k, m, F, B, S, input_synth=IN)
    # Only the regressions wait for other devices: for the target from above
    # and for the true activation from below. No forward, no backward waits.
    assert _keys(unlocked) == sorted(
        [(("B", t, s + 1), ("R", t, s)) for t in range(m) for s in range(k - 1)]
        + [(("F", t, s - 1), ("R", t, s)) for t in range(m) for s in range(1, k)]
    )
    dni = simulate("dni", k, m, F, B, S)
    assert _keys(dni) == sorted(
        [(("B", t, s + 1), ("R", t, s)) for t in range(m) for s in range(k - 1)]
        + [(("F", t, s - 1), ("F", t, s)) for t in range(m) for s in range(1, k)]
    )
    naive = simulate("naive", k, 1, F, B)
    assert _keys(naive) == sorted(
        [(("B", 0, s + 1), ("B", 0, s)) for s in range(k - 1)]
        + [(("F", 0, s - 1), ("F", 0, s)) for s in range(1, k)]
    )
    pipelined = simulate("pipelined_dni", k, m, F, B, S)
    steps = range(k - 1 + m)
    assert _keys(pipelined) == sorted(
        [
            (("F", t - 1, s - 1), ("F", t, s))
            for t in steps
            for s in range(1, k)
            if t >= s
        ]
        + [
            (("B", t - 1, s + 1), ("S", t, s))
            for t in steps
            for s in range(k - 1)
            if t - 1 >= s + 1
        ]
    )
    # In the order of the waiting event's start.
    starts = [b.start for _, b in pipelined.messages]
    assert starts == sorted(starts)
