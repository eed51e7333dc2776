"""Argument checks whose errors name the argument and the value received."""


def check_int(name: str, value, minimum: int) -> int:
    """Returns `value` if it is an integer >= `minimum`; raises ValueError otherwise.

    Booleans are refused although Python counts them as integers.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return value
