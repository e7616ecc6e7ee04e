"""The implementations behind the formats' operations, and how a call picks one.

Every implementation is a :class:`Backend`, registered here by name with
the device type whose data it takes and a loader that builds it on first
use. ``"reference"`` (vectorised torch, any device: the semantics in code)
and ``"cpu"`` (numba, :mod:`lowbit.formats.cpu`) are named here and loaded
lazily; ``import lowbit`` registers the CUDA extension's builds
(``"cuda"``, and its CPU builds ``"cuda_host"`` and ``"cuda_emulated"``).
:func:`names` lists them.

``backend=None`` picks, per call, the device type's default backend when
it loads and :meth:`Backend.supports` the request, else the reference. A
new format family or rounding mode therefore lands in the reference first
and the default path keeps working: the kernels say they do not support it
until they learn it. A backend named explicitly must support the request
(ValueError otherwise).
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch

if TYPE_CHECKING:
    from .blocking import Layout
    from .encoded import Encoded

REFERENCE = "reference"
#: what :meth:`Backend.supports` is asked about
OPERATIONS = ("quantize", "encode", "decode", "matmul")


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class Policy:
    """How a call rounds, checked by the format: ``rounding`` (a mode of
    :data:`~lowbit.formats.rounding.ROUNDING_MODES`), ``overflow`` (element
    formats; None for scaled ones, whose elements saturate), ``scale_rule``
    (BlockFormat; None otherwise), ``key`` (stochastic rounding's stream,
    None for other modes), ``flush_subnormals`` and ``sr_bits`` (the random
    bits of stochastic rounding's draw; None for 53). Decoding and matmuls
    take the default policy."""

    rounding: str = "nearest_even"
    overflow: str | None = None
    scale_rule: str | None = None
    key: int | None = None
    flush_subnormals: bool = False
    sr_bits: int | None = None


class ElementOps(Protocol):
    """A backend's operations on element formats (FloatFormat, IntFormat, ...)
    over tensors of its device. Results are new tensors."""

    def quantize(self, fmt: Any, t: torch.Tensor, policy: Policy) -> tuple[torch.Tensor, bool]:
        """The rounded values in t's dtype and shape, and whether that dtype held them all exactly."""

    def encode(self, fmt: Any, t: torch.Tensor, policy: Policy) -> tuple[torch.Tensor, int | None]:
        """The codes in t's shape (the narrowest unsigned dtype), and the flat
        index of the first element the format cannot represent (None if none)."""

    def decode(self, fmt: Any, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The values of integer codes in ``dtype``; ValueError for codes outside [0, 2**nbits)."""


class ScaledOps(Protocol):
    """A backend's operations on block-scaled formats (BlockFormat, MicroexponentFormat, ...)."""

    def tensor_scale(self, fmt: Any, t: torch.Tensor, policy: Policy) -> float | None:
        """The per-tensor scale computed over the whole input first (NVFP4), or None."""

    def quantize(self, fmt: Any, t: torch.Tensor, layout: Layout, policy: Policy,
                 tensor_scale: float | None,
                 rescale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, bool]:
        """t encoded and decoded, in its shape and dtype, and whether the dtype
        held every result exactly. ``rescale`` (formats whose scales are
        double-quantized): maps the scale codes (in ``encode``'s shape) to
        the float32 scale values the elements decode with, as ``decode``
        takes them."""

    def encode(self, fmt: Any, t: torch.Tensor, layout: Layout, policy: Policy,
               tensor_scale: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                    torch.Tensor | None]:
        """(packed element codes, scale codes in the layout's scales_shape,
        packed sub-block scales or None, zero points in scales_shape or None)."""

    def decode(self, fmt: Any, layout: Layout, elements: torch.Tensor, scales: torch.Tensor,
               subscales: torch.Tensor | None, tensor_scale: float | None, dtype: torch.dtype,
               zero_points: torch.Tensor | None = None) -> torch.Tensor:
        """The values in the layout's true shape. ``scales`` are codes, or
        float32 scale values for formats whose scales are double-quantized."""


class Backend(Protocol):
    """One implementation of the formats' operations.

    ``supports(fmt, operation, policy)``: whether this backend runs
    ``operation`` (one of :data:`OPERATIONS`) for ``fmt`` under ``policy``;
    for ``"matmul"``, ``fmt`` is the pair (A's format, B's format).
    ``unsupported`` says why not, for error messages.
    ``elements`` and ``scaled`` hold the operations on each kind of
    format; ``matmul(a, b, bias, out_dtype, instruction)`` computes
    ``A @ B.T + bias`` from two :class:`Encoded` operands (M x K and N x K,
    blocked along K) where ``supports`` says so.
    """

    name: str
    device_type: str
    elements: ElementOps
    scaled: ScaledOps

    def supports(self, fmt: Any, operation: str, policy: Policy) -> bool: ...

    def unsupported(self, fmt: Any, operation: str, policy: Policy) -> str | None:
        """Why it does not support the request, in words; None where it does."""

    def matmul(self, a: Encoded, b: Encoded, bias: torch.Tensor | None, out_dtype: torch.dtype,
               instruction: str | None) -> torch.Tensor: ...


@dataclass
class _Entry:
    device_type: str
    loader: Callable[[], Backend]
    backend: Backend | None = None
    failure: Exception | None = None


_registry: dict[str, _Entry] = {}
#: backend=None's choice per device type (the tests switch "cpu" to run
#: every formats test on each backend)
defaults: dict[str, str] = {}


def register_backend(name: str, device_type: str, loader: Callable[[], Backend], default: bool = False) -> None:
    """Make ``name`` a backend for data on ``device_type``, built by
    ``loader`` on first use (which raises :class:`BackendUnavailable` where
    it cannot run); with ``default``, backend=None picks it for that device
    type where it supports the request."""
    if name == REFERENCE and name in _registry:
        raise ValueError("the name 'reference' belongs to the built-in implementation")
    _registry[name] = _Entry(device_type, loader)
    if default:
        defaults[device_type] = name


def names() -> tuple[str, ...]:
    """The registered backends' names, the reference first."""
    return tuple(_registry)


def get(name: str) -> Backend:
    """The loaded backend ``name`` (BackendUnavailable if it cannot run here;
    a failed load is remembered, not retried on every call)."""
    if name not in _registry:
        raise ValueError(f"backend must be None or one of {', '.join(map(repr, names()))}; got {name!r}")
    entry = _registry[name]
    if entry.backend is None:
        if entry.failure is not None:
            raise entry.failure
        try:
            entry.backend = entry.loader()
        except Exception as error:
            entry.failure = error
            raise
    return entry.backend


def _default(device_type: str) -> Backend | None:
    """The device type's default backend if it loads (a load that fails
    other than by being unavailable warns once), else None."""
    name = defaults.get(device_type)
    if name is None or name not in _registry:
        return None
    try:
        return get(name)
    except BackendUnavailable:
        return None
    except Exception as error:
        warnings.warn(f"lowbit: the {name!r} backend failed to load ({error}); using the reference "
                      f"implementation for {device_type} data", RuntimeWarning, stacklevel=4)
        _registry[name].failure = BackendUnavailable(f"the {name!r} backend failed to load: {error}")
        return None


def resolve(backend: str | None, device_type: str, fmt: Any, operation: str, policy: Policy = Policy()) -> Backend:
    """The backend that runs ``operation`` for ``fmt`` on ``device_type``
    data: ``backend`` when given (checked: registered, for that device type
    (the reference runs anywhere), supporting the request), else the
    device type's default where it supports the request, else the reference."""
    if backend is None:
        chosen = _default(device_type)
        return chosen if chosen is not None and chosen.supports(fmt, operation, policy) else get(REFERENCE)
    if backend in _registry and _registry[backend].device_type not in (device_type, "any"):
        raise ValueError(f"backend={backend!r} runs on {_registry[backend].device_type} data; "
                         f"this input is on {device_type}")
    chosen = get(backend)
    if not chosen.supports(fmt, operation, policy):
        raise ValueError(f"backend={backend!r} does not {operation} {_format_names(fmt)}: "
                         f"{chosen.unsupported(fmt, operation, policy)}; backend=None picks one that does")
    return chosen


def product_backend(a_format: Any, b_format: Any, device_type: str) -> Backend | None:
    """The device type's default backend where it multiplies encoded
    operands of these formats (:meth:`Backend.matmul`), else None."""
    chosen = _default(device_type)
    return chosen if chosen is not None and chosen.supports((a_format, b_format), "matmul", Policy()) else None


def _format_names(fmt: Any) -> str:
    if isinstance(fmt, tuple):
        return " x ".join(getattr(f, "name", str(f)) for f in fmt)
    return getattr(fmt, "name", str(fmt))


def _lazy(module: str) -> Callable[[], Backend]:
    """A loader that imports ``module`` (relative to this package) and calls its ``load_backend()``."""
    return lambda: importlib.import_module(module, __package__).load_backend()


register_backend(REFERENCE, "any", _lazy(".reference"))
register_backend("cpu", "cpu", _lazy(".cpu.backend"), default=True)
