"""Argument checks of the schedule simulator; errors name the argument and value."""

import math
from collections.abc import Sequence

from keras_sg._checks import check_int

__all__ = [
    "check_fraction",
    "check_int",
    "check_latency",
    "check_nonnegative",
    "cut_costs",
    "input_synth_costs",
    "stage_costs",
    "synth_costs",
]


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_cost_values(name: str, value, costs: Sequence) -> tuple[float, ...]:
    if not all(_is_number(c) and math.isfinite(c) and c >= 0 for c in costs):
        raise ValueError(
            f"`{name}` must hold finite, non-negative costs. Received: {name}={value!r}"
        )
    return tuple(float(c) for c in costs)


def stage_costs(name: str, value, num_stages: int) -> tuple[float, ...]:
    """Returns one cost per stage from a scalar (every stage) or a sequence.

    Args:
        name: the argument's name, for the error message.
        value: a non-negative number, or a sequence of `num_stages` of them.
        num_stages: the number of pipeline stages (devices * chunks per device).

    Returns:
        A tuple of `num_stages` floats.

    Raises:
        ValueError: on a wrong length, a negative, non-finite or non-numeric cost.
    """
    if _is_number(value):
        return _check_cost_values(name, value, [value] * num_stages)
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(
            f"`{name}` must be a number or a sequence of numbers. "
            f"Received: {name}={value!r}"
        )
    if len(value) != num_stages:
        raise ValueError(
            f"`{name}` must have one cost per stage ({num_stages} entries). "
            f"Received: {name}={value!r} with {len(value)} entries"
        )
    return _check_cost_values(name, value, value)


def synth_costs(value, num_stages: int) -> tuple[float, ...]:
    """Returns one synthesizer cost per stage, 0 for the last stage.

    The last stage computes the loss and has no synthesizer at its output.

    Args:
        value: None (no synthesizers: all 0); a number, the cost of every
            synthesizer (the last stage still gets 0); a sequence with one
            cost per cut (`num_stages - 1` entries); or one per stage
            (`num_stages` entries, the last one 0).
        num_stages: the number of pipeline stages.

    Returns:
        A tuple of `num_stages` floats whose last entry is 0.

    Raises:
        ValueError: on a wrong length, a bad cost or a non-zero last entry.
    """
    name = "synth"
    if value is None:
        return (0.0,) * num_stages
    if _is_number(value):
        costs = _check_cost_values(name, value, [value] * (num_stages - 1))
        return costs + (0.0,)
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(
            f"`{name}` must be None, a number or a sequence of numbers. "
            f"Received: {name}={value!r}"
        )
    if len(value) == num_stages - 1:
        return _check_cost_values(name, value, value) + (0.0,)
    if len(value) == num_stages:
        costs = _check_cost_values(name, value, value)
        if costs[-1] != 0.0:
            raise ValueError(
                "`synth` must be 0 for the last stage, which has no synthesizer. "
                f"Received: synth={value!r}"
            )
        return costs
    raise ValueError(
        f"`{name}` must have one cost per cut ({num_stages - 1} entries) or per "
        f"stage ({num_stages} entries, the last 0). "
        f"Received: {name}={value!r} with {len(value)} entries"
    )


def input_synth_costs(value, num_stages: int) -> tuple[float, ...]:
    """Returns one input synthesizer cost per stage, 0 for the first stage.

    The first stage reads the network's input and has no input synthesizer.

    Args:
        value: None (no input synthesizers: all 0); a number, the cost of
            every input synthesizer (the first stage still gets 0); a
            sequence with one cost per cut (`num_stages - 1` entries, for
            stages 1 to num_stages - 1); or one per stage (`num_stages`
            entries, the first one 0).
        num_stages: the number of pipeline stages.

    Returns:
        A tuple of `num_stages` floats whose first entry is 0.

    Raises:
        ValueError: on a wrong length, a bad cost or a non-zero first entry.
    """
    name = "input_synth"
    if value is None:
        return (0.0,) * num_stages
    if _is_number(value):
        return (0.0,) + _check_cost_values(name, value, [value] * (num_stages - 1))
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(
            f"`{name}` must be None, a number or a sequence of numbers. "
            f"Received: {name}={value!r}"
        )
    if len(value) == num_stages - 1:
        return (0.0,) + _check_cost_values(name, value, value)
    if len(value) == num_stages:
        costs = _check_cost_values(name, value, value)
        if costs[0] != 0.0:
            raise ValueError(
                "`input_synth` must be 0 for the first stage, which reads the "
                f"network's input. Received: input_synth={value!r}"
            )
        return costs
    raise ValueError(
        f"`{name}` must have one cost per cut ({num_stages - 1} entries) or per "
        f"stage ({num_stages} entries, the first 0). "
        f"Received: {name}={value!r} with {len(value)} entries"
    )


def check_latency(value) -> float:
    """Returns the per-message latency as a float; raises ValueError if bad."""
    return check_nonnegative("comm_latency", value)


def check_nonnegative(name: str, value) -> float:
    """Returns `value` as a float; raises ValueError unless finite and >= 0."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(
            f"`{name}` must be a finite, non-negative number. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_fraction(name: str, value) -> float:
    """Returns `value` as a float; raises ValueError unless 0 <= value <= 1."""
    if not (_is_number(value) and 0.0 <= value <= 1.0):
        raise ValueError(
            f"`{name}` must be a number in [0, 1]. Received: {name}={value!r}"
        )
    return float(value)


def cut_costs(name: str, value, num_stages: int) -> tuple[float, ...]:
    """Returns one cost per cut (between stages s and s + 1).

    Args:
        name: the argument's name, for the error message.
        value: a non-negative number (every cut) or a sequence of
            `num_stages - 1` of them.
        num_stages: the number of pipeline stages.

    Returns:
        A tuple of `num_stages - 1` floats.

    Raises:
        ValueError: on a wrong length, a negative, non-finite or non-numeric cost.
    """
    if _is_number(value):
        return _check_cost_values(name, value, [value] * (num_stages - 1))
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(
            f"`{name}` must be a number or a sequence of numbers. "
            f"Received: {name}={value!r}"
        )
    if len(value) != num_stages - 1:
        raise ValueError(
            f"`{name}` must have one cost per cut ({num_stages - 1} entries). "
            f"Received: {name}={value!r} with {len(value)} entries"
        )
    return _check_cost_values(name, value, value)
