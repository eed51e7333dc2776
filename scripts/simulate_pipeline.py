r"""Extrapolates pipeline schedules to scale: when does pipelined DNI pay off?

Simulates one training step of a 96-block transformer split evenly over K =
8, 16, 32, 64 devices under naive model parallelism, GPipe (Huang et al.
2019, arXiv:1811.06965), 1F1B (PipeDream-Flush, Narayanan et al. 2019/2021),
Megatron-LM's interleaved 1F1B (Narayanan et al. 2021, arXiv:2104.04473),
pipelined DNI (Jaderberg et al. 2016, arXiv:1608.05343), DNI one batch per
step, and the fully unlocked step (synthetic inputs, Section 3.4 of the same
paper), with the schedule simulator `keras_sg.schedules` (pure Python, no
TensorFlow in the simulation).

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

import os

from absl import app, flags

# Importing keras_sg loads TensorFlow (the simulator itself does not use it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_sg.schedules import draw_timeline, simulate  # noqa: E402

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
flags.DEFINE_float("comm_latency", 0.0, "Latency of each message between devices.")
flags.DEFINE_string("output_md", "docs/simulation.md", "Markdown report to write.")
flags.DEFINE_string("figures", "docs/figures", "Folder of the timeline PNGs.")
flags.DEFINE_integer("figure_devices", 4, "K of the timeline figures.")
flags.DEFINE_integer("figure_microbatches", 8, "M of the timeline figures.")

FLUSHED = ("gpipe", "1f1b", "interleaved_1f1b")
ORDER = ("naive",) + FLUSHED + ("pipelined_dni", "dni", "fully_unlocked")


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


def simulate_all(num_devices: int, num_microbatches: int, overhead: float) -> dict:
    """Simulates every schedule of the scenario for one K and M.

    Args:
        num_devices: pipeline size K.
        num_microbatches: micro-batches per step M.
        overhead: synthesizer cost as a fraction of a stage's compute.

    Returns:
        A dict from schedule name to SimulationResult; interleaved 1F1B is
        left out when M is not a multiple of K (Megatron-LM requires it).
    """
    args = (FLAGS.blocks, num_devices, FLAGS.block_forward, FLAGS.block_backward)
    forward, backward = stage_costs(*args)
    common = dict(comm_latency=FLAGS.comm_latency)
    results = {
        name: simulate(name, num_devices, num_microbatches, forward, backward, **common)
        for name in ("naive", "gpipe", "1f1b")
    }
    if num_microbatches % num_devices == 0:
        v = FLAGS.num_chunks
        chunk = stage_costs(FLAGS.blocks, num_devices * v, *args[2:])
        results["interleaved_1f1b"] = simulate(
            "interleaved_1f1b",
            num_devices,
            num_microbatches,
            *chunk,
            num_chunks=v,
            **common,
        )
    results["pipelined_dni"] = dni(num_devices, num_microbatches, overhead)
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
    return results


def dni(num_devices: int, num_microbatches: int, overhead: float):
    """Simulates pipelined DNI with synthesizers costing `overhead` of a stage.

    Args:
        num_devices: pipeline size K.
        num_microbatches: steady-state steps (micro-batches) measured M.
        overhead: synthesizer cost as a fraction of a stage's compute.

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
    return (
        f"interleaved_1f1b (v={FLAGS.num_chunks})" if name.startswith("inter") else name
    )


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
    }
    figures = []
    for name, result in runs.items():
        title = f"{schedule_label(name)}: K={k}, M={m}"
        if name == "pipelined_dni":
            title += f", SG overhead {FLAGS.sg_overhead:g} (dashed: end of warm-up)"
        elif name == "dni":
            title += f", SG overhead {FLAGS.sg_overhead:g}, one batch per step"
        elif name == "fully_unlocked":
            title += (
                f", SG overhead {FLAGS.sg_overhead:g}, input synthesizers "
                f"{FLAGS.input_overhead:g}, one batch per step"
            )
        path = os.path.join(folder, f"timeline_{name}_K{k}_M{m}.png")
        figures.append((name, draw_timeline(result, path, title=title)))
    return figures


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
        f"chunks per device; SG overhead s={FLAGS.sg_overhead:g}: each DNI "
        "synthesizer (forward + backward) costs s times its stage's compute "
        "(the last stage has none); for the fully unlocked step, each input "
        f"synthesizer costs {FLAGS.input_overhead:g} times its stage's compute "
        "(the first stage has none).",
        "",
        "How to read it:",
        "",
        "- Step time is the time to process M micro-batches: one flushed step "
        "for naive, GPipe, 1F1B and interleaved 1F1B; for pipelined DNI, M "
        "steps in steady state (one micro-batch enters per step, and each "
        "device updates its weights every step, so DNI makes M updates where "
        "the others make one). For DNI one batch per step (`dni`, as "
        "`DecoupledModel` trains) and the fully unlocked step "
        "(`fully_unlocked`, as `UnlockedModel` trains: every stage on the "
        "step's batch at once, from its synthetic input), M steps of one "
        "micro-batch each, each step ending on every device before the next "
        "begins; neither has a warm-up. With even stages the fully unlocked "
        "step takes (1 + s + s_in) times a stage's compute per micro-batch "
        "(s_in: the input synthesizers' overhead), pipelined DNI (1 + s): "
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
        "1F1B at most K), the optimizer step, and the effect of synthetic, "
        "stale gradients on how many steps training needs, nor whether an "
        "input synthesizer can predict a stage's input well enough (a "
        "question for training, not for the schedule). The break-even "
        "overhead compares time per micro-batch only.",
        "",
    ]
    text += sections
    text += ["## Timelines", ""]
    for name, path in figures:
        rel = os.path.relpath(os.path.abspath(path), base)
        text += [f"![{name}]({rel})", ""]
    return "\n".join(text)


def main(argv):
    del argv
    devices = [int(k) for k in FLAGS.devices]
    overheads = [float(s) for s in FLAGS.sg_overhead_sweep]
    sections = []
    for m in (int(x) for x in FLAGS.microbatches):
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
            "Pipelined DNI's throughput relative to the best of GPipe, 1F1B and "
            "interleaved 1F1B, for several SG overheads:",
            "",
            sweep,
            "",
            "Break-even SG overhead: DNI wins while its extra cost S stays below "
            "the idle time it removes.",
            "",
        ]
        sections += [f"- {line}" for line in lines] + [""]
    figures = write_figures(FLAGS.figures)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output_md)), exist_ok=True)
    with open(FLAGS.output_md, "w") as f:
        f.write(report(sections, figures))
    print(f"\nWrote {FLAGS.output_md} and {len(figures)} figures in {FLAGS.figures}")


if __name__ == "__main__":
    app.run(main)
