"""lowbit.analysis: how much error a format costs on your data.

- :mod:`~lowbit.analysis.metrics`: :func:`error_stats` and :class:`ErrorStats`
  (MSE, SQNR, absolute/relative/ulp errors, bias, overflow and underflow).
- :mod:`~lowbit.analysis.data`: seeded distributions (:func:`generate`).
- :mod:`~lowbit.analysis.models`: a model's weights and recorded activations.
- :mod:`~lowbit.analysis.text`: English prose shipped with Python
  (:func:`python_docs_sentences`), to calibrate and evaluate models on.
- :mod:`~lowbit.analysis.evaluation`: model-level quality, :func:`perplexity`
  of a causal LM and :func:`fidelity` of a model to a reference.
- :mod:`~lowbit.analysis.tiny_gpt`: :func:`tiny_lm`, a byte-level GPT trained
  on that text (cached), a real language model that needs no download.
- :mod:`~lowbit.analysis.model_tasks` and :mod:`~lowbit.analysis.model_sweep`:
  a runnable model with its data, swept over format specs x methods and
  layer by layer, resumably (the report's model section).
- :mod:`~lowbit.analysis.settings`: :class:`Setting`, a format with its
  rounding, scale rule and per-tensor scaling.
- :mod:`~lowbit.analysis.sweep`: settings x data into a table of records,
  CSV and Markdown.
- :mod:`~lowbit.analysis.plots` and :mod:`~lowbit.analysis.report`
  (``write_report``, the ``lowbit report`` command) load matplotlib, so they
  are imported on their own: ``from lowbit.analysis import plots``.
"""

from .data import DISTRIBUTIONS, generate
from .evaluation import Fidelity, fidelity, perplexity
from .metrics import METRICS, ErrorStats, error_stats
from .models import model_weights, recording
from .settings import Setting
from .sweep import markdown_table, pivot, settings_grid, sweep, write_csv
from .text import python_docs_sentences, python_docs_text
from .tiny_gpt import TinyGPT, tiny_lm

__all__ = [
    "DISTRIBUTIONS", "METRICS", "ErrorStats", "Fidelity", "Setting", "TinyGPT", "error_stats", "fidelity", "generate",
    "markdown_table", "model_weights", "perplexity", "pivot", "python_docs_sentences", "python_docs_text",
    "recording", "settings_grid", "sweep", "tiny_lm", "write_csv",
]
