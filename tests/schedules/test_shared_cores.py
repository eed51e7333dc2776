"""Devices that share fewer cores than they are: the simulator's processor
sharing (`list_schedule(..., cores=...)`, `simulate(..., cores=...)`),
checked by hand, against a time-stepped simulation written here, and
against the one-core-each engine where no sharing happens."""

import random

import pytest

from keras_sg.schedules import SCHEDULES, list_schedule, simulate
from keras_sg.schedules.engine import _shared_schedule


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: the simulator has no Keras."""
    yield


def test_two_devices_on_one_core_by_hand():
    # A (work 1) and B (work 3) start together at half speed; A ends at 2
    # (1 unit done each), B has 2 left and ends alone at 4.
    placed = list_schedule([["A"], ["B"]], {"A": 1.0, "B": 3.0}.get, lambda op: [], 1)
    assert placed == {"A": (0, 0.0, 2.0), "B": (1, 0.0, 4.0)}


def test_a_late_start_slows_the_running_ones_by_hand():
    # Three devices on two cores. C waits 1 after Z (work 0). Until 1, A and
    # B run alone at full speed (1 left each); then the three share two
    # cores at 2/3 speed and end together at 1 + 1 / (2/3) = 2.5.
    placed = list_schedule(
        [["A"], ["B"], ["Z", "C"]],
        {"A": 2.0, "B": 2.0, "Z": 0.0, "C": 1.0}.get,
        lambda op: [("Z", 1.0)] if op == "C" else [],
        cores=2,
    )
    assert placed["A"] == pytest.approx((0, 0.0, 2.5))
    assert placed["B"] == pytest.approx((1, 0.0, 2.5))
    assert placed["C"] == pytest.approx((2, 1.0, 2.5))


def _random_graph(seed, devices=3, ops=24):
    """A random deadlock-free schedule: ops in one global order, dealt to
    devices at random, each waiting for up to two earlier ops (with a
    random delay) of any device."""
    rng = random.Random(seed)
    orders = [[] for _ in range(devices)]
    cost, deps = {}, {}
    for i in range(ops):
        orders[rng.randrange(devices)].append(i)
        cost[i] = rng.choice([0.0, rng.uniform(0.2, 2.0)])
        earlier = rng.sample(range(i), min(i, rng.randint(0, 2)))
        deps[i] = [(j, rng.choice([0.0, rng.uniform(0.0, 0.5)])) for j in earlier]
    return orders, cost, deps


def _time_stepped(orders, cost, deps, cores, dt=1e-4):
    """The same model, written independently: time advances in steps of
    `dt`; a device starts its next op at the first step at which every
    dependency has ended and its delay passed; the running ops share
    `cores` cores."""
    position = [0] * len(orders)
    running, ended, started = {}, {}, {}
    t = 0.0
    total = sum(map(len, orders))
    while len(ended) < total:
        for d, order in enumerate(orders):
            while d not in running and position[d] < len(order):
                op = order[position[d]]
                ok = all(
                    j in ended and t >= ended[j] + lag - 1e-12 for j, lag in deps[op]
                )
                if not ok:
                    break
                position[d] += 1
                started[op] = t
                if cost[op] == 0:
                    ended[op] = t
                else:
                    running[d] = [op, cost[op]]
        if running:
            rate = min(1.0, cores / len(running))
            for d in list(running):
                running[d][1] -= rate * dt
                if running[d][1] <= 0:
                    op, left = running.pop(d)
                    ended[op] = t + dt + left / rate  # back to the exact end
        t += dt
    return started, ended


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cores", [1, 2])
def test_random_schedules_match_a_time_stepped_simulation(seed, cores):
    orders, cost, deps = _random_graph(seed)
    placed = list_schedule(orders, cost.get, deps.get, cores=cores)
    started, ended = _time_stepped(orders, cost, deps, cores)
    for op, (device, start, end) in placed.items():
        assert op in orders[device]
        assert start == pytest.approx(started[op], abs=5e-3)
        assert end == pytest.approx(ended[op], abs=5e-3)
    # Sharing only slows: never faster than a core each.
    alone = list_schedule(orders, cost.get, deps.get)
    assert (
        max(e for _, _, e in placed.values())
        >= max(e for _, _, e in alone.values()) - 1e-9
    )


@pytest.mark.parametrize("seed", range(3))
def test_the_shared_engine_with_a_core_each_is_list_scheduling(seed):
    """With as many cores as devices nothing is shared: the event-driven
    engine must time every op as the one-core-each engine does."""
    orders, cost, deps = _random_graph(seed, devices=4, ops=40)
    want = list_schedule(orders, cost.get, deps.get)
    got = _shared_schedule(orders, cost.get, deps.get, cores=4)
    assert got.keys() == want.keys()
    for op, (device, start, end) in want.items():
        assert got[op] == pytest.approx((device, start, end), abs=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_enough_cores_change_nothing(schedule):
    kwargs = dict(update=0.3, transfer=0.1, per_step_overhead=0.2, comm_latency=0.05)
    if schedule == "interleaved_1f1b":
        kwargs["num_chunks"] = 2
    if schedule in ("pipelined_dni", "dni", "fully_unlocked", "async"):
        kwargs["synth"] = 0.25
    a = simulate(schedule, 4, 8, 1.0, 2.0, **kwargs)
    b = simulate(schedule, 4, 8, 1.0, 2.0, cores=4, **kwargs)
    assert b.step_time == a.step_time
    assert b.events == a.events


def test_async_stages_on_two_cores_take_the_total_work_over_two():
    """Four equal asynchronous stages never idle in steady state: on two
    cores each batch costs the work of all four over 2."""
    f, b, s, u = 1.0, 1.5, 0.25, 0.5
    alone = simulate("async", 4, 8, f, b, s, update=u, queue_capacity=2)
    shared = simulate("async", 4, 8, f, b, s, update=u, queue_capacity=2, cores=2)
    work = 4 * (f + b + u) + 3 * s
    assert shared.step_time / 8 == pytest.approx(work / 2)
    assert alone.step_time / 8 == pytest.approx(f + b + s + u)


def test_backprop_shares_only_where_updates_overlap():
    """Model-parallel backprop runs one stage at a time but for the updates,
    each of which overlaps the backward of the stage below (it waits for
    the gradient sent down): two cores for four devices cost nothing, one
    core costs the overlap."""
    alone = simulate("naive", 4, 1, 1.0, 2.0, update=0.5)
    two = simulate("naive", 4, 1, 1.0, 2.0, update=0.5, cores=2)
    one = simulate("naive", 4, 1, 1.0, 2.0, update=0.5, cores=1)
    assert two.step_time == pytest.approx(alone.step_time)
    # Every update but stage 0's (the last op) overlaps a backward: 3 x 0.5
    # of work is done at half speed, so one core adds 3 x 0.5 in all.
    assert one.step_time == pytest.approx(alone.step_time + 3 * 0.5)


@pytest.mark.parametrize("cores", [0, -1, 1.5, True, "2"])
def test_bad_cores_are_named(cores):
    with pytest.raises(ValueError, match=r"`cores` must be .*Received: cores="):
        simulate("gpipe", 2, 2, 1.0, 1.0, cores=cores)
    with pytest.raises(ValueError, match=r"`cores` must be .*Received: cores="):
        list_schedule([["A"]], lambda op: 1.0, lambda op: [], cores=cores)
