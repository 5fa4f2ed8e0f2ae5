"""Argument checks shared by the layers and builders.

Each raises `ValueError` (or `TypeError` for a value of the wrong kind) that
names the argument, the value received and what was expected.
"""

import numbers


def check_positive_int(name, value):
    """Returns `value` if it is a positive int, else raises naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a positive int, received {name}={value!r} "
            f"of type {type(value).__name__}."
        )
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, received {name}={value}.")
    return int(value)


def check_rate(name, value):
    """Returns `value` as a float if it lies in [0, 1), else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a float in [0, 1), received {name}={value!r} "
            f"of type {type(value).__name__}."
        )
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), received {name}={value}.")
    return float(value)


def check_choice(name, value, choices):
    """Returns `value` if it is one of `choices`, else raises listing them."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}; received {name}={value!r}.")
    return value


def check_int(name, value, low=1, high=None):
    """Returns `value` if it is an int in [low, high] (no upper bound when
    `high` is None), else raises a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
            high is not None and value > high):
        if high is not None:
            expected = f"an integer in [{low}, {high}]"
        else:
            expected = {1: "a positive integer", 0: "a non-negative integer"}.get(low, f"an integer >= {low}")
        raise ValueError(f"{name} must be {expected}, received {name}={value!r}.")
    return int(value)
