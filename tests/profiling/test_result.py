"""ProfileResult's derived numbers, its JSON round trip, and the drawing of
measured timelines beside simulated ones."""

import matplotlib.image
import numpy as np
import pytest

from keras_sg import schedules
from keras_sg.profiling import COLORS, ProfileResult, draw_timelines
from keras_sg.schedules import Event


def _result(**changes):
    fields = dict(
        devices=("/cpu:0", "/cpu:1"),
        stage_devices=(0, 1),
        busy=(0.5, 0.25),
        costs=({"F": 1.0, "U": 2.0}, {"F": 0.5, "B": 0.5}),
        stage_costs=({"F": 1.0, "U": 2.0}, {"F": 0.5, "B": 0.5}),
        unplaced=0.125,
        events=(
            Event(0, 0.0, 1.0, "F", -1, 0, -1),
            Event(1, 1.0, 2.0, "F", -1, 1, -1),
            Event(0, 2.0, 3.0, "U", -1, -1, -1),
            Event(0, 5.0, 6.0, "S", -1, 0, -1),
        ),
        window=6.0,
        steps=2,
        wall_time=8.0,
        batch_size=16,
    )
    return ProfileResult(**{**fields, **changes})


def test_derived_numbers():
    result = _result()
    assert result.num_devices == 2
    assert result.step_time == 4.0
    assert result.traced_step_time == 3.0
    assert result.examples_per_second == 16 * 2 / 8.0 * 1000
    assert result.idle_fraction == (0.5, 0.75)
    assert result.intervals() == [
        [(0.0, 1.0, "F"), (2.0, 3.0, "U"), (5.0, 6.0, "S")],
        [(1.0, 2.0, "F")],
    ]
    assert _result(batch_size=None).examples_per_second is None


def test_json_round_trip_and_kept_events():
    result = _result()
    assert ProfileResult.from_dict(result.to_dict()) == result
    kept = ProfileResult.from_dict(result.to_dict(max_events=1))
    assert [(e.device, e.start) for e in kept.events] == [(0, 0.0), (1, 1.0)]
    assert kept.busy == result.busy


def _has_color(image, color):
    rgb = np.array([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return bool(np.any(np.all(np.abs(image[..., :3] - rgb) < 0.02, axis=-1)))


def test_measured_and_simulated_timelines_in_one_figure(tmp_path):
    simulated = schedules.simulate("gpipe", 2, 2, 1.0, 2.0)
    path = draw_timelines(
        [_result(), simulated], tmp_path / "both.png", titles=["measured", "gpipe"]
    )
    image = matplotlib.image.imread(path)
    # Forward and backward in the simulator's colours; the update in its own.
    assert _has_color(image, schedules.drawing.COLORS["F"])
    assert _has_color(image, schedules.drawing.COLORS["B"])
    assert _has_color(image, COLORS["U"])
    assert COLORS["F"] == schedules.drawing.COLORS["F"]
    assert _has_color(image, COLORS["S"])
    # Only the first step (3 ms) of the measured one: its synthesizer at
    # 5-6 ms is left out.
    alone = matplotlib.image.imread(_result().draw(tmp_path / "one.png", steps=1))
    assert _has_color(alone, COLORS["F"]) and _has_color(alone, COLORS["U"])
    assert not _has_color(alone, COLORS["S"])


def test_drawing_refuses_what_it_cannot_draw(tmp_path):
    with pytest.raises(TypeError, match="Received: dict"):
        draw_timelines([{}], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"Received: titles=\['a', 'b'\]"):
        draw_timelines([_result()], tmp_path / "x.png", titles=["a", "b"])
    with pytest.raises(ValueError, match="Received: steps=0"):
        draw_timelines([_result()], tmp_path / "x.png", steps=0)
    with pytest.raises(ValueError, match="at least one"):
        draw_timelines([], tmp_path / "x.png")
