"""`DecoupledModel.summary()`: stages, devices, and what each synthesizer costs."""

import dataclasses
import functools
import re
import shutil

import keras

from keras_sg.models import costs


@dataclasses.dataclass
class SummaryRow:
    """One row of the summary: a stage, a synthesizer, or a layer inside a stage.

    `macs` is the multiply-adds per example (None when unknown); `ratio`, on a
    synthesizer's row, is its `macs` over those of the stage below it, the
    stage whose output it reads: the method's extra compute at that cut.
    """

    kind: str  # "stage", "synthesizer" or "layer"
    index: int  # the stage's index, or the synthesizer's cut (its stage's)
    layer: object
    output_shape: tuple | None
    params: int | None  # None while the layer is unbuilt
    device: str
    macs: int | None
    ratio: float | None = None
    uncounted: tuple = ()

    @property
    def name(self) -> str:
        return self.layer.name


def summary_rows(model, expand_nested: bool = False) -> list[SummaryRow]:
    """The rows of `model.summary()`, lowest stage first.

    Stage k is followed by its layers (with `expand_nested`), then by the
    synthesizer at the cut above it. Output shapes and costs are None while
    the model is unbuilt.

    Args:
        model: a `DecoupledModel`.
        expand_nested: whether to add a row for each layer of each stage.
    """
    input_shape = model_input_shape(model)
    rows, shape = [], input_shape
    for k, stage in enumerate(model.stages):
        out = _output_shape(stage, shape)
        macs = costs.macs_per_example(stage, shape) if shape is not None else None
        uncounted = () if shape is None else costs.uncounted_layers(stage, shape)
        rows.append(
            SummaryRow(
                "stage",
                k,
                stage,
                out,
                _params(stage),
                _device(model, k, stage),
                macs,
                uncounted=tuple(uncounted),
            )
        )
        if expand_nested and shape is not None:
            for layer, layer_shape, layer_macs in costs.sublayer_macs(stage, shape):
                rows.append(
                    SummaryRow(
                        "layer",
                        k,
                        layer,
                        _output_shape(layer, layer_shape),
                        _params(layer),
                        _device(model, k, layer),
                        layer_macs,
                    )
                )
        if k < len(model.synthesizers):
            synth = model.synthesizers[k]
            synth_macs = costs.macs_per_example(synth, out) if out else None
            rows.append(
                SummaryRow(
                    "synthesizer",
                    k,
                    synth,
                    out,
                    _params(synth),
                    _device(model, k, synth),
                    synth_macs,
                    costs.cost_ratio(synth_macs, macs),
                    tuple(costs.uncounted_layers(synth, out)) if out else (),
                )
            )
        shape = out
    return rows


def model_input_shape(model) -> tuple | None:
    """The shape `model` was built on, or None while it is unbuilt."""
    if not model.built:
        return None
    config = model.get_build_config() or {}
    shape = config.get("input_shape")
    if shape is None:
        return None
    return (None,) + tuple(shape)[1:]  # fit builds on its first batch's size


def print_summary(
    model,
    line_length=None,
    positions=None,
    print_fn=None,
    expand_nested=False,
    show_trainable=False,
    layer_range=None,
):
    """Prints the stages and synthesizers of a `DecoupledModel` as a table.

    Takes the arguments of `keras.Model.summary`; `layer_range` selects the
    stage and synthesizer rows by name (regular expressions, first match to
    last), and `expand_nested` adds each stage's layers.
    """
    import rich.console
    import rich.markup
    import rich.table

    rows = summary_rows(model, expand_nested=expand_nested)
    header = [
        "Stage / synthesizer (type)",
        "Output Shape",
        "Param #",
        "Device",
        "MACs/example",
        "Extra cost",
    ]
    alignment = ["left", "left", "right", "left", "right", "right"]
    if show_trainable:
        header.append("Trainable")
        alignment.append("center")
    body = [
        _fields(row, model.built, show_trainable)
        for row in _in_range(rows, layer_range)
    ]
    if line_length is None:
        # Keras's summary fits the terminal; six columns need about 100.
        line_length = max(100, min(120, shutil.get_terminal_size().columns - 4))
    if positions is None:
        # Rich sizes the columns to their contents; numbers are never cut.
        widths = [None] * len(header)
        min_widths = [
            max([len(h) for h in header[i].split()] + [len(r[i]) for r in body])
            if align == "right"
            else None
            for i, align in enumerate(alignment)
        ]
        min_widths[0] = min(32, max([len(r[0]) for r in body] + [len(header[0])]))
    else:
        widths = _widths(positions, line_length, header)
        min_widths = [None] * len(header)
    table = rich.table.Table(
        *[
            rich.table.Column(
                name, justify=align, width=width, min_width=least, overflow="fold"
            )
            for name, align, width, least in zip(
                header, alignment, widths, min_widths, strict=True
            )
        ],
        width=None if positions is None else line_length,
        show_lines=True,
    )
    for fields in body:
        table.add_row(*[rich.markup.escape(f) for f in fields])

    lines = _totals(model, rows)
    if not print_fn and not keras.config.is_interactive_logging_enabled():
        from keras.src.utils import io_utils  # where Keras's summary prints too

        print_fn = functools.partial(io_utils.print_msg, line_break=False)
    if print_fn:
        console = rich.console.Console(
            highlight=False, force_terminal=False, color_system=None, width=line_length
        )
        console.begin_capture()
    else:
        console = rich.console.Console(highlight=False, width=line_length)
    kind = type(model).__name__
    title = f'Model: "{model.name}" ({kind}, method={model.method!r})'
    console.print(f"[bold]{rich.markup.escape(title)}[/]")
    console.print(table)
    for line in lines:
        console.print(rich.markup.escape(line))
    if print_fn:
        print_fn(console.end_capture())


def _fields(row, built, show_trainable):
    fields = [
        _row_name(row),
        _format_shape(row.output_shape),
        _format_params(row.params),
        row.device,
        _format_macs(row.macs, built),
        f"{row.ratio:.3g}×" if row.ratio is not None else "",
    ]
    if show_trainable:
        weights = getattr(row.layer, "weights", [])
        fields.append(("Y" if row.layer.trainable else "N") if weights else "-")
    return fields


def _widths(positions, line_length, header):
    """Column widths from Keras-style positions (fractions, or absolute ends)."""
    if len(positions) != len(header):
        raise ValueError(
            f"Expected {len(header)} positions, one per column ({header}). "
            f"Received: positions={positions}"
        )
    if positions[-1] <= 1:
        positions = [int(line_length * p) for p in positions]
    widths = [b - a for a, b in zip([0, *positions[:-1]], positions, strict=True)]
    if min(widths) < 4:
        raise ValueError(
            "Insufficient console width to print summary: every column needs "
            f"4 characters. Received: positions={positions}"
        )
    return widths


def _totals(model, rows):
    stages = [r for r in rows if r.kind == "stage"]
    synths = [r for r in rows if r.kind == "synthesizer"]
    trainable = _count(model.trainable_weights)
    non_trainable = _count(model.non_trainable_weights)
    # The model's optimizer and, if it has one, the synthesizers' own.
    optimizers = [getattr(model, "optimizer", None)]
    optimizers.append(getattr(model, "synthesizer_optimizer", None))
    built = [o for o in optimizers if o is not None and o.built]
    optimizer_count = (
        sum(_count(o.variables) for o in built) if model.compiled and built else None
    )
    lines = [
        f" Total params: {trainable + non_trainable + (optimizer_count or 0):,}",
        f" Trainable params: {trainable:,}",
        f" Non-trainable params: {non_trainable:,}",
    ]
    if optimizer_count is not None:
        lines.append(f" Optimizer params: {optimizer_count:,}")
    stage_macs = _sum([r.macs for r in stages])
    lines.append(
        f" Stages: {_sum_params(stages)} params, "
        f"{_format_macs(stage_macs, model.built)} MACs/example"
    )
    if synths:
        synth_macs = _sum([r.macs for r in synths])
        ratio = costs.cost_ratio(synth_macs, stage_macs)
        extra = f" ({ratio:.3g}× the stages')" if ratio is not None else ""
        used = "" if model.uses_synthesizers else f", unused by method={model.method!r}"
        lines.append(
            f" Synthesizers: {_sum_params(synths)} params, "
            f"{_format_macs(synth_macs, model.built)} MACs/example{extra}{used}"
        )
    elif len(model.stages) > 1:
        lines.append(f" Synthesizers: none (method={model.method!r})")
    if not model.built:
        lines.append(
            " The model is unbuilt: shapes and multiply-adds are unknown until "
            "it is built (call `build(input_shape)`, or fit it)."
        )
    uncounted = sorted({n for r in stages + synths for n in r.uncounted})
    if uncounted:
        lines.append(
            " n/a: no multiply-add count for layer(s) " + ", ".join(uncounted) + "."
        )
    if synths:
        lines.append(
            " Extra cost: a synthesizer's MACs over those of the stage below it "
            "(forward passes)."
        )
    return lines


def _in_range(rows, layer_range):
    top = [r for r in rows if r.kind != "layer"]
    if layer_range is None:
        return rows
    if (
        len(layer_range) != 2
        or not isinstance(layer_range[0], str)
        or not isinstance(layer_range[1], str)
    ):
        raise ValueError(
            "layer_range must be a list or tuple of two strings. "
            f"Received: layer_range={layer_range}"
        )
    lower = [i for i, r in enumerate(top) if re.match(layer_range[0], r.name)]
    upper = [i for i, r in enumerate(top) if re.match(layer_range[1], r.name)]
    if not lower or not upper:
        raise ValueError(
            "Passed layer_names do not match the stage or synthesizer names in "
            f"the model. Received: layer_range={layer_range}"
        )
    start, stop = sorted((min(lower), max(upper)))
    kept = {id(r) for r in top[start : stop + 1]}
    stages = {r.index for r in top[start : stop + 1] if r.kind == "stage"}
    return [
        r for r in rows if id(r) in kept or (r.kind == "layer" and r.index in stages)
    ]


def _row_name(row):
    name = f"{row.name} ({type(row.layer).__name__})"
    if row.kind == "stage":
        return f"stage {row.index}: {name}"
    if row.kind == "synthesizer":
        return f"└ cut {row.index + 1}: {name}"
    return f"   └ {name}"


def _output_shape(layer, shape):
    if shape is None:
        return None
    try:
        return tuple(layer.compute_output_spec(keras.KerasTensor(shape)).shape)
    except (ValueError, TypeError, NotImplementedError):
        return None


def _params(layer):
    return layer.count_params() if layer.built else None


def _device(model, k, layer):
    if model.devices is not None:
        return model.devices[k]
    for variable in getattr(layer, "weights", []):
        device = getattr(getattr(variable, "value", variable), "device", "")
        if device:
            return device.split("device:")[-1]
    return "-"


def _count(weights):
    seen = {id(w): w for w in weights}
    total = 0
    for w in seen.values():
        n = 1
        for d in w.shape:
            n *= int(d)
        total += n
    return total


def _sum(values):
    return None if any(v is None for v in values) else sum(values)


def _sum_params(rows):
    total = _sum([r.params for r in rows])
    return "? (unbuilt)" if total is None else f"{total:,}"


def _format_shape(shape):
    return "?" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


def _format_params(params):
    return "0 (unbuilt)" if params is None else f"{params:,}"


def _format_macs(macs, built):
    if not built:
        return "?"
    return "n/a" if macs is None else f"{macs:,}"
