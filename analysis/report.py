"""The error report (``lowbit report``): a sweep of formats over data sets,
written as ``report.md`` with its tables, ``results.csv`` with every metric,
and PNG figures beside them.

The report holds no timestamps or machine facts: the same arguments give
the same ``report.md`` and ``results.csv``, byte for byte.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np

import lowbit
from lowbit.formats import BlockFormat, ElementFormat, ScaledFormat, get_format

from . import plots
from .data import DISTRIBUTIONS, dataset
from .defaults import DEFAULT_DATA, DEFAULT_FORMATS, DEFAULT_SIZE
from .models import minilm_tensors, model_weights
from .sweep import markdown_table, measure, pivot, record, settings_grid, sweep, write_csv

TABLE_COLUMNS = ("data", "label", "bits", "sqnr_db", "mse", "mean_rel_error", "max_ulp_error", "mean_ulp_error",
                 "bias", "overflow_fraction", "underflow_fraction")
MODEL_COLUMNS = ("label", "bits", "mse", "sqnr_db", "mean_rel_error", "overflow_fraction", "underflow_fraction")

DEFINITIONS = """\
- **SQNR** = 10 log10(sum x² / sum (q − x)²) in dB: signal power over error power; +6 dB is one more bit.
- **MSE**: mean of (q − x)². **bias**: mean of q − x.
- **relative error**: |q − x| / |x| over the nonzero x.
- **ulp error**: |q − x| in units of the spacing of the grid x was rounded on (its block's grid for
  scaled formats); round to nearest keeps it ≤ 0.5 except where values were clamped.
- **overflow**: fraction of values beyond the largest magnitude of their grid (clamped);
  **underflow**: fraction of nonzero values that became zero.
- **bits**: storage per element, block scales included (MXFP4: 4 + 8/32 = 4.25). Element formats
  are scaled per tensor by amax / max first (one 32-bit scale per tensor, not counted).
"""


def write_report(out_dir: str | os.PathLike, *, formats: Sequence[Any] = DEFAULT_FORMATS,
                 data: Sequence[str] = DEFAULT_DATA, size: int = DEFAULT_SIZE, seed: int = 0,
                 roundings: Sequence[str] = ("nearest_even",), scale_rules: Sequence[str | None] = (None,),
                 model: Any = None, progress: bool | TextIO = False) -> pathlib.Path:
    """Write the report into ``out_dir`` (created if needed) and give back
    the path of its ``report.md``.

    ``formats``: names or format objects. ``data``: names of built-in
    distributions (:data:`lowbit.analysis.data.DISTRIBUTIONS`), ``size``
    elements each, drawn from ``seed``, or paths of tensors saved as
    ``.npy`` or ``.pt`` (blocked along their last axis). ``roundings`` and
    ``scale_rules`` (MX formats) multiply the settings. ``model``: None, ``"minilm"`` (its
    Linear weights and the activations it records on built-in sentences),
    or an ``nn.Module``, a state_dict, or a path to a saved state_dict (its
    weights): adds a per-layer section.
    """
    fmts = [get_format(f) for f in formats]
    if not fmts:
        raise ValueError("formats is empty: give at least one format")
    if not data:
        raise ValueError("data is empty: give at least one distribution")
    datasets = {os.fspath(name): dataset(os.fspath(name), size, seed) for name in data}
    settings = settings_grid(fmts, roundings, scale_rules)
    model_data = _model_tensors(model) if model is not None else None

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = sweep(datasets, settings, progress=progress)
    write_csv(records, out / "results.csv")

    command = _command(fmts, data, size, seed, roundings, scale_rules, model)
    md = [f"# lowbit error report\n\nlowbit {lowbit.__version__}. Reproduce with `{command}`.\n",
          f"Data: {_describe(datasets, size, seed)}. "
          f"Settings: {len(settings)} ({', '.join(s.label for s in settings)}). "
          "Every metric of every run is in [results.csv](results.csv).\n"]
    by_bits = sorted(range(len(settings)), key=lambda i: (settings[i].bits, i))
    sqnr = pivot(records, "sqnr_db")
    md += ["## SQNR (dB) by format and data\n", "Higher is better; rows by storage bits per element.\n",
           markdown_table([sqnr[i] for i in by_bits], decimals=1)]
    md += ["## SQNR against storage cost\n",
           "Each panel is one data set; the dashed line is the Pareto front (no format has more SQNR at "
           "fewer or equal bits).\n", _figure(plots.sqnr_vs_bits(records), out, "sqnr_vs_bits")]
    md += _format_figures(fmts, datasets, settings, out)
    md += ["## Every metric\n", markdown_table(records, TABLE_COLUMNS, digits=3)]
    if model_data is not None:
        md += _model_section(model_data, settings, out, progress)
    md += ["## Definitions\n", DEFINITIONS]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def _describe(datasets: Mapping[str, np.ndarray], size: int, seed: int) -> str:
    builtin = [name for name in datasets if name in DISTRIBUTIONS]
    parts = [f"{', '.join(builtin)} ({size} float32 samples each, seed {seed}; see `lowbit.analysis.data`)"]
    parts = parts if builtin else []
    parts += [f"{name} (a tensor of shape {x.shape})" for name, x in datasets.items() if name not in DISTRIBUTIONS]
    return "; ".join(parts)


def _figure(fig: Any, out: pathlib.Path, name: str) -> str:
    plots.save(fig, out / f"{name}.png")
    return f"![{name}]({name}.png)\n"


def _format_figures(fmts, datasets, settings, out) -> list[str]:
    md = []
    element_formats = [f for f in fmts if isinstance(f, ElementFormat) and f.nbits <= 16]
    elements_of_blocks = [f.element for f in fmts if isinstance(f, BlockFormat) and f.element.nbits <= 16]
    on_line = list(dict.fromkeys(element_formats + elements_of_blocks))
    if on_line:
        md += ["## Values on the number line\n",
               "Every positive value of each element format (and of the block formats' elements, before "
               "their block scale).\n", _figure(plots.number_line(on_line), out, "number_line")]
    if element_formats:
        md += ["## Relative error across the dynamic range\n",
               "The sawtooth: within a binade the relative error falls as x grows, then jumps at the next "
               "power of two; below the normal range (subnormals) it climbs to 100%.\n",
               _figure(plots.relative_error(element_formats), out, "relative_error")]
    scaled = [f for f in fmts if isinstance(f, ScaledFormat)]
    if scaled:
        md += ["## Small elements beside a large one\n",
               "A block holding 1.0 and x: how much precision x keeps as it shrinks relative to its block's "
               "largest element.\n", _figure(plots.relative_error(scaled), out, "block_relative_error")]
    lowest = min(settings, key=lambda s: (not isinstance(s.format, ElementFormat), s.bits))
    md += [f"## The data against the grid of {lowest.label}\n",
           "Histograms of each data set with the values this setting can give them (red): where the data "
           "crowds between two red lines, it loses most.\n",
           _figure(plots.histogram_vs_grid(datasets, lowest), out, "histograms")]
    return md


def _model_tensors(model: Any) -> dict[str, dict[str, np.ndarray]]:
    if isinstance(model, str) and model == "minilm":
        weights, activations = minilm_tensors()
        return {"weights": weights, "activations": activations}
    return {"weights": model_weights(model)}


def _model_section(model_data: Mapping[str, Mapping[str, np.ndarray]], settings, out, progress) -> list[str]:
    md = ["## The model, layer by layer\n"]
    for kind, tensors in model_data.items():
        results = measure(dict(tensors), settings, progress=progress)
        records = [record(name, setting, stats) for name, setting, stats in results]
        write_csv(records, out / f"model_{kind}.csv")
        total = [record(f"all {kind}", setting, sum(stats for _, s, stats in results if s is setting))
                 for setting in settings]
        count = sum(t.size for t in tensors.values())
        md += [f"### {kind.capitalize()}: {len(tensors)} tensors, {count} values\n",
               "Scaled formats block along each tensor's last axis (a Linear layer's input features). "
               f"Per-layer metrics: [model_{kind}.csv](model_{kind}.csv).\n",
               markdown_table(sorted(total, key=lambda r: r["bits"]), MODEL_COLUMNS, digits=4),
               _figure(plots.layer_sensitivity(records, f"SQNR per layer: {kind}"), out, f"layer_sensitivity_{kind}")]
    return md


def _command(fmts, data, size, seed, roundings, scale_rules, model) -> str:
    words = ["lowbit report"]
    if tuple(f.name for f in fmts) != DEFAULT_FORMATS:
        words.append("--formats " + " ".join(f.name for f in fmts))
    if tuple(data) != DEFAULT_DATA:
        words.append("--data " + " ".join(map(os.fspath, data)))
    if size != DEFAULT_SIZE:
        words.append(f"--size {size}")
    if seed:
        words.append(f"--seed {seed}")
    if tuple(roundings) != ("nearest_even",):
        words.append("--rounding " + " ".join(roundings))
    if tuple(scale_rules) != (None,):
        words.append("--scale-rule " + " ".join(r or "default" for r in scale_rules))
    if isinstance(model, str | os.PathLike):
        words.append(f"--model {os.fspath(model)}")
    return " ".join(words)
