"""scripts/simulate_pipeline.py in process: the ZB-H1 table and the time to
accuracy extrapolated from the measured epochs, by hand."""

from pathlib import Path

import pytest
from absl import flags
from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "simulate_pipeline.py"


@pytest.fixture(autouse=True)
def _seed():
    """Overrides tests/conftest.py's Keras seeding: the simulator has no Keras."""
    yield


@pytest.fixture(scope="module")
def script():
    """The script as a module, its flags parsed (defaults); its absl flags are
    removed afterwards, so that other scripts' tests can define their own."""
    with script_module(SCRIPT, "keras_sg_simulate_pipeline") as module:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["simulate_pipeline.py"])
        yield module
        flags.FLAGS.unparse_flags()


def _row(table, first_cells):
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[: len(first_cells)] == first_cells:
            return cells
    raise AssertionError(f"no row {first_cells}")


def test_zero_bubble_row_by_hand(script):
    # K = 8: 12 blocks a stage, F = 12, B = 12, W = 12. 1F1B: (M + K - 1) 36;
    # ZB-H1: 36 M + (K - 1)(F + B - W) = 288 + 84.
    (table,) = script.zero_bubble_section([8], [8])
    assert _row(table, ["8", "8"]) == [
        "8",
        "8",
        "540.00",
        "372.00",
        "1.45x",
        "84.00",
        "84.00",
    ]


def test_time_to_accuracy_rows_by_hand(script):
    text = "\n".join(script.time_to_accuracy_section([8], [8]))
    tables = [part for part in text.split("\n\n") if part.startswith("|")]
    no_update, with_update = tables
    # Pipelined DNI: 36 (1 + 0.1) = 39.6 a micro-batch; ZB-H1 372 / 8 = 46.5;
    # naive 8 * 36 = 288. Time to accuracy: the measured mean epochs, 3.3 of
    # the runtime's cDNI against 3.4 of backprop, times 39.6 / 46.5 and / 288.
    epochs = 3.3 / 3.4
    cells = _row(no_update, ["8", "8"])
    assert cells[2] == "zb_h1"
    assert cells[3:6] == [
        f"{46.5 / 39.6:.2f}x",
        f"{epochs * 39.6 / 46.5:.2f}",
        f"{epochs * 39.6 / 288:.2f}",
    ]
    assert cells[6:9] == cells[3:6]  # async: the same rate with even stages
    # Update 0.43 * 36 = 15.48: every micro-batch for DNI, once a step for
    # ZB-H1 (after device 0's last W) and naive.
    u = 0.43 * 36
    dni, zb, naive = 39.6 + u, (372 + u) / 8, (2304 + u) / 8
    cells = _row(with_update, ["8", "8"])
    assert cells[3:6] == [
        f"{zb / dni:.2f}x",
        f"{epochs * dni / zb:.2f}",
        f"{epochs * dni / naive:.2f}",
    ]
    assert cells[3:5] == ["0.88x", "1.10"]


def _costs_entry(**fields):
    # As tests/schedules/test_validation.py: backprop on one core takes 49.5
    # ms a step on these work costs, 61 with a core each (100 examples).
    costs = [
        {"F": 8.0, "B": 16.0, "S": 0.0, "U": 3.0, "C": 2.0},
        {"F": 10.0, "B": 18.0, "S": 0.0, "U": 5.0, "C": 0.0},
    ]
    work = [dict(costs[0]), {k: v / 2 for k, v in costs[1].items()}]
    return {
        "setting": "logical",
        "name": "backprop_mp (K=2)",
        "model": "backprop",
        "devices": 2,
        "batch_size": 100,
        "micro_batches": 8,
        "examples_per_s": 2000.0,
        "traced_examples_per_s": 1800.0,
        "costs": costs,
        "work_costs": work,
        "cores": 1,
        "per_step_overhead_ms": 4.0,
        "transfer_ms": None,
        **fields,
    }


def test_shared_cores_rows_by_hand(script, tmp_path):
    import json

    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"measurements": [_costs_entry()]}))
    table, _, each, shared = script.shared_cores_section(str(path))
    # A core each: 100 / 61 ms = 1639/s, -18% of 2000 and -9% of 1800; one
    # shared core: 100 / 49.5 ms = 2020/s, +1% and +12%.
    assert _row(table, ["2"]) == [
        "2",
        "backprop_mp (K=2)",
        "2000",
        "1800 (+11%)",
        "1639 (-18%, -9%)",
        "2020 (+1%, +12%)",
        "–",  # no core time recorded
    ]
    assert "the devices sharing cores: 1 (errors)" in table
    assert each.endswith(
        "0 of 1 within 10% of the measured examples/s, 1 of 1 of the traced steps'."
    )
    assert shared.endswith(
        "1 of 1 within 10% of the measured examples/s, 0 of 1 of the traced steps'."
    )
    # With 60 ms of core time a step, one core needs 60 + 4 = 64 ms: 1562/s,
    # -22% of 2000 and -13% of 1800; the unbound column stays as it was.
    bound = _costs_entry(core_time_ms=60.0)
    path.write_text(json.dumps({"measurements": [bound, _costs_entry()]}))
    table, _, _, _, bounded = script.shared_cores_section(str(path))
    assert _row(table, ["2"])[-2:] == ["2020 (+1%, +12%)", "1562 (-22%, -13%)"]
    assert bounded == (
        "- Shared cores and the core-time bound: 0 of 1 within 10% of the "
        "measured examples/s, 0 of 1 of the traced steps'."
    )
    path.write_text(
        json.dumps({"measurements": [_costs_entry(traced_examples_per_s=None)]})
    )
    with pytest.raises(ValueError, match="without them"):
        script.shared_cores_section(str(path))
