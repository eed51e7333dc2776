r"""Runs the recurrent experiments of issue 11 and writes their results into
docs/recurrent.md, between `<!-- results:begin -->` and `<!-- results:end -->`.

    python scripts/reproduce_recurrent.py --workdir=workdirs/recurrent
    python scripts/reproduce_recurrent.py --only=copy_T2 --copy_steps=1500
    python scripts/reproduce_recurrent.py --report_only

Each cell is one `scripts/train_sequence.py` process in its own workdir under
--workdir: `copy_T<T>_<method>` and `repeat_copy_T<T>_<method>` for T in
--truncations and methods bptt, dni, dni_aux (configs/copy.py);
`ptb_T<T>_<method>` for T in --ptb_truncations (configs/ptb_char.py); and
`clocks_<method>` for bptt and dni (configs/clocks.py). Every cell has a step
budget and a wall-clock cap (--max_minutes; it stops at the first epoch end
past it). A cell whose metrics.json says it finished (or diverged) with the
same budget is skipped; an interrupted one resumes from its checkpoint.
`--only=copy_T2,clocks` runs the cells whose names start so; `--report_only`
writes the report from the workdirs without training.

The report holds the tables (largest N per task, T and method and the ratio
DNI / BPTT; PTB final test bits per character and steps to --bpc_target;
clocks accuracy and the gap), each run's budget, steps, stop reason and wall
time, the machine load (os.getloadavg) at the start and end of each training
session, and learning curves as PNGs in --figures. Its text says which of the
issue's targets the numbers meet; a cell that has not run is named as missing.

Budgets: the defaults aim at the issue's ~3 hours on 2 cores. Measured on a
busy 2-core machine (load 7 to 10): copy at T = 2, 10000 steps, took 200 s
(BPTT) and 173 s (DNI) of training; 100 PTB steps at T = 4 with 20000 test
characters, 13 s. Longer sequences (a larger N, Repeat Copy) cost more per
step, which the per-cell cap bounds.
"""

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
COPY_TASKS = ("copy", "repeat_copy")
TIME_METHODS = ("bptt", "dni", "dni_aux")
CLOCK_METHODS = ("bptt", "dni")
NAMES = {"bptt": "BPTT", "dni": "DNI", "dni_aux": "DNI + Aux"}

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", str(ROOT / "workdirs" / "recurrent"), "Parent of runs.")
flags.DEFINE_string("output", str(ROOT / "docs" / "recurrent.md"), "Report to update.")
flags.DEFINE_string("figures", str(ROOT / "docs" / "figures"), "Folder of the PNGs.")
flags.DEFINE_list("truncations", ["2", "4", "8"], "T of the copy tasks.")
flags.DEFINE_list("ptb_truncations", ["4", "8"], "T of the PTB runs.")
flags.DEFINE_list("tasks", ["copy", "repeat_copy", "ptb", "clocks"], "Families to run.")
flags.DEFINE_integer("copy_steps", 10000, "Step budget of each copy cell.")
flags.DEFINE_integer("copy_units", 256, "LSTM size of the copy cells.")
flags.DEFINE_integer("ptb_steps", 3000, "Step budget of each PTB cell.")
flags.DEFINE_integer("ptb_eval_every", 250, "Steps between test BPC measurements.")
flags.DEFINE_integer("ptb_test_characters", 100000, "Test characters (0: all).")
flags.DEFINE_float("bpc_target", 2.5, "The BPC whose first step is reported.")
flags.DEFINE_integer("clocks_steps", 5120, "Step budget of each clocks cell.")
flags.DEFINE_float("max_minutes", 20.0, "Wall-clock cap of each cell.")
flags.DEFINE_list("only", [], "Run only the cells whose names start so.")
flags.DEFINE_bool("report_only", False, "Only collect the workdirs into the report.")


# ------------------------------------------------------------------- grid


def grid(settings) -> list[dict]:
    """Every cell: its name, family, method, T and train_sequence.py arguments."""
    cells = []
    if "copy" in settings.tasks or "repeat_copy" in settings.tasks:
        for task in COPY_TASKS:
            if task not in settings.tasks:
                continue
            for t in map(int, settings.truncations):
                for method in TIME_METHODS:
                    cells.append(
                        dict(
                            name=f"{task}_T{t}_{method}",
                            family=task,
                            method=method,
                            truncation=t,
                            steps=settings.copy_steps,
                            config=(
                                f"configs/copy.py:{method},task={task},truncation={t},"
                                f"units={settings.copy_units},steps={settings.copy_steps}"
                            ),
                        )
                    )
    if "ptb" in settings.tasks:
        for t in map(int, settings.ptb_truncations):
            for method in TIME_METHODS:
                cells.append(
                    dict(
                        name=f"ptb_T{t}_{method}",
                        family="ptb",
                        method=method,
                        truncation=t,
                        steps=settings.ptb_steps,
                        config=(
                            f"configs/ptb_char.py:{method},truncation={t},"
                            f"steps={settings.ptb_steps},"
                            f"eval_every={settings.ptb_eval_every}"
                        ),
                        extra=[
                            "--config.data.test_characters="
                            f"{settings.ptb_test_characters}"
                        ],
                    )
                )
    if "clocks" in settings.tasks:
        for method in CLOCK_METHODS:
            cells.append(
                dict(
                    name=f"clocks_{method}",
                    family="clocks",
                    method=method,
                    truncation=None,
                    steps=settings.clocks_steps,
                    config=f"configs/clocks.py:{method},steps={settings.clocks_steps}",
                )
            )
    if settings.only:
        cells = [
            c for c in cells if any(c["name"].startswith(p) for p in settings.only)
        ]
    return cells


def train(cell: dict, settings) -> bool:
    """Runs the cell unless it finished (or diverged) with this budget.

    Returns:
        False if train_sequence.py failed (its train.log says why)."""
    workdir = Path(settings.workdir) / cell["name"]
    max_seconds = 60.0 * settings.max_minutes
    done = workdir / "metrics.json"
    metrics = json.loads(done.read_text()) if done.exists() else {}
    if (
        metrics.get("steps_budget") == cell["steps"]
        and metrics.get("max_seconds") == max_seconds
        and metrics.get("status") in ("finished", "diverged")
    ):
        print(f"[skip] {cell['name']}: {metrics['status']}", flush=True)
        return metrics["status"] == "finished"
    args = [
        sys.executable,
        str(ROOT / "scripts" / "train_sequence.py"),
        f"--config={cell['config']}",
        f"--workdir={workdir}",
        f"--config.max_seconds={max_seconds}",
        *cell.get("extra", []),
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[run] {cell['name']}", flush=True)
    start = time.perf_counter()
    with open(workdir / "train.log", "a") as log:
        try:
            # The cap stops a run at an epoch end; this bounds a hung one.
            code = subprocess.call(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                timeout=max_seconds + 900,
            )
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.perf_counter() - start
    if code:
        print(f"[fail] {cell['name']} ({code}) after {seconds:.0f}s; see train.log")
        return False
    print(f"[done] {cell['name']} in {seconds:.0f}s", flush=True)
    return True


def collect(cells, settings) -> dict[str, dict]:
    """metrics.json of every cell that wrote one, by name."""
    results = {}
    for cell in cells:
        path = Path(settings.workdir) / cell["name"] / "metrics.json"
        if path.exists():
            results[cell["name"]] = json.loads(path.read_text())
    return results


# ---------------------------------------------------------------- verdicts


def verdict(ok: bool | None) -> str:
    return {True: "met", False: "not met", None: "n/a"}[ok]


def copy_rows(cells, results):
    """One row per (task, T): the largest N of each method, the ratios and
    the target's verdict (DNI reaches at least twice BPTT's N)."""
    rows = []
    keys = sorted(
        {(c["family"], c["truncation"]) for c in cells if c["family"] in COPY_TASKS},
        key=lambda k: (COPY_TASKS.index(k[0]), k[1]),
    )
    for task, t in keys:
        n = {}
        for method in TIME_METHODS:
            m = results.get(f"{task}_T{t}_{method}")
            n[method] = m["largest_n"] if m and m.get("status") == "finished" else None
        bptt, dni, aux = n["bptt"], n["dni"], n["dni_aux"]
        ok = None
        if bptt is not None and dni is not None:
            ok = dni > 0 and dni >= 2 * bptt
        rows.append(
            dict(
                task=task,
                truncation=t,
                n=n,
                ratio=ratio(dni, bptt),
                aux_ratio=ratio(aux, bptt),
                ok=ok,
            )
        )
    return rows


def ratio(a, b):
    if a is None or b is None:
        return None
    if b == 0:
        return float("inf") if a > 0 else None
    return a / b


def value_at(curve, step):
    """The curve's value at `step` (the last point at or before it)."""
    points = [v for s, v in curve if s <= step]
    return points[-1] if points else None


def steps_to(curve, target):
    """The first step whose value is at or below `target`, or None."""
    return next((s for s, v in curve if v is not None and v <= target), None)


def ptb_rows(cells, results, target):
    """One row per T: each method's test BPC at the last step all three
    reached, steps to `target`, and the two PTB targets' verdicts."""
    rows = []
    for t in sorted({c["truncation"] for c in cells if c["family"] == "ptb"}):
        runs = {
            method: results.get(f"ptb_T{t}_{method}")
            for method in TIME_METHODS
            if (results.get(f"ptb_T{t}_{method}") or {}).get("status") == "finished"
        }
        curves = {
            m: r["test_bpc_curve"] for m, r in runs.items() if r["test_bpc_curve"]
        }
        common = min((c[-1][0] for c in curves.values()), default=None)
        bpc = {m: value_at(c, common) for m, c in curves.items()}
        dni_ok = aux_ok = None
        if "bptt" in bpc and "dni" in bpc:
            dni_ok = bpc["dni"] < bpc["bptt"]
        if "dni" in bpc and "dni_aux" in bpc:
            aux_ok = bpc["dni_aux"] <= bpc["dni"]
        rows.append(
            dict(
                truncation=t,
                step=common,
                bpc=bpc,
                final={m: r["final_test_bpc"] for m, r in runs.items()},
                steps={m: r["steps"] for m, r in runs.items()},
                to_target={m: steps_to(c, target) for m, c in curves.items()},
                dni_ok=dni_ok,
                aux_ok=aux_ok,
            )
        )
    return rows


def clocks_row(results):
    """Each method's accuracy, the gap in points and the target's verdict
    (DNI within 2 points of BPTT), and whether the slow network's update
    reads the fast network's backward pass (from `update_dependencies`)."""
    from keras_sg.models.clocked_pair_model import update_dependencies

    acc = {
        m: results[f"clocks_{m}"]
        for m in CLOCK_METHODS
        if (results.get(f"clocks_{m}") or {}).get("status") == "finished"
    }
    gap = None
    if "bptt" in acc and "dni" in acc:
        gap = 100 * (acc["bptt"]["test_accuracy"] - acc["dni"]["test_accuracy"])
    slow_reads = update_dependencies("dni")["slow"]
    waits = any(d in slow_reads for d in ("fast_backward", "fast_loss"))
    return dict(
        runs=acc,
        gap=gap,
        ok=None if gap is None else gap <= 2.0,
        slow_reads=slow_reads,
        no_wait=not waits,
    )


# ----------------------------------------------------------------- report


def fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float):
        return "∞" if value == float("inf") else f"{value:.{digits}f}"
    return str(value)


def figures(cells, results, folder: Path) -> list[str]:
    """Learning curves as PNGs; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    colors = {"bptt": "tab:gray", "dni": "tab:blue", "dni_aux": "tab:orange"}
    styles = ["-", "--", ":", "-."]

    def runs_of(family):
        return [c for c in cells if c["family"] == family and c["name"] in results]

    copy_families = [f for f in COPY_TASKS if runs_of(f)]
    if copy_families:
        fig, axes = plt.subplots(
            1, len(copy_families), figsize=(6 * len(copy_families), 4)
        )
        axes = axes if len(copy_families) > 1 else [axes]
        for ax, family in zip(axes, copy_families, strict=True):
            ts = sorted({c["truncation"] for c in runs_of(family)})
            for c in runs_of(family):
                curve = results[c["name"]].get("n_curve") or []
                if curve:
                    ax.step(
                        *zip(*curve, strict=True),
                        where="post",
                        color=colors[c["method"]],
                        linestyle=styles[ts.index(c["truncation"]) % len(styles)],
                        label=f"{NAMES[c['method']]}, T={c['truncation']}",
                    )
            ax.set(title=family, xlabel="training steps", ylabel="largest N solved")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "recurrent_copy.png", dpi=100)
        plt.close(fig)
        written.append("recurrent_copy.png")
    for family, key, ylabel, name in (
        ("ptb", "test_bpc_curve", "test bits per character", "recurrent_ptb.png"),
        ("clocks", "test_accuracy_curve", "test accuracy", "recurrent_clocks.png"),
    ):
        runs = runs_of(family)
        if not runs:
            continue
        ts = sorted({c["truncation"] or 0 for c in runs})
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in runs:
            curve = [p for p in results[c["name"]].get(key) or [] if p[1] is not None]
            if curve:
                label = NAMES[c["method"]]
                if c["truncation"]:
                    label += f", T={c['truncation']}"
                ax.plot(
                    *zip(*curve, strict=True),
                    color=colors[c["method"]],
                    linestyle=styles[ts.index(c["truncation"] or 0) % len(styles)],
                    label=label,
                )
        ax.set(xlabel="training steps", ylabel=ylabel)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written


def report(cells, results, settings, sessions, pictures) -> str:
    """The markdown between the markers."""
    out = [
        BEGIN,
        "",
        f"_Written by `scripts/reproduce_recurrent.py` from {len(results)} of "
        f"{len(cells)} runs under `{shown(settings.workdir)}` "
        f"({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC); "
        "regenerate it with `--report_only`, do not edit it by hand._",
        "",
    ]
    missing = [c["name"] for c in cells if c["name"] not in results]
    copies = copy_rows(cells, results)
    if copies:
        out += [
            "### Copy and Repeat Copy: the largest sequence length N solved",
            "",
            "| task | T | BPTT | DNI | DNI + Aux | DNI / BPTT | DNI + Aux / BPTT "
            "| target: DNI ≥ 2 × BPTT |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in copies:
            n = r["n"]
            out.append(
                f"| {r['task']} | {r['truncation']} | {fmt(n['bptt'])} | "
                f"{fmt(n['dni'])} | {fmt(n['dni_aux'])} | {fmt(r['ratio'])} | "
                f"{fmt(r['aux_ratio'])} | {verdict(r['ok'])} |"
            )
        judged = [r for r in copies if r["ok"] is not None]
        met = [f"{r['task']} T={r['truncation']}" for r in judged if r["ok"]]
        unmet = [f"{r['task']} T={r['truncation']}" for r in judged if not r["ok"]]
        threshold = next(
            (
                results[c["name"]]["curriculum"]["threshold"]
                for c in cells
                if c["name"] in results and "curriculum" in results[c["name"]]
            ),
            None,
        )
        out += [
            "",
            f"N is the largest length whose epoch's mean error fell below "
            f"{fmt(threshold)} bits per character. The target (DNI at least twice "
            f"BPTT's N at the same T) is met at {len(met)} of {len(judged)} "
            "(task, T) pairs with both runs"
            + (f": {', '.join(met)}" if met else "")
            + (f"; not met at {', '.join(unmet)}" if unmet else "")
            + ".",
            "",
        ]
    ptbs = ptb_rows(cells, results, settings.bpc_target)
    if ptbs:
        out += [
            "### Penn Treebank characters: test bits per character",
            "",
            f"| T | step | BPTT | DNI | DNI + Aux | steps to {settings.bpc_target} "
            "(BPTT / DNI / DNI + Aux) | DNI below BPTT | DNI + Aux ≤ DNI |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in ptbs:
            b, s = r["bpc"], r["to_target"]
            reached = " / ".join(fmt(s.get(m)) if m in s else "–" for m in TIME_METHODS)
            out.append(
                f"| {r['truncation']} | {fmt(r['step'])} | {fmt(b.get('bptt'), 3)} | "
                f"{fmt(b.get('dni'), 3)} | {fmt(b.get('dni_aux'), 3)} | {reached} | "
                f"{verdict(r['dni_ok'])} | {verdict(r['aux_ok'])} |"
            )
        text = []
        for r in ptbs:
            if r["dni_ok"] is None and r["aux_ok"] is None:
                text.append(f"at T={r['truncation']} the runs to compare are missing")
                continue
            parts = []
            if r["dni_ok"] is not None:
                parts.append(
                    "DNI is " + ("below" if r["dni_ok"] else "not below") + " BPTT"
                )
            if r["aux_ok"] is not None:
                parts.append(
                    "DNI + Aux is "
                    + ("no worse than" if r["aux_ok"] else "worse than")
                    + " DNI"
                )
            text.append(
                f"at T={r['truncation']} (step {r['step']}) " + " and ".join(parts)
            )
        scored = sorted(
            {
                m["test_characters_scored"]
                for n, m in results.items()
                if n.startswith("ptb_") and m.get("test_characters_scored")
            }
        )
        over = (
            "the first "
            + " or ".join(f"{n:,}" for n in scored)
            + " characters of the test split"
            if scored
            else "the test split"
        )
        out += [
            "",
            "Test bits per character at the last step every run of the row "
            f"reached, over {over} in windows of the training "
            "sequence length, the state carried from one window to the next; "
            "a dash in the steps column: the BPC was not reached "
            f"within the budget. Measured: {'; '.join(text)}.",
            "",
        ]
    clock_cells = [c for c in cells if c["family"] == "clocks"]
    if clock_cells:
        row = clocks_row(results)
        out += [
            "### Clocks: the DNI-joined pair against full BPTT",
            "",
            "| method | test accuracy | first blocks | later steps | steps |",
            "| --- | --- | --- | --- | --- |",
        ]
        for m, r in row["runs"].items():
            out.append(
                f"| {NAMES[m]} | {fmt(r['test_accuracy'], 3)} | "
                f"{fmt(r['test_accuracy_first_blocks'], 3)} | "
                f"{fmt(r['test_accuracy_later'], 3)} | {r['steps']} |"
            )
        gap_text = (
            "the two runs are not both there"
            if row["gap"] is None
            else f"DNI is {fmt(row['gap'])} points below BPTT: the target (within "
            f"2 points) is {verdict(row['ok'])}"
        )
        wait_text = (
            "never waits for the fast network (its update reads "
            f"{', '.join(row['slow_reads'])})"
            if row["no_wait"]
            else f"waits for the fast network (it reads {', '.join(row['slow_reads'])})"
        )
        out += [
            "",
            f"Accuracy over every step; {gap_text}. Under DNI the slow network's "
            f"update {wait_text}, as `update_dependencies('dni')` states and "
            "tests/models/test_clocked_pair.py checks numerically.",
            "",
        ]
    out += [
        "### Budgets and wall times",
        "",
        "| run | status | stopped by | steps / budget | epochs | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in cells:
        m = results.get(c["name"])
        if m is None:
            continue
        out.append(
            f"| {c['name']} | {m['status']} | {m.get('stopped', '–')} | "
            f"{m['steps']} / {m.get('steps_budget', c['steps'])} | "
            f"{m.get('epochs', '–')} | {fmt(m.get('seconds'), 0)} |"
        )
    total = sum(m.get("seconds") or 0.0 for m in results.values())
    # The caps the runs had, from their metrics (a --report_only call's
    # --max_minutes need not be the one they ran with).
    caps = sorted(
        {m["max_seconds"] / 60 for m in results.values() if m.get("max_seconds")}
    )
    capped = " or ".join(f"{c:g}" for c in caps) if caps else "no"
    out += [
        "",
        f"Total training time {total / 60:.1f} min; each run capped at "
        f"{capped} min of wall clock (it stops at the first epoch end past it).",
    ]
    if missing:
        out.append(f"Not run (or not finished): {', '.join(missing)}.")
    if sessions:
        out += [
            "",
            "Machine load (1, 5, 15 min averages) of each training session:",
            "",
        ]
        for s in sessions:
            out.append(
                f"- {s['started']}: {fmt_load(s.get('load_start'))} at the start, "
                f"{fmt_load(s.get('load_end'))} at the end ({s.get('cpus')} CPUs)"
            )
    if pictures:
        out += [""] + [f"![{p[:-4]}](figures/{p})" for p in pictures]
    out += ["", END]
    return "\n".join(out)


def shown(path) -> str:
    """`path` relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def fmt_load(load):
    return "–" if not load else " / ".join(f"{v:.2f}" for v in load)


def write_between_markers(path: Path, block: str):
    """Puts `block` (markers included) in place of the file's marked part;
    creates the file with a title when absent."""
    if not path.exists():
        path.write_text(f"# Cuts in time: recurrent networks\n\n{BEGIN}\n{END}\n")
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(
            f"reproduce_recurrent.py: {path} lacks the markers {BEGIN} ... {END}; "
            "add them where the results go"
        )
    path.write_text(text[:start] + block + text[end + len(END) :])


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cells = grid(FLAGS)
    sessions_path = Path(FLAGS.workdir) / "sessions.json"
    sessions = json.loads(sessions_path.read_text()) if sessions_path.exists() else []
    failed = []
    if not FLAGS.report_only:
        Path(FLAGS.workdir).mkdir(parents=True, exist_ok=True)
        session = {
            "started": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            "cells": [c["name"] for c in cells],
            "cpus": os.cpu_count(),
            "load_start": list(os.getloadavg()),
        }
        failed = [c["name"] for c in cells if not train(c, FLAGS)]
        session["load_end"] = list(os.getloadavg())
        sessions.append(session)
        sessions_path.write_text(json.dumps(sessions, indent=1))
    results = collect(cells, FLAGS)
    pictures = figures(cells, results, Path(FLAGS.figures)) if results else []
    write_between_markers(
        Path(FLAGS.output), report(cells, results, FLAGS, sessions, pictures)
    )
    print(f"wrote {FLAGS.output} ({len(results)} of {len(cells)} runs)")
    if failed:
        raise SystemExit(
            f"reproduce_recurrent.py: {len(failed)} cells did not finish: "
            f"{', '.join(failed)}; see their train.log"
        )


if __name__ == "__main__":
    app.run(main)
