"""Which device each stage runs on, and logical devices to run stages on."""

import tensorflow as tf

from keras_sg._checks import check_int


def split_cpu(
    num_devices: int,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
) -> list[str]:
    """Splits the CPU into logical devices, one per stage, so stages run side by side.

    TensorFlow fixes its devices and thread pools when it first initialises
    (the first op, variable or model), so this must run before that, typically
    at the top of a script. With `intra_op_threads=1` and `inter_op_threads=n`
    each logical device behaves like one accelerator running one op at a time.

    Args:
        num_devices: number of logical CPU devices, >= 1.
        intra_op_threads: threads inside one op (None: TensorFlow's default).
        inter_op_threads: ops run at once (None: TensorFlow's default).

    Returns:
        The device names, `["/device:CPU:0", ..., f"/device:CPU:{n - 1}"]`.

    Raises:
        RuntimeError: TensorFlow has already initialised its devices.
    """
    check_int("num_devices", num_devices, 1)
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
        if intra_op_threads is not None:
            tf.config.threading.set_intra_op_parallelism_threads(
                check_int("intra_op_threads", intra_op_threads, 1)
            )
        if inter_op_threads is not None:
            tf.config.threading.set_inter_op_parallelism_threads(
                check_int("inter_op_threads", inter_op_threads, 1)
            )
    except RuntimeError as error:
        raise RuntimeError(
            "split_cpu must run before TensorFlow initialises its devices: call "
            "it at the start of the program, before any op, variable or model "
            f"is made. TensorFlow said: {error}"
        ) from error
    return [f"/device:CPU:{i}" for i in range(num_devices)]


def stage_devices(num_stages: int) -> list[str]:
    """The default placement: one stage per GPU, else per logical CPU, else all on one.

    Stages are dealt round-robin when there are fewer devices than stages.
    """
    check_int("num_stages", num_stages, 1)
    for kind in ("GPU", "CPU"):
        devices = tf.config.list_logical_devices(kind)
        if devices and (kind == "GPU" or len(devices) > 1):
            return [devices[k % len(devices)].name for k in range(num_stages)]
    return ["/device:CPU:0"] * num_stages
