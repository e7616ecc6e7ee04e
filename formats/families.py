"""The format families by class name, for rebuilding a format from its
description (:func:`lowbit.formats.encoded.format_from_dict`). Each family
class registers itself with :func:`family` where it is defined."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T", bound=type)

#: class name -> family class
FAMILIES: dict[str, type] = {}


def family(cls: T) -> T:
    """Class decorator: register a format family under its class name."""
    FAMILIES[cls.__name__] = cls
    return cls
