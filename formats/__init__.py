"""lowbit.formats: what a format is. Specs, the catalogue, and exact
encode / decode / quantize for every family."""

from . import backends
from .backends import Backend, BackendUnavailable, Policy
from .block_format import E8M0, BlockFormat
from .catalogue import CATALOGUE, get_format, list_formats, p3109, p3109_variants
from .codebook import FP4_BNB_VALUES, NF4_VALUES, CodebookFormat
from .codebook_fit import fit_codebook
from .datapath import Datapath
from .datapath_profiles import DATAPATHS, get_datapath
from .element import ElementFormat
from .encoded import Encoded
from .families import FAMILIES
from .float_format import FloatFormat
from .int_format import IntFormat
from .matmul import reference_matmul, summation_bound
from .microexponent import MicroexponentFormat
from .packing import pack, unpack
from .rounding import OVERFLOW_POLICIES, ROUNDING_MODES
from .scaled import ScaledFormat
from .tensor_scaled import TensorEncoded, TensorScaledFormat


__all__ = [
    "Backend", "BackendUnavailable", "BlockFormat", "CATALOGUE", "CodebookFormat", "DATAPATHS", "Datapath", "E8M0", "FP4_BNB_VALUES",
    "NF4_VALUES", "ElementFormat", "Encoded", "FAMILIES",
    "FloatFormat", "IntFormat", "MicroexponentFormat", "OVERFLOW_POLICIES", "Policy", "ROUNDING_MODES",
    "ScaledFormat", "TensorEncoded", "TensorScaledFormat", "backends", "fit_codebook", "get_datapath", "get_format", "list_formats", "p3109", "p3109_variants", "pack", "reference_matmul",
    "summation_bound", "unpack",
]
