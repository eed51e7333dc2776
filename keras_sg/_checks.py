"""Argument checks whose errors name the argument and the value received."""

import contextlib
import re


def check_int(name: str, value, minimum: int) -> int:
    """Returns `value` if it is an integer >= `minimum`; raises ValueError otherwise.

    Booleans are refused although Python counts them as integers.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return value


def check_devices_exist(devices: list[str]) -> list[str]:
    """Returns `devices` if TensorFlow sees each one; raises ValueError otherwise.

    TensorFlow places ops softly: an op asked onto a device that does not
    exist (`/device:GPU:7`, or `/device:CPU:3` after `split_cpu(2)`) runs on
    CPU:0 without a word. A name matches a logical device when every part it
    gives (job, replica, task, type, index) agrees; a name without a job is a
    device of this process.
    """
    import tensorflow as tf

    seen = [d.name for d in tf.config.list_logical_devices()]
    specs = [tf.DeviceSpec.from_string(name) for name in seen]
    for device in devices:
        want = tf.DeviceSpec.from_string(device)
        if not any(_matches(want, have) for have in specs):
            raise ValueError(
                f"TensorFlow has no device {device!r}; it sees {seen}. Logical "
                "CPU devices come from keras_sg.placement.split_cpu, cluster "
                "tasks from keras_sg.placement.connect_to_cluster, both called "
                f"before any model is made. Received: device={device!r}"
            )
    return devices


def _matches(want, have) -> bool:
    local = ("localhost", None)
    if want.job not in (None, have.job) and not (
        want.job in local and have.job in local
    ):
        return False
    if want.job in local and have.job not in local:
        return False
    for part in ("replica", "task", "device_index"):
        value = getattr(want, part)
        if value is not None and value != (getattr(have, part) or 0):
            return False
    wanted_type = (want.device_type or "").upper()
    return not wanted_type or wanted_type == (have.device_type or "").upper()


def check_network_has_cuts(network, num_stages: int, method: str) -> None:
    """Raises ValueError if a network trained by synthetic gradients has no cut."""
    if num_stages > 1:
        return
    if isinstance(network, (list, tuple)):
        what = "the list of stages holds one stage: no cut, nothing to synthesize"
        fix = "Give one stage per side of each cut"
    else:
        name = getattr(network, "name", type(network).__name__)
        what = f"'{name}' has no keras_sg.Interface: one stage, nothing to synthesize"
        fix = "Put an Interface between two layers"
    raise ValueError(
        f"method={method!r} trains each stage from the synthetic gradient at "
        f"its cut, but {what}. {fix}, or train it "
        "with method='backprop'. Received: a network of 1 stage"
    )


def check_own_synthesizers(synthesizers: list, cut_names: list[str]) -> list:
    """Returns `synthesizers` if no object appears twice; raises ValueError otherwise.

    One synthesizer object at two cuts would share its weights between them
    and regress two targets at once: almost surely a list built as
    `[synth] * n`.
    """
    seen = {}
    for k, synth in enumerate(synthesizers):
        if id(synth) in seen:
            first = seen[id(synth)]
            names = [
                cut_names[i] if i < len(cut_names) else f"cut_{i + 1}"
                for i in (first, k)
            ]
            raise ValueError(
                "Each cut needs a synthesizer of its own (its own weights and "
                f"loss). Received: the same synthesizer '{synth.name}' at "
                f"'{names[0]}' and '{names[1]}' (synthesizers[{first}] is "
                f"synthesizers[{k}]); make a new one per cut, e.g. "
                "[make() for _ in range(cuts)] rather than [synth] * cuts"
            )
        seen[id(synth)] = k
    return synthesizers


_LABELS_MESSAGE = "cDNI labels must lie in [0, num_classes="


def check_label_range(y, num_classes: int) -> None:
    """Raises ValueError if integer labels given as an array leave [0, num_classes).

    The in-graph assertion (`steps.check_labels`) still guards datasets; this
    answers arrays before `fit` starts, with the first offending label.
    """
    import numpy as np

    if y is None or not hasattr(y, "dtype") or not hasattr(y, "shape"):
        return
    try:
        labels = np.asarray(y)
    except (TypeError, ValueError):
        return
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        first = np.unravel_index(bad[0], labels.shape)
        index = ", ".join(map(str, first))
        raise ValueError(
            f"{_LABELS_MESSAGE}{num_classes}) (the synthesizers one-hot encode "
            f"them). Received: {bad.size} labels outside it, y[{index}]="
            f"{labels[first]}, min={labels.min()}, max={labels.max()}"
        )


@contextlib.contextmanager
def reporting_label_errors():
    """Turns the in-graph cDNI label assertion into a one-line ValueError.

    TensorFlow reports a failed assertion after a long trace of where each op
    was defined; the user should read the assertion's own words first.
    """
    import tensorflow as tf

    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        text = str(error)
        start = text.find(_LABELS_MESSAGE)
        if start < 0:
            raise
        # The assertion's pieces: "[...num_classes=2); received labels with
        # min] [0] [and max] [5]".
        found = re.search(
            r"num_classes=(\d+)\); received labels with min\] \[(-?\d+)\] "
            r"\[and max\] \[(-?\d+)\]",
            text[start:],
        )
        if found is None:
            raise
        classes, low, high = found.groups()
        message = (
            f"{_LABELS_MESSAGE}{classes}) (the synthesizers one-hot encode "
            f"them). Received: a batch of labels with min={low}, max={high}"
        )
        raise ValueError(message) from None


def check_not_h5(filepath) -> None:
    """Raises ValueError for a legacy `.h5`/`.hdf5` model path.

    Keras's legacy H5 format looks classes up by their bare name
    ('DecoupledModel'), not by the registered 'keras_sg>DecoupledModel', so
    the file it writes does not load back, even with keras_sg imported.
    Refusing it at save time keeps a training run from writing checkpoints
    that cannot be read. (`save_weights` to `.weights.h5` is unaffected.)
    """
    if str(filepath).endswith((".h5", ".hdf5")):
        raise ValueError(
            "keras_sg models save to the `.keras` format: Keras's legacy H5 "
            "format cannot load them back. Use a path ending in `.keras` (or "
            "save_weights to `.weights.h5` for the weights alone). "
            f"Received: filepath={str(filepath)!r}"
        )
