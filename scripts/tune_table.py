r"""Chooses each method's learning rate for the MNIST table on a validation split.

The table (scripts/reproduce_table.py) reports test error, so its rates must
be chosen without the test set. Each run here is one `scripts/train.py` run
that holds out the last --validation_examples training images
(`config.data.validation_examples`), trains on the rest with the table's
schedule, and is scored on the held-out images. For every family and method,
the rate with the lowest validation error (the mean over the asked nets of
that family) is chosen, and the script prints the `--learning_rates=` flag
that gives reproduce_table.py those rates.

    python scripts/tune_table.py --nets=fcn3,fcn6 --methods=backprop,dni,cdni \
        --rates=1e-4,3e-4,1e-3,3e-3 --epochs=5 --workdir=workdirs/tuning

Runs are `<net>_<method>_lr<rate>` under --workdir; a finished run is not run
again and an interrupted one resumes. `--report_only` rewrites docs/tuning.md
from the workdirs. Methods are the table's (no_bprop, backprop, dni, cdni,
bp_lambda, unlocked).
"""

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
flags.DEFINE_string("workdir", str(ROOT / "workdirs" / "tuning"), "Parent of the runs.")
flags.DEFINE_string("output", str(ROOT / "docs" / "tuning.md"), "Report to write.")
flags.DEFINE_list("nets", ["fcn3"], "Nets, family and depth: fcn3, cnn3, ...")
flags.DEFINE_list("methods", ["backprop", "dni", "cdni"], "Methods to tune.")
flags.DEFINE_list("rates", ["1e-4", "3e-4", "1e-3", "3e-3"], "Adam rates to try.")
flags.DEFINE_integer("epochs", 5, "Epochs of each run.")
flags.DEFINE_integer("validation_examples", 10000, "Training images held out.")
flags.DEFINE_integer("seed", 0, "Seed of every run.")
flags.DEFINE_enum("schedule", "paper", ["paper", "constant"], "As in the table.")
flags.DEFINE_list("only", [], "Run only the runs whose names start so.")
flags.DEFINE_multi_string(
    "override",
    [],
    "Config override passed to every run, as reproduce_table.py would pass it: "
    "--override=model.filters=32.",
)
flags.DEFINE_bool("report_only", False, "Only collect the workdirs into the report.")

FAMILIES = ("fcn", "cnn")


def parse_net(net: str) -> tuple[str, int]:
    """`"fcn3"` as `("fcn", 3)`."""
    family, depth = net[:3], net[3:]
    if family not in FAMILIES or not depth.isdigit():
        raise ValueError(
            f"--nets takes a family ({', '.join(FAMILIES)}) followed by a depth, "
            f"such as fcn3. Received: {net!r}"
        )
    return family, int(depth)


def runs(settings) -> list[dict]:
    """Every run the settings ask for, as dicts of what names it."""
    out = []
    for net in settings.nets:
        family, depth = parse_net(net)
        for method in settings.methods:
            for rate in settings.rates:
                name = f"{family}{depth}_{method}_lr{float(rate):g}"
                if settings.only and not any(name.startswith(p) for p in settings.only):
                    continue
                out.append(
                    dict(
                        name=name,
                        family=family,
                        depth=depth,
                        method=method,
                        rate=float(rate),
                    )
                )
    return out


def train(run: dict, settings) -> bool:
    """Runs `run` unless it finished; False if train.py failed."""
    workdir = Path(settings.workdir) / run["name"]
    done = workdir / "metrics.json"
    if done.exists():
        metrics = json.loads(done.read_text())
        if metrics.get("epochs") == settings.epochs and metrics.get("status") in (
            "finished",
            "diverged",
        ):
            print(f"[skip] {run['name']}: {metrics['status']}", flush=True)
            return metrics["status"] == "finished"
    args = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        f"--config=configs/mnist_{run['family']}.py:{run['method']},"
        f"depth={run['depth']}",
        f"--workdir={workdir}",
        f"--config.epochs={settings.epochs}",
        f"--config.seed={settings.seed}",
        f"--config.optimizer.learning_rate={run['rate']}",
        f"--config.optimizer.schedule={settings.schedule}",
        f"--config.data.validation_examples={settings.validation_examples}",
        "--config.log.diagnostics_every_steps=0",
        *(f"--config.{item}" for item in settings.override),
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[run] {run['name']}", flush=True)
    start = time.perf_counter()
    with open(workdir / "train.log", "a") as log:
        code = subprocess.call(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - start
    state = f"exit {code}" if code else "done"
    print(f"[{state}] {run['name']} in {seconds:.0f}s", flush=True)
    return code == 0


def collect(all_runs, settings) -> dict[str, dict]:
    """The validation error of every finished run (None if it diverged)."""
    found = {}
    for run in all_runs:
        path = Path(settings.workdir) / run["name"] / "metrics.json"
        if not path.exists():
            continue
        metrics = json.loads(path.read_text())
        if metrics.get("status") == "diverged":
            found[run["name"]] = None
            continue
        if metrics.get("status") != "finished":
            continue
        if metrics.get("evaluated_on") != "validation":
            raise ValueError(
                f"{path} was scored on its {metrics.get('evaluated_on', 'test')!r} "
                "split: tuning reads validation runs only. Received: "
                f"evaluated_on={metrics.get('evaluated_on')!r}"
            )
        found[run["name"]] = metrics["validation_error_percent"]
    return found


def choose(all_runs, errors) -> dict[tuple[str, str], float]:
    """Per (family, method), the rate of lowest mean validation error over the
    family's nets; a rate counts only if every net has a finished, finite run
    at it (a diverged run rules its rate out)."""
    table = {}
    for run in all_runs:
        key = (run["family"], run["method"])
        table.setdefault(key, {}).setdefault(run["rate"], []).append(
            errors.get(run["name"], "missing")
        )
    chosen = {}
    for key, by_rate in table.items():
        scores = {
            rate: statistics.fmean(values)
            for rate, values in by_rate.items()
            if all(isinstance(v, float) for v in values)
        }
        if scores:
            chosen[key] = min(scores, key=lambda rate: (scores[rate], rate))
    return chosen


def flag_value(chosen) -> str:
    return ",".join(
        f"{family}_{method}:{rate:g}"
        for (family, method), rate in sorted(chosen.items())
    )


def report(all_runs, errors, chosen, settings, load) -> str:
    nets = list(dict.fromkeys(f"{r['family']}{r['depth']}" for r in all_runs))
    rates = sorted({r["rate"] for r in all_runs})
    out = [
        "# Tuning: each method's learning rate, on a validation split",
        "",
        "Written by `scripts/tune_table.py`; every number below was measured by",
        "its runs on this project's 2-core CPU machine. The test set is not read:",
        f"each run trains on the first {60000 - settings.validation_examples:,} "
        f"MNIST training images and is scored on the last "
        f"{settings.validation_examples:,}.",
        "",
        "Command:",
        "",
        "```",
        "python scripts/tune_table.py "
        f"--nets={','.join(settings.nets)} --methods={','.join(settings.methods)} "
        f"--rates={','.join(settings.rates)} --epochs={settings.epochs} "
        f"--validation_examples={settings.validation_examples} "
        f"--seed={settings.seed} --schedule={settings.schedule}"
        + "".join(f" --override={item}" for item in settings.override),
        "```",
        "",
        f"Budget: {settings.epochs} epochs per run, Adam, schedule "
        f"{settings.schedule!r}, seed {settings.seed}, one run per cell. "
        f"Load average (1 min) when this report was written: {load:.2f}.",
        "",
        "## Validation error (%)",
        "",
        "| net | method | " + " | ".join(f"{r:g}" for r in rates) + " |",
        "| --- | --- | " + " | ".join("---" for _ in rates) + " |",
    ]
    for net in nets:
        for method in settings.methods:
            cells = []
            for rate in rates:
                name = f"{net}_{method}_lr{rate:g}"
                if name not in errors:
                    cells.append("–")
                elif errors[name] is None:
                    cells.append("diverged")
                else:
                    cells.append(f"{errors[name]:.2f}")
            out.append(f"| {net.upper()} | {method} | " + " | ".join(cells) + " |")
    out += ["", "## Chosen", ""]
    if chosen:
        for (family, method), rate in sorted(chosen.items()):
            over = ", ".join(n.upper() for n in nets if n.startswith(family))
            tried = sorted(r["rate"] for r in all_runs if r["method"] == method)
            edge = ""
            if len(set(tried)) > 1 and rate in (tried[0], tried[-1]):
                side = "lowest" if rate == tried[0] else "highest"
                edge = (
                    f"; the {side} rate tried, so a better one may lie beyond "
                    "the tried range"
                )
            out.append(
                f"- {family.upper()} {method}: {rate:g} (lowest mean validation "
                f"error over {over}{edge})"
            )
        out += [
            "",
            "For scripts/reproduce_table.py:",
            "",
            "```",
            f"--learning_rates={flag_value(chosen)}",
            "```",
        ]
    else:
        out.append("No method has a finished run at every net yet.")
    return "\n".join(out) + "\n"


def main(argv):
    del argv
    all_runs = runs(FLAGS)
    if not all_runs:
        raise app.UsageError("no run matches --nets, --methods, --rates and --only")
    failed = []
    if not FLAGS.report_only:
        failed = [r["name"] for r in all_runs if not train(r, FLAGS)]
    errors = collect(all_runs, FLAGS)
    chosen = choose(all_runs, errors)
    text = report(all_runs, errors, chosen, FLAGS, os.getloadavg()[0])
    Path(FLAGS.output).write_text(text)
    print(f"wrote {FLAGS.output}")
    if chosen:
        print(f"--learning_rates={flag_value(chosen)}")
    if failed:
        sys.exit(f"runs failed: {', '.join(failed)} (see their train.log)")


if __name__ == "__main__":
    app.run(main)
