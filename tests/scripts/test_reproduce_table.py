"""scripts/reproduce_table.py: the grid's cells and the report's numbers and
text, on fabricated workdirs."""

import json
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_table.py"


@pytest.fixture(autouse=True)
def _seed():
    """No Keras here: skip conftest's seeding and its slow clear_session."""
    yield


@pytest.fixture(scope="module")
def table():
    """The script as a module; its absl flags are removed afterwards, so that
    other scripts' tests can define theirs (train.py's --workdir)."""
    with script_module(SCRIPT, "keras_sg_reproduce_table") as module:
        yield module


def settings(workdir, **overrides):
    values = dict(
        workdir=str(workdir),
        fcn_epochs=10,
        cnn_epochs=2,
        learning_rate=3e-4,
        learning_rates=[],
        schedule="paper",
        cnn_filters=32,
        cnn_synth_filters=32,
        fcn_depths=["3", "4", "5", "6"],
        cnn_depths=["3", "4"],
        methods=["no_bprop", "backprop", "dni", "cdni"],
        seeds=["0", "1", "2"],
        seeded_depths=["3", "6"],
        bp_lambdas=["0.25", "0.5", "0.75"],
        bp_lambda_endpoints=False,
        skip_cnn=True,
        skip_extras=False,
        only=[],
        diagnostics_every=235,
        report_only=True,
    )
    values.update(overrides)
    return types.SimpleNamespace(**values)


def fabricate(workdir: Path, name: str, error: float, cosines=None, epochs=10):
    """A finished run's workdir: metrics.json and a history.csv of `epochs`
    rows of 7 seconds each."""
    run = workdir / name
    run.mkdir(parents=True)
    metrics = {
        "status": "finished",
        "epochs": epochs,
        "steps": epochs * 235,
        "test_error_percent": error,
        "learning_rate_schedule": {"kind": "paper"},
    }
    if cosines is not None:
        metrics["final_cut_cosines"] = cosines
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows = ["epoch,val_accuracy,epoch_seconds"]
    rows += [f"{e},{1 - error / 100},7.0" for e in range(epochs)]
    (run / "history.csv").write_text("\n".join(rows) + "\n")


def report(table, workdir, **overrides):
    s = settings(workdir, **overrides)
    cells = table.grid(s)
    results = table.collect(cells, s)
    return table.report(cells, results, s), table.group(cells, results), s


def test_grid_names_cells_stably_and_seeds_the_chosen_depths(table, tmp_path):
    names = [c.name for c in table.grid(settings(tmp_path, skip_cnn=False))]
    assert len(names) == len(set(names))
    for seed in (0, 1, 2):
        assert f"fcn3_dni_s{seed}" in names and f"fcn6_cdni_s{seed}" in names
    assert "fcn4_dni_s0" in names and "fcn4_dni_s1" not in names
    assert "cnn3_cdni_s0" in names and "cnn3_cdni_s1" not in names
    assert {
        "extra_fcn4_unlocked_s0",
        "extra_fcn4_dni_p0.2_s0",
        "extra_fcn4_cdni_p0.05_s0",
        "extra_fcn6_bp_lambda0.25_s0",
        "extra_fcn6_bp_lambda0.5_s0",
        "extra_fcn6_bp_lambda0.75_s0",
    } <= set(names)
    assert len(names) == 16 + 2 * 8 + 8 + 6  # first seeds, two more, CNN, extras
    # Every row's first seed before any second one.
    assert max(names.index(n) for n in names if n.endswith("_s0")) < min(
        names.index(n) for n in names if not n.endswith("_s0")
    )
    only = table.grid(settings(tmp_path, only=["extra", "fcn6_dni"]))
    assert sorted(c.name for c in only) == sorted(
        ["fcn6_dni_s0", "fcn6_dni_s1", "fcn6_dni_s2"]
        + [n for n in names if n.startswith("extra")]
    )
    assert not any(c.family == "cnn" for c in table.grid(settings(tmp_path)))
    cells = {c.name: c for c in table.grid(settings(tmp_path))}
    assert (
        cells["extra_fcn4_dni_p0.2_s0"].variant == "dni,depth=4,update_probability=0.2"
    )
    assert (
        cells["extra_fcn6_bp_lambda0.5_s0"].variant == "bp_lambda,depth=6,bp_lambda=0.5"
    )
    assert cells["extra_fcn4_unlocked_s0"].variant == "unlocked,depth=4"
    ends = table.grid(settings(tmp_path, bp_lambda_endpoints=True, only=["extra_fcn6"]))
    assert [c.name for c in ends] == [
        f"extra_fcn6_bp_lambda{v}_s0" for v in ("0", "0.25", "0.5", "0.75", "1")
    ]


def test_finished_cells_are_skipped(table, tmp_path, monkeypatch):
    fabricate(tmp_path, "fcn3_backprop_s0", 1.8)
    fabricate(tmp_path, "fcn3_cdni_s0", 1.8, epochs=3)  # another budget: rerun
    calls = []
    monkeypatch.setattr(
        table.subprocess, "call", lambda args, **kw: calls.append(args) or 0
    )
    s = settings(tmp_path, only=["fcn3_backprop_s0", "fcn3_cdni_s0"])
    for cell in table.grid(s):
        table.train(cell, s)
    assert len(calls) == 1
    args = calls[0]
    assert "--config=configs/mnist_fcn.py:cdni,depth=3" in args
    assert "--config.seed=0" in args and "--config.epochs=10" in args
    assert "--config.optimizer.schedule=paper" in args


def test_mean_and_std_over_three_seeds_are_numpys(table, tmp_path):
    errors = [1.71, 2.13, 1.52]
    cosines = [[0.2, 0.5], [0.4, 0.7], [0.3, 0.9]]
    for seed, (e, c) in enumerate(zip(errors, cosines, strict=True)):
        fabricate(tmp_path, f"fcn3_dni_s{seed}", e, c)
    fabricate(tmp_path, "fcn4_dni_s0", 4.0, [0.1, 0.2, 0.3])
    text, rows, _ = report(table, tmp_path)
    row = rows["fcn3_dni"]
    assert row.n == 3
    np.testing.assert_allclose(row.mean, np.mean(errors), rtol=1e-12)
    np.testing.assert_allclose(row.std, np.std(errors, ddof=1), rtol=1e-12)
    want = f"{np.mean(errors):.2f} ± {np.std(errors, ddof=1):.2f} (n=3)"
    assert f"| FCN-3 | – / n/c | – / n/c | {want} / n/c |" in text
    assert "| FCN-4 | – / n/c | – / n/c | 4.00 (n=1) / n/c |" in text
    np.testing.assert_allclose(row.cosines, np.mean(cosines, axis=0), rtol=1e-12)
    assert "| fcn3_dni | 3 | 0.300, 0.700 |" in text
    assert rows["fcn3_dni"].min_cosine == 0.2
    # Wall time from the runs' own timings: 4 runs of 10 epochs of 7 s.
    assert "(training and per-epoch test evaluation): 4.7 min" in text
    assert "FCN runs: 10 epochs, steps per run: 2,350" in text


def _sweep(tmp_path, dni, lambdas, backprop):
    fabricate(tmp_path, "fcn6_dni_s0", dni)
    fabricate(tmp_path, "fcn6_backprop_s0", backprop)
    for lam, error in lambdas.items():
        fabricate(tmp_path, f"extra_fcn6_bp_lambda{lam}_s0", error)


def test_reading_says_the_sweep_is_ordered_when_it_is(table, tmp_path):
    _sweep(tmp_path, 9.0, {"0.25": 6.0, "0.5": 4.0, "0.75": 4.0}, 2.0)
    text, _, _ = report(table, tmp_path)
    assert "The BP(λ) sweep on FCN-6 is ordered" in text
    assert "9.00%, 6.00%, 4.00%, 4.00%, 2.00%" in text
    assert "| The BP(λ) sweep ordered between DNI and backprop | **met** |" in text


def test_reading_says_the_sweep_is_not_ordered_when_it_is_not(table, tmp_path):
    _sweep(tmp_path, 9.0, {"0.25": 6.0, "0.5": 7.0, "0.75": 4.0}, 2.0)
    text, _, _ = report(table, tmp_path)
    assert "is not ordered between DNI and backprop" in text
    assert "λ = 0.5 (7.00%) is worse than λ = 0.25 (6.00%)" in text
    assert "| The BP(λ) sweep ordered between DNI and backprop | **not met** |" in text
    assert "The BP(λ) sweep on FCN-6 is ordered" not in text


def test_sweep_with_a_missing_point_is_not_checkable(table, tmp_path):
    _sweep(tmp_path, 9.0, {"0.25": 6.0, "0.75": 4.0}, 2.0)
    text, _, _ = report(table, tmp_path)
    assert (
        "| The BP(λ) sweep ordered between DNI and backprop | **not checkable** |"
        in text
    )
    assert "is ordered" not in text and "not ordered" not in text


def test_targets_and_reading_follow_the_numbers(table, tmp_path):
    bp = {3: 1.8, 4: 1.9, 5: 2.0, 6: 2.3}
    cdni = {3: 1.9, 4: 2.0, 5: 2.1, 6: 2.4}
    for d in (3, 4, 5, 6):
        fabricate(tmp_path, f"fcn{d}_backprop_s0", bp[d])
        fabricate(tmp_path, f"fcn{d}_cdni_s0", cdni[d], [0.5] * (d - 1))
        fabricate(
            tmp_path,
            f"fcn{d}_dni_s0",
            {3: 2.0, 6: 6.0}.get(d, 3.0),
            [0.05] + [0.4] * (d - 2),
        )
    fabricate(tmp_path, "extra_fcn4_unlocked_s0", 2.4, [0.3, 0.3, 0.3])
    fabricate(tmp_path, "extra_fcn4_dni_p0.2_s0", 3.5, [0.3, 0.3, 0.3])
    text, _, _ = report(table, tmp_path)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()}
    assert "**not met**" in lines["Backprop FCN-3…6 ≤ 2.0% (mean over seeds)"]
    assert "FCN-6 2.30%" in lines["Backprop FCN-3…6 ≤ 2.0% (mean over seeds)"]
    assert "**met**" in lines["cDNI within 0.2 points of backprop at every FCN depth"]
    assert (
        "FCN-3 +0.10" in lines["cDNI within 0.2 points of backprop at every FCN depth"]
    )
    assert "**not met**" in lines["DNI: FCN-6 error ≤ 2.5× FCN-3's"]
    assert "6.00% / 2.00% = 3.00×" in lines["DNI: FCN-6 error ≤ 2.5× FCN-3's"]
    assert "**not met**" in lines["DNI: every cut's final cosine > 0.1"]
    assert "FCN-3 0.050" in lines["DNI: every cut's final cosine > 0.1"]
    assert "**met**" in lines["Complete unlock (synthetic inputs + cDNI) FCN-4 ≤ 2.5%"]
    assert "**not met**" in lines["Stochastic updates p = 0.2, FCN-4 DNI ≤ 3.0%"]
    assert "**not checkable**" in lines["CNN-3 cDNI ≤ 1.0%"]
    assert (
        "DNI's error grows with depth: FCN-3 2.00% → FCN-6 6.00%, 3.00× (beyond" in text
    )
    assert "FCN-3: Bprop 1.80% (then cDNI 1.90%)" in text
    assert "Bprop is the best method at every FCN depth." in text
    assert (
        "DNI's final cosine (mean over seeds) at its weakest cut: FCN-3 cut 1 0.050"
        in text
    )
    assert "at or below 0.1 on FCN-3, FCN-4, FCN-5, FCN-6." in text
    assert "reaches 2.40% on FCN-4, meeting its target of 2.5%" in text
    assert "reach 3.50% on FCN-4, missing its target of 3.0%" in text
    assert "cDNI against backprop: FCN-3 +0.10, FCN-4 +0.10, FCN-5 +0.10, FCN-6" in text
    assert "within 0.2 points at every depth." in text
    grid_line = lines["The whole grid within about 2.5 hours"]
    assert "**not checkable**" in grid_line and "14 of 38 runs" in grid_line

    # One backprop run better: the ratio and the bound move with the numbers.
    (tmp_path / "fcn6_dni_s0" / "metrics.json").write_text(
        json.dumps(
            {
                "status": "finished",
                "epochs": 10,
                "steps": 2350,
                "test_error_percent": 4.0,
            }
        )
    )
    text, _, _ = report(table, tmp_path)
    assert "FCN-3 2.00% → FCN-6 4.00%, 2.00× (within the target of 2.5×)" in text


def test_unfinished_runs_are_left_out_and_named(table, tmp_path):
    fabricate(tmp_path, "fcn3_backprop_s0", 1.5)
    fabricate(tmp_path, "fcn3_backprop_s1", 2.5)
    diverged = tmp_path / "fcn3_backprop_s2" / "metrics.json"
    diverged.parent.mkdir()
    diverged.write_text(json.dumps({"status": "diverged", "epochs": 10}))
    text, rows, _ = report(table, tmp_path)
    assert rows["fcn3_backprop"].n == 2 and rows["fcn3_backprop"].wanted == 3
    assert "2.00 ± 0.71 (n=2)" in text
    assert "fewer finished runs than asked: fcn3_no_bprop, fcn3_backprop," in text


def test_grid_time_target_is_checked_once_every_run_finished(table, tmp_path):
    for seed in (0, 1, 2):
        fabricate(tmp_path, f"fcn3_backprop_s{seed}", 1.5, epochs=10)  # 70 s each
    text, _, _ = report(table, tmp_path, only=["fcn3_backprop"])
    assert (
        "| The whole grid within about 2.5 hours | **met** | 0.06 h of run time over "
        "3 of 3 runs |" in text
    )
    assert "Wall time, the sum of the 3 finished runs' own epoch timings" in text
    assert "3.5 min" in text


def _three_overlapping_runs(workdir):
    """fcn3_backprop seeds 0-2, started at 0, 0.5 h and 1 h, running 1 h,
    0.5 h and 0.5 h by their own clocks (metrics.json's mtime is the end)."""
    import os

    for seed, (began, seconds) in enumerate([(0, 3600), (1800, 1800), (3600, 1800)]):
        fabricate(workdir, f"fcn3_backprop_s{seed}", 1.5)
        path = workdir / f"fcn3_backprop_s{seed}" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["session_seconds"] = seconds
        path.write_text(json.dumps(metrics))
        os.utime(path, (1e9 + began + seconds, 1e9 + began + seconds))


def test_grid_time_is_the_span_of_the_runs_own_clocks(table, tmp_path):
    """Three runs that overlap: 2 h of run time, but 1.5 h from the first
    start to the last end."""
    _three_overlapping_runs(tmp_path)
    text, _, _ = report(table, tmp_path, only=["fcn3_backprop"])
    assert "by the runs' own clocks: 1.50 h." in text
    assert (
        "| The whole grid within about 2.5 hours | **met** | 1.50 h from first start "
        "to last end over 3 of 3 runs |" in text
    )


def test_a_failed_cell_does_not_stop_the_grid(table, tmp_path, monkeypatch):
    calls = []

    def call(args, **kwargs):
        calls.append(next(a for a in args if a.startswith("--workdir=")))
        return 1 if len(calls) == 1 else 0

    monkeypatch.setattr(table.subprocess, "call", call)
    s = settings(tmp_path, only=["fcn3_backprop_s0", "fcn3_cdni_s0"])
    assert [table.train(cell, s) for cell in table.grid(s)] == [False, True]
    assert len(calls) == 2
    # A diverged cell is not run again, and the report names it.
    (tmp_path / "fcn3_backprop_s0" / "metrics.json").write_text(
        json.dumps({"status": "diverged", "epochs": 10})
    )
    assert table.train(table.grid(s)[0], s) is False and len(calls) == 2
    text, _, _ = report(table, tmp_path, only=["fcn3_backprop_s0"])
    assert "Runs that diverged (left out): fcn3_backprop_s0." in text


@pytest.mark.parametrize(
    "errors, verdict",
    [
        ({3: 1.9}, "**not checkable**"),  # the others not measured yet
        ({3: 2.1}, "**not met**"),  # one measured depth misses: not met already
        ({3: 1.9, 4: 1.8, 5: 2.0, 6: 1.7}, "**met**"),
        ({3: 1.9, 4: 1.8, 5: 2.01, 6: 1.7}, "**not met**"),
    ],
)
def test_a_target_over_every_depth_with_partial_results(
    table, tmp_path, errors, verdict
):
    for d, e in errors.items():
        fabricate(tmp_path, f"fcn{d}_backprop_s0", e)
        fabricate(tmp_path, f"fcn{d}_cdni_s0", e + 0.1)
    text, _, _ = report(table, tmp_path)
    line = next(x for x in text.splitlines() if x.startswith("| Backprop FCN-3…6"))
    assert f"| {verdict} |" in line
    if len(errors) < 4:
        assert "not measured: FCN-4, FCN-5, FCN-6" in line
        assert "within 0.2 points at the depths measured so far." in text
        assert "at every FCN depth." not in text
    else:
        assert "within 0.2 points at every depth." in text


def test_runs_carried_over_leave_the_span_and_the_time_target(table, tmp_path):
    """The same three runs, the first copied in from an earlier grid: the span
    covers the other two (1 h), and the 2.5 h target is not checkable."""
    _three_overlapping_runs(tmp_path)
    (tmp_path / "fcn3_backprop_s0" / "carried_over.txt").write_text("old/grid\n")
    text, _, _ = report(table, tmp_path, only=["fcn3_backprop"])
    assert "by the runs' own clocks: 1.00 h." in text
    assert "carried over from an earlier grid with the same settings" in text
    assert "span): from old/grid: fcn3_backprop_s0." in text
    assert (
        "| The whole grid within about 2.5 hours | **not checkable** | 1.00 h from "
        "first start to last end over 3 of 3 runs, not counting 1 runs carried over "
        "from an earlier grid (0.02 h of their own run time)" in text
    )
