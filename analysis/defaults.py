"""What an error report compares unless told otherwise (kept apart from the
report so the command line can show them without loading matplotlib)."""

from .data import DISTRIBUTIONS

#: The OCP 8/6/4-bit element formats and INT8/INT4 (scaled per tensor),
#: every OCP MX format, NVFP4, and the microexponent formats.
DEFAULT_FORMATS = (
    "fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "int8", "int4",
    "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
    "mx9", "mx6", "mx4",
)
#: Every built-in distribution.
DEFAULT_DATA = tuple(DISTRIBUTIONS)
#: Elements per data set.
DEFAULT_SIZE = 1 << 16
#: The most elements per data set ``lowbit report --size`` takes: a sweep
#: holds several float64 arrays of each data set's size at once.
MAX_SIZE = 1 << 27
