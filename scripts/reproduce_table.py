r"""Runs the DNI paper's MNIST grid and writes docs/results.md beside its Table 1.

    python scripts/reproduce_table.py --fcn_epochs=10 --cnn_epochs=2 \
        --learning_rate=3e-4 --seeds=0,1,2 --seeded_depths=3,6 \
        --workdir=workdirs/table

Each cell is one `scripts/train.py` run (configs/mnist_fcn.py and
configs/mnist_cnn.py) in its own workdir under --workdir, named
`<net>_<method>_s<seed>` (`fcn3_dni_s1`) or, for the rows beyond the paper's
table, `extra_<net>_<method>_s<seed>` (`extra_fcn4_dni_p0.2_s0`,
`extra_fcn6_bp_lambda0.25_s0`). FCN depths in --seeded_depths run every seed
of --seeds; every other cell runs the first seed only. A cell whose
metrics.json says it finished its epochs is not run again, and an interrupted
cell resumes from its checkpoint, so rerunning the command finishes an
interrupted grid. `--only=fcn,extra` runs only the cells whose names start so
(and `--skip_cnn` leaves the CNN cells out); `--report_only` rewrites the
report from the workdirs without training.

Every run follows the paper's schedule shape: the learning rate divided by 10
after 60% and after 80% of its steps (`--schedule=constant` to turn it off).

Run the FCN part first, then the rest (finished cells are skipped):

    python scripts/reproduce_table.py --fcn_epochs=10 --skip_cnn --only=fcn,extra
    python scripts/reproduce_table.py --fcn_epochs=10
"""

import csv
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", str(ROOT / "workdirs" / "table"), "Parent of the runs.")
flags.DEFINE_string("output", str(ROOT / "docs" / "results.md"), "Report to write.")
flags.DEFINE_string("figures", str(ROOT / "docs" / "figures"), "Folder of the PNGs.")
flags.DEFINE_integer("fcn_epochs", 10, "Epochs of each FCN run (235 steps each).")
flags.DEFINE_integer("cnn_epochs", 2, "Epochs of each CNN run.")
flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate of every run.")
flags.DEFINE_list(
    "learning_rates",
    [],
    "Per-method Adam rates that override --learning_rate, as key:rate with key "
    "a method (backprop, dni, cdni, no_bprop, bp_lambda, unlocked), a family "
    "(fcn, cnn) or both (cnn_cdni); the most specific key wins. Stochastic "
    "rows take their method's rate. scripts/tune_table.py prints such a list, "
    "chosen on a validation split.",
)
flags.DEFINE_enum(
    "schedule",
    "paper",
    ["paper", "constant"],
    "paper: the rate divided by 10 at 60% and 80% of each run's steps.",
)
flags.DEFINE_integer("cnn_filters", 32, "Filters of the CNN's convolutions.")
flags.DEFINE_integer("cnn_synth_filters", 32, "Filters of the DNI conv synthesizer.")
flags.DEFINE_list("fcn_depths", ["3", "4", "5", "6"], "FCN depths.")
flags.DEFINE_list("cnn_depths", ["3", "4"], "CNN depths.")
flags.DEFINE_list("methods", ["no_bprop", "backprop", "dni", "cdni"], "Methods.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the seeded cells.")
flags.DEFINE_list(
    "seeded_depths", ["3", "6"], "FCN depths whose cells run every seed of --seeds."
)
flags.DEFINE_list(
    "bp_lambdas", ["0.25", "0.5", "0.75"], "BP(lambda) values of the FCN-6 sweep."
)
flags.DEFINE_bool(
    "bp_lambda_endpoints",
    False,
    "Also run BP(lambda) at 0 and 1 (tested equal to DNI and backprop to 1e-5, "
    "so by default the sweep's ends are the DNI and backprop cells).",
)
flags.DEFINE_bool("skip_cnn", False, "Leave the CNN cells out.")
flags.DEFINE_bool("skip_extras", False, "Leave the rows beyond the paper's out.")
flags.DEFINE_list("only", [], "Run only the cells whose names start so.")
flags.DEFINE_integer("diagnostics_every", 235, "Steps between SG-vs-true measurements.")
flags.DEFINE_bool("report_only", False, "Only collect the workdirs into the report.")

# Jaderberg et al. 2016 (arXiv:1608.05343), Table 1, MNIST test error in %.
# None marks a cell this project could not confirm from a source it could read.
PAPER = {
    ("fcn", 3): {"no_bprop": None, "backprop": None, "dni": None, "cdni": None},
    ("fcn", 4): {"no_bprop": None, "backprop": None, "dni": None, "cdni": None},
    ("fcn", 5): {"no_bprop": None, "backprop": None, "dni": None, "cdni": None},
    ("fcn", 6): {"no_bprop": None, "backprop": None, "dni": None, "cdni": None},
    ("cnn", 3): {"no_bprop": None, "backprop": None, "dni": None, "cdni": None},
    ("cnn", 4): {"no_bprop": None, "backprop": None, "dni": None, "cdni": None},
}
PAPER_SOURCE = (
    "no stored copy of the paper's text that this project could search showed "
    "Table 1, so every cell of the paper's side is n/c"
)
LABELS = {
    "no_bprop": "No Bprop",
    "backprop": "Bprop",
    "dni": "DNI",
    "cdni": "cDNI",
    "bp_lambda": "BP(λ)",
    "unlocked": "Unlocked + cDNI",
}
SG_METHODS = ("dni", "cdni", "bp_lambda", "unlocked")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid.

    `row` names the cell without its seed: the runs of one row differ only by
    seed, and the report gives their mean and standard deviation.
    """

    family: str
    depth: int
    method: str
    seed: int
    row: str
    options: tuple[str, ...] = ()  # config variant tokens, "bp_lambda=0.25"
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.row}_s{self.seed}"

    @property
    def variant(self) -> str:
        return ",".join([self.method, f"depth={self.depth}", *self.options])


def extra_rows(settings) -> list[Cell]:
    """The rows beyond the paper's table (issue 10, item 5), seed omitted."""
    seed = int(settings.seeds[0])
    rows = [
        Cell(
            "fcn",
            4,
            "unlocked",
            seed,
            "extra_fcn4_unlocked",
            (),
            "Complete unlock (synthetic inputs from x + cDNI)",
        ),
        Cell(
            "fcn",
            4,
            "dni",
            seed,
            "extra_fcn4_dni_p0.2",
            ("update_probability=0.2",),
            "Stochastic updates, DNI, p = 0.2",
        ),
        Cell(
            "fcn",
            4,
            "cdni",
            seed,
            "extra_fcn4_cdni_p0.05",
            ("update_probability=0.05",),
            "Stochastic updates, cDNI, p = 0.05",
        ),
    ]
    lambdas = [float(v) for v in settings.bp_lambdas]
    if settings.bp_lambda_endpoints:
        lambdas = sorted({0.0, 1.0, *lambdas})
    for lam in lambdas:
        rows.append(
            Cell(
                "fcn",
                6,
                "bp_lambda",
                seed,
                f"extra_fcn6_bp_lambda{lam:g}",
                (f"bp_lambda={lam:g}",),
                f"BP(λ), λ = {lam:g}",
            )
        )
    return rows


def grid(settings) -> list[Cell]:
    """Every cell the settings ask for: the first seed of every row first, so
    that an interrupted grid has every row once before it has any twice."""
    seeds = [int(s) for s in settings.seeds]
    seeded = {int(d) for d in settings.seeded_depths}
    cells = []
    for depth in settings.fcn_depths:
        for method in settings.methods:
            depth = int(depth)
            for seed in seeds if depth in seeded else seeds[:1]:
                cells.append(Cell("fcn", depth, method, seed, f"fcn{depth}_{method}"))
    if not settings.skip_cnn:
        for depth in settings.cnn_depths:
            for method in settings.methods:
                cells.append(
                    Cell("cnn", int(depth), method, seeds[0], f"cnn{depth}_{method}")
                )
    if not settings.skip_extras:
        cells += extra_rows(settings)
    if settings.only:
        cells = [c for c in cells if any(c.name.startswith(p) for p in settings.only)]
    order = {seed: k for k, seed in enumerate(seeds)}
    return sorted(cells, key=lambda c: order.get(c.seed, len(order)))


def parse_rates(items) -> dict[str, float]:
    """`["dni:3e-4", "cnn:1e-3"]` as `{"dni": 3e-4, "cnn": 1e-3}`."""
    keys = set(LABELS) | {"fcn", "cnn"}
    keys |= {f"{f}_{m}" for f in ("fcn", "cnn") for m in LABELS}
    rates = {}
    for item in items:
        key, _, value = item.partition(":")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if key not in keys or not rate > 0:
            raise ValueError(
                "--learning_rates takes key:rate items, key a method, a family "
                "(fcn, cnn) or family_method, rate a positive number. "
                f"Received: {item!r}"
            )
        rates[key] = rate
    return rates


def learning_rate(cell: Cell, settings) -> float:
    """The cell's rate: --learning_rates' most specific key, else --learning_rate."""
    rates = parse_rates(settings.learning_rates)
    for key in (f"{cell.family}_{cell.method}", cell.method, cell.family):
        if key in rates:
            return rates[key]
    return settings.learning_rate


def run_dir(cell: Cell, settings) -> Path:
    return Path(settings.workdir) / cell.name


def epochs_of(cell: Cell, settings) -> int:
    return settings.fcn_epochs if cell.family == "fcn" else settings.cnn_epochs


def train(cell: Cell, settings) -> bool:
    """Runs the cell unless it finished (or diverged) with these epochs.

    Returns:
        False if train.py failed (its train.log says why), else True.
    """
    workdir = run_dir(cell, settings)
    epochs = epochs_of(cell, settings)
    done = workdir / "metrics.json"
    metrics = json.loads(done.read_text()) if done.exists() else {}
    rate = learning_rate(cell, settings)
    config = workdir / "config.json"
    if config.exists():
        recorded = json.loads(config.read_text())["optimizer"]["learning_rate"]
        if recorded != rate:
            raise ValueError(
                f"{workdir} holds a run at learning rate {recorded}, and this grid "
                f"asks {rate} for {cell.name}: use another --workdir, or remove "
                "the run. Received: "
                f"learning_rate={rate}"
            )
    if metrics.get("epochs") == epochs and metrics.get("status") in (
        "finished",
        "diverged",  # it would diverge again, from the same checkpoint
    ):
        print(f"[skip] {workdir.name}: {metrics['status']}", flush=True)
        return metrics["status"] == "finished"
    args = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        f"--config=configs/mnist_{cell.family}.py:{cell.variant}",
        f"--workdir={workdir}",
        f"--config.epochs={epochs}",
        f"--config.seed={cell.seed}",
        f"--config.optimizer.learning_rate={rate}",
        f"--config.optimizer.schedule={settings.schedule}",
        f"--config.log.diagnostics_every_steps={settings.diagnostics_every}",
    ]
    if cell.family == "cnn":
        args += [
            f"--config.model.filters={settings.cnn_filters}",
            f"--config.synthesizer.filters={settings.cnn_synth_filters}",
        ]
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"[run] {workdir.name}", flush=True)
    with open(workdir / "train.log", "a") as log:
        code = subprocess.call(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - start
    if code:
        print(
            f"[fail] {workdir.name} (exit {code}) after {seconds:.0f}s; see "
            f"{workdir}/train.log",
            flush=True,
        )
        return False
    print(f"[done] {workdir.name} in {seconds:.0f}s", flush=True)
    return True


def history(workdir: Path) -> list[dict]:
    """history.csv rows, the last row of each epoch (a resumed run repeats some)."""
    rows = {}
    with open(workdir / "history.csv") as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v}
    return [rows[k] for k in sorted(rows)]


def cosines(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """SG-vs-true-gradient cosine per cut, over training steps."""
    folder = workdir / "tb" / "diagnostics"
    if not folder.exists():
        return {}
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    out = {}
    for tag in events.Tags()["tensors"]:
        if tag.endswith("/cosine"):
            cut = tag.split("/")[1]
            out[cut] = [
                (e.step, float(tf.make_ndarray(e.tensor_proto)))
                for e in events.Tensors(tag)
            ]
    return out


def collect(cells, settings) -> dict[str, dict]:
    """metrics.json of every finished cell, by cell name, with its run time
    (the sum of its epochs' own timings), learning curve and cosine series."""
    results = {}
    for cell in cells:
        workdir = run_dir(cell, settings)
        if not (workdir / "metrics.json").exists():
            continue
        metrics = json.loads((workdir / "metrics.json").read_text())
        if metrics.get("status") != "finished":
            continue  # diverged: train.py said so and exited with status 1
        if metrics.get("evaluated_on", "test") != "test":
            raise ValueError(
                f"{workdir} was evaluated on its {metrics['evaluated_on']} split, "
                "not the test split: a tuning run does not belong in the table. "
                f"Received: evaluated_on={metrics['evaluated_on']!r}"
            )
        rows = history(workdir) if (workdir / "history.csv").exists() else []
        metrics["seconds"] = sum(r.get("epoch_seconds", 0.0) for r in rows)
        metrics["curve"] = [
            (int(r["epoch"]) + 1, 100 * (1 - r["val_accuracy"])) for r in rows
        ]
        metrics["cosine"] = cosines(workdir)
        # A run copied in from an earlier grid with the same settings says
        # so in carried_over.txt (where from); its clock is another grid's.
        carried = workdir / "carried_over.txt"
        if carried.exists():
            metrics["carried_over"] = carried.read_text().strip()
        config = workdir / "config.json"
        metrics["config"] = json.loads(config.read_text()) if config.exists() else {}
        # When the run's last session ended (metrics.json is written last)
        # and began (its own session_seconds before).
        metrics["ended_at"] = (workdir / "metrics.json").stat().st_mtime
        if "session_seconds" in metrics:
            metrics["began_at"] = metrics["ended_at"] - metrics["session_seconds"]
        results[cell.name] = metrics
    return results


@dataclasses.dataclass
class Row:
    """The finished runs of one row: mean and sample std over seeds."""

    cell: Cell  # the row's first cell
    runs: list[dict]
    wanted: int  # how many seeds the grid asks for

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def errors(self) -> list[float]:
        return [r["test_error_percent"] for r in self.runs]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.errors) if self.runs else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1 in the denominator); None for n < 2."""
        return statistics.stdev(self.errors) if self.n >= 2 else None

    @property
    def cosines(self) -> list[float] | None:
        """Each cut's final cosine, averaged over the seeds."""
        series = [
            r["final_cut_cosines"] for r in self.runs if r.get("final_cut_cosines")
        ]
        if not series:
            return None
        return [statistics.fmean(c) for c in zip(*series, strict=True)]

    @property
    def min_cosine(self) -> float | None:
        """The lowest final cosine of any cut in any seed."""
        values = [c for r in self.runs for c in r.get("final_cut_cosines") or []]
        return min(values) if values else None

    @property
    def seconds(self) -> float:
        return sum(r["seconds"] for r in self.runs)


def span_hours(runs) -> float | None:
    """Hours from the first run's start to the last one's end, from the runs'
    own clocks (None unless every run recorded its session time). Runs that
    overlapped count once; a resumed run counts from its last session."""
    runs = [r for r in runs if "carried_over" not in r]
    if not runs or any("began_at" not in r for r in runs):
        return None
    return (max(r["ended_at"] for r in runs) - min(r["began_at"] for r in runs)) / 3600


def group(cells, results) -> dict[str, Row]:
    """The rows of the grid, by row name, each with its finished runs."""
    rows = {}
    for cell in cells:
        row = rows.setdefault(cell.row, Row(cell, [], 0))
        row.wanted += 1
        if cell.name in results:
            row.runs.append(results[cell.name])
    return rows


def fmt(row: Row | None, digits: int = 2) -> str:
    """`mean ± std (n=k)`; `–` for a row without a finished run."""
    if row is None or not row.runs:
        return "–"
    text = f"{row.mean:.{digits}f}"
    if row.std is not None:
        text += f" ± {row.std:.{digits}f}"
    return f"{text} (n={row.n})"


def figures(rows: dict[str, Row], folder: Path):
    """Learning curves and cosine series of each net's first seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    main = {
        (r.cell.family, r.cell.depth, r.cell.method): r.runs[0]
        for name, r in rows.items()
        if r.runs and not name.startswith("extra")
    }
    nets = sorted({(f, d) for f, d, _ in main})
    if not nets:
        return
    colors = {
        "no_bprop": "grey",
        "backprop": "black",
        "dni": "tab:red",
        "cdni": "tab:blue",
    }

    fig, axes = plt.subplots(
        1, len(nets), figsize=(3.2 * len(nets), 3.2), squeeze=False
    )
    for ax, (family, depth) in zip(axes[0], nets, strict=True):
        for method in ("backprop", "dni", "cdni"):
            run = main.get((family, depth, method))
            if run and run["curve"]:
                epochs, errors = zip(*run["curve"], strict=True)
                ax.plot(epochs, errors, label=LABELS[method], color=colors[method])
        ax.set_title(f"{family.upper()}-{depth}")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MNIST test error (%)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(folder / "learning_curves.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(
        2, len(nets), figsize=(3.2 * len(nets), 5.6), squeeze=False
    )
    for col, (family, depth) in enumerate(nets):
        for row, method in enumerate(("dni", "cdni")):
            ax = axes[row][col]
            series = main.get((family, depth, method), {}).get("cosine", {})
            for cut in sorted(series):
                steps, values = zip(*series[cut], strict=True)
                ax.plot(steps, values, label=cut)
            ax.set_title(f"{family.upper()}-{depth} {LABELS[method]}")
            ax.set_ylim(-0.2, 1.0)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("cos(synthetic, true)")
            if row == 1:
                ax.set_xlabel("step")
            if series:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "sg_cosine.png", dpi=110)
    plt.close(fig)


def verdict(ok: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "**not checkable**"}[ok]


def sweep(rows: dict[str, Row], settings) -> list[tuple[float, str, Row | None]]:
    """The BP(lambda) sweep on FCN-6 DNI, lambda ascending: (lambda, source,
    row). Lambda 0 and 1 are the DNI and backprop cells unless the sweep ran
    them itself (BPLambdaModel is tested equal to both to 1e-5)."""
    points = {
        0.0: ("DNI cell", rows.get("fcn6_dni")),
        1.0: ("Bprop cell", rows.get("fcn6_backprop")),
    }
    for name, row in rows.items():
        if name.startswith("extra_fcn6_bp_lambda") and row.runs:
            lam = float(name.removeprefix("extra_fcn6_bp_lambda"))
            points[lam] = ("BP(λ) run", row)
        elif name.startswith("extra_fcn6_bp_lambda"):
            lam = float(name.removeprefix("extra_fcn6_bp_lambda"))
            points.setdefault(lam, ("BP(λ) run", row))
    return [(lam, *points[lam]) for lam in sorted(points)]


def sweep_order(points) -> tuple[bool | None, list[str]]:
    """Whether the sweep's mean errors fall (weakly) as lambda grows from DNI
    to backprop, and the pairs that break the order. None if a point is
    missing."""
    values = [(lam, row.mean if row and row.runs else None) for lam, _, row in points]
    if len(values) < 3 or any(v is None for _, v in values):
        return None, []
    breaks = [
        f"λ = {b:g} ({eb:.2f}%) is worse than λ = {a:g} ({ea:.2f}%)"
        for (a, ea), (b, eb) in zip(values, values[1:], strict=False)
        if eb > ea
    ]
    return not breaks, breaks


def targets(rows: dict[str, Row], settings) -> list[tuple[str, bool | None, str]]:
    """Each target of issue 10: (target, met / not met / None, the numbers)."""

    def row(name):
        r = rows.get(name)
        return r if r and r.runs else None

    out = []
    depths = [int(d) for d in settings.fcn_depths]
    missing = "not measured"
    cnn_missing = "not run (--skip_cnn)" if settings.skip_cnn else missing

    def every_depth(what, values, ok, fmt, prefix=""):
        """A target over every FCN depth: not met as soon as one measured
        depth misses it; met once every depth is measured and meets it."""
        have = {d: v for d, v in values.items() if v is not None}
        lacking = [f"FCN-{d}" for d, v in values.items() if v is None]
        if any(not ok(v) for v in have.values()):
            verdict_ = False
        else:
            verdict_ = None if lacking or not have else True
        numbers = prefix + ", ".join(f"FCN-{d} {fmt(v)}" for d, v in have.items())
        if lacking:
            numbers += f"; not measured: {', '.join(lacking)}"
        out.append((what, verdict_, numbers))

    def mean(name):
        r = row(name)
        return r.mean if r else None

    every_depth(
        "Backprop FCN-3…6 ≤ 2.0% (mean over seeds)",
        {d: mean(f"fcn{d}_backprop") for d in depths},
        lambda v: v <= 2.0,
        lambda v: f"{v:.2f}%",
    )
    gaps = {
        d: None
        if mean(f"fcn{d}_cdni") is None or mean(f"fcn{d}_backprop") is None
        else mean(f"fcn{d}_cdni") - mean(f"fcn{d}_backprop")
        for d in depths
    }
    every_depth(
        "cDNI within 0.2 points of backprop at every FCN depth",
        gaps,
        lambda v: v <= 0.2,
        lambda v: f"{v:+.2f}",
    )
    d3, d6 = row("fcn3_dni"), row("fcn6_dni")
    if d3 and d6:
        ratio = d6.mean / d3.mean
        out.append(
            (
                "DNI: FCN-6 error ≤ 2.5× FCN-3's",
                ratio <= 2.5,
                f"{d6.mean:.2f}% / {d3.mean:.2f}% = {ratio:.2f}×",
            )
        )
    else:
        out.append(("DNI: FCN-6 error ≤ 2.5× FCN-3's", None, "not measured"))
    every_depth(
        "DNI: every cut's final cosine > 0.1",
        {
            d: row(f"fcn{d}_dni").min_cosine if row(f"fcn{d}_dni") else None
            for d in depths
        },
        lambda v: v > 0.1,
        lambda v: f"{v:.3f}",
        prefix="lowest cut, any seed: ",
    )
    for depth, bound in ((3, 1.0), (4, 0.9)):
        r = row(f"cnn{depth}_cdni")
        out.append(
            (
                f"CNN-{depth} cDNI ≤ {bound:.1f}%",
                None if r is None else r.mean <= bound,
                cnn_missing if r is None else f"{r.mean:.2f}%",
            )
        )
    out.append(
        (
            "CNN: the upper-bound cosine ≥ 0.9 at every cut",
            None,
            "measured by the conv-synthesizer study, not by these runs",
        )
    )
    r = row("extra_fcn4_unlocked")
    out.append(
        (
            "Complete unlock (synthetic inputs + cDNI) FCN-4 ≤ 2.5%",
            None if r is None else r.mean <= 2.5,
            missing if r is None else f"{r.mean:.2f}%",
        )
    )
    r = row("extra_fcn4_dni_p0.2")
    out.append(
        (
            "Stochastic updates p = 0.2, FCN-4 DNI ≤ 3.0%",
            None if r is None else r.mean <= 3.0,
            missing if r is None else f"{r.mean:.2f}%",
        )
    )
    points = sweep(rows, settings)
    ordered, breaks = sweep_order(points)
    numbers = ", ".join(
        f"λ = {lam:g}: " + (f"{r.mean:.2f}%" if r and r.runs else "–")
        for lam, _, r in points
    )
    if breaks:
        numbers += "; out of order: " + "; ".join(breaks)
    out.append(("The BP(λ) sweep ordered between DNI and backprop", ordered, numbers))
    finished = sum(r.n for r in rows.values())
    wanted = sum(r.wanted for r in rows.values())
    runs = [run for r in rows.values() for run in r.runs]
    span = span_hours(runs)
    hours = span if span is not None else sum(r.seconds for r in rows.values()) / 3600
    carried = [run for run in runs if "carried_over" in run]
    text = (
        f"{hours:.2f} h "
        + ("from first start to last end" if span is not None else "of run time")
        + f" over {finished} of {wanted} runs"
        + ("" if finished == wanted else " (not all finished)")
    )
    if carried:
        text += (
            f", not counting {len(carried)} runs carried over from an earlier "
            f"grid ({sum(r['seconds'] for r in carried) / 3600:.2f} h of their own "
            "run time): the grid did not run in one go"
        )
    out.append(
        (
            "The whole grid within about 2.5 hours",
            (hours <= 2.5) if finished == wanted and not carried else None,
            text,
        )
    )
    return out


def reading(rows: dict[str, Row], settings) -> list[str]:
    """The text under the table, composed from the numbers."""

    def row(name):
        r = rows.get(name)
        return r if r and r.runs else None

    text = []
    nets = [("fcn", int(d)) for d in settings.fcn_depths]
    if not settings.skip_cnn:
        nets += [("cnn", int(d)) for d in settings.cnn_depths]
    best = []
    for family, depth in nets:
        ranked = sorted(
            (r.mean, LABELS[m])
            for m in settings.methods
            if (r := row(f"{family}{depth}_{m}"))
        )
        if len(ranked) >= 2:
            (e1, m1), (e2, m2) = ranked[:2]
            best.append(
                f"{family.upper()}-{depth}: {m1} {e1:.2f}% (then {m2} {e2:.2f}%)"
            )
    if best:
        text.append(
            "Best method per network (lowest mean test error): " + "; ".join(best) + "."
        )
    winners = {}
    for family, depth in nets:
        ranked = sorted(
            (r.mean, m) for m in settings.methods if (r := row(f"{family}{depth}_{m}"))
        )
        if ranked:
            winners[(family, depth)] = ranked[0][1]
    fcn_winners = {w for (f, _), w in winners.items() if f == "fcn"}
    every = sum(f == "fcn" for f, _ in winners) == len(settings.fcn_depths) > 1
    if len(fcn_winners) == 1 and every:
        text.append(
            f"{LABELS[fcn_winners.pop()]} is the best method at every FCN depth."
        )
    d3, d6 = row("fcn3_dni"), row("fcn6_dni")
    if d3 and d6:
        ratio = d6.mean / d3.mean
        grows = "grows" if ratio > 1 else "does not grow"
        text.append(
            f"DNI's error {grows} with depth: FCN-3 {d3.mean:.2f}% → FCN-6 "
            f"{d6.mean:.2f}%, {ratio:.2f}× ("
            + ("within" if ratio <= 2.5 else "beyond")
            + " the target of 2.5×)."
        )
    depths = [int(d) for d in settings.fcn_depths]
    gaps = {
        d: row(f"fcn{d}_cdni").mean - row(f"fcn{d}_backprop").mean
        for d in depths
        if row(f"fcn{d}_cdni") and row(f"fcn{d}_backprop")
    }
    if gaps:
        worst = max(gaps, key=gaps.get)
        text.append(
            "cDNI against backprop: "
            + ", ".join(f"FCN-{d} {g:+.2f}" for d, g in gaps.items())
            + " points; "
            + (
                f"the widest gap is FCN-{worst}'s, beyond 0.2 points."
                if gaps[worst] > 0.2
                else "within 0.2 points at every depth."
                if len(gaps) == len(depths)
                else "within 0.2 points at the depths measured so far."
            )
        )
    ratios = {
        d: row(f"fcn{d}_no_bprop").mean / row(f"fcn{d}_backprop").mean
        for d in depths
        if row(f"fcn{d}_no_bprop") and row(f"fcn{d}_backprop")
    }
    if ratios:
        text.append(
            f"No Bprop (only the top layer learns) has {min(ratios.values()):.1f}× "
            f"to {max(ratios.values()):.1f}× backprop's error."
        )
    lowest = {}
    for d in depths:
        r = row(f"fcn{d}_dni")
        if r and r.cosines:
            k = min(range(len(r.cosines)), key=r.cosines.__getitem__)
            lowest[d] = (k + 1, r.cosines[k], r.cosines[-1])
    if lowest:
        below = [d for d, (_, c, _) in lowest.items() if c <= 0.1]
        text.append(
            "DNI's final cosine (mean over seeds) at its weakest cut: "
            + ", ".join(
                f"FCN-{d} cut {k} {c:.3f} (top cut {top:.3f})"
                for d, (k, c, top) in lowest.items()
            )
            + "; "
            + (
                f"at or below 0.1 on FCN-{', FCN-'.join(map(str, below))}."
                if below
                else "above 0.1 everywhere."
            )
        )
    c3, c6 = row("fcn3_cdni"), row("fcn6_cdni")
    if c3 and c6:
        text.append(
            f"cDNI goes from {c3.mean:.2f}% (FCN-3) to {c6.mean:.2f}% (FCN-6), "
            f"{c6.mean / c3.mean:.2f}×."
        )
    spread = [r for r in rows.values() if r.std is not None]
    if spread:
        widest = max(spread, key=lambda r: r.std)
        text.append(
            f"Across seeds the widest spread is {widest.cell.row}'s "
            f"(std {widest.std:.2f} points over {widest.n} seeds)."
        )
    points = sweep(rows, settings)
    ordered, breaks = sweep_order(points)
    if ordered is True:
        text.append(
            "The BP(λ) sweep on FCN-6 is ordered: the error falls (weakly) as λ "
            "grows from DNI (λ = 0) to backprop (λ = 1), "
            + ", ".join(f"{r.mean:.2f}%" for _, _, r in points)
            + "."
        )
    elif ordered is False:
        text.append(
            "The BP(λ) sweep on FCN-6 is not ordered between DNI and backprop: "
            + "; ".join(breaks)
            + "."
        )
    for name, what, bound in (
        (
            "extra_fcn4_unlocked",
            "The complete unlock (synthetic inputs + cDNI) reaches",
            2.5,
        ),
        ("extra_fcn4_dni_p0.2", "Stochastic DNI updates at p = 0.2 reach", 3.0),
    ):
        r = row(name)
        if r:
            text.append(
                f"{what} {r.mean:.2f}% on FCN-4, "
                + ("meeting" if r.mean <= bound else "missing")
                + f" its target of {bound:.1f}%."
            )
    r = row("extra_fcn4_cdni_p0.05")
    if r:
        text.append(
            f"Stochastic cDNI updates at p = 0.05 reach {r.mean:.2f}% on FCN-4."
        )
    return text


def rates_text(rows: dict[str, "Row"], settings) -> str:
    """The learning rates the finished runs recorded, by rate, with their rows."""
    by_rate = {}
    for name, row in rows.items():
        for run in row.runs:
            rate = run.get("config", {}).get("optimizer", {}).get("learning_rate")
            by_rate.setdefault(rate, set()).add(name)
    if not by_rate:
        return f"{settings.learning_rate} (no run finished)"
    if len(by_rate) == 1:
        return f"{next(iter(by_rate))} for every run"
    return "; ".join(
        f"{rate} for {', '.join(sorted(names))}"
        for rate, names in sorted(by_rate.items(), key=lambda kv: str(kv[0]))
    ) + (
        " (chosen per method on a validation split: docs/tuning.md)"
        if settings.learning_rates
        else ""
    )


def carried_text(cells, results) -> str:
    """The runs copied in from an earlier grid, and from where."""
    by_source = {}
    for c in cells:
        if c.name in results and "carried_over" in results[c.name]:
            by_source.setdefault(results[c.name]["carried_over"], []).append(c.name)
    if not by_source:
        return ""
    return (
        " Runs carried over from an earlier grid with the same settings (left "
        "out of the first-start-to-last-end span): "
        + "; ".join(
            f"from {source}: {', '.join(names)}" for source, names in by_source.items()
        )
        + "."
    )


def report(cells, results, settings) -> str:
    rows = group(cells, results)
    nets = [("fcn", int(d)) for d in settings.fcn_depths]
    if not settings.skip_cnn:
        nets += [("cnn", int(d)) for d in settings.cnn_depths]
    runs = list(results.values())
    total = sum(r["seconds"] for r in runs)
    steps = {}
    for cell in cells:
        if cell.name in results:
            steps.setdefault(cell.family, set()).add(results[cell.name]["steps"])
    schedules = {
        json.dumps(r.get("learning_rate_schedule", {}).get("kind")) for r in runs
    }
    seeded_rows = [n for n, r in rows.items() if r.wanted >= 3]
    cnn_model = sorted(
        {
            ", ".join(
                f"{k}={v}"
                for k, v in results[c.name].get("config", {}).get("model", {}).items()
                if k not in ("kind", "depth")
            )
            for c in cells
            if c.family == "cnn" and c.name in results
        }
    )
    diverged = []
    for cell in cells:
        path = run_dir(cell, settings) / "metrics.json"
        if path.exists() and json.loads(path.read_text()).get("status") == "diverged":
            diverged.append(cell.name)
    missing = [r.cell.row for r in rows.values() if r.n < r.wanted]

    def steps_text(family):
        found = sorted(steps.get(family, ()))
        return ", ".join(f"{s:,}" for s in found) if found else "none finished"

    command = (
        "python scripts/reproduce_table.py "
        f"--fcn_epochs={settings.fcn_epochs} --cnn_epochs={settings.cnn_epochs} "
        f"--learning_rate={settings.learning_rate} "
        + (
            f"--learning_rates={','.join(settings.learning_rates)} "
            if settings.learning_rates
            else ""
        )
        + f"--schedule={settings.schedule} "
        f"--cnn_filters={settings.cnn_filters} "
        f"--cnn_synth_filters={settings.cnn_synth_filters} "
        f"--seeds={','.join(settings.seeds)} "
        f"--seeded_depths={','.join(settings.seeded_depths)} "
        f"--bp_lambdas={','.join(settings.bp_lambdas)}"
        + (" --bp_lambda_endpoints" if settings.bp_lambda_endpoints else "")
        + (" --skip_cnn" if settings.skip_cnn else "")
        + (f" --only={','.join(settings.only)}" if settings.only else "")
    )
    out = [
        "# Results: the DNI paper's MNIST table, side by side",
        "",
        "Written by `scripts/reproduce_table.py --report_only` from the runs'",
        "workdirs; every number below was measured by those runs on this",
        "project's 2-core CPU machine.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "## Budget",
        "",
        f"- FCN runs: {settings.fcn_epochs} epochs, steps per run: "
        f"{steps_text('fcn')} (batch 256; the issue cites 500k for the paper); CNN "
        f"runs: {settings.cnn_epochs} epochs, steps per run: {steps_text('cnn')}.",
        "- Adam, learning rate "
        + rates_text(rows, settings)
        + ", "
        + (
            "divided by 10 after 60% and again after 80% of each run's steps "
            "(the paper's schedule shape, as the issue cites it)"
            if settings.schedule == "paper"
            else "constant"
        )
        + f"; schedules recorded by the runs: {', '.join(sorted(schedules)) or '–'}.",
        f"- Seeds {', '.join(settings.seeds)} for FCN-"
        + ", FCN-".join(settings.seeded_depths)
        + f"; seed {settings.seeds[0]} only for every other cell. Each cell: mean"
        " ± sample standard deviation (n − 1) over its finished seeds, n shown.",
        "- Cells with 3 seeds or more: "
        + (", ".join(seeded_rows) if seeded_rows else "none")
        + "; every other cell, the extra rows included, has fewer (one seed). "
        "Cells with fewer finished runs than asked: "
        + (", ".join(missing) if missing else "none")
        + ". Runs that diverged (left out): "
        + (", ".join(diverged) if diverged else "none")
        + ".",
        "- FCN: 256 units, batch norm, ReLU. DNI synthesizers: 2 hidden layers of 1024 "
        "with batch norm; cDNI: linear on the activation and the one-hot label.",
        f"- CNN: 5x5 'same' convolutions of {settings.cnn_filters} "
        "filters (batch norm, ReLU). DNI conv synthesizers: 2 hidden 5x5 "
        f"convolutions of {settings.cnn_synth_filters} filters; cDNI: one linear "
        "5x5 conv over the activation and the label planes."
        + (
            f" CNN model fields as the runs recorded them: {'; '.join(cnn_model)}."
            if cnn_model
            else ""
        ),
        f"- Wall time, the sum of the {len(runs)} finished runs' own epoch timings "
        f"(training and per-epoch test evaluation): {total / 60:.1f} min "
        f"({total / 3600:.2f} h)"
        + (
            f"; from the first run's start to the last one's end, by the runs' "
            f"own clocks: {span_hours(runs):.2f} h"
            if span_hours(runs) is not None
            else ""
        )
        + ". Other work shared the two cores, so these are upper bounds."
        + carried_text(cells, results),
        "",
        "## Test error (%): ours / the paper's",
        "",
        "n/c: a figure of the paper this project could not confirm from a source it "
        f"could read ({PAPER_SOURCE}).",
        "",
        "| network | "
        + " | ".join(LABELS[m] for m in settings.methods)
        + " | run time (s) |",
        "| --- | " + " | ".join("---" for _ in settings.methods) + " | --- |",
    ]
    for family, depth in nets:
        cols, times = [], []
        for m in settings.methods:
            r = rows.get(f"{family}{depth}_{m}")
            paper = PAPER.get((family, depth), {}).get(m)
            right = f"{paper:.1f}" if paper is not None else "n/c"
            cols.append(f"{fmt(r)} / {right}")
            times.append(f"{r.seconds:.0f}" if r and r.runs else "–")
        out.append(
            f"| {family.upper()}-{depth} | "
            + " | ".join(cols)
            + f" | {' / '.join(times)} |"
        )
    out += [
        "",
        "Run times are in the order of the columns, summed over a cell's seeds.",
        "",
        "## Reading the table",
        "",
        *(reading(rows, settings) or ["No finished runs to read."]),
        "",
        "## Each cut's cosine at the end of training",
        "",
        "Cosine between the synthetic and the true gradient at each cut (lowest "
        "first), on a fixed batch of test images, after the last step; the mean "
        "over the cell's seeds.",
        "",
        "| cell | n | final cosine per cut |",
        "| --- | --- | --- |",
    ]
    for name, r in rows.items():
        if r.cell.method in SG_METHODS and r.runs and r.cosines is not None:
            out.append(
                f"| {name} | {r.n} | " + ", ".join(f"{c:.3f}" for c in r.cosines) + " |"
            )
    out += [
        "",
        "## Beyond the paper's table",
        "",
        "| row | network | test error (%) | final cosine per cut | run time (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        if not name.startswith("extra") or r.cell.method == "bp_lambda":
            continue
        cos = ", ".join(f"{c:.3f}" for c in r.cosines) if r.cosines else "–"
        out.append(
            f"| {r.cell.label} | {r.cell.family.upper()}-{r.cell.depth} | {fmt(r)} "
            f"| {cos} | {f'{r.seconds:.0f}' if r.runs else '–'} |"
        )
    drift = [
        (name, r.runs[0]["final_input_relative_error"])
        for name, r in rows.items()
        if r.runs and r.runs[0].get("final_input_relative_error")
    ]
    for name, values in drift:
        out += [
            "",
            f"{name}: relative squared error ‖Î_k(x) − h_k‖² / ‖h_k‖² of each "
            "synthetic input against the composed network's activation at the end "
            "(first seed): " + ", ".join(f"{v:.3f}" for v in values) + ".",
        ]
    out += [
        "",
        "## BP(λ) sweep, FCN-6 DNI",
        "",
        "λ = 0 is DNI's update and λ = 1 backprop's (`BPLambdaModel` is tested "
        "equal to both to 1e-5), so unless the sweep ran them itself its ends are "
        "the DNI and Bprop cells of the table.",
        "",
        "| λ | source | test error (%) | final cosine per cut |",
        "| --- | --- | --- | --- |",
    ]
    for lam, source, r in sweep(rows, settings):
        cos = ", ".join(f"{c:.3f}" for c in r.cosines) if r and r.cosines else "–"
        out.append(f"| {lam:g} | {source} | {fmt(r)} | {cos} |")
    out += [
        "",
        "## The targets of issue 10 (benchmarks)",
        "",
        "| target | verdict | numbers |",
        "| --- | --- | --- |",
    ]
    for what, ok, numbers in targets(rows, settings):
        out.append(f"| {what} | {verdict(ok)} | {numbers} |")
    out += [
        "",
        "## Learning curves",
        "",
        "Test error after each epoch, Bprop vs DNI vs cDNI (first seed):",
        "",
        "![learning curves](figures/learning_curves.png)",
        "",
        "## Synthetic vs true gradient during training",
        "",
        "Cosine similarity between each cut's synthetic gradient and the true",
        "backprop gradient on a fixed batch of 256 test images, measured during",
        "training by `keras_sg.callbacks.SyntheticGradientMonitor` (first seed):",
        "",
        "![cosine](figures/sg_cosine.png)",
        "",
    ]
    return "\n".join(out)


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cells = grid(FLAGS)
    failed = []
    if not FLAGS.report_only:
        # A cell that fails does not stop the grid; the report leaves it out.
        failed = [cell.name for cell in cells if not train(cell, FLAGS)]
    results = collect(cells, FLAGS)
    figures(group(cells, results), Path(FLAGS.figures))
    Path(FLAGS.output).write_text(report(cells, results, FLAGS))
    print(f"wrote {FLAGS.output} ({len(results)} runs)")
    if failed:
        raise SystemExit(
            f"reproduce_table.py: {len(failed)} cells did not finish: "
            f"{', '.join(failed)}; see their train.log"
        )


if __name__ == "__main__":
    app.run(main)
