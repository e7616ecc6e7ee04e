"""The implementations behind the formats' operations, by name.

``"reference"`` (vectorised torch, any device) is built in. Kernel
backends register here with the device type they run on and a loader that
returns their :class:`Kernels`: ``"cpu"`` (numba, :mod:`lowbit.formats.cpu`)
by this module, ``"cuda"`` by :mod:`lowbit.cuda` when it is imported (which
``import lowbit`` does). A loader runs once, on first use; it raises
:class:`BackendUnavailable` when its backend cannot run on this machine.
``backend=None`` picks a device type's default backend, and the reference
where that backend is unavailable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

REFERENCE = "reference"


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class Kernels:
    """A kernel backend's entry points. ``elements`` serves element formats
    (``quantize``, ``encode``, ``decode``), ``scaled`` block-scaled formats
    (``tensor_scale``, ``quantize``, ``encode``, ``decode``), with the
    signatures of :mod:`lowbit.formats.cpu.element_backend` and
    :mod:`lowbit.formats.cpu.scaled_backend`."""

    elements: Any
    scaled: Any


@dataclass
class _Entry:
    device_type: str
    loader: Callable[[], Kernels]
    kernels: Kernels | None = None
    failure: Exception | None = None


_registry: dict[str, _Entry] = {}
#: backend=None's choice per device type (the tests switch "cpu" to run
#: every formats test on each backend)
defaults: dict[str, str] = {}


def register_backend(name: str, device_type: str, loader: Callable[[], Kernels], default: bool = False) -> None:
    """Make ``name`` a backend for data on ``device_type``; with ``default``,
    backend=None picks it for that device type."""
    if name == REFERENCE:
        raise ValueError("the name 'reference' belongs to the built-in implementation")
    _registry[name] = _Entry(device_type, loader)
    if default:
        defaults[device_type] = name


def names() -> tuple[str, ...]:
    return (REFERENCE, *_registry)


def kernels(name: str) -> Kernels:
    """The loaded Kernels of a registered backend (BackendUnavailable if it cannot run here)."""
    entry = _registry[name]
    if entry.kernels is None:
        if entry.failure is not None:
            raise entry.failure
        try:
            entry.kernels = entry.loader()
        except Exception as error:  # kept: a failed build is not retried on every call
            entry.failure = error
            raise
    return entry.kernels


def resolve(backend: str | None, device_type: str) -> str:
    """The implementation that runs for data on ``device_type``: ``backend``
    when given (checked), else the device type's default, else the reference."""
    if backend is None:
        name = defaults.get(device_type)
        if name is None or name not in _registry:
            return REFERENCE
        try:
            kernels(name)
        except BackendUnavailable:
            return REFERENCE
        except Exception as error:
            warnings.warn(f"lowbit: the {name!r} backend failed to load ({error}); using the reference "
                          f"implementation for {device_type} data", RuntimeWarning, stacklevel=4)
            _registry[name].failure = BackendUnavailable(f"the {name!r} backend failed to load: {error}")
            return REFERENCE
        return name
    if backend != REFERENCE and backend not in _registry:
        raise ValueError(f"backend must be None or one of {', '.join(map(repr, names()))}; got {backend!r}")
    if backend != REFERENCE:
        entry = _registry[backend]
        if entry.device_type != device_type:
            raise ValueError(f"backend={backend!r} runs on {entry.device_type} data; this input is on {device_type}")
        kernels(backend)
    return backend


def _cpu_kernels() -> Kernels:
    from .cpu import element_backend, scaled_backend

    return Kernels(element_backend, scaled_backend)


register_backend("cpu", "cpu", _cpu_kernels, default=True)
