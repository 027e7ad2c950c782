"""Argument checks shared by the layers (clear `ValueError`s)."""


def check_positive_int(name, value, allow_none=False):
    """`value` if it is a positive int (or `None` when allowed)."""
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        kind = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    return value


def check_rate(name, value):
    """`value` if it is a dropout rate in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value}")
    return value
