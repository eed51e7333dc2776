r"""The asynchronous runtime's options, measured beside the other schedules.

scripts/benchmark_pipeline.py measures one setting of AsyncPipelinedModel per
report. This script measures several side by side, on two TensorFlow servers
pinned to one core each (or on logical devices with --logical): steps per call
(`steps_per_execution`), per-stage XLA and the queue capacity, with backprop
model-parallel, GPipe, pipelined DNI and plain Keras in the same run, every
measurement --repeats times in turn. It prints a Markdown table of medians and
the machine's load.

    python scripts/benchmark_async.py --repeats=3 --variants=1,8,8+jit \
        --capacities=2 --cache=workdirs/benchmark_async

A variant is N (steps per call) or N+jit. The model, batch and timed steps are
benchmark_pipeline's (its flags --width, --batch_size, --steps, ...). With
per-stage XLA the profiler does not see the compiled work: those rows give
examples/s only. With --accuracy it measures wall time to
--target_accuracy on MNIST instead (training time, evaluation excluded), for
backprop model-parallel and pipelined and asynchronous cDNI
(--accuracy_schedules; the runtime once per --capacities and per
--max_target_ages), with the staleness
of the runtime's targets and each run's training logs kept in the cache:

    python scripts/benchmark_async.py --accuracy --repeats=3 --variants=8

--optimizers=adam,fused_adam measures every row with Keras's Adam and with
keras_sg.optimizers.FusedAdam, with a "vs" column for each optimizer's
backprop model-parallel. With --accuracy, --vary_seed gives run r its own
seed (r - 1) for the weights and the data order: with one seed every run of
a row needs the same number of epochs, so its median says nothing about how
that number varies.
"""

import itertools
import math
import re
import statistics
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_pipeline as bp  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", ["1", "8", "8+jit"], "Steps per call, N or N+jit.")
flags.DEFINE_list("capacities", ["2"], "Queue capacities of the async rows.")
flags.DEFINE_list(
    "inputs",
    ["client"],
    "Where the async rows' dataset is made: client (this script's process) "
    "and/or stage0 (stage 0's server, where its iterator then lives).",
)
flags.DEFINE_bool("logical", False, "Two logical CPU devices instead of servers.")
flags.DEFINE_bool(
    "accuracy",
    False,
    "Measure wall time to --target_accuracy instead: backprop model-parallel, "
    "and pipelined and asynchronous cDNI (the first of --variants, one row "
    "per --capacities) with benchmark_pipeline's --warmup_steps.",
)

ACCURACY_SCHEDULES = ("backprop_mp", "pipelined_cdni", "async_cdni")
flags.DEFINE_list(
    "accuracy_schedules", list(ACCURACY_SCHEDULES), "The schedules of --accuracy."
)
flags.DEFINE_bool(
    "vary_seed",
    False,
    "With --accuracy: run r initializes the weights and orders the data with "
    "seed r - 1, so that the medians are over seeds (which decide how many "
    "epochs a run needs), not only over the machine's noise.",
)
flags.DEFINE_float(
    "global_clipnorm",
    0.0,
    "With --accuracy: Adam's global_clipnorm for the cDNI rows (0: none).",
)
flags.DEFINE_float(
    "clipvalue",
    0.0,
    "With --accuracy: Adam's clipvalue for the cDNI rows (0: none).",
)

flags.DEFINE_list(
    "max_target_ages",
    ["0"],
    "The runtime's rows once per A, with AsyncPipelinedModel(max_target_age=A) "
    "(each stage waits for the target of the batch A steps back; 2 to "
    "capacity + 1), 0 for none.",
)

flags.DEFINE_list(
    "optimizers",
    ["adam"],
    "Every row once per optimizer: adam (Keras's) and fused_adam "
    "(keras_sg.optimizers.FusedAdam).",
)

OPTIMIZER_LABELS = {"adam": "", "fused_adam": " fused Adam"}

BASELINES = [  # (name, model, synthesizer)
    ("backprop_mp", "backprop", None),
    ("gpipe", "gpipe", None),
    ("pipelined_dni_low_rank", "pipelined", "low_rank"),
]


def parse_variant(text):
    """ "8+jit" -> (8, True)."""
    steps, _, jit = text.partition("+")
    if not steps.isdigit() or int(steps) < 1 or jit not in ("", "jit"):
        raise ValueError(
            f"Each of --variants must be N or N+jit with N >= 1. Received: {text!r}"
        )
    return int(steps), jit == "jit"


def display_name(name):
    """ "x (2 servers, run 1)" -> "x (2 servers)"; "x (run 1)" -> "x"."""
    return re.sub(r" \(run \d+\)$", "", re.sub(r", run \d+\)$", ")", name))


def labelled(name, label):
    """A row's name with `label` before its place in brackets, if any:
    ("x (2 servers)", ", y") -> "x, y (2 servers)"."""
    return re.sub(r"( \(|$)", label + r"\1", name, count=1)


def with_optimizers(specs):
    """Each spec once per --optimizers, the fused ones named so; the key
    "optimizer" only when it is not Adam (cached runs still match)."""
    unknown = set(FLAGS.optimizers) - set(OPTIMIZER_LABELS)
    if unknown or not FLAGS.optimizers:
        raise ValueError(
            f"--optimizers takes {', '.join(OPTIMIZER_LABELS)}. "
            f"Received: {FLAGS.optimizers}"
        )
    out = {}
    for key, spec in specs.items():
        for name in FLAGS.optimizers:
            label = OPTIMIZER_LABELS[name]
            if not label:
                out[key] = spec
                continue
            row = labelled(spec["name"], label)
            out[key + label] = dict(spec, name=row, optimizer=name)
    return out


def target_ages():
    """--max_target_ages, checked: integers, 0 (none) or >= 2."""
    try:
        ages = [int(a) for a in FLAGS.max_target_ages]
    except ValueError:
        ages = None
    if not ages or any(a != 0 and a < 2 for a in ages):
        raise ValueError(
            "--max_target_ages takes integers, each 0 (none) or >= 2. "
            f"Received: {FLAGS.max_target_ages}"
        )
    return ages


def with_age(spec, age):
    """An async row with max_target_age=age, named so; the key only when set
    (cached runs still match)."""
    if not age:
        return spec
    name = labelled(spec["name"], f", max age {age}")
    return dict(spec, name=name, max_target_age=age)


def checked_inputs():
    """--inputs, checked."""
    inputs = FLAGS.inputs
    if set(inputs) - {"client", "stage0"} or not inputs:
        raise ValueError(f"--inputs takes client, stage0. Received: {inputs}")
    if "stage0" in inputs and FLAGS.logical:
        raise ValueError(
            "--inputs=stage0 needs servers: on logical devices every dataset "
            "is made in this process. Received: --logical"
        )
    return inputs


def input_label(made_on):
    """Where a row's data is made, as the suffix of its name and its spec's
    keys: none for the client, so that cached client runs still match."""
    if made_on == "client":
        return "", {}
    return ", input on stage 0", {"input": made_on}


def specs():
    base = dict(bp.base_spec(), devices=2)
    where = "K=2" if FLAGS.logical else "2 servers"
    cluster = {} if FLAGS.logical else {"cluster": True}
    out = {}
    for name, model, synth in BASELINES:
        out[name] = dict(
            base, name=f"{name} ({where})", model=model, synth=synth, **cluster
        )
    inputs = checked_inputs()
    for capacity in map(int, FLAGS.capacities):
        for text in FLAGS.variants:
            steps, jit = parse_variant(text)
            for made_on in inputs:
                label, placed = input_label(made_on)
                spec = bp.async_spec(
                    dict(
                        base,
                        name=f"async_dni_low_rank C={capacity} N={steps}"
                        f"{' xla' if jit else ''} ({where}{label})",
                        model="async",
                        synth="low_rank",
                        **cluster,
                        **placed,
                    ),
                    capacity,
                    steps,
                    jit,
                )
                for age in target_ages():
                    aged = with_age(spec, age)
                    out[aged["name"]] = aged
    out["plain"] = dict(
        base, name="plain Keras, default threading", model="plain", synth=None
    )
    return with_optimizers(out)


def accuracy_specs():
    """Time-to-accuracy runs, as benchmark_pipeline's (its accuracy_worker).

    The cDNI rows train with --warmup_steps, --global_clipnorm and
    --clipvalue. With --decay_steps every row, backprop's too, trains with
    the same warm-up and decay.
    """
    unknown = set(FLAGS.accuracy_schedules) - set(ACCURACY_SCHEDULES)
    if unknown:
        raise ValueError(
            f"--accuracy_schedules takes {', '.join(ACCURACY_SCHEDULES)}. "
            f"Received: {sorted(unknown)}"
        )
    base = dict(
        bp.base_spec(),
        devices=2,
        mnist=True,
        target_accuracy=FLAGS.target_accuracy,
        max_epochs=FLAGS.max_epochs,
        max_loss_growth=FLAGS.max_loss_growth,
        **({"rollbacks": FLAGS.rollbacks} if FLAGS.rollbacks else {}),
        **({} if FLAGS.logical else {"cluster": True}),
    )

    def options(pairs):
        """The set flags among (spec key, label) pairs, and the name's suffix."""
        chosen = {key: getattr(FLAGS, key) for key, _ in pairs if getattr(FLAGS, key)}
        suffix = "".join(
            f", {label} {getattr(FLAGS, key):g}"
            for key, label in pairs
            if key in chosen
        )
        return chosen, suffix

    schedule, suffix = options([("warmup_steps", "warm-up"), ("decay_steps", "decay")])
    clipping, clip_suffix = options(
        [("global_clipnorm", "clip"), ("clipvalue", "clipvalue")]
    )
    cdni, cdni_suffix = dict(schedule, **clipping), suffix + clip_suffix
    backprop, backprop_suffix = (schedule, suffix) if FLAGS.decay_steps else ({}, "")
    steps, jit = parse_variant(FLAGS.variants[0])
    capacities = [int(c) for c in FLAGS.capacities]
    inputs = checked_inputs()
    # One row of the runtime per capacity, input and target age, side by
    # side with the others.
    runtimes = {}
    ages = target_ages()
    for capacity, made_on, age in itertools.product(capacities, inputs, ages):
        label, placed = input_label(made_on)
        key = "async_cdni" if len(capacities) == 1 else f"async_cdni C={capacity}"
        key += " stage0" if placed else ""
        key += f" age {age}" if len(ages) > 1 else ""
        runtimes[key] = with_age(
            bp.async_spec(
                dict(
                    base,
                    name=f"async_cdni C={capacity} N={steps}{' xla' if jit else ''}"
                    + cdni_suffix
                    + label,
                    model="async",
                    synth="linear",
                    cdni=True,
                    **cdni,
                    **placed,
                ),
                capacity,
                steps,
                jit,
            ),
            age,
        )
    every = {
        "backprop_mp": dict(
            base,
            name="backprop_mp" + backprop_suffix,
            model="backprop",
            synth=None,
            **backprop,
        ),
        "pipelined_cdni": dict(
            base,
            name="pipelined_cdni" + cdni_suffix,
            model="pipelined",
            synth="linear",
            cdni=True,
            **cdni,
        ),
    }
    chosen = {}
    for schedule in FLAGS.accuracy_schedules:
        if schedule == "async_cdni":
            chosen.update(runtimes)
        else:
            chosen[schedule] = every[schedule]
    return with_optimizers(chosen)


def median_seconds(results):
    """The median seconds to accuracy of some runs (the mean of the middle
    two of an even count), a run that did not get there counting as slower
    than any; None when the median is such a run."""
    middle = statistics.median(
        math.inf if r["seconds"] is None else r["seconds"] for r in results
    )
    return None if math.isinf(middle) else middle


def seconds_text(seconds):
    """A median's seconds to accuracy to a tenth, or "not reached" (None)."""
    return "not reached" if seconds is None else f"{seconds:.1f}"


def accuracy_table(runs, load):
    """Per row: the median seconds, each run's seconds, epochs and (for the
    runtime) the mean age of its synthesizer's targets, and the accuracy
    curve of the median run."""
    lines = [
        "| schedule | seconds, median (runs) | vs backprop MP | epochs per run "
        "| mean target age per run (batches) | test accuracy per epoch, "
        "median run |",
        "| --- " * 6 + "|",
    ]
    medians = {key: median_seconds(results) for key, results in runs.items()}
    reference = medians.get("backprop_mp")
    for key, results in runs.items():
        middle = bp.median_run(results, key="seconds")
        seconds = medians[key]
        ratio = (
            f"{seconds / reference:.3f}x"
            if seconds is not None and reference is not None
            else "–"
        )
        each = ", ".join(bp.seconds_cell(r, digits=1) for r in results)
        ages = [r["staleness"][0]["mean_age"] for r in results if "staleness" in r]
        cells = [
            display_name(middle["spec"]["name"]),
            f"{seconds_text(seconds)} ({each})",
            ratio,
            ", ".join(
                str(len(r["curve"])) if r["seconds"] is not None else "–"
                for r in results
            ),
            ", ".join("–" if a is None else f"{a:.2f}" for a in ages) or "–",
            ", ".join(f"{a:.4f}" for _, _, a in middle["curve"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + bp.divergence_section(runs) + ["", bp.load_text(load)]


def throughput_table(runs, load):
    """The examples/s table of `runs` ({row: [result of each run]}): the
    median of each row, against backprop model-parallel's and GPipe's (one
    column per optimizer), and the median run's busy fractions, per-step
    overhead and CPU loads."""
    # One "vs" column per optimizer's backprop model-parallel and GPipe.
    labels = [OPTIMIZER_LABELS[name] for name in FLAGS.optimizers]
    references = [
        (f"vs {base}{label}", bp.median_speed(runs[key + label]))
        for key, base in (("backprop_mp", "backprop MP"), ("gpipe", "GPipe"))
        for label in labels
    ]
    heads = [name for name, _ in references]
    lines = [
        "| schedule | examples/s, median (runs) | "
        + " | ".join(heads)
        + " | busy per device | per-step overhead (ms) | CPU load per server "
        "| client CPU |",
        "| --- " * (6 + len(heads)) + "|",
    ]
    for key, results in runs.items():
        middle = bp.median_run(results)
        speed = bp.median_speed(results)
        jit = middle["spec"].get("jit")
        traced = not key.startswith("plain") and not jit
        # An XLA row's busy fractions count each run of its programs as one
        # op (bp.measure on the servers); its per-step overhead is not read.
        busy = traced or (jit and middle.get("xla_traced"))
        cells = [
            display_name(middle["spec"]["name"]),
            bp.speeds_cell(results),
            *(f"{speed / reference:.2f}x" for _, reference in references),
            ", ".join(f"{b:.0%}" for b in middle["busy"]) if busy else "–",
            f"{middle['per_step_overhead_ms']:.1f}" if traced else "–",
            ", ".join(f"{c:.0%}" for c in middle["cpu"]) if "cpu" in middle else "–",
            f"{middle['client']:.0%} of a core" if "client" in middle else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", bp.load_text(load)]
    return lines


def main(argv):
    del argv
    if FLAGS.accuracy:
        runs = bp.in_turn(accuracy_specs(), FLAGS.repeats, FLAGS.vary_seed)
        print("\n".join(accuracy_table(runs, bp.measured_load(runs))))
        bp.exit_if_diverged(runs)
        return
    runs = bp.in_turn(specs(), FLAGS.repeats)
    print("\n".join(throughput_table(runs, bp.measured_load(runs))))


if __name__ == "__main__":
    app.run(main)
