"""Draws measured timelines, in the colours of the simulator's, so that a
measured schedule and its simulation can be put side by side."""

import os
from collections.abc import Sequence

from keras_sg.profiling.result import ProfileResult
from keras_sg.profiling.trace import KIND_NAMES
from keras_sg.schedules import drawing as simulated
from keras_sg.schedules.timeline import SimulationResult

# The simulator's colours and names, and those of kinds only a trace has.
COLORS = {"U": "#937860", "T": "#da8bc3", "C": "#8c8c8c", **simulated.COLORS}
NAMES = {**KIND_NAMES, **simulated.NAMES}
_ORDER = "IFBWSRUTC"


def _rows(timeline, steps):
    """(rows, span, unit) of a measured or simulated timeline."""
    if isinstance(timeline, ProfileResult):
        return timeline.num_devices, steps * timeline.traced_step_time, "ms"
    if isinstance(timeline, SimulationResult):
        return timeline.num_devices, timeline.makespan, "time"
    raise TypeError(
        "Each timeline must be a ProfileResult or a keras_sg.schedules."
        f"SimulationResult. Received: {type(timeline).__name__}"
    )


def draw_timelines(
    timelines: Sequence[ProfileResult | SimulationResult],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    steps: float = 2,
) -> str:
    """Draws timelines one above the other in a PNG, one row per device.

    A measured timeline (ProfileResult) shows its first `steps` steps, each
    op a bar without an edge (a trace holds hundreds of ops a step); a
    simulated one (SimulationResult) shows all of it. Colours follow the
    simulator's figures (`keras_sg.schedules.draw_timeline`): forward blue,
    backward green, synthesizer orange, plus brown for the optimizer update,
    pink for transfers and grey for other work. Matplotlib is imported here,
    with the Agg backend, and no pyplot state is touched.

    Args:
        timelines: the timelines, one panel each.
        path: the PNG file to write; its folder must exist.
        titles: one title per panel; by default none.
        steps: steps of each measured timeline to show.

    Returns:
        The path written, as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not timelines:
        raise ValueError("`timelines` must hold at least one timeline. Received: []")
    if titles is None:
        titles = [""] * len(timelines)
    if len(titles) != len(timelines):
        raise ValueError(
            f"Expected one title per timeline ({len(timelines)}). "
            f"Received: titles={list(titles)}"
        )
    if steps <= 0:
        raise ValueError(f"`steps` must be positive. Received: steps={steps}")
    n = len(timelines)
    fig = Figure(figsize=(9, 1.3 * n + 0.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    kinds, units = set(), set()
    for ax, timeline, title in zip(axes, timelines, titles, strict=True):
        rows, span, unit = _rows(timeline, steps)
        units.add(unit)
        bars = {}
        for e in timeline.events:
            if e.start < span:
                bars.setdefault((e.device, e.kind), []).append(
                    (e.start, min(e.end, span) - e.start)
                )
        for (device, kind), spans in bars.items():
            kinds.add(kind)
            ax.broken_barh(spans, (device - 0.4, 0.8), color=COLORS[kind])
        ax.set_yticks(range(rows), [f"device {d}" for d in range(rows)])
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_xlim(0, span or 1.0)
        ax.set_title(title, fontsize=9, loc="left")
    if units == {"ms"}:
        shown = "two" if steps == 2 else f"{steps:g}"
        axes[-1].set_xlabel(f"ms ({shown} steps of the measured trace)")
    else:
        axes[-1].set_xlabel("ms (measured) or the simulation's time unit")
    ordered = sorted(kinds, key=_ORDER.index)
    axes[0].legend(
        handles=[Patch(color=COLORS[k], label=NAMES[k]) for k in ordered],
        fontsize=7,
        loc="upper right",
    )
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)
