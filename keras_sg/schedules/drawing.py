"""Draws a simulated timeline as a PNG pipeline diagram."""

import os

from keras_sg.schedules.timeline import SimulationResult

COLORS = {
    "F": "#4c72b0",
    "B": "#55a868",
    "W": "#8c8c3c",
    "U": "#937860",
    "S": "#dd8452",
    "I": "#8172b3",
    "R": "#c44e52",
}
NAMES = {
    "F": "forward",
    "B": "backward",
    "W": "weight gradient",
    "U": "update",
    "S": "synthesizer",
    "I": "input synthesizer",
    "R": "synthesizer regressions",
}


def _lighten(color: str, amount: float) -> tuple[float, float, float]:
    rgb = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    return tuple(c + (1 - c) * amount for c in rgb)


def _shade(kind: str, chunk: int, num_chunks: int) -> tuple[float, float, float]:
    return _lighten(COLORS[kind], 0.45 * chunk / max(1, num_chunks - 1))


def _label(result: SimulationResult, microbatch: int) -> str:
    if result.schedule == "naive" and result.num_microbatches > 1:
        return f"0-{result.num_microbatches - 1}"
    return str(microbatch)


def draw_timeline(
    result: SimulationResult, path: str | os.PathLike, title: str | None = None
) -> str:
    """Draws the timeline as a PNG: one row per device, one box per event.

    Boxes are coloured by kind (forward, backward, synthesizer) and hold the
    micro-batch number (for pipelined DNI the batch number); for interleaved
    1F1B the later chunks of a device are drawn in lighter shades. Matplotlib
    is imported here, with the Agg backend, and no pyplot state is touched.

    Args:
        result: a SimulationResult from `simulate`.
        path: the PNG file to write; its folder must exist.
        title: the figure title; by default the schedule, K, M and v.

    Returns:
        The path written, as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    k = result.num_devices
    end = result.makespan or 1.0
    width = min(24.0, max(8.0, 0.25 * len(result.events) / k + 4))
    fig = Figure(figsize=(width, 0.55 * k + 1.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points_per_unit = (width * 0.8 * 72) / end
    for e in result.events:
        chunk = e.stage // k if result.num_chunks > 1 else 0
        color = _shade(e.kind, chunk, result.num_chunks)
        ax.barh(
            e.device,
            e.duration,
            left=e.start,
            height=0.8,
            color=color,
            edgecolor="black",
            linewidth=0.5,
        )
        label = _label(result, e.microbatch)
        size = min(9.0, e.duration * points_per_unit / (0.65 * len(label) + 0.4))
        if size >= 6.0:
            ax.text(
                e.start + e.duration / 2,
                e.device,
                label,
                ha="center",
                va="center",
                fontsize=size,
                color="white" if chunk == 0 else "black",
            )
    if result.warmup is not None and result.warmup.time > 0:
        ax.axvline(result.warmup.time, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(k), [f"device {d}" for d in range(k)])
    ax.set_ylim(k - 0.5, -0.5)
    ax.set_xlim(0, end)
    ax.set_xlabel("time")
    kinds = sorted({e.kind for e in result.events}, key="IFBWSUR".index)
    names = dict(NAMES)
    if "W" in kinds:  # ZB-H1: B is the input gradient only
        names["B"] = "backward (input gradient)"
    handles = [Patch(color=COLORS[kind], label=names[kind]) for kind in kinds]
    if result.num_chunks > 1:
        handles = [
            Patch(
                color=_shade(kind, c, result.num_chunks),
                label=f"{names[kind]}, chunk {c}",
            )
            for kind in kinds
            for c in range(result.num_chunks)
        ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
    )
    if title is None:
        title = f"{result.schedule}: K={k}, M={result.num_microbatches}"
        if result.num_chunks > 1:
            title += f", v={result.num_chunks}"
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)
