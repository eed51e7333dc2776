"""The measured numbers and timeline of some profiled training steps."""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from keras_sg.profiling.trace import TraceSummary
from keras_sg.schedules.timeline import Event


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """What profiling some training steps measured.

    Times are in ms. Costs hold the kinds of `keras_sg.profiling.op_kind`:
    "F" forward, "B" backward, "S" synthesizer, "I" input synthesizer, "U"
    optimizer update, "T" transfers (sends, receives, queue ops), "C" other
    work (bookkeeping).

    Attributes:
        devices: the device of each timeline row (a device string, or a
            server's address).
        stage_devices: the row of each stage.
        busy: per device, the share of `window` in which it ran at least
            one op.
        costs: per device, ms of work per step, by kind.
        stage_costs: per stage, ms of work per step, by kind (a device's "U"
            and "C" are shared by its stages; "T" is that of the stage's
            scope).
        unplaced: ms per step of ops that no device or stage claims (see
            `keras_sg.profiling.summarize`).
        events: the measured timeline, times from the first op (ms).
        window: ms from the first traced op to the last.
        steps: training steps traced.
        wall_time: wall-clock ms of those steps.
        batch_size: examples per step, None if not known.
        core_costs: per device, its busy time per step by kind, ops that run
            at once sharing their time (see `keras_sg.profiling.core_shares`):
            the costs of a device with one core, such as a TensorFlow server
            pinned to one. Empty in a result saved before they were kept.
        op_union: ms in which at least one op of the trace ran, on any
            device or none (the optimizer's and the loss's ops on logical
            devices included); None in a result saved before it was kept.
        idle_groups: per device, where it waited: the largest groups of its
            idle time by the ops on either side of each gap, each a dict of
            "before", "after", "ms_per_step" and "gaps"
            (`keras_sg.profiling.idle_groups`); empty in a result saved
            before they were kept.
        work_costs: per device, its costs as the work of a device with a
            core of its own, when the devices shared `cores` cores (logical
            devices of one process; `keras_sg.profiling.shared_work`): the
            costs for `keras_sg.schedules.simulate(..., cores=cores)`. Empty
            for servers and in a result saved before they were kept.
        cores: the cores the devices shared, or None.
        core_time: with `cores`, ms of core time per step that the trace's
            ops used (`keras_sg.profiling.core_time`), or None.
    """

    devices: tuple[str, ...]
    stage_devices: tuple[int, ...]
    busy: tuple[float, ...]
    costs: tuple[dict[str, float], ...]
    stage_costs: tuple[dict[str, float], ...]
    unplaced: float
    events: tuple[Event, ...]
    window: float
    steps: float
    wall_time: float
    batch_size: int | None = None
    core_costs: tuple[dict[str, float], ...] = ()
    op_union: float | None = None
    idle_groups: tuple[list[dict], ...] = ()
    work_costs: tuple[dict[str, float], ...] = ()
    cores: int | None = None
    core_time: float | None = None

    @classmethod
    def from_summary(
        cls,
        summary: TraceSummary,
        devices,
        stage_devices,
        wall_time: float,
        batch_size: int | None = None,
    ) -> "ProfileResult":
        """A result from a trace's summary and the wall time of its steps."""
        return cls(
            devices=tuple(devices),
            stage_devices=tuple(stage_devices),
            busy=summary.busy,
            costs=summary.costs,
            stage_costs=summary.stage_costs,
            unplaced=summary.unplaced,
            events=summary.events,
            window=summary.window,
            steps=summary.steps,
            wall_time=wall_time,
            batch_size=batch_size,
            core_costs=summary.core_costs,
            op_union=summary.op_union,
            idle_groups=summary.idle_groups,
            work_costs=summary.work_costs,
            cores=summary.cores,
            core_time=summary.core_time,
        )

    @property
    def num_devices(self) -> int:
        """Number of devices (timeline rows)."""
        return len(self.devices)

    @property
    def step_time(self) -> float:
        """Wall-clock ms per step."""
        return self.wall_time / self.steps

    @property
    def traced_step_time(self) -> float:
        """ms per step in the trace: `window / steps`."""
        return self.window / self.steps

    @property
    def examples_per_second(self) -> float | None:
        """Examples per second of wall time; None if `batch_size` is."""
        if self.batch_size is None:
            return None
        return self.batch_size * self.steps / self.wall_time * 1000

    def cut_transfers(self, messages: float) -> list[float]:
        """Per cut, ms per message across it (see
        `keras_sg.profiling.cut_transfers`): the simulator's `transfer`."""
        from keras_sg.profiling.trace import cut_transfers

        return cut_transfers(self.costs, self.stage_devices, messages)

    @property
    def per_step_overhead(self) -> float | None:
        """ms per step in which no op ran, on any device: the time in which
        every device waited (`keras_sg.profiling.per_step_overhead`), the
        simulator's `per_step_overhead`.

        The wall time less `op_union`, over the steps. An asynchronous
        model's stages above stage 0 run on while the profiler stops, so its
        trace may hold a little more work than stage 0's window: then the
        ops' time counts as the wall time, and the overhead is 0. None in a
        result saved before `op_union` was kept.
        """
        if self.op_union is None:
            return None
        wall = max(self.wall_time, self.op_union)
        return (wall - self.op_union) / self.steps

    def predict_examples_per_s(
        self,
        model: str,
        *,
        micro_batches: int = 8,
        queue_capacity: int = 2,
        update_before_send: bool = False,
        shared_cores: bool = False,
    ) -> float:
        """The simulator's examples/s for a schedule on these measured costs.

        What `scripts/benchmark_pipeline.py` predicts for each schedule it
        measures (docs/benchmarks.md): each device's busy time by kind
        (`core_costs`), the transfer per message across each cut
        (`keras_sg.profiling.cut_transfers` on those costs) and the
        per-step overhead go to
        `keras_sg.schedules.validation.predict_examples_per_s`. On the
        costs of a profiled GPipe model, model="zb_h1" says what Zero Bubble
        would do with the same work; on a backprop model's, "pipelined" or
        "async" says what decoupling would give if each stage's work stayed
        as it is (a synthesizer's cost, not measured there, counts as 0).

        Args:
            model: the schedule, one of
                `keras_sg.schedules.validation.MODELS`.
            micro_batches: "gpipe" and "zb_h1": micro-batches per step (2
                messages per cut and micro-batch; 2 per step for the others).
            queue_capacity: "async": the capacity of its queues.
            update_before_send: see `predict_examples_per_s`.
            shared_cores: simulate the devices sharing `cores` cores, on
                `work_costs` (logical devices of one process), instead of
                each with a core of its own on `core_costs`; the step then
                takes at least `core_time` over `cores` (when known).

        Raises:
            ValueError: if the result lacks what the simulator needs (its
                batch size, its core costs, its ops' time), or its stages
                are not one per device, stage k on device k.
        """
        from keras_sg.schedules.validation import predict_examples_per_s

        missing = [
            name
            for name, value in (
                ("batch_size", self.batch_size),
                ("core_costs", self.core_costs or None),
                ("op_union", self.op_union),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                "A prediction needs the result's batch size, core costs and "
                f"ops' time. Received: a result without {', '.join(missing)}"
            )
        costs, cores = self.core_costs, None
        if shared_cores:
            if not self.work_costs or self.cores is None:
                raise ValueError(
                    "shared_cores=True needs the result's work costs and "
                    "cores (a trace of logical devices of one process). "
                    "Received: a result without them"
                )
            costs, cores = self.work_costs, self.cores
        if self.stage_devices != tuple(range(self.num_devices)):
            raise ValueError(
                "The simulator runs stage k on device k, one stage per device. "
                f"Received: stage_devices={list(self.stage_devices)} on "
                f"{self.num_devices} devices"
            )
        transfer = self.transfer_per_message(
            model, micro_batches=micro_batches, shared_cores=shared_cores
        )
        return predict_examples_per_s(
            model,
            costs,
            batch_size=self.batch_size,
            micro_batches=micro_batches,
            per_step_overhead=self.per_step_overhead,
            transfer=transfer,
            queue_capacity=queue_capacity,
            update_before_send=update_before_send,
            cores=cores,
            core_time=self.core_time if shared_cores else None,
        )

    def transfer_per_message(
        self, model: str, *, micro_batches: int = 8, shared_cores: bool = False
    ) -> list:
        """Per cut, ms per message across it, as `predict_examples_per_s`
        charges it: the devices' transfers in `core_costs` (`work_costs`
        with `shared_cores`) over the messages a step of `model` sends
        across each cut (2, an activation up and a gradient or target down;
        2 per micro-batch for "gpipe" and "zb_h1")."""
        from keras_sg.profiling.trace import cut_transfers

        costs = self.work_costs if shared_cores else self.core_costs
        messages = 2 * micro_batches if model in ("gpipe", "zb_h1") else 2
        return cut_transfers(costs, self.stage_devices, messages)

    @property
    def idle_fraction(self) -> tuple[float, ...]:
        """Per device, `1 - busy`."""
        return tuple(1.0 - b for b in self.busy)

    def intervals(self) -> list[list[tuple[float, float, str]]]:
        """Per device, its (start, end, kind) op intervals in time order."""
        rows = [[] for _ in self.devices]
        for e in self.events:
            rows[e.device].append((e.start, e.end, e.kind))
        return rows

    def draw(
        self,
        path: str | os.PathLike,
        title: str | None = None,
        steps: float = 2,
    ) -> str:
        """Draws the measured timeline as a PNG (see `draw_timelines`).

        Args:
            path: the PNG file to write; its folder must exist.
            title: the panel's title.
            steps: how many steps of the trace to show, from its start.

        Returns:
            The path written, as a string.
        """
        from keras_sg.profiling.drawing import draw_timelines

        return draw_timelines([self], path, titles=[title or ""], steps=steps)

    def to_dict(self, max_events: int | None = None) -> dict[str, Any]:
        """The result as JSON-friendly lists and dicts (`from_dict` reads it).

        Args:
            max_events: keep at most this many events per device (the
                earliest), to keep files small; None keeps all.
        """
        kept, counts = [], [0] * self.num_devices
        for e in self.events:
            if max_events is None or counts[e.device] < max_events:
                counts[e.device] += 1
                kept.append([e.device, e.start, e.end, e.kind, e.stage])
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(
            devices=list(self.devices),
            stage_devices=list(self.stage_devices),
            busy=list(self.busy),
            costs=[dict(c) for c in self.costs],
            stage_costs=[dict(c) for c in self.stage_costs],
            core_costs=[dict(c) for c in self.core_costs],
            work_costs=[dict(c) for c in self.work_costs],
            idle_groups=[[dict(g) for g in groups] for groups in self.idle_groups],
            events=kept,
        )
        return fields

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "ProfileResult":
        """The result that `to_dict` wrote."""
        fields = dict(fields)
        events = tuple(
            Event(device, start, end, kind, -1, stage, -1)
            for device, start, end, kind, stage in fields.pop("events")
        )
        return cls(
            devices=tuple(fields.pop("devices")),
            stage_devices=tuple(fields.pop("stage_devices")),
            busy=tuple(fields.pop("busy")),
            costs=tuple(dict(c) for c in fields.pop("costs")),
            stage_costs=tuple(dict(c) for c in fields.pop("stage_costs")),
            core_costs=tuple(dict(c) for c in fields.pop("core_costs", ())),
            work_costs=tuple(dict(c) for c in fields.pop("work_costs", ())),
            idle_groups=tuple(
                [dict(g) for g in groups] for groups in fields.pop("idle_groups", ())
            ),
            events=events,
            **fields,
        )
