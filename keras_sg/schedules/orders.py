"""Per-device operation orders of the schedules that flush after every step.

An operation is a key (kind, micro-batch, stage) with kind "F" or "B". Each
function returns, per device, the order in which that device runs its
operations; `keras_sg.schedules.engine.list_schedule` then times them.
"""

OpKey = tuple[str, int, int]


def naive_orders(num_devices: int) -> list[list[OpKey]]:
    """Returns the order of plain model-parallel backprop.

    The whole batch is one unit (micro-batch 0): its forward runs through the
    devices one after another, then its backward runs back. Running M
    micro-batches strictly one after another gives the same step time and idle
    fractions; treating the batch as one unit keeps the timeline short.

    Args:
        num_devices: number of devices K, one stage each.

    Returns:
        Per device d: [F(0, d), B(0, d)].
    """
    return [[("F", 0, d), ("B", 0, d)] for d in range(num_devices)]


def gpipe_orders(num_devices: int, num_microbatches: int) -> list[list[OpKey]]:
    """Returns the order of GPipe (Huang et al. 2019, arXiv:1811.06965).

    Every device runs the forwards of all M micro-batches, then their
    backwards, in micro-batch order; the weights are updated once, after the
    flush.

    Args:
        num_devices: number of devices K, one stage each.
        num_microbatches: micro-batches per step M.

    Returns:
        Per device d: F(0..M-1, d) then B(0..M-1, d).
    """
    return [
        [("F", m, d) for m in range(num_microbatches)]
        + [("B", m, d) for m in range(num_microbatches)]
        for d in range(num_devices)
    ]


def one_f_one_b_orders(num_devices: int, num_microbatches: int) -> list[list[OpKey]]:
    """Returns the order of 1F1B with a flush (PipeDream-Flush).

    PipeDream (Narayanan et al. 2019) and PipeDream-2BW/Flush (Narayanan et al.
    2021), the non-interleaved schedule of Megatron-LM: device d runs
    min(K - d - 1, M) warm-up forwards, then alternates one forward and one
    backward, then runs the remaining backwards (cool-down).

    Args:
        num_devices: number of devices K, one stage each.
        num_microbatches: micro-batches per step M.

    Returns:
        Per device, its forward and backward operations in 1F1B order.
    """
    orders = []
    for d in range(num_devices):
        warmup = min(num_devices - d - 1, num_microbatches)
        order: list[OpKey] = [("F", m, d) for m in range(warmup)]
        for i in range(num_microbatches - warmup):
            order += [("F", warmup + i, d), ("B", i, d)]
        order += [
            ("B", m, d) for m in range(num_microbatches - warmup, num_microbatches)
        ]
        orders.append(order)
    return orders


def _interleaved_op(
    index: int, kind: str, device: int, num_devices: int, num_chunks: int
) -> OpKey:
    # Megatron-LM's get_model_chunk_id: micro-batches go through the chunks in
    # groups of K; backwards visit the chunks in reverse order.
    group, position = divmod(index, num_devices * num_chunks)
    chunk = position // num_devices
    if kind == "B":
        chunk = num_chunks - 1 - chunk
    microbatch = group * num_devices + position % num_devices
    return (kind, microbatch, chunk * num_devices + device)


def interleaved_orders(
    num_devices: int, num_microbatches: int, num_chunks: int
) -> list[list[OpKey]]:
    """Returns the order of interleaved 1F1B (Narayanan et al. 2021, arXiv:2104.04473).

    Megatron-LM's schedule with v model chunks per device: chunk c of device
    d is stage c * K + d. Device d runs (K - d - 1) * 2 + (v - 1) * K warm-up
    forwards (all of them when M == K), then alternates one forward and one
    backward, then runs the remaining backwards. Needs M to be a multiple of K.
    With v = 1 it is the non-interleaved 1F1B order.

    Args:
        num_devices: number of devices K.
        num_microbatches: micro-batches per step M, a multiple of K.
        num_chunks: model chunks per device v.

    Returns:
        Per device, its forward and backward operations in interleaved order.
    """
    if num_chunks == 1:
        return one_f_one_b_orders(num_devices, num_microbatches)
    total = num_microbatches * num_chunks
    orders = []
    for d in range(num_devices):
        if num_microbatches == num_devices:
            warmup = total
        else:
            warmup = (num_devices - d - 1) * 2 + (num_chunks - 1) * num_devices
            warmup = min(warmup, total)
        args = (d, num_devices, num_chunks)
        order = [_interleaved_op(k, "F", *args) for k in range(warmup)]
        for i in range(total - warmup):
            order += [
                _interleaved_op(warmup + i, "F", *args),
                _interleaved_op(i, "B", *args),
            ]
        order += [_interleaved_op(k, "B", *args) for k in range(total - warmup, total)]
        orders.append(order)
    return orders


def zb_h1_orders(num_devices: int, num_microbatches: int) -> list[list[OpKey]]:
    """Returns the order of ZB-H1 (Qi et al. 2023, arXiv:2401.10241).

    Zero Bubble pipeline parallelism splits each backward into B, the
    gradient with respect to the stage's input (which the stage below waits
    for), and W, the gradient with respect to its weights (which nothing
    waits for until the update). ZB-H1 keeps 1F1B's warm-up, so its memory
    is 1F1B's (at most K micro-batches in flight on device 0), and postpones
    W: device d starts running W one micro-batch after each B only after its
    first d backwards, and runs its last d W's at the end, where 1F1B's
    cool-down bubble was. This is the per-rank order of the authors' hand
    schedule (`get_hand_schedule` in the Hugging Face space
    sail/zero-bubble-pipeline-parallellism): (K - d - 1) warm-up forwards,
    then per micro-batch i a forward (while any remain), B(i) and, from
    i = d on, W(i - d); then W(M - d .. M - 1).

    Args:
        num_devices: number of devices K, one stage each.
        num_microbatches: micro-batches per step M.

    Returns:
        Per device, its operations ("F", "B" or "W", micro-batch, stage).
    """
    orders = []
    for d in range(num_devices):
        warmup = min(num_devices - d - 1, num_microbatches)
        order: list[OpKey] = [("F", m, d) for m in range(warmup)]
        pending = 0  # the next micro-batch whose W is still to run
        for i in range(num_microbatches):
            if warmup + i < num_microbatches:
                order.append(("F", warmup + i, d))
            order.append(("B", i, d))
            if i >= d:
                order.append(("W", pending, d))
                pending += 1
        order += [("W", m, d) for m in range(pending, num_microbatches)]
        orders.append(order)
    return orders
