"""The pure trace arithmetic: op names to kinds, unions of intervals, and the
busy fractions and costs of hand-written traces."""

import dataclasses

import pytest

from keras_sg.profiling import (
    Gap,
    Op,
    ProfileResult,
    core_shares,
    core_time,
    cut_transfers,
    idle_gaps,
    idle_groups,
    is_op,
    op_kind,
    per_step_overhead,
    stage_of,
    summarize,
    union_length,
)
from keras_sg.schedules import simulate


@pytest.mark.parametrize(
    "name, kind",
    [
        ("stage_1/dense_input_synthesizer/dense/MatMul:MatMul", "I"),
        ("stage_0/low_rank_synthesizer/dense/MatMul:MatMul", "S"),
        ("stage_1/block_1/dense/MatMul:MatMul", "F"),
        ("stage_1/gradient_tape/block_1/dense/MatMul:MatMul", "B"),
        # Names as a traced train step writes them.
        ("StatefulPartitionedCall/stage_0/fcn_stage_0_1/relu_0_1/Relu:_MklMatMul", "F"),
        (
            "StatefulPartitionedCall/gradient_tape/stage_0/fcn/dense_0/MatMul:MatMul",
            "B",
        ),
        ("StatefulPartitionedCall/stage_0_1/dense_synthesizer_1/Relu:Relu", "S"),
        ("StatefulPartitionedCall/adam/Sub_14/ReadVariableOp:ReadVariableOp", "U"),
        ("StatefulPartitionedCall/adam_1/Sqrt:Sqrt", "U"),
        ("StatefulPartitionedCall/SGD/Mul:Mul", "U"),
        ("StatefulPartitionedCall/loss_scale_optimizer/Mul:Mul", "U"),
        ("StatefulPartitionedCall/compile_loss/Sum:Sum", "C"),
        ("StatefulPartitionedCall/madam/Sum:Sum", "C"),
        ("StatefulPartitionedCall/AssignAddVariableOp:AssignAddVariableOp", "C"),
        # Transfers, in any scope (names from real traces on logical devices).
        ("stage_0/cond_1/output/_49/_7:_Send", "T"),
        ("StatefulPartitionedCall/stage_1/Cast/_33:_Send", "T"),
        ("Identity_1/_61:_Send", "T"),
        ("StatefulPartitionedCall/adam_1/Add_4/ReadVariableOp/_3:_Send", "T"),
        ("stage_1/x/_5:_Recv", "T"),
        ("a/_HostRecv:_HostRecv", "T"),
        ("stage_1/activations_0_Dequeue:QueueDequeueV2", "T"),
        ("stage_0/targets_0_enqueue:QueueEnqueueV2", "T"),
        ("stage_0/targets_0_DequeueMany:QueueDequeueManyV2", "T"),
        ("stage_1/Sendx:Identity", "F"),  # a name, not an op type
        # AsyncPipelinedModel's stage optimizers run under the stage scope.
        ("stage_0/cond_3/then/_67/stage_0/cond_3/adam/Sub_2:Sub", "U"),
        ("stage_1/adam/Pow_2:Pow", "U"),
        ("stage_1/adam_lr_synthesizer/x:MatMul", "S"),  # not the scope "adam/"
        # Grappler's rewriters are no optimizer's scope.
        (
            "StatefulPartitionedCall/stage_0/ArithmeticOptimizer/"
            "ReorderCastLikeAndValuePreserving_float_Cast_1:Cast",
            "F",
        ),
        ("a/ArithmeticOptimizer/AddOpsRewrite_x:AddN", "C"),
        ("a/adam/ArithmeticOptimizer/AddOpsRewrite_x:AddN", "U"),
    ],
)
def test_op_names_give_kinds(name, kind):
    assert op_kind(name) == kind


@pytest.mark.parametrize(
    "name, stage",
    [
        ("stage_1/x:MatMul", 1),
        ("a/stage_12_3/x:MatMul", 12),  # the scope entered a fourth time
        ("a/gradient_tape/stage_2/x:MatMul", 2),
        ("a/mlp_stage_0/x:MatMul", None),  # a layer's name, not the scope
        ("a/stage_x/y:MatMul", None),
        ("a/x:MatMul", None),
    ],
)
def test_stage_scope_of_an_op(name, stage):
    assert stage_of(name) == stage


def test_only_op_events_are_ops():
    assert is_op("StatefulPartitionedCall/stage_0/x:MatMul")
    assert is_op("AssignVariableOp:AssignVariableOp")
    assert not is_op("ExecutorState::Process")
    assert not is_op("FunctionRun: __inference_step_12")
    assert not is_op("Iterator::Root::Prefetch")
    assert not is_op("EagerLocalExecute: DatasetCardinality")


def test_union_of_overlapping_intervals():
    intervals = [(8.0, 9.0), (2.0, 6.0), (0.0, 4.0), (1.0, 2.0)]  # any order
    assert union_length(intervals) == 7.0  # [0, 6] and [8, 9]
    assert union_length(intervals, begin=3.0) == 4.0  # [3, 6] and [8, 9]
    assert union_length(intervals, begin=3.0, end=8.5) == 3.5
    assert union_length([(0.0, 10.0, "F"), (2.0, 3.0, "B")]) == 10.0
    assert union_length([]) == 0.0


def _ops():
    """Two devices, two stages; times in ms."""
    return [
        # Device 0: F 0-4 and S 3-5 overlap (one inter-op pool), B 7-8.
        Op("s/stage_0/block/MatMul:MatMul", 0.0, 4.0),
        Op("s/stage_0_1/dense_synthesizer/MatMul:MatMul", 3.0, 5.0),
        Op("s/gradient_tape/stage_0/block/MatMul:MatMul", 7.0, 8.0),
        # Device 1: F 4-6, B 6-9, its input synthesizer 1-2.
        Op("s/stage_1/block/MatMul:MatMul", 4.0, 6.0),
        Op("s/gradient_tape/stage_1/block/MatMul:MatMul", 6.0, 9.0),
        Op("s/stage_1_1/dense_input_synthesizer/MatMul:MatMul", 1.0, 2.0),
        # No device known: the optimizer's update (3 ms) and other work.
        Op("s/adam/Sub:Sub", 9.0, 11.0),
        Op("s/adam/Sqrt:Sqrt", 9.5, 10.5),
        Op("s/compile_loss/Sum:Sum", 6.0, 6.5),
    ]


def test_busy_costs_and_timeline_of_a_hand_written_trace():
    summary = summarize(
        _ops(), num_devices=2, stage_devices=[0, 1], steps=2, update_shares=[0.8, 0.2]
    )
    # Window: the placed ops' span, 0-9 ms (the update has no device).
    assert summary.window == 9.0
    # Device 0 busy 0-5 and 7-8; device 1 1-2 and 4-9.
    assert summary.busy == (6.0 / 9.0, 6.0 / 9.0)
    # Per step (2 steps): device 0 F 4, S 2, B 1; update 3 * 0.8.
    assert summary.costs[0] == {
        "F": 2.0,
        "B": 0.5,
        "S": 1.0,
        "I": 0.0,
        "U": pytest.approx(1.2),
        "T": 0.0,
        "C": 0.0,
    }
    assert summary.costs[1] == {
        "F": 1.0,
        "B": 1.5,
        "S": 0.0,
        "I": 0.5,
        "U": pytest.approx(0.3),
        "T": 0.0,
        "C": 0.0,
    }
    assert summary.stage_costs == summary.costs  # one stage per device
    # On one core, F and S share 3-4 ms: 0.5 each (per step, of 2 steps).
    assert summary.core_costs[0] == pytest.approx(
        {"F": 1.75, "B": 0.5, "S": 0.75, "I": 0.0, "U": 1.2, "T": 0.0, "C": 0.0}
    )
    assert summary.core_costs[1] == pytest.approx(summary.costs[1])  # no overlap
    assert summary.unplaced == 0.25
    assert summary.steps == 2
    assert [(e.device, e.start, e.end, e.kind, e.stage) for e in summary.events] == [
        (0, 0.0, 4.0, "F", 0),
        (1, 1.0, 2.0, "I", 1),
        (0, 3.0, 5.0, "S", 0),
        (1, 4.0, 6.0, "F", 1),
        (1, 6.0, 9.0, "B", 1),
        (0, 7.0, 8.0, "B", 0),
    ]


def test_work_on_shared_cores_of_a_hand_written_trace():
    """The same trace, the devices having shared one core (`shared_work`):
    each instant counts 1 / n, n the busy devices plus the unclaimed ops."""

    def on(cores):
        return summarize(
            _ops(),
            num_devices=2,
            stage_devices=[0, 1],
            steps=2,
            update_shares=[0.8, 0.2],
            cores=cores,
        )

    summary = on(1)
    # Device 0: F 0-1 alone, 1-2 beside device 1's I (1/2), 2-3 alone, 3-4
    # shared with its own S (1/2 of 1); S 3-4 (1/2), 4-5 beside device 1's F
    # (1/2); B 7-8 beside device 1's B (1/2). Device 1: I 1/2; F 4-5 (1/2),
    # 5-6 alone; B 6-6.5 beside the loss (1/2), 6.5-7 alone, 7-8 (1/2), 8-9
    # alone. The two updates overlap 9.5-10.5: 2 ms of work, not 3.
    assert summary.cores == 1
    assert summary.work_costs[0] == pytest.approx(
        {"F": 3.0 / 2, "B": 0.5 / 2, "S": 1.0 / 2, "I": 0, "U": 1.6 / 2, "T": 0, "C": 0}
    )
    assert summary.work_costs[1] == pytest.approx(
        {
            "F": 1.5 / 2,
            "B": 2.25 / 2,
            "S": 0,
            "I": 0.5 / 2,
            "U": 0.4 / 2,
            "T": 0,
            "C": 0,
        }
    )
    # On two cores no more than two run at once: the work is the core costs.
    two = on(2)
    for work, core in zip(two.work_costs, two.core_costs, strict=True):
        assert work == pytest.approx(core)
    # Kept through a result's dict; none without cores.
    result = ProfileResult.from_summary(summary, ["a", "b"], [0, 1], 12.0, 8)
    again = ProfileResult.from_dict(result.to_dict())
    assert again.work_costs == result.work_costs and again.cores == 1
    plain = summarize(_ops(), num_devices=2, stage_devices=[0, 1], steps=2)
    assert plain.work_costs == () and plain.cores is None
    # Core time, every op counted (the loss and the update too): on one
    # core the union, 0-11 ms; on two, at most two ran at once, so every
    # op's duration: 4 + 2 + 1 + 2 + 3 + 1 + 2 + 1 + 0.5 = 16.5 ms. Per step.
    assert summary.core_time == pytest.approx(11.0 / 2)
    assert two.core_time == pytest.approx(16.5 / 2)
    assert again.core_time == summary.core_time and plain.core_time is None


def test_core_time_counts_ops_at_once_up_to_the_cores():
    three_at_once = [(0.0, 2.0, "F"), (0.0, 2.0, "B"), (1.0, 2.0, "U")]
    # 0-1: two ops, 1-2: three.
    assert core_time(three_at_once, 1) == 2.0
    assert core_time(three_at_once, 2) == 4.0
    assert core_time(three_at_once, 3) == 5.0
    assert core_time([(0.0, 1.0), (1.0, 2.0), (5.0, 5.0)], 2) == 2.0  # touching
    assert core_time([], 2) == 0.0
    with pytest.raises(ValueError, match="cores"):
        core_time(three_at_once, 0)


def test_core_shares_split_overlapping_time_equally():
    shares = core_shares(
        [
            (0.0, 4.0, "F"),
            (3.0, 5.0, "S", 0),
            (3.5, 4.5, "B"),
            (5.0, 6.0, "U"),  # touches S's end: no overlap
            (6.0, 7.0, "U"),
            (9.0, 9.0, "T"),  # empty
        ]
    )
    # 0-3 F alone; 3-3.5 F and S; 3.5-4 all three; 4-4.5 S and B; 4.5-5 S.
    assert shares == pytest.approx(
        {
            "F": 3.0 + 0.5 / 2 + 0.5 / 3,
            "S": 0.5 / 2 + 0.5 / 3 + 0.5 / 2 + 0.5,
            "B": 0.5 / 3 + 0.5 / 2,
            "U": 2.0,
            "T": 0.0,
        }
    )
    assert sum(shares.values()) == pytest.approx(
        union_length([(0.0, 4.0), (3.0, 5.0), (3.5, 4.5), (5.0, 7.0)])
    )
    assert core_shares([]) == {}


def test_idle_gaps_name_the_ops_on_either_side():
    ops = [
        Op("stage_1/MatMul:MatMul", 0.0, 4.0, 1),
        Op("stage_1/Relu:Relu", 1.0, 2.0, 1),  # inside MatMul: not "before"
        Op("stage_1/x/_7:_Send", 3.0, 4.5, 1),  # ends last: begins the gap
        Op("stage_1/Assign:AssignVariableOp", 6.0, 7.0, 1),
        Op("stage_1/Add:AddV2", 7.0, 8.0, 1),  # touches: no gap
        Op("stage_0/MatMul:MatMul", 4.5, 9.0, 0),  # another device
        Op("stage_1/Sub:Sub", 9.5, 10.0, 1),
        Op("stage_1/Mul:Mul", 9.6, 9.7, 1),
    ]
    gaps = idle_gaps(reversed(ops), device=1)
    assert gaps == [
        Gap(4.5, 6.0, "stage_1/x/_7:_Send", "stage_1/Assign:AssignVariableOp"),
        Gap(8.0, 9.5, "stage_1/Add:AddV2", "stage_1/Sub:Sub"),
    ]
    assert [g.length for g in gaps] == [1.5, 1.5]
    # Device 0 alone: one op, no gap; one device's ops without devices.
    assert idle_gaps(ops, device=0) == []
    alone = [Op(o.name, o.start, o.end) for o in ops if o.device == 1]
    assert idle_gaps(alone) == gaps
    assert idle_gaps([]) == []


def test_idle_gaps_grouped_by_the_ops_on_either_side_by_hand():
    send = "GroupCrossDeviceControlEdges_0/while/body/_1/while/NoOp/_63:_Send"
    ops = [
        Op(send, 0.0, 1.0),
        Op("while/body/_1/while/stage_1/Assign:AssignVariableOp", 3.0, 4.0),
        Op("while/body/_1/while/stage_1/b:MatMul", 4.0, 5.0),
        Op(send.replace("_1/", "_2/"), 5.0, 6.0),
        Op("while/body/_2/while/stage_1/Assign:AssignVariableOp", 7.0, 8.0),
        Op("while/body/_2/while/stage_1/cond/then/_5/x:Mul", 8.5, 9.0),
    ]
    # Gaps 1-3 and 6-7 (send -> assign), 8-8.5 (assign -> mul); 2 steps.
    assert idle_groups(ops, steps=2) == [
        {
            "before": "GroupCrossDeviceControlEdges_0/NoOp/_63:_Send",
            "after": "stage_1/Assign:AssignVariableOp",
            "ms_per_step": 1.5,
            "gaps": 2,
        },
        {
            "before": "stage_1/Assign:AssignVariableOp",
            "after": "stage_1/x:Mul",
            "ms_per_step": 0.25,
            "gaps": 1,
        },
    ]
    assert len(idle_groups(ops, steps=2, top=1)) == 1
    # One device's ops among others': the other device's gap is not counted.
    placed = [dataclasses.replace(op, device=1) for op in ops]
    other = [Op("stage_0/y:Mul", 0.0, 1.0, 0), Op("stage_0/z:Mul", 20.0, 21.0, 0)]
    assert idle_groups(placed + other, steps=2, device=1) == idle_groups(ops, steps=2)
    with pytest.raises(ValueError, match="steps=0"):
        idle_groups(ops, steps=0)


def test_per_step_overhead_of_a_synthetic_trace():
    # Two steps in 20 ms of wall time. Step 1: device 0 runs 0-3 and 4-6,
    # device 1 runs 2-5: some device works from 0 to 6. Then the optimizer
    # (on no device) 7-8. Step 2: 10-13, 14-16 and 12-15: 10 to 16. No op
    # runs for 20 - 6 - 1 - 6 = 7 ms: 3.5 ms per step.
    ops = [(0, 3), (4, 6), (2, 5), (7, 8), (10, 13), (14, 16), (12, 15)]
    assert per_step_overhead(ops, 20.0, 2) == pytest.approx(3.5)
    # Over a fractional number of steps (the servers' trace window).
    assert per_step_overhead(ops, 20.0, 2.5) == pytest.approx(2.8)
    with pytest.raises(ValueError, match="wall_time=12.0"):
        per_step_overhead(ops, 12.0, 2)
    with pytest.raises(ValueError, match="steps=0"):
        per_step_overhead(ops, 20.0, 0)


def test_a_results_per_step_overhead_counts_every_op_placed_or_not():
    summary = summarize(_ops(), num_devices=2, stage_devices=[0, 1], steps=2)
    # Some device works from 0 to 9, the update (no device) 9-11: 11 ms in
    # which an op runs; the timeline alone would say 9.
    assert summary.op_union == 11.0
    result = ProfileResult.from_summary(
        summary, ["/cpu:0", "/cpu:1"], [0, 1], wall_time=15.0
    )
    # 4 ms of the 15 with no op, over 2 steps.
    assert result.per_step_overhead == 2.0
    # Where each device waited: device 0 from its synthesizer's end (5) to
    # its backward (7), device 1 from its input synthesizer's end (2) to its
    # forward (4); the unplaced update and loss are in neither.
    assert result.idle_groups == (
        [
            {
                "before": "s/stage_0_1/dense_synthesizer/MatMul:MatMul",
                "after": "s/gradient_tape/stage_0/block/MatMul:MatMul",
                "ms_per_step": 1.0,
                "gaps": 1,
            }
        ],
        [
            {
                "before": "s/stage_1_1/dense_input_synthesizer/MatMul:MatMul",
                "after": "s/stage_1/block/MatMul:MatMul",
                "ms_per_step": 1.0,
                "gaps": 1,
            }
        ],
    )
    assert ProfileResult.from_dict(result.to_dict()).idle_groups == result.idle_groups
    assert ProfileResult.from_dict(result.to_dict()).per_step_overhead == 2.0
    newer = ("op_union", "idle_groups")
    saved_before = {k: v for k, v in result.to_dict().items() if k not in newer}
    assert ProfileResult.from_dict(saved_before).per_step_overhead is None
    assert ProfileResult.from_dict(saved_before).idle_groups == ()
    # An asynchronous model's stages above stage 0 run on while the profiler
    # stops: more work than stage 0's wall time, no overhead.
    assert dataclasses.replace(result, wall_time=10.0).per_step_overhead == 0.0


def _measured(**fields):
    """A profile of 2 steps of 256 examples: core costs, and summed
    durations twice as large (ops that shared a core)."""
    core = (
        {"F": 10.0, "B": 20.0, "U": 6.0, "T": 1.0, "C": 1.0},
        {"F": 12.0, "B": 22.0, "U": 6.0, "T": 3.0},
    )
    summed = tuple({k: 2 * v for k, v in c.items()} for c in core)
    return ProfileResult(
        **{
            **dict(
                devices=("127.0.0.1:1", "127.0.0.1:2"),
                stage_devices=(0, 1),
                busy=(0.5, 0.5),
                costs=summed,
                stage_costs=summed,
                unplaced=0.0,
                events=(),
                window=100.0,
                steps=2,
                wall_time=110.0,
                batch_size=256,
                core_costs=core,
                op_union=100.0,
            ),
            **fields,
        }
    )


def test_a_prediction_from_measured_core_costs_by_hand():
    result = _measured()
    # Backprop: 4 ms of transfers a step (core costs) over the cut's two
    # messages, 2 ms each on the receiver. F0 0-10, the activation on device
    # 1 10-12, F1 12-24, B1 24-46 (U1 46-52), the gradient on device 0
    # 46-48, B0 with the other work 48-69, U0 69-75; then the overhead,
    # (110 - 100) / 2 = 5 ms: 80 ms a step.
    assert result.predict_examples_per_s("backprop") == pytest.approx(256 / 80 * 1000)
    # GPipe, 2 micro-batches: 2 M = 4 messages a step, 1 ms each.
    sim = simulate(
        "gpipe",
        2,
        2,
        [5.0, 6.0],
        [10.5, 11.0],
        update=[6.0, 6.0],
        transfer=[1.0],
        per_step_overhead=5.0,
    )
    assert result.predict_examples_per_s("gpipe", micro_batches=2) == pytest.approx(
        256 / sim.step_time * 1000
    )


def test_a_prediction_on_shared_cores_by_hand():
    """`shared_cores=True`: the work costs, the devices sharing `cores`. As
    above, but device 1's update (6 ms of work from 46) shares one core
    with device 0's receive and backward (23 ms from 46): the update ends at
    58, device 0 has 17 ms left and ends at 75, its update at 81; with the
    overhead 86 ms a step. On two cores nothing is shared: 80 ms."""
    core = _measured().core_costs
    one = _measured(work_costs=core, cores=1)
    assert one.predict_examples_per_s("backprop", shared_cores=True) == pytest.approx(
        256 / 86 * 1000
    )
    assert one.predict_examples_per_s("backprop") == pytest.approx(256 / 80 * 1000)
    two = _measured(work_costs=core, cores=2)
    assert two.predict_examples_per_s("backprop", shared_cores=True) == pytest.approx(
        256 / 80 * 1000
    )
    # The work costs, not the core costs, are simulated.
    halved = tuple({k: v / 2 for k, v in c.items()} for c in core)
    fast = _measured(work_costs=halved, cores=2)
    assert fast.predict_examples_per_s(
        "backprop", shared_cores=True
    ) > two.predict_examples_per_s("backprop", shared_cores=True)
    with pytest.raises(ValueError, match="needs the result's work costs and cores"):
        _measured().predict_examples_per_s("backprop", shared_cores=True)
    # A trace whose ops used 200 ms of core time a step (a device that ran
    # several of its ops at once): two cores need 100 ms, + 5: 105 ms.
    busy = _measured(work_costs=core, cores=2, core_time=200.0)
    assert busy.predict_examples_per_s("backprop", shared_cores=True) == pytest.approx(
        256 / 105 * 1000
    )
    assert busy.predict_examples_per_s("backprop") == pytest.approx(256 / 80 * 1000)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"batch_size": None}, "without batch_size"),
        ({"core_costs": ()}, "without core_costs"),
        ({"op_union": None}, "without op_union"),
        ({"stage_devices": (1, 0)}, r"stage_devices=\[1, 0\] on 2 devices"),
    ],
)
def test_a_prediction_without_what_it_needs_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        _measured(**fields).predict_examples_per_s("pipelined")


def test_equal_update_shares_by_default():
    summary = summarize(_ops(), num_devices=2, stage_devices=[0, 1], steps=1)
    assert [c["U"] for c in summary.costs] == [1.5, 1.5]


def test_ops_on_known_devices_and_two_stages_on_one():
    # Server traces: every op's device is known, the optimizer's too; stages
    # 0 and 1 share device 0, stage 2 is on device 1.
    ops = [
        Op("s/stage_0/x:MatMul", 10.0, 12.0, 0),
        Op("s/stage_1/x:MatMul", 12.0, 13.0, 0),
        Op("s/adam/x:Sub", 13.0, 15.0, 0),
        Op("s/_Send:_Send", 15.0, 16.0, 0),
        Op("s/x:Const", 16.0, 16.25, 0),
        Op("s/stage_2/x:MatMul", 11.0, 14.0, 1),
        Op("s/adam/x:Sub", 14.0, 14.5, 1),
    ]
    summary = summarize(ops, num_devices=2, stage_devices=[0, 0, 1], steps=1)
    assert summary.window == 6.25
    assert summary.busy == (1.0, 3.5 / 6.25)  # a transfer is busy time
    assert summary.costs[0] == {
        "F": 3.0,
        "B": 0,
        "S": 0,
        "I": 0,
        "U": 2.0,
        "T": 1.0,
        "C": 0.25,
    }
    assert summary.stage_costs[0] == {
        "F": 2.0,
        "B": 0,
        "S": 0,
        "I": 0,
        "U": 1.0,
        "T": 0.0,  # the send carries no stage scope
        "C": 0.125,
    }
    assert summary.stage_costs[1]["F"] == 1.0
    assert summary.stage_costs[1]["U"] == 1.0
    assert summary.stage_costs[2]["U"] == 0.5
    assert summary.unplaced == 0.0
    # Optimizer ops on a known device are in its timeline, without a stage.
    assert [(e.kind, e.stage) for e in summary.events if e.device == 0][-3:] == [
        ("U", -1),
        ("T", -1),
        ("C", -1),
    ]


def test_transfers_are_their_own_kind_not_their_scopes_work():
    # Logical devices: sends and queue ops under a stage scope are placed on
    # the stage's device as transfers; the stage optimizers' ops as updates.
    ops = [
        Op("stage_0/dense/MatMul:MatMul", 0.0, 2.0),
        Op("stage_0/cond/output/_4/_7:_Send", 2.0, 2.5),
        Op("stage_0/activations_0_enqueue:QueueEnqueueV2", 2.5, 3.0),
        Op("stage_0/adam/Sub:Sub", 3.0, 4.0),
        Op("stage_1/activations_0_Dequeue:QueueDequeueV2", 1.0, 3.0),
        Op("stage_1/dense/MatMul:MatMul", 3.0, 5.0),
        Op("stage_1/gradient_tape/dense/MatMul:MatMul", 5.0, 6.0),
        Op("stage_1/targets_0_enqueue/_2:_Send", 6.0, 6.5),
        Op("stage_1/adam/Sqrt:Sqrt", 6.5, 7.0),
        Op("Identity/_3:_Send", 7.0, 8.0),  # to the client: unplaced
    ]
    summary = summarize(ops, num_devices=2, stage_devices=[0, 1], steps=2)
    assert summary.costs[0] == {
        "F": 1.0,
        "B": 0.0,
        "S": 0.0,
        "I": 0.0,
        "U": 0.5,
        "T": 0.5,
        "C": 0.0,
    }
    assert summary.costs[1] == {
        "F": 1.0,
        "B": 0.5,
        "S": 0.0,
        "I": 0.0,
        "U": 0.25,
        "T": 1.25,
        "C": 0.0,
    }
    assert [c["T"] for c in summary.stage_costs] == [0.5, 1.25]
    assert summary.unplaced == 0.5
    assert summary.window == 7.0
    assert summary.busy == (4.0 / 7.0, 6.0 / 7.0)
    kinds = [(e.device, e.kind) for e in summary.events if e.kind in "TU"]
    assert kinds == [(1, "T"), (0, "T"), (0, "T"), (0, "U"), (1, "T"), (1, "U")]
    # Per message: each device's T over its one cut, both over 2 messages.
    assert cut_transfers(summary.costs, [0, 1], messages=2) == [0.875]


def test_cut_transfers_share_a_device_between_its_cuts():
    costs = [{"T": 2.0}, {"T": 3.0}, {"T": 1.0}, {"F": 1.0}]
    # Stages 0, 1 on device 0; 2 on device 1; 3 on device 2: cut 0 inside
    # device 0, cut 1 between 0 and 1, cut 2 between 1 and 2 (device 1's
    # transfers shared by its two cuts).
    assert cut_transfers(costs, [0, 0, 1, 2], messages=4) == [
        0.0,
        (2.0 + 1.5) / 4,
        (1.5 + 1.0) / 4,
    ]
    assert cut_transfers(costs[:2], [0, 1], messages=1) == [5.0]
    assert cut_transfers([{"F": 1.0}], [0], messages=2) == []
    with pytest.raises(ValueError, match="Received: messages=0"):
        cut_transfers(costs, [0, 1], messages=0)
    with pytest.raises(ValueError, match=r"Received: stage_devices=\[0, 4\]"):
        cut_transfers(costs, [0, 4], messages=2)


def test_a_trace_without_stage_ops_is_refused():
    with pytest.raises(ValueError, match="no op of a stage"):
        summarize(
            [Op("s/adam/x:Sub", 0.0, 1.0)],
            num_devices=1,
            stage_devices=[0],
            steps=1,
        )


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"Received: steps=0"):
        summarize(_ops(), num_devices=2, stage_devices=[0, 1], steps=0)
    with pytest.raises(ValueError, match=r"Received: stage_devices=\[0, 2\]"):
        summarize(_ops(), num_devices=2, stage_devices=[0, 2], steps=1)
    with pytest.raises(ValueError, match=r"Received: update_shares=\[0.5, 0.6\]"):
        summarize(
            _ops(),
            num_devices=2,
            stage_devices=[0, 1],
            steps=1,
            update_shares=[0.5, 0.6],
        )
