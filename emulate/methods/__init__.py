"""lowbit.emulate.methods: the quantization papers' methods on any lowbit
format, each a reversible step over the emulation layer (one module each;
:func:`~lowbit.emulate.restore_model` undoes them, bit for bit, and
:func:`changes_table` says what each did to each layer).
See docs/methods.md."""

from ..changes import Change, changes, changes_table
from .activation_aware import awq
from .error_feedback import gptq
from .format_choice import choose_formats
from .outlier_split import OutlierConv1D, OutlierLinear, outliers
from .rotation import rotate
from .smoothing import smoothquant

__all__ = ["Change", "OutlierConv1D", "OutlierLinear", "awq", "changes", "changes_table", "choose_formats", "gptq",
           "outliers", "rotate", "smoothquant"]
