r"""Draws who waits for whom in the clocked pair: docs/figures/clock_timeline.png.

Two timelines of one training step of `ClockedPairModel`, a fast network
ticking every step and a slow one every K steps, under `"bptt"` and `"dni"`,
each network on a device of its own. Which network ticks when comes from
`tick_schedule`; what each network's backward pass and update read comes
from `update_dependencies`: under `"bptt"` the fast network's backward pass
at a slow tick reads the slow network's (the gradient at h_{bK}) and the
slow network's backward pass at tick b reads the fast network's over block
b + 1 (the gradient at m_b); under `"dni"` each reads its own synthesizer's
prediction instead, and only the synthesizers' regressions read the other
network's backward pass. Each box starts as soon as what it reads is done
and its device is free (a greedy list schedule); each arrow is a message
from the other device that a box waits for. The forward pass is the same
under both methods (the slow network reads h_{bK}, the fast one m_b).
Costs: a forward step 1, a backward step 2, a synthesizer's prediction and
its regression 0.3 each, an optimizer update 0.5. The boxes show the
waits, not measured times (the model runs both networks on one device, one
pass after the other). Run from the repository root:

    .venv/bin/python scripts/draw_clock_timeline.py \
        --output=docs/figures/clock_timeline.png
"""

import dataclasses
import os

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Importing keras_sg loads TensorFlow (the two functions do not use it).
from keras_sg.models.clocked_pair_model import (  # noqa: E402
    tick_schedule,
    update_dependencies,
)
from keras_sg.schedules.drawing import COLORS  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "docs/figures/clock_timeline.png", "PNG to write.")
flags.DEFINE_integer("time", 12, "Steps in the sequence, a multiple of --period.")
flags.DEFINE_integer("period", 3, "K: fast steps per slow tick.")
flags.DEFINE_float("forward", 1.0, "Cost of one forward step of either network.")
flags.DEFINE_float("backward", 2.0, "Cost of one backward step of either network.")
flags.DEFINE_float("synth", 0.3, "Cost of a synthesizer's prediction, or regression.")

METHODS = ("bptt", "dni")
ROWS = ("fast", "slow")
COLOR = dict(COLORS, U="#555555")
LABELS = {
    "F": "forward",
    "B": "backward",
    "S": "synthesizer prediction",
    "R": "synthesizer regression",
    "U": "update",
}


@dataclasses.dataclass(frozen=True)
class Box:
    """One piece of work of one network, placed in time.

    `name` is `(kind, network, index)`: the kind (`"F"`, `"B"`, `"S"`,
    `"R"`, `"U"`), the network that owns it (`"fast"` or `"slow"`) and the
    step (fast) or tick (slow) it belongs to. `reads` are the names of the
    boxes it waits for.
    """

    name: tuple
    start: float
    end: float
    reads: tuple

    @property
    def kind(self):
        return self.name[0]

    @property
    def row(self):
        return self.name[1]

    @property
    def index(self):
        return self.name[2]


def ticks(time: int, period: int) -> dict[str, list[int]]:
    """The steps at which each network ticks, read off `tick_schedule`."""
    schedule = tick_schedule(time, period)
    return {row: [t for t, who in enumerate(schedule) if row in who] for row in ROWS}


def work(method: str, time: int, period: int) -> dict[tuple, tuple[tuple, ...]]:
    """The boxes of one training step and what each reads, in program order.

    Built from `ticks` (who ticks when) and `update_dependencies(method)`
    (whether a network's backward pass reads the other's or a synthesizer's
    prediction). Returns a dict from each box's name to the names it reads.
    """
    deps = update_dependencies(method)
    fast_reads_slow = "slow_backward" in deps["fast"]
    slow_reads_fast = "fast_backward" in deps["slow"]
    synthesizers = "message_synthesizer" in deps
    who = ticks(time, period)
    steps_, slow = who["fast"], who["slow"]
    tick_of = {t: b for b, t in enumerate(slow)}
    # The message the fast network reads at step t: the last tick before t.
    message_at = {
        t: max((b for b, s in enumerate(slow) if s < t), default=None) for t in steps_
    }
    first_reader = {}
    for t in steps_:
        if message_at[t] is not None:
            first_reader.setdefault(message_at[t], t)
    out = {}
    # Forward: interleaved, the same under every method.
    for t in steps_:
        reads = [("F", "fast", t - 1)] if t else []
        if message_at[t] is not None and first_reader[message_at[t]] == t:
            reads.append(("F", "slow", message_at[t]))
        out[("F", "fast", t)] = tuple(reads)
        if t in tick_of:
            b = tick_of[t]
            reads = [("F", "fast", t)] + ([("F", "slow", b - 1)] if b else [])
            out[("F", "slow", b)] = tuple(reads)
    if synthesizers:
        # Predictions, each from its interface's tensor: S(h_bK) on the fast
        # network's device, M(m_b) on the slow network's.
        for b, t in enumerate(slow):
            out[("S", "fast", b)] = (("F", "fast", t),)
            out[("S", "slow", b)] = (("F", "slow", b),)
    # Backward, in reverse time; the loss is known after the last step.
    last = steps_[-1]
    for t in reversed(steps_):
        reads = [("B", "fast", t + 1)] if t < last else [("F", "fast", last)]
        if t in tick_of:
            b = tick_of[t]
            reads.append(("B", "slow", b) if fast_reads_slow else ("S", "fast", b))
        out[("B", "fast", t)] = tuple(reads)
        # After the fast backward pass has covered block b + 1 (down to the
        # first step that reads m_b), the gradient at m_b is known.
        for b, first in first_reader.items():
            if first != t:
                continue
            reads = [("B", "slow", b + 1)] if b + 1 < len(slow) else []
            reads.append(("F", "slow", b))
            reads.append(("B", "fast", t) if slow_reads_fast else ("S", "slow", b))
            out[("B", "slow", b)] = tuple(reads)
    if synthesizers:
        # Regressions: M's target is the fast pullback to m_b, S's the slow
        # pullback to h_bK.
        for b in range(len(slow)):
            out[("R", "slow", b)] = (("S", "slow", b), ("B", "fast", first_reader[b]))
            out[("R", "fast", b)] = (("S", "fast", b), ("B", "slow", b))
    out[("U", "fast", 0)] = tuple(("B", "fast", t) for t in steps_)
    out[("U", "slow", 0)] = tuple(("B", "slow", b) for b in range(len(slow)))
    return out


def timeline(
    method: str,
    time: int,
    period: int,
    forward: float = 1.0,
    backward: float = 2.0,
    synth: float = 0.3,
) -> list[Box]:
    """Places the boxes of `work` in time: a greedy list schedule.

    Each network is one device that does one box at a time. Repeatedly, of
    the boxes whose reads are all placed, the one that can start first (ties:
    program order) starts when its reads have ended and its device is free.

    Returns:
        The boxes, in the order placed.
    """
    cost = {"F": forward, "B": backward, "S": synth, "R": synth, "U": 0.5}
    pending = work(method, time, period)
    placed, free, out = {}, dict.fromkeys(ROWS, 0.0), []
    while pending:
        best = None
        for order, (name, reads) in enumerate(pending.items()):
            if any(r not in placed for r in reads):
                continue
            start = max([free[name[1]], *(placed[r].end for r in reads)])
            if best is None or start < best[0]:
                best = (start, order, name, reads)
        if best is None:
            raise ValueError(f"The boxes of method={method!r} wait in a cycle.")
        start, _, name, reads = best
        box = Box(name, start, start + cost[name[0]], reads)
        placed[name] = box
        free[name[1]] = box.end
        out.append(box)
        del pending[name]
    return out


def waits(boxes: list[Box]) -> list[tuple[Box, Box]]:
    """The messages between devices: `(sender, receiver)` for every read of a
    box owned by the other network."""
    by_name = {b.name: b for b in boxes}
    return [(by_name[r], b) for b in boxes for r in b.reads if by_name[r].row != b.row]


def _label(box):
    if box.kind == "U":
        return "update"
    if box.kind == "S":
        return f"S{box.index}" if box.row == "fast" else f"M{box.index}"
    if box.kind == "R":
        return "r"
    return str(box.index)


def draw(panels, path, time, period):
    """Draws one panel per method: rows fast and slow, arrows for the waits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    end = max(b.end for boxes in panels.values() for b in boxes)
    fig = Figure(figsize=(12, 2.3 * len(panels) + 1.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (method, boxes) in zip(axes, panels.items(), strict=True):
        for b in boxes:
            y = ROWS.index(b.row)
            ax.barh(
                y,
                b.end - b.start,
                left=b.start,
                height=0.6,
                color=COLOR[b.kind],
                edgecolor="black",
                linewidth=0.5,
            )
            ax.text(
                (b.start + b.end) / 2,
                y
                + (0.0 if b.end - b.start >= 0.6 else 0.42 if b.kind == "R" else -0.42),
                _label(b),
                ha="center",
                va="center",
                fontsize=6.5,
                color="white" if b.end - b.start >= 0.6 else "black",
            )
        for sender, receiver in waits(boxes):
            # Solid: the network's own work waits; dashed grey: only a
            # synthesizer's regression waits (for its target).
            regression = receiver.kind == "R"
            ax.annotate(
                "",
                xy=(receiver.start, ROWS.index(receiver.row)),
                xytext=(sender.end, ROWS.index(sender.row)),
                arrowprops=dict(
                    arrowstyle="->",
                    color="0.55" if regression else "black",
                    lw=0.7,
                    ls="--" if regression else "-",
                ),
            )
        update = {b.row: b.end for b in boxes if b.kind == "U"}
        ax.set_title(
            f"{method}: {_summary(method)}; fast update done at "
            f"{update['fast']:g}, slow at {update['slow']:g}",
            fontsize=8.5,
            loc="left",
        )
        ax.set_yticks(
            range(len(ROWS)),
            ["fast (every step)", f"slow (every {period} steps)"],
            fontsize=7.5,
        )
        ax.set_ylim(len(ROWS) - 0.4, -0.7)
        ax.set_xlim(0, end + 0.2)
    axes[-1].set_xlabel(
        f"time ({time} steps, K = {period}; forward 1, backward 2, synthesizer "
        "0.3, update 0.5); box labels: step (fast) or tick b (slow)\n"
        "Mb = M(m_b), Sb = S(h_bK), r: their regressions; arrows: what a "
        "network waits for (dashed: a regression waits for its target)",
        fontsize=8.5,
    )
    handles = [Patch(color=COLOR[k], label=LABELS[k]) for k in LABELS]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)


def _summary(method):
    deps = update_dependencies(method)
    if "fast_backward" in deps["slow"]:
        return "each network's backward pass waits for the other's"
    return "neither network's update waits for the other's backward pass"


def main(argv):
    del argv
    panels = {
        m: timeline(
            m, FLAGS.time, FLAGS.period, FLAGS.forward, FLAGS.backward, FLAGS.synth
        )
        for m in METHODS
    }
    for method, boxes in panels.items():
        done = {b.row: b.end for b in boxes if b.kind == "U"}
        print(
            f"{method}: fast update at {done['fast']:g}, slow update at "
            f"{done['slow']:g}, {len(waits(boxes))} waits across networks"
        )
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    print("wrote", draw(panels, FLAGS.output, FLAGS.time, FLAGS.period))


if __name__ == "__main__":
    app.run(main)
