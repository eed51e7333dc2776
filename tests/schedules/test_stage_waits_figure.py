"""scripts/draw_stage_waits.py in process: the four timelines of the figure
in docs/method.md, their time per batch by hand, and the PNG."""

from pathlib import Path

import pytest
from absl import flags
from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "draw_stage_waits.py"


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: the simulator has no Keras."""
    yield


@pytest.fixture(scope="module")
def figure():
    """The script as a module, its flags parsed; its absl flags are removed
    afterwards, so that other scripts' tests can define their own."""
    with script_module(SCRIPT, "keras_sg_stage_waits") as module:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["draw_stage_waits.py"])
        yield module
        flags.FLAGS.unparse_flags()


def test_time_per_batch_of_each_panel(figure):
    k, f, b, s = 4, 1.0, 2.0, 0.3
    results = figure.timelines()
    backprop = results[0]
    per_batch = [r.step_time / r.num_microbatches for r in results]
    assert per_batch == pytest.approx(
        [k * (f + b), k * f + b + s / 2, f + b + s, f + b + s + s]
    )
    # Backprop's second step is its first, one step later.
    first = [e for e in backprop.events if e.step == 0]
    second = [e for e in backprop.events if e.step == 1]
    assert [e.start + k * (f + b) for e in first] == pytest.approx(
        [e.start for e in second]
    )
    assert len(backprop.messages) == 2 * 2 * (k - 1)


def test_smoke_draws_the_png(figure, tmp_path):
    path = figure.draw(figure.timelines(), tmp_path / "waits.png")
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
