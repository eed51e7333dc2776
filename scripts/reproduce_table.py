r"""Runs the DNI paper's MNIST grid and writes docs/results.md beside its Table 1.

    python scripts/reproduce_table.py --fcn_epochs=20 --cnn_epochs=2 \
        --learning_rate=3e-4 --workdir=workdirs/table

Each cell is one `scripts/train.py` run (configs/mnist_fcn.py and
configs/mnist_cnn.py) in its own workdir under --workdir; a cell whose
metrics.json exists is not run again, and an interrupted cell resumes from its
checkpoint, so rerunning the command finishes an interrupted grid.
`--report_only` rewrites the report from the workdirs without training.
"""

import csv
import json
import os
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
flags.DEFINE_integer("fcn_epochs", 20, "Epochs of each FCN run (235 steps each).")
flags.DEFINE_integer("cnn_epochs", 2, "Epochs of each CNN run.")
flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate of every run.")
flags.DEFINE_integer("cnn_filters", 32, "Filters of the CNN's convolutions.")
flags.DEFINE_integer("cnn_synth_filters", 32, "Filters of the DNI conv synthesizer.")
flags.DEFINE_list("fcn_depths", ["3", "4", "5", "6"], "FCN depths.")
flags.DEFINE_list("cnn_depths", ["3", "4"], "CNN depths.")
flags.DEFINE_list("methods", ["no_bprop", "backprop", "dni", "cdni"], "Methods.")
flags.DEFINE_integer("seed", 0, "Seed of every run.")
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
LABELS = {"no_bprop": "No Bprop", "backprop": "Bprop", "dni": "DNI", "cdni": "cDNI"}


def cells():
    for depth in FLAGS.fcn_depths:
        for method in FLAGS.methods:
            yield "fcn", int(depth), method
    for depth in FLAGS.cnn_depths:
        for method in FLAGS.methods:
            yield "cnn", int(depth), method


def run_dir(family, depth, method) -> Path:
    return Path(FLAGS.workdir) / f"{family}{depth}_{method}"


def train(family, depth, method) -> None:
    workdir = run_dir(family, depth, method)
    epochs = FLAGS.fcn_epochs if family == "fcn" else FLAGS.cnn_epochs
    done = workdir / "metrics.json"
    metrics = json.loads(done.read_text()) if done.exists() else {}
    if metrics.get("status", "finished") == "finished" and (
        metrics.get("epochs") == epochs
    ):
        print(f"[skip] {workdir.name}: done", flush=True)
        return
    args = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        f"--config=configs/mnist_{family}.py:{method},depth={depth}",
        f"--workdir={workdir}",
        f"--config.epochs={epochs}",
        f"--config.seed={FLAGS.seed}",
        f"--config.optimizer.learning_rate={FLAGS.learning_rate}",
        f"--config.log.diagnostics_every_steps={FLAGS.diagnostics_every}",
    ]
    if family == "cnn":
        args += [
            f"--config.model.filters={FLAGS.cnn_filters}",
            f"--config.synthesizer.filters={FLAGS.cnn_synth_filters}",
        ]
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"[run] {workdir.name}", flush=True)
    with open(workdir / "train.log", "a") as log:
        code = subprocess.call(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if code:
        raise RuntimeError(
            f"{workdir.name} failed (exit {code}); see {workdir}/train.log"
        )
    print(f"[done] {workdir.name} in {time.perf_counter() - start:.0f}s", flush=True)


def history(workdir: Path) -> list[dict]:
    """history.csv rows, the last row of each epoch (a resumed run repeats some)."""
    rows = {}
    with open(workdir / "history.csv") as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v}
    return [rows[k] for k in sorted(rows)]


def cosines(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """SG-vs-true-gradient cosine per cut, over training steps."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    folder = workdir / "tb" / "diagnostics"
    if not folder.exists():
        return {}
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


def collect():
    results = {}
    for family, depth, method in cells():
        workdir = run_dir(family, depth, method)
        if not (workdir / "metrics.json").exists():
            continue
        metrics = json.loads((workdir / "metrics.json").read_text())
        if metrics.get("status", "finished") != "finished":
            continue  # diverged: train.py said so and exited with status 1
        rows = history(workdir)
        metrics["seconds"] = sum(r.get("epoch_seconds", 0.0) for r in rows)
        metrics["curve"] = [
            (int(r["epoch"]) + 1, 100 * (1 - r["val_accuracy"])) for r in rows
        ]
        metrics["cosine"] = cosines(workdir)
        results[family, depth, method] = metrics
    return results


def figures(results, folder: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    nets = sorted({(f, d) for f, d, _ in results})
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
            if (family, depth, method) in results:
                epochs, errors = zip(
                    *results[family, depth, method]["curve"], strict=True
                )
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
            series = results.get((family, depth, method), {}).get("cosine", {})
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


def cell(results, family, depth, method):
    ours = results.get((family, depth, method))
    paper = PAPER.get((family, depth), {}).get(method)
    left = f"{ours['test_error_percent']:.2f}" if ours else "–"
    right = f"{paper:.1f}" if paper is not None else "n/c"
    return f"{left} / {right}"


def checks(results):
    """The paper's qualitative findings and the issue's targets, on our numbers."""

    def err(family, depth, method):
        r = results.get((family, depth, method))
        return r["test_error_percent"] if r else None

    lines = []
    depths = [int(d) for d in FLAGS.fcn_depths]
    dni = [err("fcn", d, "dni") for d in depths]
    cdni = [err("fcn", d, "cdni") for d in depths]
    bp = [err("fcn", d, "backprop") for d in depths]
    nb = [err("fcn", d, "no_bprop") for d in depths]
    if None not in dni:
        lines.append(
            f"- DNI degrades with depth: FCN-{depths[0]} {dni[0]:.2f}% → "
            f"FCN-{depths[-1]} {dni[-1]:.2f}%: "
            f"**{'holds' if dni[-1] > dni[0] else 'does not hold'}**."
        )
    if None not in cdni:
        spread = max(cdni) - min(cdni)
        lines.append(
            "- cDNI does not degrade with depth: errors "
            f"{', '.join(f'{e:.2f}' for e in cdni)}% "
            f"(FCN-{depths[0]}…{depths[-1]}): "
            f"**{'holds' if cdni[-1] <= cdni[0] + 0.3 else 'does not hold'}** "
            f"(spread {spread:.2f} points)."
        )
    if None not in nb and None not in bp:
        ratio = min(n / b for n, b in zip(nb, bp, strict=True))
        lines.append(
            f"- No Bprop is far worse than Bprop: at least {ratio:.1f}x Bprop's "
            f"error at every depth: **{'holds' if ratio >= 2 else 'does not hold'}**."
        )
    lines.append("")
    lines.append("Targets of the issue (a benchmark):")
    if None not in bp:
        worst = max(bp)
        lines.append(
            f"- Bprop FCN ≤ 2.0%: worst {worst:.2f}%: "
            f"**{'met' if worst <= 2.0 else 'not met'}**."
        )
    if None not in bp and None not in cdni:
        gap = max(c - b for c, b in zip(cdni, bp, strict=True))
        lines.append(
            f"- cDNI within 0.3 points of Bprop (FCN): largest gap {gap:+.2f}: "
            f"**{'met' if gap <= 0.3 else 'not met'}**."
        )
    if None not in dni:
        verdicts = []
        for d, e in zip(depths, dni, strict=True):
            paper = PAPER[("fcn", d)]["dni"]
            verdicts.append(
                f"FCN-{d} {e:.2f}% vs {paper:.1f}%"
                if paper is not None
                else f"FCN-{d} {e:.2f}% vs n/c"
            )
        confirmed = [
            e <= PAPER[("fcn", d)]["dni"]
            for d, e in zip(depths, dni, strict=True)
            if PAPER[("fcn", d)]["dni"] is not None
        ]
        state = (
            ("met" if all(confirmed) else "not met") if confirmed else "not checkable"
        )
        lines.append(
            f"- DNI no worse than the paper's DNI: {'; '.join(verdicts)}: **{state}**."
        )
    c3 = err("cnn", 3, "cdni")
    if c3 is not None:
        lines.append(
            f"- CNN-3 cDNI ≤ 1.0%: {c3:.2f}%: **{'met' if c3 <= 1.0 else 'not met'}**."
        )
    return lines


def report(results):
    nets = [("fcn", int(d)) for d in FLAGS.fcn_depths] + [
        ("cnn", int(d)) for d in FLAGS.cnn_depths
    ]
    fcn_steps = FLAGS.fcn_epochs * 235
    cnn_steps = FLAGS.cnn_epochs * 235
    total = sum(r["seconds"] for r in results.values())
    out = [
        "# Results: the DNI paper's MNIST table, side by side",
        "",
        "Written by `scripts/reproduce_table.py` from the runs it made; every number",
        "below was measured by that script on this project's 2-core CPU machine.",
        "",
        "Command:",
        "",
        "```",
        "python scripts/reproduce_table.py "
        f"--fcn_epochs={FLAGS.fcn_epochs} --cnn_epochs={FLAGS.cnn_epochs} "
        f"--learning_rate={FLAGS.learning_rate} --cnn_filters={FLAGS.cnn_filters} "
        f"--cnn_synth_filters={FLAGS.cnn_synth_filters} --seed={FLAGS.seed}",
        "```",
        "",
        "## Budget",
        "",
        f"- FCN runs: {FLAGS.fcn_epochs} epochs = {fcn_steps:,} steps of batch 256 "
        f"({fcn_steps / 500_000:.1%} of the 500k that the issue cites); CNN runs: "
        f"{FLAGS.cnn_epochs} epochs = {cnn_steps:,} steps "
        f"({cnn_steps / 500_000:.2%}).",
        f"- Adam, learning rate {FLAGS.learning_rate} for every method (the issue "
        "cites the paper's 3e-5 over 500k steps; a short budget needs a larger "
        "rate). Seed "
        f"{FLAGS.seed}, one run per cell.",
        "- FCN: 256 units, batch norm, ReLU. DNI synthesizers: 2 hidden layers of 1024 "
        "with batch norm; cDNI: linear on the activation and the one-hot label.",
        f"- CNN: resolution-preserving 5x5 convolutions of {FLAGS.cnn_filters} filters "
        "(batch norm, ReLU), flattened into a linear output. DNI conv "
        f"synthesizers: 2 hidden 5x5 convolutions of {FLAGS.cnn_synth_filters} filters "
        "(the paper's 128 is too slow for this CPU budget); cDNI: one linear 5x5 conv "
        "over the activation and the label planes.",
        "- Wall time of all runs (training and per-epoch test evaluation): "
        f"{total / 60:.0f} min. Other work (test runs) shared the two cores during"
        " part of the grid, so run times are upper bounds.",
        "",
        "## Test error (%): ours / the paper's",
        "",
        "n/c: a figure of the paper this project could not confirm from a source it "
        f"could read ({PAPER_SOURCE}).",
        "",
        "| network | "
        + " | ".join(LABELS[m] for m in FLAGS.methods)
        + " | run time (s) |",
        "| --- | " + " | ".join("---" for _ in FLAGS.methods) + " | --- |",
    ]
    for family, depth in nets:
        seconds = [
            results[family, depth, m]["seconds"]
            for m in FLAGS.methods
            if (family, depth, m) in results
        ]
        times = " / ".join(f"{s:.0f}" for s in seconds)
        out.append(
            f"| {family.upper()}-{depth} | "
            + " | ".join(cell(results, family, depth, m) for m in FLAGS.methods)
            + f" | {times} |"
        )
    out += [
        "",
        "Run times are in the order of the columns.",
        "",
        "Reading the table: with this short budget cDNI is the best method on every"
        " FCN, ahead of backprop, whose test error stops improving after about five"
        " epochs while cDNI's keeps falling (learning curves below). Plain DNI"
        " degrades sharply with depth. The CNN runs had 470 steps only: too few for"
        " their synthesizers to learn (their cosine with the true gradient stays"
        " near 0), so DNI and cDNI there are close to No Bprop, which is itself"
        " strong because a random convolution feeds a trained linear classifier.",
        "",
        "## The paper's findings, checked on these runs",
        "",
        *checks(results),
        "",
        "## Learning curves",
        "",
        "Test error after each epoch, Bprop vs DNI vs cDNI:",
        "",
        "![learning curves](figures/learning_curves.png)",
        "",
        "## Synthetic vs true gradient",
        "",
        "Cosine similarity between each cut's synthetic gradient and the true",
        "backprop gradient on a fixed batch of 256 test images, measured during",
        "training by `keras_sg.callbacks.SyntheticGradientMonitor`:",
        "",
        "![cosine](figures/sg_cosine.png)",
        "",
    ]
    return "\n".join(out)


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not FLAGS.report_only:
        for family, depth, method in cells():
            train(family, depth, method)
    results = collect()
    figures(results, Path(FLAGS.figures))
    Path(FLAGS.output).write_text(report(results))
    print(f"wrote {FLAGS.output} ({len(results)} runs)")


if __name__ == "__main__":
    app.run(main)
