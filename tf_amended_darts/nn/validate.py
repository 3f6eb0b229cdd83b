"""Argument validators shared by every layer, space, dataset and config.

Each raises a `ValueError` that names the argument and echoes the value
(Keras' convention: "Expected ... Received: name=value"). No TensorFlow
import, so that TensorFlow-free modules (search spaces, genotypes) use them
too.
"""

import numbers


def invalid(name, expected, value):
    """The `ValueError` for argument `name`: `expected` (a phrase), got
    `value`."""
    return ValueError(
        f"Invalid `{name}`: expected {expected}. Received: {name}={value!r}"
    )


def check_int(name, value, minimum=1):
    """Raises a ValueError echoing `value` unless it is an int >= minimum
    (a Python or NumPy integer; not a bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(
            f"Expected `{name}` to be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )


def check_bool(name, value):
    """Raises a ValueError echoing `value` unless it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(
            f"Expected `{name}` to be a bool. Received: {name}={value!r}"
        )


def check_prob(name, value):
    """Returns `value` as a float; raises a ValueError echoing it unless it
    is a number in [0, 1)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 <= value < 1.0
    ):
        raise ValueError(
            f"Expected `{name}` to be a number in [0, 1). "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_seed(seed):
    """Raises a ValueError unless `seed` is None or an int >= 0."""
    if seed is not None:
        check_int("seed", seed, minimum=0)
