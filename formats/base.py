"""What every format shares: the grid record and argument checks."""

from __future__ import annotations

from typing import Any, NamedTuple


class Grid(NamedTuple):
    """The grid each element of an input is rounded on, as float64 values of
    the input's kind: ``ulp`` is the spacing of that grid where the element
    lies, ``largest`` the largest magnitude the grid holds (anything beyond
    it is clamped or overflows)."""

    ulp: Any
    largest: Any


def check_axis(axis: Any, ndim: int) -> int:
    """Normalise a blocked axis; an int in [-ndim, ndim)."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"axis {axis} is out of range for an input with {ndim} dimension(s)")
    return axis % max(ndim, 1)


def check_ints(obj: Any, *fields: str) -> None:
    """TypeError unless each named attribute of obj is an int (bools are not)."""
    for field in fields:
        value = getattr(obj, field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{field} must be an int, got {type(value).__name__}")


def check_bools(obj: Any, *fields: str) -> None:
    """TypeError unless each named attribute of obj is a bool (True or False, not 0, 1 or "no")."""
    for field in fields:
        value = getattr(obj, field)
        if not isinstance(value, bool):
            raise TypeError(f"{field} must be True or False, got {value!r}")


def check_name(obj: Any) -> None:
    """TypeError unless obj's ``name`` is a str."""
    if not isinstance(obj.name, str):
        raise TypeError(f"name must be a str, got {type(obj.name).__name__}")
