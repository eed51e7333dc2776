r"""Extrapolates pipeline schedules to scale: when does pipelined DNI pay off?

Simulates one training step of a 96-block transformer split evenly over K =
8, 16, 32, 64 devices under naive model parallelism, GPipe (Huang et al.
2019, arXiv:1811.06965), 1F1B (PipeDream-Flush, Narayanan et al. 2019/2021),
Megatron-LM's interleaved 1F1B (Narayanan et al. 2021, arXiv:2104.04473),
Zero Bubble ZB-H1 (Qi et al. 2023, arXiv:2401.10241), pipelined DNI
(Jaderberg et al. 2016, arXiv:1608.05343), DNI one batch per step, the fully
unlocked step (synthetic inputs, Section 3.4 of the same paper) and
asynchronous DNI stages linked by queues, with the schedule simulator
`keras_sg.schedules` (pure Python, no TensorFlow in the simulation). It also
writes the simulator's errors against the schedules measured in
docs/benchmarks.md (`keras_sg.schedules.validation`) and extrapolates the
time to 97.5% MNIST accuracy from the measured epochs to accuracy.

Per block a forward costs 1 and a backward 2 time units; a device's stage
holds 96 / K blocks. DNI adds a synthesizer (forward and backward) at every
stage but the last, costing `--sg_overhead` times the stage's compute; the
fully unlocked step adds an input synthesizer at every stage but the first,
costing `--input_overhead` times the stage's compute. It
prints, for each M and K, the step time (the time to process M micro-batches;
for pipelined DNI in steady state), the idle fraction and the throughput
relative to GPipe, then the break-even SG overhead below which pipelined DNI
beats the best flushed schedule, and writes them, with timeline figures of a
K = 4, M = 8 pipeline, as a Markdown report. Run from the repository root:

    .venv/bin/python scripts/simulate_pipeline.py \
        --output_md=docs/simulation.md --figures=docs/figures
"""

import dataclasses
import os

from absl import app, flags

# Importing keras_sg loads TensorFlow (the simulator itself does not use it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_sg.schedules import draw_timeline, simulate, validation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("blocks", 96, "Transformer blocks in the model.")
flags.DEFINE_float("block_forward", 1.0, "Forward cost of one block.")
flags.DEFINE_float("block_backward", 2.0, "Backward cost of one block.")
flags.DEFINE_list("devices", ["8", "16", "32", "64"], "Pipeline sizes K.")
flags.DEFINE_list(
    "microbatches", ["8", "32"], "Micro-batches per step M, one table each."
)
flags.DEFINE_float(
    "sg_overhead",
    0.1,
    "Synthesizer cost (forward + backward) as a fraction of a stage's compute.",
)
flags.DEFINE_float(
    "input_overhead",
    0.1,
    "Input synthesizer cost (forward + backward) of the fully unlocked step, "
    "as a fraction of a stage's compute.",
)
flags.DEFINE_list(
    "sg_overhead_sweep",
    ["0.05", "0.1", "0.2", "0.4"],
    "SG overheads of the sweep table.",
)
flags.DEFINE_integer("num_chunks", 2, "Model chunks per device v of interleaved 1F1B.")
flags.DEFINE_float(
    "weight_grad_fraction", 0.5, "ZB-H1: the weight gradient's share W / (B + W)."
)
flags.DEFINE_integer("queue_capacity", 1, "Queue capacity C of the async stages.")
flags.DEFINE_list(
    "update_overheads",
    ["0", "0.43"],
    "Optimizer update costs of the time-to-accuracy table, as a fraction of a "
    "stage's compute per micro-batch (0.43: Adam at 30% of a device's work, "
    "as measured in docs/benchmarks.md).",
)
flags.DEFINE_float(
    "epochs_backprop",
    3.4,
    "Epochs to 97.5% of backprop_mp, the mean over ten seeds (docs/async.md, "
    '"Ten seeds again, on this session\'s machine").',
)
flags.DEFINE_float(
    "epochs_dni",
    3.3,
    "Epochs to 97.5% of the asynchronous runtime's cDNI (warm-up 500, "
    "clipvalue 0.01), the mean over the same ten seeds.",
)
flags.DEFINE_float("comm_latency", 0.0, "Latency of each message between devices.")
flags.DEFINE_string("output_md", "docs/simulation.md", "Markdown report to write.")
flags.DEFINE_string(
    "measured_costs",
    "docs/benchmarks.json",
    "Measured costs written by scripts/benchmark_pipeline.py, to validate the "
    "simulator against.",
)
flags.DEFINE_string(
    "logical_costs",
    "docs/logical_costs.json",
    "Measured costs of logical devices with their work on shared cores "
    "(benchmark_pipeline.py --table_only --costs=...), for the shared-cores "
    "section; '' leaves it out.",
)
flags.DEFINE_string("figures", "docs/figures", "Folder of the timeline PNGs.")
flags.DEFINE_integer("figure_devices", 4, "K of the timeline figures.")
flags.DEFINE_integer("figure_microbatches", 8, "M of the timeline figures.")

FLUSHED = ("gpipe", "1f1b", "interleaved_1f1b", "zb_h1")
ORDER = ("naive",) + FLUSHED + ("pipelined_dni", "dni", "fully_unlocked", "async")


def stage_costs(
    blocks: int, num_stages: int, block_forward: float, block_backward: float
) -> tuple[float, float]:
    """Returns the forward and backward cost of one of `num_stages` even stages.

    Args:
        blocks: blocks in the model.
        num_stages: stages the blocks are split into (K, or K * v).
        block_forward: forward cost of a block.
        block_backward: backward cost of a block.

    Returns:
        (forward, backward) of a stage of blocks / num_stages blocks.
    """
    share = blocks / num_stages
    return share * block_forward, share * block_backward


def simulate_all(
    num_devices: int, num_microbatches: int, overhead: float, update: float = 0.0
) -> dict:
    """Simulates every schedule of the scenario for one K and M.

    Args:
        num_devices: pipeline size K.
        num_microbatches: micro-batches per step M.
        overhead: synthesizer cost as a fraction of a stage's compute.
        update: optimizer update cost of a stage, as a fraction of its
            compute for one micro-batch (once per step: per micro-batch for
            the DNI schedules, per M micro-batches for the flushed ones).

    Returns:
        A dict from schedule name to SimulationResult; interleaved 1F1B is
        left out when M is not a multiple of K (Megatron-LM requires it).
    """
    args = (FLAGS.blocks, num_devices, FLAGS.block_forward, FLAGS.block_backward)
    forward, backward = stage_costs(*args)
    common = dict(comm_latency=FLAGS.comm_latency, update=update * (forward + backward))
    results = {
        name: simulate(name, num_devices, num_microbatches, forward, backward, **common)
        for name in ("naive", "gpipe", "1f1b")
    }
    results["zb_h1"] = simulate(
        "zb_h1",
        num_devices,
        num_microbatches,
        forward,
        backward,
        weight_grad_fraction=FLAGS.weight_grad_fraction,
        **common,
    )
    if num_microbatches % num_devices == 0:
        v = FLAGS.num_chunks
        chunk = stage_costs(FLAGS.blocks, num_devices * v, *args[2:])
        results["interleaved_1f1b"] = simulate(
            "interleaved_1f1b",
            num_devices,
            num_microbatches,
            *chunk,
            num_chunks=v,
            comm_latency=FLAGS.comm_latency,
            update=update * sum(chunk),  # per chunk: v of them make a stage's
        )
    results["pipelined_dni"] = dni(num_devices, num_microbatches, overhead, update)
    synth = overhead * (forward + backward)
    results["dni"] = simulate(
        "dni", num_devices, num_microbatches, forward, backward, synth, **common
    )
    results["fully_unlocked"] = simulate(
        "fully_unlocked",
        num_devices,
        num_microbatches,
        forward,
        backward,
        synth,
        input_synth=FLAGS.input_overhead * (forward + backward),
        **common,
    )
    results["async"] = simulate(
        "async",
        num_devices,
        num_microbatches,
        forward,
        backward,
        synth,
        queue_capacity=FLAGS.queue_capacity,
        **common,
    )
    return results


def dni(num_devices: int, num_microbatches: int, overhead: float, update: float = 0.0):
    """Simulates pipelined DNI with synthesizers costing `overhead` of a stage.

    Args:
        num_devices: pipeline size K.
        num_microbatches: steady-state steps (micro-batches) measured M.
        overhead: synthesizer cost as a fraction of a stage's compute.
        update: update cost as a fraction of a stage's compute, every step.

    Returns:
        The SimulationResult of pipelined DNI.
    """
    forward, backward = stage_costs(
        FLAGS.blocks, num_devices, FLAGS.block_forward, FLAGS.block_backward
    )
    return simulate(
        "pipelined_dni",
        num_devices,
        num_microbatches,
        forward,
        backward,
        overhead * (forward + backward),
        comm_latency=FLAGS.comm_latency,
        update=update * (forward + backward),
    )


def best_flushed(results: dict) -> str:
    """Returns the name of the fastest of GPipe, 1F1B and interleaved 1F1B."""
    return min((n for n in FLUSHED if n in results), key=lambda n: results[n].step_time)


def break_even_overhead(
    num_devices: int, num_microbatches: int, target: float, tolerance: float = 1e-9
) -> float | None:
    """Returns the SG overhead at which pipelined DNI takes `target` time.

    Bisects on the simulated DNI step time, which grows with the overhead.

    Args:
        num_devices: pipeline size K.
        num_microbatches: micro-batches M.
        target: the step time to match (that of the best flushed schedule).
        tolerance: absolute tolerance on the overhead.

    Returns:
        The overhead (within `tolerance`) below which DNI is faster, or None
        if it never is.
    """

    def slower(overhead: float) -> bool:
        return dni(num_devices, num_microbatches, overhead).step_time >= target

    if slower(0.0):
        return None
    low, high = 0.0, 1.0
    while not slower(high):
        low, high = high, 2 * high
    while high - low > tolerance:
        middle = (low + high) / 2
        low, high = (low, middle) if slower(middle) else (middle, high)
    return high  # the smallest overhead found at which DNI is no faster


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """Returns a Markdown table with the given header and rows."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def schedule_label(name: str) -> str:
    """Returns a schedule's display name."""
    if name.startswith("inter"):
        return f"interleaved_1f1b (v={FLAGS.num_chunks})"
    if name == "async":
        return f"async (C={FLAGS.queue_capacity})"
    return name


def results_table(num_microbatches: int, all_results: dict) -> str:
    """Returns the per-K, per-schedule table for one M.

    Args:
        num_microbatches: M.
        all_results: K -> schedule -> SimulationResult.

    Returns:
        A Markdown table: step time, idle fraction, throughput vs GPipe.
    """
    rows = []
    for k, results in all_results.items():
        gpipe = results["gpipe"].step_time
        for name in ORDER:
            if name not in results:
                rows.append([str(k), schedule_label(name), "n/a (M % K != 0)", "", ""])
                continue
            r = results[name]
            idle = f"{r.bubble_fraction:.3f}"
            if r.warmup is not None:
                idle += f" (warm-up: {r.warmup.time:g} once)"
            rows.append(
                [
                    str(k),
                    schedule_label(name),
                    f"{r.step_time:.2f}",
                    idle,
                    f"{gpipe / r.step_time:.2f}x",
                ]
            )
    headers = [
        "K",
        "schedule",
        f"time for M={num_microbatches} micro-batches",
        "idle fraction",
        "throughput vs GPipe",
    ]
    return markdown_table(headers, rows)


def sweep_table(num_microbatches: int, devices: list[int], overheads: list[float]):
    """Returns DNI's throughput relative to the best flushed schedule per K, s.

    Args:
        num_microbatches: M.
        devices: the pipeline sizes K.
        overheads: the SG overheads swept.

    Returns:
        A Markdown table, one row per K, one column per overhead.
    """
    rows = []
    for k in devices:
        flushed = simulate_all(k, num_microbatches, 0.0)
        best = flushed[best_flushed(flushed)].step_time
        cells = [
            f"{best / dni(k, num_microbatches, s).step_time:.2f}x" for s in overheads
        ]
        rows.append([str(k), schedule_label(best_flushed(flushed))] + cells)
    headers = ["K", "best flushed"] + [f"s={s:g}" for s in overheads]
    return markdown_table(headers, rows)


def break_even_lines(num_microbatches: int, all_results: dict) -> list[str]:
    """Returns one line per K: the SG overhead below which DNI wins.

    Args:
        num_microbatches: M.
        all_results: K -> schedule -> SimulationResult.

    Returns:
        Lines of text, one per K.
    """
    lines = []
    for k, results in all_results.items():
        name = best_flushed(results)
        best = results[name]
        s = break_even_overhead(k, num_microbatches, best.step_time)
        # With even stages DNI takes M (1 + s) (F + B), so s* = bubble / compute.
        closed = best.bubble_time / (best.step_time - best.bubble_time)
        verdict = (
            "never (the message latency alone makes it slower)"
            if s is None
            else f"while the SG overhead is below {s:.5f} ({100 * s:.1f}% of a "
            f"stage's compute; closed form {closed:.5f})"
        )
        lines.append(
            f"K={k}, M={num_microbatches}: pipelined DNI beats {schedule_label(name)} "
            f"(step time {best.step_time:g}) {verdict}"
        )
    return lines


def write_figures(folder: str) -> list[tuple[str, str]]:
    """Draws the timeline of every schedule for the figure K and M.

    Args:
        folder: the folder of the PNGs, created if missing.

    Returns:
        (schedule, path) per figure.
    """
    os.makedirs(folder, exist_ok=True)
    k, m, v = FLAGS.figure_devices, FLAGS.figure_microbatches, FLAGS.num_chunks
    f, b = stage_costs(FLAGS.blocks, k, FLAGS.block_forward, FLAGS.block_backward)
    common = dict(comm_latency=FLAGS.comm_latency)
    runs = {
        "naive": simulate("naive", k, m, f, b, **common),
        "gpipe": simulate("gpipe", k, m, f, b, **common),
        "1f1b": simulate("1f1b", k, m, f, b, **common),
        "zb_h1": simulate(
            "zb_h1",
            k,
            m,
            f,
            b,
            weight_grad_fraction=FLAGS.weight_grad_fraction,
            **common,
        ),
        "interleaved_1f1b": simulate(
            "interleaved_1f1b", k, m, f / v, b / v, num_chunks=v, **common
        ),
        "pipelined_dni": simulate(
            "pipelined_dni", k, m, f, b, FLAGS.sg_overhead * (f + b), **common
        ),
        "dni": simulate("dni", k, m, f, b, FLAGS.sg_overhead * (f + b), **common),
        "fully_unlocked": simulate(
            "fully_unlocked",
            k,
            m,
            f,
            b,
            FLAGS.sg_overhead * (f + b),
            input_synth=FLAGS.input_overhead * (f + b),
            **common,
        ),
        "async": simulate(
            "async",
            k,
            m,
            f,
            b,
            FLAGS.sg_overhead * (f + b),
            queue_capacity=FLAGS.queue_capacity,
            **common,
        ),
    }
    figures = []
    for name, result in runs.items():
        title = f"{schedule_label(name)}: K={k}, M={m}"
        if name == "pipelined_dni":
            title += f", SG overhead {FLAGS.sg_overhead:g} (dashed: end of warm-up)"
        elif name == "dni":
            title += f", SG overhead {FLAGS.sg_overhead:g}, one batch per step"
        elif name == "zb_h1":
            title += f", W = {FLAGS.weight_grad_fraction:g} of the backward"
        elif name == "async":
            title += (
                f", SG overhead {FLAGS.sg_overhead:g}, queue capacity "
                f"{FLAGS.queue_capacity} (dashed: last device's first batch)"
            )
        elif name == "fully_unlocked":
            title += (
                f", SG overhead {FLAGS.sg_overhead:g}, input synthesizers "
                f"{FLAGS.input_overhead:g}, one batch per step"
            )
        path = os.path.join(folder, f"timeline_{name}_K{k}_M{m}.png")
        figures.append((name, draw_timeline(result, path, title=title)))
    return figures


def per_microbatch(result) -> float:
    """Returns a result's time per micro-batch (per batch for the DNI schedules)."""
    return result.step_time / result.num_microbatches


def zero_bubble_section(devices: list[int], microbatches: list[int]) -> list[str]:
    """Returns the ZB-H1 section: its step against 1F1B's and the paper's bubble."""
    rows = []
    for m in microbatches:
        for k in devices:
            results = simulate_all(k, m, FLAGS.sg_overhead)
            zb, base = results["zb_h1"], results["1f1b"]
            f, b = stage_costs(
                FLAGS.blocks, k, FLAGS.block_forward, FLAGS.block_backward
            )
            w = FLAGS.weight_grad_fraction * b
            closed = (k - 1) * (f + (b - w) - w)
            rows.append(
                [
                    str(m),
                    str(k),
                    f"{base.step_time:.2f}",
                    f"{zb.step_time:.2f}",
                    f"{base.step_time / zb.step_time:.2f}x",
                    f"{zb.bubble_time:.2f}",
                    f"{closed:.2f}" if m >= k else "n/a (M < K)",
                ]
            )
    headers = [
        "M",
        "K",
        "1F1B step",
        "ZB-H1 step",
        "ZB-H1 vs 1F1B",
        "ZB-H1 bubble",
        "(K-1)(F+B-W)",
    ]
    return [markdown_table(headers, rows)]


def validation_section(path: str) -> tuple[list[str], dict]:
    """The simulator against every schedule of a measured-costs file.

    Returns the Markdown table and, per setting, (schedules within 10%,
    schedules, the errors).
    """
    rows, counts = [], {}
    for row, predicted, error in validation.validate_measured_costs(path):
        within = abs(error) <= 0.10
        counts.setdefault(row.setting, []).append((row.name, error))
        rows.append(
            [
                row.setting,
                row.name,
                f"{row.examples_per_s:.0f}",
                f"{row.per_step_overhead:.1f}",
                f"{predicted:.0f} ({error:+.1%})",
                "yes" if within else "no",
            ]
        )
    headers = [
        "setting",
        "schedule",
        "measured examples/s (median)",
        "measured per-step overhead (ms)",
        "simulated examples/s (error)",
        "within 10%",
    ]
    return [markdown_table(headers, rows)], counts


def shared_cores_section(path: str) -> list[str]:
    """The simulator on logical devices, with a core each and on the cores
    they shared (without and with the bound of the core time their ops
    used), against the measured and the traced examples/s."""
    measured = validation.read_measured_costs(path)
    rows = []
    within = {"each": [0, 0], "shared": [0, 0], "bound": [0, 0]}

    def cell(predicted, row):
        measured = (predicted - row.examples_per_s) / row.examples_per_s
        traced = (predicted - row.traced_examples_per_s) / row.traced_examples_per_s
        return f"{predicted:.0f} ({measured:+.0%}, {traced:+.0%})", measured, traced

    for row in measured:
        if row.traced_examples_per_s is None or row.work_costs is None:
            raise ValueError(
                f"{path!r} must hold traced_examples_per_s and work_costs for "
                f"every measurement. Received: {row.name!r} without them"
            )
        unbound = dataclasses.replace(row, core_time=None)
        cells = {
            "each": cell(row.predict(), row),
            "shared": cell(unbound.predict(shared_cores=True), row),
        }
        if row.core_time is not None:
            cells["bound"] = cell(row.predict(shared_cores=True), row)
        for name, (_, *errors) in cells.items():
            within[name][0] += abs(errors[0]) <= 0.10
            within[name][1] += abs(errors[1]) <= 0.10
        slowdown = row.examples_per_s / row.traced_examples_per_s - 1
        rows.append(
            [
                str(row.num_devices),
                row.name,
                f"{row.examples_per_s:.0f}",
                f"{row.traced_examples_per_s:.0f} ({slowdown:+.0%})",
                *(cells[name][0] if name in cells else "–" for name in within),
            ]
        )
    headers = [
        "K",
        "schedule",
        "measured examples/s (median)",
        "its traced steps' examples/s (the profiler's slowdown)",
        "simulated, a core each (error against measured, against traced)",
        f"simulated, the devices sharing cores: {measured[0].cores} (errors)",
        "the same, a step at least the core time over the cores (errors)",
    ]
    n = len(rows)
    bounded = sum(row.core_time is not None for row in measured)
    lines = [
        markdown_table(headers, rows),
        "",
        f"- A core each: {within['each'][0]} of {n} within 10% of the measured "
        f"examples/s, {within['each'][1]} of {n} of the traced steps'.",
        f"- Shared cores: {within['shared'][0]} of {n} within 10% of the "
        f"measured examples/s, {within['shared'][1]} of {n} of the traced steps'.",
    ]
    if bounded:
        lines.append(
            f"- Shared cores and the core-time bound: {within['bound'][0]} of "
            f"{bounded} within 10% of the measured examples/s, "
            f"{within['bound'][1]} of {bounded} of the traced steps'."
        )
    return lines


def time_to_accuracy_section(devices: list[int], microbatches: list[int]) -> list[str]:
    """Returns the time-to-accuracy extrapolation tables, one per update cost."""
    ratio = FLAGS.epochs_dni / FLAGS.epochs_backprop
    text = []
    for update in (float(u) for u in FLAGS.update_overheads):
        rows = []
        for m in microbatches:
            for k in devices:
                results = simulate_all(k, m, FLAGS.sg_overhead, update)
                name = best_flushed(results)
                best = per_microbatch(results[name])
                naive = per_microbatch(results["naive"])
                cells = [str(m), str(k), schedule_label(name)]
                for dni_name in ("pipelined_dni", "async"):
                    t = per_microbatch(results[dni_name])
                    cells += [
                        f"{best / t:.2f}x",
                        f"{ratio * t / best:.2f}",
                        f"{ratio * t / naive:.2f}",
                    ]
                rows.append(cells)
        headers = [
            "M",
            "K",
            "best flushed",
            "pipelined DNI: throughput vs best flushed",
            "time to 97.5% vs best flushed",
            "vs naive",
            f"async (C={FLAGS.queue_capacity}): throughput vs best flushed",
            "time to 97.5% vs best flushed",
            "vs naive",
        ]
        text += [
            f"Update cost {update:g} of a stage's compute per micro-batch "
            "(paid once per step: every micro-batch for the DNI schedules, "
            "once per M micro-batches for the flushed ones):",
            "",
            markdown_table(headers, rows),
            "",
        ]
    return text


def report(sections: list[str], figures: list[tuple[str, str]]) -> str:
    """Returns the Markdown report from its sections and figure paths."""
    base = os.path.dirname(os.path.abspath(FLAGS.output_md))
    text = [
        "# Pipeline schedules at scale: when does pipelined DNI pay off?",
        "",
        "Written by `scripts/simulate_pipeline.py` (see its docstring for the "
        "command) with the simulator `keras_sg.schedules`. Scenario: "
        f"{FLAGS.blocks} transformer blocks split evenly over K devices "
        f"({FLAGS.blocks}/K blocks each, fractional when K does not divide it); "
        f"per block forward {FLAGS.block_forward:g} and backward "
        f"{FLAGS.block_backward:g} time units; message latency "
        f"{FLAGS.comm_latency:g}; interleaved 1F1B with v={FLAGS.num_chunks} "
        "chunks per device; ZB-H1 with the weight gradient W = "
        f"{FLAGS.weight_grad_fraction:g} of each backward; SG overhead "
        f"s={FLAGS.sg_overhead:g}: each DNI "
        "synthesizer (forward + backward) costs s times its stage's compute "
        "(the last stage has none); for the fully unlocked step, each input "
        f"synthesizer costs {FLAGS.input_overhead:g} times its stage's compute "
        "(the first stage has none); asynchronous stages with queues of "
        f"capacity {FLAGS.queue_capacity}. No optimizer update, transfer or "
        "per-step overhead in the first tables (see "
        "[Costs beyond compute](#costs-beyond-compute)).",
        "",
        "How to read it:",
        "",
        "- Step time is the time to process M micro-batches: one flushed step "
        "for naive, GPipe, 1F1B, interleaved 1F1B and ZB-H1; for pipelined DNI, M "
        "steps in steady state (one micro-batch enters per step, and each "
        "device updates its weights every step, so DNI makes M updates where "
        "the others make one). For DNI one batch per step (`dni`, as "
        "`DecoupledModel` trains) and the fully unlocked step "
        "(`fully_unlocked`, as `UnlockedModel` trains: every stage on the "
        "step's batch at once, from its synthetic input), M steps of one "
        "micro-batch each, each step ending on every device before the next "
        "begins; neither has a warm-up. For `async` (asynchronous stages, no "
        "step shared by the devices: the runtime issue 12 asks for), M batches "
        "in steady state, after enough batches to fill the queues. With even "
        "stages the fully unlocked "
        "step takes (1 + s + s_in) times a stage's compute per micro-batch "
        "(s_in: the input synthesizers' overhead), pipelined DNI and async (1 + s): "
        "the fully unlocked step pays for its input synthesizers, and in "
        "return needs no warm-up and trains every stage on the same batch. "
        "`dni` still waits for the forward pass below each stage: K forwards "
        "and one backward per step.",
        "- Idle fraction is the mean over devices of 1 - busy / step time. "
        "Pipelined DNI's warm-up (K - 1 steps, before the last device gets its "
        "first input) is paid once per run and reported apart.",
        "- Interleaved 1F1B needs M to be a multiple of K, as in Megatron-LM.",
        "- With M < K the flushed schedules idle most of the time; large runs "
        "use M well above K, where their bubble, (K - 1) / (v M) of the "
        "compute, shrinks and so does the SG overhead DNI can afford "
        "(break-even s* = that bubble / compute, with even stages).",
        "- Not modelled: memory (GPipe holds M micro-batches of activations, "
        "1F1B and ZB-H1 at most K), "
        "and whether an "
        "input synthesizer can predict a stage's input well enough (a "
        "question for training, not for the schedule). The effect of "
        "synthetic, stale gradients on how many epochs training needs is not "
        "simulated but taken from a measurement in "
        "[Time to accuracy at scale](#time-to-accuracy-at-scale). The break-even "
        "overhead compares time per micro-batch only.",
        "",
    ]
    text += sections
    text += ["## Timelines", ""]
    for name, path in figures:
        rel = os.path.relpath(os.path.abspath(path), base)
        text += [f"![{name}]({rel})", ""]
    return "\n".join(text)


def figure_link(figures: list[tuple[str, str]], name: str) -> str:
    """Returns the Markdown image of one schedule's figure."""
    base = os.path.dirname(os.path.abspath(FLAGS.output_md))
    path = dict(figures)[name]
    return f"![{name}]({os.path.relpath(os.path.abspath(path), base)})"


def main(argv):
    del argv
    devices = [int(k) for k in FLAGS.devices]
    microbatches = [int(x) for x in FLAGS.microbatches]
    overheads = [float(s) for s in FLAGS.sg_overhead_sweep]
    sections = []
    for m in microbatches:
        all_results = {k: simulate_all(k, m, FLAGS.sg_overhead) for k in devices}
        table = results_table(m, all_results)
        sweep = sweep_table(m, devices, overheads)
        lines = break_even_lines(m, all_results)
        print(f"\n== M={m} micro-batches, SG overhead {FLAGS.sg_overhead:g}\n")
        print(table)
        print("\nPipelined DNI throughput relative to the best flushed schedule:\n")
        print(sweep)
        print("\nBreak-even SG overhead:")
        print("\n".join(lines), flush=True)
        sections += [
            f"## M = {m} micro-batches per step",
            "",
            f"SG overhead {FLAGS.sg_overhead:g}.",
            "",
            table,
            "",
            "Pipelined DNI's throughput relative to the best of GPipe, 1F1B, "
            "interleaved 1F1B and ZB-H1, for several SG overheads:",
            "",
            sweep,
            "",
            "Break-even SG overhead: DNI wins while its extra cost S stays below "
            "the idle time it removes.",
            "",
        ]
        sections += [f"- {line}" for line in lines] + [""]
    figures = write_figures(FLAGS.figures)
    zero_bubble = zero_bubble_section(devices, microbatches)
    w = FLAGS.weight_grad_fraction * FLAGS.block_backward
    zb_bubble_per_block = FLAGS.block_forward + (FLAGS.block_backward - w) - w
    print("\n== ZB-H1 against 1F1B\n")
    print("\n".join(zero_bubble))
    sections += [
        "## Zero Bubble (ZB-H1) against 1F1B",
        "",
        "Zero Bubble pipeline parallelism (Qi et al. 2023, arXiv:2401.10241) "
        "splits each backward into B, the gradient with respect to the stage's "
        "input, which the stage below waits for, and W, the gradient with "
        "respect to the weights, which nothing waits for until the update. "
        "ZB-H1 keeps 1F1B's warm-up, so it holds at most K micro-batches of "
        "activations on a device, like 1F1B, and moves W's into the bubbles: "
        "device d delays its W's by d micro-batches and runs its last d at the "
        "end, where 1F1B's cool-down idles. The per-device order is the "
        "authors' hand schedule (`get_hand_schedule` in the Hugging Face space "
        "sail/zero-bubble-pipeline-parallellism); with even stages and M >= K "
        "its bubble is (K - 1)(F + B - W) against 1F1B's (K - 1)(F + B + W), "
        "the paper's formula, a bubble rate of (K - 1) / 3M of the compute when "
        'F = B = W (the authors\' README: "(p-1)/3m", against "(p-1)/m" for '
        '1F1B). `simulate("zb_h1", ..., weight_grad_fraction=w)` takes W = w '
        "times each stage's backward (default 0.5: for a dense layer the two "
        "gradients are two matrix products of the same size). The tests check "
        "the formula, timelines by hand, that ZB-H1 is never slower than 1F1B "
        "at equal costs, and that it holds no more activations. Here W = "
        f"{FLAGS.weight_grad_fraction:g} of the backward, so F + B - W = "
        f"{zb_bubble_per_block:g} per block:",
        "",
    ]
    sections += zero_bubble
    sections += [
        "",
        "ZB-H1 is the fastest flushed schedule in every row of this scenario, "
        "interleaved 1F1B (v=2) included, so the tables above compare DNI with "
        "it. Its gain over 1F1B here (1.14x to 1.49x) is larger than the "
        "authors report on GPUs (up to 30% at similar memory, in the README of "
        "sail-sg/zero-bubble-pipeline-parallelism; issue 12 quotes 23% for "
        "ZB-H1): with F = 1 and B + W = 2 per block and W half the backward, "
        "F + B - W is a third of F + B + W, and at M close to K the bubble is "
        "a large share of 1F1B's step. The simulator has no communication "
        "cost here and no optimizer step, which the paper's measured runs "
        "pay.",
        "",
        f"{figure_link(figures, '1f1b')} {figure_link(figures, 'zb_h1')}",
        "",
    ]
    validation_text, counts = validation_section(FLAGS.measured_costs)
    print("\n== The simulator against docs/benchmarks.json\n")
    print("\n".join(validation_text))
    sections += COSTS_TEXT
    sections += [
        "## The simulator against the measured schedules",
        "",
        "`scripts/benchmark_pipeline.py` writes beside docs/benchmarks.md the "
        "measured costs of every schedule it measured "
        "([benchmarks.json](benchmarks.json)): per device, ms per step of "
        "forward, backward, synthesizers, update, transfers and other work, "
        "from the median run's profiler trace, and the per-step overhead "
        "seen in that trace (the time per step in which no device runs an "
        "op). The simulator's prediction takes those costs and nothing "
        "else: no term is fitted "
        "(`keras_sg.schedules.validation.validate_measured_costs`). A "
        "device's costs are its busy time by kind, the time in which several "
        "of its ops ran at once shared by them "
        "(`keras_sg.profiling.core_shares`), since the simulator's device runs "
        "one thing at a time.",
        "",
    ]
    sections += validation_text
    sections += [""]
    for setting, errors in counts.items():
        within = sum(abs(e) <= 0.10 for _, e in errors)
        outside = ", ".join(f"{n} {e:+.0%}" for n, e in errors if abs(e) > 0.10)
        sections.append(
            f"- {setting}: {within} of {len(errors)} schedules within 10%"
            + (f"; outside: {outside}." if outside else ".")
        )
    sections += [""] + VALIDATION_TEXT + [""]
    if FLAGS.logical_costs:
        shared = shared_cores_section(FLAGS.logical_costs)
        print("\n== Logical devices on shared cores\n")
        print("\n".join(shared))
        sections += SHARED_CORES_INTRO + [""] + shared + [""] + SHARED_CORES_TEXT
        sections += [""]
    tta = time_to_accuracy_section(devices, microbatches)
    print("\n== Time to accuracy\n")
    print("\n".join(tta))
    sections += [
        "## Time to accuracy at scale",
        "",
        "What users pay is the time to reach an accuracy, not throughput. "
        'Measured over ten seeds each (docs/async.md, "Ten seeds again, on '
        "this session's machine\", K = 2 on two servers): backprop "
        f"model-parallel reached 97.5% after {FLAGS.epochs_backprop:g} epochs "
        "on average (3 or 4; Adam 1e-3), the asynchronous runtime's cDNI "
        f"after {FLAGS.epochs_dni:g} (3 or 4; Adam 1e-3 after a warm-up of 500 "
        "steps, with clipvalue 0.01). Time to accuracy relative to a backprop "
        "schedule is then "
        f"({FLAGS.epochs_dni:g}/{FLAGS.epochs_backprop:g}) x (its time per "
        "micro-batch / the backprop schedule's); below 1, DNI gets there "
        "first, and it breaks even at a throughput "
        f"{FLAGS.epochs_dni / FLAGS.epochs_backprop:.2f}x the backprop "
        "schedule's. Backprop was not given the warm-up. Given one, in one "
        "run each with seed 0 (docs/async.md), it reached 97.5% in 2 epochs "
        "with a warm-up of 250 steps (two servers) and in 4 with 500 (one "
        "process): the ratio hangs on backprop's schedule too; at 3.3/2 DNI "
        "would need 1.65x the throughput to break even. Earlier tables used "
        "pipelined cDNI at Adam 3e-4, 4 epochs against backprop's 3 (one run "
        "each).",
        "",
        "Assumptions, none of them measured at scale: the ratio of epochs "
        "carries over from a 2-stage MLP on MNIST to a 96-block model on 8 to "
        "64 devices (with more stages, more synthetic gradients are chained "
        "and staler, so it may well grow); every flushed schedule needs "
        "backprop's epochs (they compute the same gradients; GPipe reached "
        "97.5% in 2 epochs in the same table, which shows the 1-epoch "
        "granularity and the noise of one run per number); and the batch per "
        "update does not matter: in the measurement every schedule updated "
        "once per batch of 256, while here the DNI schedules update once per "
        "micro-batch and the flushed ones once per M micro-batches, a "
        "difference the measurement does not cover. The pipelined DNI and "
        "async columns use the same SG overhead, "
        f"{FLAGS.sg_overhead:g}.",
        "",
    ]
    sections += tta
    sections += [
        "Read with those assumptions: without an update cost, the DNI "
        "schedules reach 97.5% before the best flushed schedule (ZB-H1 in every "
        "row) where their throughput gain passes "
        f"{FLAGS.epochs_dni / FLAGS.epochs_backprop:.2f}x: at M = 8 in every "
        "row, at M = 32 from K = 16 on (at K = 8 they tie). The update "
        "changes this: the DNI schedules update after every micro-batch, the "
        "flushed ones once per M. With the update at 0.43 of a stage's compute "
        "per micro-batch (Adam at 30% of each device's work, measured at batch "
        "256 on a 1024-wide MLP; in a large model, where a micro-batch holds "
        "many tokens, the update is a much smaller share), DNI gets there "
        "first at M = 8 from K = 16 on, at M = 32 only at K = 64. Against "
        "naive model parallelism, the baseline measured on two "
        "servers, DNI gets there first in every row. With even stages and "
        "no per-step costs, async and pipelined DNI run at the same rate (the "
        "slowest stage's); async pays no step shared by the devices, which is "
        "what the servers lose per step to the client (the measured per-step "
        "overhead above), and that is where it should gain in practice.",
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output_md)), exist_ok=True)
    with open(FLAGS.output_md, "w") as f:
        f.write(report(sections, figures))
    print(f"\nWrote {FLAGS.output_md} and {len(figures)} figures in {FLAGS.figures}")


COSTS_TEXT = [
    "## Costs beyond compute",
    "",
    "`simulate` takes four costs besides the stages' compute, all 0 by "
    "default (which gives the tables above), and one ordering:",
    "",
    "- `comm_latency`: the delay of each message between two devices; it "
    "holds no device.",
    "- `transfer`: per cut and per message, the time the receiving device "
    "spends taking a message in (a gRPC receive on TensorFlow servers): busy "
    "time, one number or one per cut.",
    "- `update`: each stage's optimizer update, once per step: for the "
    "flushed schedules after the device's last backward of the step (each "
    "device as soon as its own backwards are done), for pipelined DNI, "
    "`dni`, `fully_unlocked` and `async` after every backward, since every "
    "step updates.",
    "- `update_before_send` (naive, GPipe, 1F1B): each stage's update runs "
    "before the gradient of its last backward is sent down, so the stage "
    "below waits for the update too. Off by default: the update overlaps the "
    "backward of the stages below.",
    "- `per_step_overhead`: a fixed time per training step in which the "
    "devices wait (the client ending one step and starting the next: about "
    "10 ms on the two servers of docs/benchmarks.md). Flushed schedules "
    "pay it once per step of M micro-batches; `dni` and `fully_unlocked` "
    "once per step, every device waiting; pipelined DNI and `async` after "
    "each step of each device.",
    "",
    "The asynchronous schedule `async` is the runtime issue 12 asks for: "
    "every stage runs forward, synthesizer, backward and update per batch at "
    "its own pace, blocks when its output queue (capacity C) is full or its "
    "input queue is empty, and never waits for the synthesizers' targets "
    "(they are stale by design). In steady state it runs at the slowest "
    "stage's F + S + B + U + per-step overhead (+ transfers), whatever C; C "
    "bounds how far a fast stage runs ahead (the activations' staleness and "
    "memory), not the rate. Unlike pipelined DNI as `PipelinedModel` runs "
    "it, nothing joins the devices at every step, so a per-step overhead "
    "paid by each stage's own loop is not the ~10 ms the servers lose per "
    "step to the client, which is a join of all devices.",
    "",
]

# Written from the runs of docs/benchmarks.json; see the closing notes of
# issue 12 for how each was checked.
VALIDATION_TEXT = [
    "What brought the predictions there, checked on the runs themselves:",
    "",
    "- **A logical device's costs are its busy time too.** On logical "
    "devices the costs were the summed durations of each device's ops, and "
    "two ops of a device that ran at once on the two cores (a layer's input "
    "and weight gradients) counted as serial. Now every device's costs are "
    "its busy time by kind, as on the servers (below). The summed durations "
    "(`op_costs` in the file) would give 6 of 14 logical schedules within "
    "10% on the runs above, and busy time gives 9; on the runs of the "
    "reports at a68154b, 7ffc047, e8e621c, ad1e31a, 15a46d7, a1cc3df and "
    "3c2a0eb, 7 and 8, 8 and 11, 8 and 10, 7 and 8, 7 and 11, 5 and 11, "
    "and 7 and 10.",
    "- **A server's costs are its core's time.** A server is pinned to one "
    "core but runs two ops at once (`start_server` gives its clients' "
    "functions two threads), so summed op durations count the shared time "
    "twice. The costs are now each server's busy time split by kind, the "
    "time in which n ops ran at once shared by the n "
    "(`keras_sg.profiling.core_shares`). The earlier scaling of every kind "
    "by the same factor made a forward pass that ran alone (8 ms on the "
    "timeline) 5.4 ms, because the backward and the update overlapped each "
    "other.",
    "- **The update ran before the gradient was sent down.** In the run "
    "before these changes (2026-11-27 13:37, docs/benchmarks.json at "
    "a3cf151), backprop model-parallel ran 62 ms a step in one run and 75 "
    "ms in two. In the two slow runs, stage 0's backward started only after "
    "stage 1's update had ended in 23 of 24 steps; in the fast run, in none "
    "of 14. TensorFlow's executor had run stage 1's update (its ops are "
    "ready as soon as each weight gradient is) before the send of the input "
    "gradient. With the costs of those traces (core shares), the simulator "
    "predicts the fast run within +1.3% as it was, and the two slow runs "
    "within -0.2% with `update_before_send=True`. Backprop and GPipe now "
    "make each stage's update wait until the gradient it sends has reached "
    "the stage below (`keras_sg.models.steps.arrived`). In the runs of "
    "the report after that change (docs/benchmarks.json at a1cc3df) no step "
    "of backprop had the update first (stage 0's backward starting only "
    "after stage 1's update had ended), and its three runs took 65 to 67 "
    "ms a step (57.7 to 59.5 ms in the report at e8e621c, 67.5 to 71.0 ms "
    "in the runs above, an hour of a busier machine). "
    "Making the update wait for the input gradient only "
    "(not for its arrival) was not enough: the send is an op of its own, "
    "and in a scratch run of the same script it still came after the "
    "update in two runs of three, in 3 and 9 steps of 14.",
    "- **The fully unlocked step starts with a locked forward pass.** Each "
    "server ran two forward blocks a step, and stage 0 waited about 11 ms "
    "between them for stage 1: `UnlockedModel` first runs the composed "
    "network, stage on stage, for the loss it logs (as `evaluate` would), "
    "and trains only after it. The prediction now simulates half of each "
    "measured forward as that pass, before the unlocked step (the two "
    "passes run the same layers); without it the error was +21% on the "
    "servers, +14% and +24% on logical devices.",
    "",
    "What is left:",
    "",
    "- **A schedule lands inside or outside 10% from one report to the "
    "next.** 17, 16, 14, 16, 17, 15 and 16 of 21 were within 10% in the "
    "last seven reports (docs/benchmarks.json at a1cc3df, at 15a46d7, at "
    "ad1e31a, with the code at e8e621c, at 7ffc047 and at a68154b, and the "
    "runs above). Above, all 7 on the servers were within 10%, as in the "
    "report before, and 9 of 14 on logical devices, which share the two "
    "cores with the client and the machine's other work (outside 10% "
    "above: pipelined DNI -10% and -11% at K = 2, each within 10% in the "
    "report before; backprop -18%, GPipe +13% and the fully unlocked step "
    "-13% at K = 4). On the servers the "
    "per-step overhead, measured in each run's trace, moves most, and the "
    "error with it: DNI one batch per step had an overhead of 3.5, 0.5, "
    "6.5, 2.9, 9.5, 7.2 and 10.1 ms a step and errors of +9%, +17%, +1%, "
    "+11%, -1%, +1% and -2%; pipelined DNI with the low-rank synthesizer "
    "10.5, 9.6, 4.7, 9.7, 11.8, 9.9 and 10.7 ms and +3%, +7%, +21%, +6%, "
    "+4%, +5% and +6%. "
    "The overhead "
    "is the time in which no device runs an op; a "
    "message in flight while the other device works is not in it, and the "
    "simulator charges nothing for one (`comm_latency` 0). In the median "
    "run of DNI one batch per step at 15a46d7, stage 1 started its forward "
    "6.7 to 8.7 ms after stage 0's forward had ended, idle in between, in "
    "each of its 19 traced steps, while stage 0 ran its backward; the other "
    "two runs did not show that wait. Message latency is not measured "
    "apart.",
    "- Servers, the asynchronous runtime: +11%, +5%, +7%, +7%, +7%, +6% "
    "and +9% in the seven reports (above, its batches read on stage 0's "
    "server). Each server idles 7% to 14% of its time (90% and 92% busy "
    "above), in gaps that are neither the per-step overhead (0.1 ms a step "
    "above, both servers idle) nor the other stage's work (docs/benchmarks.md "
    "lists the largest by the ops on either side, "
    "`keras_sg.profiling.idle_gaps`), which the simulator, taking one "
    "overhead for both devices, does not see. Two of them were edges to "
    "the client, which the traces of the servers do not show: the metrics' "
    'updates (until the report at e8e621c; docs/async.md, "Metrics where they are '
    'updated") and the loop of each stage function, whose control ran in '
    'the client too (until 7dfcae1; docs/async.md, "The client in every '
    'step"). Without them the largest groups are 0.66 and 0.85 ms a step '
    "(0.98 and 1.11 ms in the report before, 1.65 and 1.68 at 7ffc047, "
    "0.94 and 0.71 at e8e621c, 2.06 and 1.63 at ad1e31a); the error did "
    "not shrink.",
    "- GPipe (+9%, +11%, +6%, +7%, +13%, +7% and +8% on the servers, "
    "+9%, +14%, +13%, +2%, +9%, +13% and +10% on two logical devices in "
    "the seven reports): the "
    "sums of "
    "the micro-batches' weight gradients are now counted as backward work "
    "(they were counted as forward, `op_kind`), which left the error where "
    "it was (+9.1% before). On the measured timeline TensorFlow's executor "
    "runs the step as a dataflow graph, not in GPipe's order: the second "
    "server alternates micro-batches' forwards and backwards, as 1F1B would. "
    "The error's cause is not found.",
    "- Logical devices at K = 4: backprop model-parallel -18%, DNI -10%, "
    "the fully unlocked step -13% and GPipe +13% above (backprop -20%, "
    "-20%, -19%, -24%, -23% and -22%, DNI -13%, -14%, -13%, -16%, -14% and "
    "-5%, GPipe +0% at a68154b, +6% at 7ffc047 and +17% at e8e621c, in "
    "the six reports before). "
    "The optimizer's ops carry no device there, "
    "so their summed durations are shared out by the devices' weights: "
    "14.1 ms a stage per step at K = 4 against 9.4 ms at K = 2 in backprop "
    "above (13.0 and 8.0 at a68154b, 16.3 and 8.7 at 7ffc047, 11.0 and 7.3 "
    "at e8e621c, 13.1 and 7.3 at ad1e31a, 15.1 and 8.5 at a1cc3df), "
    "for the same two layers of each stage (Keras's Adam on them takes "
    "7.5 ms alone on one core, docs/async.md): with four devices on two "
    "cores, ops that run at once take longer each, and their sum counts "
    "that. Backprop pays stage 0's update after its last backward, on the "
    "critical path. And K devices sharing 2 cores are not K devices that "
    "each run one op at a time, which is what the simulator modelled for "
    "the table above; these rows are listed, not fitted. The next section "
    "simulates the logical devices of a later run, on another machine, on "
    "the cores they shared.",
]


SHARED_CORES_INTRO = [
    "### Logical devices on shared cores (2026-11-29)",
    "",
    "K logical devices of one process run on the machine's cores, 2 here: "
    "at K = 4, four devices may each run an op while only two cores exist, "
    "and the operating system shares the cores among them. "
    '`simulate(..., cores=n)` models that ("processor sharing": while m '
    "devices run an op each, each advances at min(1, n / m) of its speed "
    "alone), and its costs are then each device's *work*, what its ops "
    "would take with a core of their own. `keras_sg.profiling.shared_work` "
    "measures that work in a trace: each instant of a device's busy time "
    "counts min(1, n / m), m the devices busy then plus the ops no device "
    "claims (the optimizer's, on logical devices), and the device's ops "
    "that run at once share it as in `core_shares`. At K = 2 on 2 cores "
    "nothing changes (m never exceeds 2 devices); at K = 4 the ops that "
    "ran while three or four devices worked count less, and the simulated "
    "devices slow down whenever more than two work.",
    "",
    "A step cannot be shorter than the core time its ops used over the "
    "cores (`keras_sg.profiling.core_time`: while n ops run at once, they "
    "use min(n, cores) cores), plus the per-step overhead. The simulator's "
    "device runs one op at a time and never needs that bound; a logical "
    "device can run several of its ops at once on the process's shared pool"
    " of threads, and its busy time then counts less work than its ops did."
    " The last column takes the larger of the simulated step and that "
    "bound.",
    "",
    "Measured on an AMD EPYC machine (AVX2, 2 cores; not the machine of the"
    " table above), logical devices only: `python "
    "scripts/benchmark_pipeline.py --table_only --devices=2,4 --repeats=3 "
    "--width=1024 --batch_size=256 --micro_batches=8 --rank=64 --steps=20 "
    "--profile_steps=4 --async_steps_per_execution=32 "
    "--costs=docs/logical_costs.json`, code at 2b2e78a, 2026-11-29 15:59 to"
    " 16:11 UTC, load average 0.41 at the start and 3.10 at the end, "
    "nothing else running. Its costs, with each median run's work on shared"
    " cores, its core time and the examples/s of its traced steps, are in "
    "[logical_costs.json](logical_costs.json); "
    "`validate_measured_costs(path, shared_cores=...)` recomputes the "
    "predictions. Each prediction's error is given against the measured "
    "examples/s (the median of three runs, untraced) and against the "
    "examples/s of the traced steps whose costs it takes:",
]
SHARED_CORES_TEXT = [
    "What it shows:",
    "",
    "- **The profiler slows what it traces, here by up to 77%.** The costs "
    "come from the traced steps, and on this machine those ran 6% (backprop"
    " at K = 4) to 77% (the asynchronous runtime at K = 4) longer than the "
    "untraced ones (43% at K = 2; 88% at K = 4 in the run at 13:16 of the "
    "same day); on the machine of docs/benchmarks.md the asynchronous "
    "runtime's prediction was within 2% of its untraced speed. The slowdown"
    " grows with the number of ops a step runs (GPipe's 8 micro-batches: "
    "22% at K = 2 and at K = 4; the asynchronous runtime, whose stage "
    "optimizers are Keras's unfused Adam in every stage's loop: 43% and "
    "77%), which points at a cost per traced op, though none was found "
    "(2026-11-29, 15:10 to 15:35 UTC, a scratch script around the "
    "benchmark's worker, the asynchronous runtime at K = 2, three rounds "
    "each of an untraced fit and a profiled one): with the profiler's start"
    " and stop replaced by nothing, the profiled window's steps took as "
    "long as the untraced ones (81 to 86 ms against 80 to 81), so the "
    "window is timed right; with the profiler, 92 to 129 ms against 80 to "
    "99 (nine runs), while the process used 1.9 cores traced and 1.7 to 1.9"
    " untraced, so tracing adds work (steps about 20 ms longer), not waits."
    " The trace holds about 1,170 events a step, 256 of them tf.data's, one"
    " per example sliced; batches sliced whole (one event each) left the "
    "slowdown as it was. In one thread, a function of 400 small ops took "
    "0.01 to 0.14 us more per op traced: about 0.1 ms a step here. "
    "`host_tracer_level` changes nothing in TensorFlow 2.21 on this machine"
    " (levels 0 to 3 recorded the same events), so the trial at level 1 of "
    "the last session (137 ms a traced step against 143 at level 2) tested "
    "nothing. Its cause is not found. A prediction can be no better than "
    "its costs: against the traced steps, the simulator on shared cores "
    "with the core-time bound is within 10% for all 14 schedules (12 "
    "without the bound, 10 with a core each); against the untraced speed, "
    "for 5 of 14 (7 without the bound, 5 with a core each: the bound brings"
    " the GPipe rows to their traced speed, which the profiler slowed by "
    "22%).",
    "- **Fewer ops, less slowdown.** The same rows with "
    "`keras_sg.optimizers.FusedAdam` (one kernel per variable for the "
    "update, where Keras's Adam runs about a dozen element-wise ops; "
    "`--optimizer=fused_adam "
    "--schedules=backprop_mp,pipelined_dni_low_rank,async_dni_low_rank`, "
    "14:14 to 14:20 UTC, load average 1.51 at the start and 2.65 at the "
    "end; [logical_costs_fused_adam.json](logical_costs_fused_adam.json)): "
    "the traced steps ran 3%, 9% and 6% longer than the untraced ones at K "
    "= 2 (backprop, pipelined DNI, the asynchronous runtime) and 4%, 5% and"
    " 21% at K = 4, against 1%, 9% and 48%, and 2%, 10% and 88% with "
    "Keras's Adam in the run at 13:16 (8%, 10% and 43%, and 6%, 9% and 77% "
    "in the run above); on shared cores (recorded before the core time was)"
    " the simulator was within 10% of the measured examples/s for 5 of the "
    "6 (-3%, -4% and -5%; -5%, -1% and -17%) and of the traced steps' for "
    "all 6 (within 4.4%). The asynchronous runtime at K = 4, whose four "
    "stage threads run on two cores, keeps the largest slowdown.",
    "- **Sharing the cores brings the K = 4 rows in.** Against their traced"
    " steps, the simulator with a core each made GPipe at K = 4 40% faster,"
    " on shared cores 13%; the fully unlocked step went from -11% to -2%, "
    "DNI one batch per step from -9% to -0%, backprop from -6% to -2% (the "
    "optimizer's ops, which run beside the backward passes below, count "
    "16.2 ms of work a stage per step where their shared busy time was 20.8"
    " ms), pipelined DNI with the linear synthesizer from +12% to +3%; the "
    "low-rank one moved from +1% to -5% and the asynchronous runtime from "
    "+7% to +2%.",
    "- **GPipe's devices run several ops at once: the core-time bound.** "
    "Before it, GPipe was outside 10% of its traced steps even on shared "
    "cores (+29% at K = 2, +13% at K = 4; +33% at K = 2 in the run at "
    "13:16, and +9% to +14% on the other machine, unexplained then). Its "
    "micro-batches are independent until their gradients are summed, so "
    "TensorFlow's executor runs several of one stage's ops at once on the "
    "shared pool of inter-op threads: in the median GPipe run at K = 2 of "
    "the run at 13:16, one device ran two of its ops at once for 72% of the"
    " traced time (device 1 45%, device 0 27%), both devices together for "
    "9% (scratch arithmetic on the saved trace events). A device's busy "
    "time then counts half the core time its ops used, and the simulated "
    "device, one op at a time, left the other core to the other device. "
    "Here GPipe's ops used 350.5 ms of core time a step at K = 2 against "
    "231.8 ms of simulated work (backprop model-parallel: 174.9 against "
    "156.7); with a step at least the core time over the two cores plus the"
    " overhead, GPipe is +3% of its traced steps at K = 2 and -0% at K = 4."
    " The bound changes two other rows, at K = 4: pipelined DNI with the "
    "linear synthesizer (+3% to +0%) and the asynchronous runtime (+2% to "
    "+0%).",
    "- The report's tables (docs/benchmarks.md) predict logical devices on "
    "their shared cores, with the core-time bound, from now on "
    "(`scripts/benchmark_pipeline.py` records each run's work costs and "
    "core time), and validate against the untraced speed as before; its "
    "tables were measured on this machine at 16:26 and 16:53 "
    "([avx2/benchmarks.md](avx2/benchmarks.md), without the time to 97.5%):"
    " the simulator within 10% of all seven schedules on the servers and "
    "within 4% of all fourteen traced speeds on the logical devices; "
    "against the measured speeds, 12 of 21.",
]


if __name__ == "__main__":
    app.run(main)
