"""scripts/reproduce_recurrent.py --report_only on fabricated workdirs: the
tables hold the numbers put there, and the verdicts follow them."""

import json
from pathlib import Path

import pytest
from conftest import script_module

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "reproduce_recurrent.py"


@pytest.fixture(scope="module")
def script():
    with script_module(SCRIPT, "keras_sg_reproduce_recurrent") as module:
        yield module


def _write(workdir, name, **metrics):
    folder = workdir / name
    folder.mkdir(parents=True)
    metrics.setdefault("status", "finished")
    metrics.setdefault("stopped", "budget")
    metrics.setdefault("seconds", 60.0)
    metrics.setdefault("epochs", 4)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _fabricate(workdir):
    # copy T=2: BPTT 3, DNI 6 (met, ratio 2), Aux 7; T=4: BPTT 5, DNI 9 (not met).
    for t, ns in ((2, (3, 6, 7)), (4, (5, 9, 12))):
        for method, n in zip(("bptt", "dni", "dni_aux"), ns, strict=True):
            _write(
                workdir,
                f"copy_T{t}_{method}",
                largest_n=n,
                n_curve=[[100, n - 1], [200, n]],
                steps=200,
                steps_budget=200,
                curriculum={"threshold": 0.15},
            )
    # PTB T=4: BPTT 2.30, DNI 2.10 (below), Aux 2.20 (worse than DNI);
    # DNI + Aux stopped early at step 400, so the row compares at step 400.
    curves = {
        "bptt": [[200, 2.9], [400, 2.5], [600, 2.30]],
        "dni": [[200, 2.8], [400, 2.4], [600, 2.10]],
        "dni_aux": [[200, 2.7], [400, 2.45]],
    }
    for method, curve in curves.items():
        _write(
            workdir,
            f"ptb_T4_{method}",
            test_bpc_curve=curve,
            final_test_bpc=curve[-1][1],
            steps=curve[-1][0],
            steps_budget=600,
            max_seconds=540.0,
            test_characters_scored=99328,
        )
    for method, acc in (("bptt", 0.91), ("dni", 0.895)):
        _write(
            workdir,
            f"clocks_{method}",
            test_accuracy=acc,
            test_accuracy_first_blocks=0.97,
            test_accuracy_later=acc - 0.05,
            test_accuracy_curve=[[128, acc - 0.1], [256, acc]],
            steps=256,
            steps_budget=256,
        )
    (workdir / "sessions.json").write_text(
        json.dumps(
            [
                {
                    "started": "2026-11-27 05:00 UTC",
                    "cpus": 2,
                    "load_start": [1.5, 1.25, 1.0],
                    "load_end": [2.0, 1.75, 1.5],
                }
            ]
        )
    )


def _report(script, tmp_path, *flags):
    workdir, output = tmp_path / "runs", tmp_path / "recurrent.md"
    _fabricate(workdir)
    output.write_text(
        "# Title\n\nBefore.\n\n<!-- results:begin -->\nold\n"
        "<!-- results:end -->\n\nAfter.\n"
    )
    argv = [
        "reproduce_recurrent.py",
        f"--workdir={workdir}",
        f"--output={output}",
        f"--figures={tmp_path / 'figures'}",
        "--truncations=2,4",
        "--ptb_truncations=4",
        "--bpc_target=2.45",
        "--report_only",
        *flags,
    ]
    script.FLAGS.unparse_flags()
    script.FLAGS(argv)
    script.main([])
    return output.read_text()


def _row(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


def test_report_tables_hold_the_numbers_and_verdicts(script, tmp_path):
    text = _report(script, tmp_path)
    assert text.startswith("# Title\n\nBefore.\n\n<!-- results:begin -->")
    assert text.endswith("<!-- results:end -->\n\nAfter.\n") and "\nold\n" not in text
    assert _row(text, "| copy | 2 |") == (
        "| copy | 2 | 3 | 6 | 7 | 2.00 | 2.33 | met |"
    )
    assert _row(text, "| copy | 4 |") == (
        "| copy | 4 | 5 | 9 | 12 | 1.80 | 2.40 | not met |"
    )
    assert (
        "met at 1 of 2 (task, T) pairs with both runs: copy T=2; not met at copy T=4."
        in text
    )
    # Compared at step 400, the last that all three reached; steps to 2.45.
    assert _row(text, "| 4 |") == (
        "| 4 | 400 | 2.500 | 2.400 | 2.450 | 600 / 400 / 400 | met | not met |"
    )
    assert "at T=4 (step 400) DNI is below BPTT and DNI + Aux is worse than DNI" in text
    assert _row(text, "| BPTT |") == "| BPTT | 0.910 | 0.970 | 0.860 | 256 |"
    assert _row(text, "| DNI |") == "| DNI | 0.895 | 0.970 | 0.845 | 256 |"
    assert "DNI is 1.50 points below BPTT: the target (within 2 points) is met" in text
    assert "never waits for the fast network" in text
    assert _row(text, "| ptb_T4_dni_aux |") == (
        "| ptb_T4_dni_aux | finished | budget | 400 / 600 | 4 | 60 |"
    )
    # What the runs had, not the report call's flags (--max_minutes is 20).
    assert "over the first 99,328 characters of the test split" in text
    assert "each run capped at 9 min of wall clock" in text
    assert "1.50 / 1.25 / 1.00 at the start, 2.00 / 1.75 / 1.50 at the end" in text
    assert "Not run (or not finished): repeat_copy_T2_bptt" in text
    for name in ("recurrent_copy.png", "recurrent_ptb.png", "recurrent_clocks.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000
        assert f"(figures/{name})" in text


def test_only_filters_cells_by_prefix(script, tmp_path):
    text = _report(script, tmp_path, "--only=clocks")
    assert "| copy |" not in text and "| clocks_dni |" in text
    assert "from 2 of 2 runs" in text


def test_a_missing_run_gives_no_verdict(script, tmp_path):
    workdir = tmp_path / "runs"
    _fabricate(workdir)
    (workdir / "copy_T2_dni" / "metrics.json").unlink()
    text = _report_existing(script, tmp_path)
    assert _row(text, "| copy | 2 |") == "| copy | 2 | 3 | – | 7 | – | 2.33 | n/a |"
    assert "met at 0 of 1 (task, T) pairs" in text


def _report_existing(script, tmp_path):
    output = tmp_path / "recurrent.md"
    script.FLAGS.unparse_flags()
    script.FLAGS(
        [
            "reproduce_recurrent.py",
            f"--workdir={tmp_path / 'runs'}",
            f"--output={output}",
            f"--figures={tmp_path / 'figures'}",
            "--truncations=2,4",
            "--ptb_truncations=4",
            "--report_only",
        ]
    )
    script.main([])
    return output.read_text()


def test_a_report_without_markers_is_refused(script, tmp_path):
    output = tmp_path / "recurrent.md"
    output.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="lacks the markers"):
        script.write_between_markers(output, "x")
    created = tmp_path / "new.md"
    script.write_between_markers(
        created, "<!-- results:begin -->\nT\n<!-- results:end -->"
    )
    assert created.read_text().endswith(
        "<!-- results:begin -->\nT\n<!-- results:end -->\n"
    )
