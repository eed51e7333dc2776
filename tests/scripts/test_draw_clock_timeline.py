"""scripts/draw_clock_timeline.py in process: the figure in docs/recurrent.md
follows `tick_schedule` and `update_dependencies`, and its times by hand."""

from pathlib import Path

import pytest
from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "draw_clock_timeline.py"


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: the figure has no Keras."""
    yield


@pytest.fixture(scope="module")
def figure():
    with script_module(SCRIPT, "keras_sg_clock_timeline") as module:
        yield module


def _ends(boxes):
    return {b.name: b.end for b in boxes}


def test_ticks_are_tick_schedules(figure):
    assert figure.ticks(12, 3) == {"fast": list(range(12)), "slow": [2, 5, 8]}
    assert figure.ticks(12, 4) == {"fast": list(range(12)), "slow": [3, 7]}
    boxes = figure.timeline("bptt", 12, 3)
    forward = sorted(b.index for b in boxes if b.kind == "F" and b.row == "slow")
    backward = sorted(b.index for b in boxes if b.kind == "B" and b.row == "slow")
    assert forward == backward == [0, 1, 2]
    # Slow tick b reads the fast output at step 3b + 2; block b + 1 reads m_b.
    reads = {b.index: b.reads for b in boxes if b.kind == "F" and b.row == "slow"}
    assert reads[1] == (("F", "fast", 5), ("F", "slow", 0))
    first = {b.index: b.reads for b in boxes if b.kind == "F" and b.row == "fast"}
    assert ("F", "slow", 1) in first[6] and ("F", "slow", 1) not in first[7]


def test_another_schedule_moves_the_slow_ticks(figure, monkeypatch):
    # Slow ticks after steps 1 and 6 of 8: the boxes follow the schedule given.
    schedule = [("fast", "slow") if t in (1, 6) else ("fast",) for t in range(8)]
    monkeypatch.setattr(figure, "tick_schedule", lambda time, period: schedule)
    assert figure.ticks(8, 4)["slow"] == [1, 6]
    work = figure.work("dni", 8, 4)
    assert work[("F", "slow", 0)] == (("F", "fast", 1),)
    assert work[("F", "slow", 1)] == (("F", "fast", 6), ("F", "slow", 0))
    assert ("F", "slow", 0) in work[("F", "fast", 2)]
    assert ("F", "slow", 1) in work[("F", "fast", 7)]
    # M(m_0)'s target is the fast pullback down to step 2, the first reader.
    assert work[("R", "slow", 0)] == (("S", "slow", 0), ("B", "fast", 2))


def test_bptt_timeline_by_hand(figure):
    # T = 12, K = 3; forward 1, backward 2, update 0.5. Forward: fast 0-2,
    # slow tick 0, fast 3-5, ... (15 time units). Backward: fast 11-9 (6),
    # slow tick 2 (2), fast 8-6, slow 1, fast 5-3, slow 0, fast 2-0: 15 + 36.
    boxes = figure.timeline("bptt", 12, 3)
    ends = _ends(boxes)
    assert ends[("F", "fast", 11)] == 15
    assert ends[("B", "slow", 2)] == 23
    assert ends[("B", "slow", 0)] == 39
    assert ends[("U", "slow", 0)] == pytest.approx(39.5)
    assert ends[("U", "fast", 0)] == pytest.approx(45.5)
    waits = figure.waits(boxes)
    assert (("B", "fast", 9), ("B", "slow", 2)) in [(s.name, r.name) for s, r in waits]
    assert (("B", "slow", 2), ("B", "fast", 8)) in [(s.name, r.name) for s, r in waits]


def test_dni_slow_update_never_waits_for_the_fast_network(figure):
    boxes = figure.timeline("dni", 12, 3)
    ends = _ends(boxes)
    # Forward with the synthesizers' predictions (0.3 each): the last slow
    # tick ends at 12, M(m_2) at 12.3, then three slow backward steps and the
    # update: 12.3 + 6 + 0.5.
    assert ends[("F", "slow", 2)] == pytest.approx(12)
    assert ends[("U", "slow", 0)] == pytest.approx(18.8)
    # Fast: forward to 15, twelve backward steps, three regressions, update.
    assert ends[("U", "fast", 0)] == pytest.approx(15 + 24 + 0.9 + 0.5)
    for sender, receiver in figure.waits(boxes):
        if sender.kind == "B":
            # A backward pass crosses only into the other side's regression.
            assert receiver.kind == "R", (sender.name, receiver.name)
        else:
            assert (sender.kind, receiver.kind) == ("F", "F")


def test_dependencies_drive_the_panels(figure, monkeypatch):
    bptt = figure.update_dependencies("bptt")
    monkeypatch.setattr(figure, "update_dependencies", lambda method: bptt)
    assert [(b.name, b.start) for b in figure.timeline("dni", 12, 3)] == [
        (b.name, b.start) for b in figure.timeline("bptt", 12, 3)
    ]


def test_smoke_draws_the_png(figure, tmp_path):
    panels = {m: figure.timeline(m, 12, 3) for m in figure.METHODS}
    path = figure.draw(panels, tmp_path / "clock.png", 12, 3)
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
