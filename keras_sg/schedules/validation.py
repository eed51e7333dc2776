"""The simulator against the schedules measured in docs/benchmarks.md.

`scripts/benchmark_pipeline.py` writes, beside its report, the measured costs
of every schedule it measured (docs/benchmarks.json): each device's forward,
backward, synthesizer, input synthesizer, update, transfer and other costs
(ms per step) and the per-step overhead seen in its trace (the time in which
no device runs an op). `predict_examples_per_s` is the simulator's prediction
from such costs, and `validate_measured_costs` recomputes it for every
schedule of a file: the simulator is checked against real costs, with no
fitted term.
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence

from keras_sg.schedules import _validation as checks
from keras_sg.schedules.simulator import simulate

# ------------------------------------------------ predictions from measured costs

# The model kinds of scripts/benchmark_pipeline.py, and "zb_h1": Zero Bubble
# ZB-H1, predicted from GPipe's measured costs (simulated, never measured).
MODELS = ("backprop", "gpipe", "zb_h1", "dni", "unlocked", "pipelined", "async")
# "T" (transfers, measured by keras_sg.profiling) is accepted and not used:
# transfers go to the simulator as `transfer`, per message and cut.
COST_KINDS = ("F", "B", "S", "I", "U", "T", "C")
# Steady-state steps simulated for pipelined DNI (one batch each).
PIPELINED_DNI_STEPS = 8


def _device_costs(costs: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    """Per kind, one cost per device (a kind left out of a device's dict is 0)."""
    if isinstance(costs, str | bytes) or not isinstance(costs, Sequence) or not costs:
        raise ValueError(
            f"`costs` must hold one dict of costs per device. Received: costs={costs!r}"
        )
    for c in costs:
        if not isinstance(c, Mapping) or set(c) - set(COST_KINDS):
            raise ValueError(
                f"Each device's costs must be a dict with keys of {COST_KINDS}. "
                f"Received: {c!r}"
            )
        if "F" not in c or "B" not in c:
            raise ValueError(
                f"Each device's costs must hold at least F and B. Received: {c!r}"
            )
    return {kind: [float(c.get(kind, 0.0)) for c in costs] for kind in COST_KINDS}


def predict_examples_per_s(
    model: str,
    costs: Sequence[Mapping[str, float]],
    *,
    batch_size: int,
    micro_batches: int = 8,
    per_step_overhead: float = 0.0,
    transfer: float | Sequence[float] = 0.0,
    queue_capacity: int = 2,
    update_before_send: bool = False,
    cores: int | None = None,
    core_time: float | None = None,
) -> float:
    """The simulator's examples/s for measured per-device costs.

    One stage per device. Each device's costs are in ms per training step
    (one batch of `batch_size` examples): "F" forward, "B" backward, "S"
    gradient synthesizer, "I" input synthesizer, "U" optimizer update, "C"
    other work (on TensorFlow servers: sends, control edges, bookkeeping),
    counted as busy time with the backward pass. The schedule simulated for
    each model:

    - "backprop" (`DecoupledModel(method="backprop")`): "naive", one unit;
    - "gpipe" (`GPipeModel`): "gpipe" with `micro_batches` micro-batches,
      F and B (+ C) split evenly over them, one update per step;
    - "zb_h1": "zb_h1" on the same costs as "gpipe" (half of each backward
      the weight gradient): what ZB-H1 would do with GPipe's work;
    - "dni" (`DecoupledModel(method="dni")`): "dni", one step;
    - "unlocked" (`UnlockedModel`): the composed forward pass that it runs
      before each step for the loss it logs (stage on stage, with a
      transfer per cut; half of each measured F), then "fully_unlocked",
      one step, on the other half of F;
    - "pipelined" (`PipelinedModel`): "pipelined_dni", over
      `PIPELINED_DNI_STEPS` steady-state steps;
    - "async" (`AsyncPipelinedModel`, free-running): "async" with
      `queue_capacity`, over `PIPELINED_DNI_STEPS` steady-state batches.

    A device's "T" (transfers) is not counted in its costs: pass the
    transfers per message as `transfer` (`keras_sg.profiling.cut_transfers`).

    The update, the transfers and the per-step overhead go to `simulate` as
    `update`, `transfer` and `per_step_overhead`.

    Args:
        model: one of `MODELS`.
        costs: per device, a dict of ms per step by kind (`COST_KINDS`);
            kinds left out are 0, F and B are required.
        batch_size: examples per step.
        micro_batches: GPipe's (and ZB-H1's) micro-batches per step.
        per_step_overhead: ms per step in which every device waits.
        transfer: ms the receiving device spends per message across each
            cut (one micro-batch's activation or gradient).
        queue_capacity: "async" only: the capacity of its queues.
        update_before_send: "backprop" and "gpipe" only: each stage's update
            runs before the gradient of its last backward is sent down
            (`simulate(..., update_before_send=True)`), as TensorFlow's
            executor sometimes ordered it on the servers before
            `keras_sg.models.steps.arrived` made the gradient go first.
        cores: None (each device has a core of its own), or the cores the
            devices share (`simulate(..., cores=...)`); the costs are then
            each device's work on a core of its own
            (`keras_sg.profiling.shared_work`).
        core_time: with `cores`, None or the ms of core time per step that
            the measured ops used (`keras_sg.profiling.core_time`): a step
            then takes at least core_time / cores + per_step_overhead. The
            simulator's device runs one op at a time; a logical device of
            one process may run several at once on the shared cores
            (GPipe's micro-batches do), and its busy time then counts less
            work than it did, which this bound puts back.

    Returns:
        Examples per second.
    """
    if model not in MODELS:
        raise ValueError(f"`model` must be one of {MODELS}. Received: model={model!r}")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be an integer >= 1. Received: batch_size={batch_size!r}"
        )
    if update_before_send and model not in ("backprop", "gpipe"):
        raise ValueError(
            "`update_before_send` needs model 'backprop' or 'gpipe'. "
            f"Received: update_before_send=True with model={model!r}"
        )
    if core_time is not None:
        if cores is None:
            raise ValueError(
                "`core_time` needs `cores`, the cores it was measured on. "
                f"Received: core_time={core_time!r} with cores=None"
            )
        core_time = checks.check_nonnegative("core_time", core_time)
    ms = _batch_ms(
        model,
        costs,
        micro_batches=micro_batches,
        per_step_overhead=per_step_overhead,
        transfer=transfer,
        queue_capacity=queue_capacity,
        update_before_send=update_before_send,
        cores=cores,
    )
    if core_time is not None:
        ms = max(ms, core_time / cores + per_step_overhead)
    return batch_size / ms * 1000


def _batch_ms(
    model,
    costs,
    *,
    micro_batches,
    per_step_overhead,
    transfer,
    queue_capacity,
    update_before_send,
    cores,
) -> float:
    """The simulated ms per batch of `predict_examples_per_s`."""
    c = _device_costs(costs)
    k = len(costs)
    forward = c["F"]
    backward = [b + o for b, o in zip(c["B"], c["C"], strict=True)]
    extra = dict(
        update=c["U"],
        transfer=transfer,
        per_step_overhead=per_step_overhead,
        update_before_send=update_before_send,
        cores=cores,
    )
    if model == "backprop":
        sim = simulate("naive", k, 1, forward, backward, **extra)
        return sim.step_time
    if model in ("gpipe", "zb_h1"):
        m = micro_batches
        sim = simulate(
            "gpipe" if model == "gpipe" else "zb_h1",
            k,
            m,
            [f / m for f in forward],
            [b / m for b in backward],
            **extra,
        )
        return sim.step_time
    synth = c["S"][:-1]
    if model == "dni":
        sim = simulate("dni", k, 1, forward, backward, synth, **extra)
        return sim.step_time
    if model == "unlocked":
        # UnlockedModel first runs the composed network, stage on stage, for
        # the loss it logs, and trains only after it: half of each measured
        # forward is that pass, each stage waiting for the one below.
        forward = [f / 2 for f in forward]
        composed = sum(forward) + sum(checks.cut_costs("transfer", transfer, k))
        sim = simulate(
            "fully_unlocked",
            k,
            1,
            forward,
            backward,
            synth,
            input_synth=c["I"][1:],
            **extra,
        )
        return composed + sim.step_time
    m = PIPELINED_DNI_STEPS
    if model == "async":
        sim = simulate(
            "async",
            k,
            m,
            forward,
            backward,
            synth,
            queue_capacity=queue_capacity,
            **extra,
        )
    else:
        sim = simulate("pipelined_dni", k, m, forward, backward, synth, **extra)
    return sim.step_time / m


@dataclasses.dataclass(frozen=True)
class MeasuredCosts:
    """One measured schedule with its measured costs, as the script writes them.

    Attributes:
        setting: "servers" (two TensorFlow servers pinned to one core each)
            or "logical" (K logical CPU devices of one process).
        name: the measurement's name, e.g. "gpipe (K=2)".
        model: the model kind, one of `MODELS` but "zb_h1".
        num_devices: K.
        batch_size: examples per step.
        micro_batches: GPipe's micro-batches per step.
        examples_per_s: measured examples/s (the median of the runs).
        costs: per device, ms per step by kind, of the median run.
        per_step_overhead: ms per step in which every device waits,
            measured in the median run's trace.
        transfer: ms per message per cut, or None when not measured apart
            (then 0 in the prediction; the transfers are in the other costs).
        queue_capacity: the queues' capacity of an "async" model, else None.
        work_costs: per device, the costs as work on a core of its own when
            the devices shared `cores` cores (logical devices;
            `keras_sg.profiling.shared_work`), or None when not measured.
        cores: the cores the devices shared, or None.
        traced_examples_per_s: examples/s of the median run's traced steps,
            whose costs these are (the profiler slows the steps it traces),
            or None when not recorded.
        core_time: ms of core time per step that the median run's traced
            ops used on the `cores` cores (`keras_sg.profiling.core_time`),
            or None when not recorded.
    """

    setting: str
    name: str
    model: str
    num_devices: int
    batch_size: int
    micro_batches: int
    examples_per_s: float
    costs: tuple[dict[str, float], ...]
    per_step_overhead: float
    transfer: tuple[float, ...] | None = None
    queue_capacity: int | None = None
    work_costs: tuple[dict[str, float], ...] | None = None
    cores: int | None = None
    traced_examples_per_s: float | None = None
    core_time: float | None = None

    def predict(self, model: str | None = None, shared_cores: bool = False) -> float:
        """The simulator's examples/s from these costs (`model` overrides).

        `shared_cores=True` simulates the devices sharing `cores` cores, on
        `work_costs` (a measurement without them is refused), a step taking
        at least `core_time` over `cores` where it is recorded."""
        costs, cores = self.costs, None
        if shared_cores:
            if self.work_costs is None or self.cores is None:
                raise ValueError(
                    "shared_cores=True needs the measurement's work_costs and "
                    f"cores. Received: measurement {self.name!r} without them"
                )
            costs, cores = self.work_costs, self.cores
        return predict_examples_per_s(
            self.model if model is None else model,
            costs,
            batch_size=self.batch_size,
            micro_batches=self.micro_batches,
            per_step_overhead=self.per_step_overhead,
            transfer=0.0 if self.transfer is None else list(self.transfer),
            **(
                {}
                if self.queue_capacity is None
                else {"queue_capacity": self.queue_capacity}
            ),
            cores=cores,
            core_time=self.core_time if shared_cores else None,
        )


def read_measured_costs(path: str | os.PathLike) -> tuple[MeasuredCosts, ...]:
    """Reads the measured costs that scripts/benchmark_pipeline.py wrote.

    The file is JSON: `{"measurements": [...]}`, each measurement a dict with
    the fields of `MeasuredCosts` (`num_devices` as "devices",
    `per_step_overhead` as "per_step_overhead_ms", `transfer` as
    "transfer_ms", `queue_capacity` as "capacity"; `work_costs`, `cores`,
    `traced_examples_per_s` and `core_time` (as "core_time_ms") if the file
    has them); other keys (every
    run's numbers, the load) are ignored.

    Raises:
        ValueError: naming the measurement, for a missing field.
    """
    data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    rows = []
    for i, m in enumerate(data.get("measurements", ())):
        try:
            transfer = m.get("transfer_ms")
            rows.append(
                MeasuredCosts(
                    setting=m["setting"],
                    name=m["name"],
                    model=m["model"],
                    num_devices=int(m["devices"]),
                    batch_size=int(m["batch_size"]),
                    micro_batches=int(m["micro_batches"]),
                    examples_per_s=float(m["examples_per_s"]),
                    costs=tuple(dict(c) for c in m["costs"]),
                    per_step_overhead=float(m["per_step_overhead_ms"]),
                    transfer=None if transfer is None else tuple(transfer),
                    queue_capacity=m.get("capacity"),
                    work_costs=(
                        tuple(dict(c) for c in m["work_costs"])
                        if m.get("work_costs")
                        else None
                    ),
                    cores=m.get("cores"),
                    traced_examples_per_s=m.get("traced_examples_per_s"),
                    core_time=m.get("core_time_ms"),
                )
            )
        except KeyError as missing:
            raise ValueError(
                f"Measurement {i} of {os.fspath(path)!r} lacks the field "
                f"{missing}. Received: {m!r}"
            ) from None
    if not rows:
        raise ValueError(f"{os.fspath(path)!r} holds no measurement.")
    return tuple(rows)


def validate_measured_costs(
    path: str | os.PathLike, shared_cores: bool = True
) -> list[tuple[MeasuredCosts, float, float]]:
    """The simulator against every schedule of a measured-costs file.

    Args:
        path: a JSON file written by scripts/benchmark_pipeline.py (see
            `read_measured_costs`).
        shared_cores: predict the schedules that have `work_costs` (logical
            devices) with their devices sharing `cores` cores
            (`MeasuredCosts.predict`), as the benchmark does; the others,
            and all with False, with a core for each device.

    Returns:
        Per measured schedule: (the measurement, the simulator's examples/s
        from its costs and measured per-step overhead, the relative error
        (predicted - measured) / measured).
    """
    table = []
    for row in read_measured_costs(path):
        shared = shared_cores and row.work_costs is not None and row.cores is not None
        predicted = row.predict(shared_cores=shared)
        table.append(
            (row, predicted, (predicted - row.examples_per_s) / row.examples_per_s)
        )
    return table
