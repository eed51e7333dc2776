r"""Draws what each stage waits for under backprop, DNI, pipelined DNI and
the fully unlocked step: docs/figures/stage_waits.png.

Four timelines from the schedule simulator (`keras_sg.schedules`), K = 4
stages on 4 devices, two batches each: model-parallel backprop ("naive", two
steps of one batch), DNI one batch per step ("dni"), pipelined DNI or cDNI
("pipelined_dni", with its warm-up) and the fully unlocked step with
synthetic inputs ("fully_unlocked"). Each arrow is a message that a device
waits for: it goes from the end of the operation that sends it to the start
of the operation that needs it (`SimulationResult.messages`). Costs: forward
1, backward 2, each synthesizer 0.3 (forward and backward). Run from the
repository root:

    .venv/bin/python scripts/draw_stage_waits.py --output=docs/figures/stage_waits.png
"""

import dataclasses
import os

from absl import app, flags

# Importing keras_sg loads TensorFlow (the simulator itself does not use it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_sg.schedules import simulate  # noqa: E402
from keras_sg.schedules.drawing import COLORS, NAMES  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "docs/figures/stage_waits.png", "PNG to write.")
flags.DEFINE_integer("devices", 4, "Stages K, one per device.")
flags.DEFINE_float("forward", 1.0, "Forward cost of a stage.")
flags.DEFINE_float("backward", 2.0, "Backward cost of a stage.")
flags.DEFINE_float("synth", 0.3, "Cost of a synthesizer (forward and backward).")

PANELS = (
    (
        "backprop (model parallel)",
        "stage k waits for the forward pass of stage k - 1 and the backward "
        "pass of stage k + 1",
    ),
    (
        "DNI / cDNI, one batch per step",
        "stage k still waits for the forward pass below; it updates from its "
        "synthetic gradient at once; its synthesizer's regression waits for "
        "the target from above",
    ),
    (
        "pipelined DNI / cDNI",
        "stage k works on batch t - k: it waits for the activation stage k - 1 "
        "sent one step earlier, its synthesizer for the target stage k + 1 sent "
        "one step earlier (dashed: end of the K - 1 warm-up steps)",
    ),
    (
        "fully unlocked: synthetic inputs + DNI / cDNI",
        "every stage starts on the step's batch at once; only the "
        "synthesizers' regressions wait (target from above, true activation "
        "from below)",
    ),
)


def two_steps(result):
    """The naive (backprop) timeline of one batch, run for two steps."""
    shift = result.step_time
    later = {
        e: dataclasses.replace(
            e, start=e.start + shift, end=e.end + shift, microbatch=1, step=1
        )
        for e in result.events
    }
    return dataclasses.replace(
        result,
        events=result.events + tuple(later.values()),
        messages=result.messages
        + tuple((later[a], later[b]) for a, b in result.messages),
        num_microbatches=2,
        step_time=2 * shift,
    )


def timelines():
    """The four simulated timelines, in the order of PANELS."""
    k, f, b, s = FLAGS.devices, FLAGS.forward, FLAGS.backward, FLAGS.synth
    return [
        two_steps(simulate("naive", k, 1, f, b)),
        simulate("dni", k, 2, f, b, s),
        simulate("pipelined_dni", k, 2, f, b, s),
        simulate("fully_unlocked", k, 2, f, b, s, input_synth=s),
    ]


def draw(results, path):
    """Draws the timelines, one panel each, on one time axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    k = results[0].num_devices
    end = max(r.makespan for r in results)
    fig = Figure(figsize=(11, 2.0 * len(results) + 1.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(results), 1, sharex=True)
    for ax, result, (title, waits) in zip(axes, results, PANELS, strict=True):
        for e in result.events:
            ax.barh(
                e.device,
                e.duration,
                left=e.start,
                height=0.7,
                color=COLORS[e.kind],
                edgecolor="black",
                linewidth=0.5,
            )
            if e.duration >= 0.6:
                ax.text(
                    e.start + e.duration / 2,
                    e.device,
                    str(e.microbatch),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
        for sender, receiver in result.messages:
            ax.annotate(
                "",
                xy=(receiver.start, receiver.device),
                xytext=(sender.end, sender.device),
                arrowprops=dict(arrowstyle="->", color="black", lw=0.8),
            )
        if result.warmup is not None:
            ax.axvline(result.warmup.time, color="black", ls="--", lw=0.8)
        per_batch = result.step_time / result.num_microbatches
        ax.set_title(
            f"{title}: {per_batch:g} time units a batch\n{waits}",
            fontsize=8.5,
            loc="left",
        )
        ax.set_yticks(range(k), [f"device {d}" for d in range(k)], fontsize=7)
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_xlim(0, end)
    axes[-1].set_xlabel(
        "time (forward 1, backward 2, each synthesizer 0.3); box labels: batch; "
        "arrows: what a device waits for"
    )
    kinds = ("I", "F", "S", "B", "R")
    handles = [Patch(color=COLORS[c], label=NAMES[c]) for c in kinds]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)


def main(argv):
    del argv
    results = timelines()
    for (title, _), r in zip(PANELS, results, strict=True):
        print(
            f"{title}: {r.step_time / r.num_microbatches:g} a batch, "
            f"idle {r.bubble_fraction:.3f}, {len(r.messages)} messages"
        )
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    print("wrote", draw(results, FLAGS.output))


if __name__ == "__main__":
    app.run(main)
