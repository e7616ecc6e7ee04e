"""What an error report compares unless told otherwise (kept apart from the
report so the command line can show them without loading matplotlib)."""

from .data import DISTRIBUTIONS, LLM_CHANNELS

#: The OCP 8/6/4-bit element formats and INT8/INT4 (scaled per tensor),
#: every OCP MX format, NVFP4, the microexponent formats, and the scaling
#: schemes of weight and activation quantizers: INT4 in groups of 128 with
#: fp16 scales, symmetric and with zero points (GPTQ, AWQ), FP8 with one
#: fp32 scale per row (per token or channel) and per 128 x 128 tile
#: (DeepSeek-V3's weights); and the element kinds of weight quantizers: NF4
#: and NF4 with double quantization (QLoRA), a 4-bit k-means codebook in the
#: same layout, and BitNet b1.58's ternary weights.
DEFAULT_FORMATS = (
    "fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "int8", "int4",
    "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
    "mx9", "mx6", "mx4", "int4_g128", "int4_g128_asym", "fp8_e4m3_rowwise", "fp8_e4m3_b128x128",
    "nf4", "nf4_dq", "kmeans4_g64", "ternary",
)
#: Every scale rule a report can sweep; each applies to the block formats
#: that take it (see :func:`lowbit.analysis.settings.takes_scale_rule`):
#: the power-of-two rules to MX formats, 4over6 to NVFP4, mse to every
#: block format.
SCALE_RULES = ("floor", "ceil", "rceil", "even", "4over6", "mse")
#: Each format's own rule (None), and "four over six" for the formats that
#: take it (NVFP4): a second NVFP4 setting beside the plain one.
DEFAULT_SCALE_RULES = (None, "4over6")
#: Every built-in distribution.
DEFAULT_DATA = tuple(DISTRIBUTIONS)
#: Elements per data set.
DEFAULT_SIZE = 1 << 16
#: The most elements per data set ``lowbit report --size`` takes: a sweep
#: holds several float64 arrays of each data set's size at once.
MAX_SIZE = 1 << 27
#: The row length 1-D data sets are laid out in for whole-axis (rowwise)
#: and tiled formats: that of llm_activations, tokens of 1024 channels.
ROW_WIDTH = LLM_CHANNELS
#: The format specs a model report sweeps unless told otherwise (weights
#: only: OCP MX at 8, 6 and 4 bits, NVFP4, the microexponent MX6 and INT4
#: in groups of 128), each with every method of DEFAULT_METHODS: 12
#: settings.
DEFAULT_MODEL_SPECS = ("mxfp8_e4m3", "mxfp6_e3m2", "mx6", "mxfp4", "nvfp4", "int4_g128")
#: The methods a model report can apply (lowbit.analysis.model_sweep.METHODS):
#: round to nearest alone (rtn) and lowbit.emulate.methods' own.
METHOD_NAMES = ("rtn", "gptq", "awq", "smoothquant", "rotate", "outliers")
#: Round to nearest and GPTQ.
DEFAULT_METHODS = ("rtn", "gptq")
#: The catalogue's headline formats: the OCP MX formats, NVFP4 and the
#: shared-microexponent formats MX9, MX6 and MX4.
HEADLINE_FORMATS = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4", "mx9", "mx6",
                    "mx4")
