"""Plots of formats and of their errors (matplotlib, no pyplot state).

Each function returns a ``matplotlib.figure.Figure``; save it with
``fig.savefig("name.png")``. Every figure has a title, labelled axes with
units and a legend where several series share the axes.

- :func:`number_line`: the positive values of element formats, log scale.
- :func:`relative_error`: the worst relative error of round-to-nearest
  across the dynamic range (the sawtooth), for element formats, or for
  scaled formats as a function of an element's size relative to its
  block's largest.
- :func:`sqnr_vs_bits`: SQNR against storage bits per element (block
  scales included), one panel per data set, with the Pareto front.
- :func:`histogram_vs_grid`: data against the values a setting can produce.
- :func:`layer_sensitivity`: SQNR per layer of a model and setting (a heat map).
- :func:`quality_vs_bits`: a model's quality (perplexity, fidelity) against
  bits per weight, a point per format spec and method, with the Pareto front.
- :func:`layer_costs`: what rounding each layer alone costs a model (bars).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lowbit.formats import ElementFormat, MicroexponentFormat, ScaledFormat, get_format

from .settings import Setting, absmax_scale, as_array

MARKERS = {"element": "o", "block": "s", "microexponent": "^"}


def _family(fmt: Any) -> str:
    if isinstance(fmt, ElementFormat):
        return "element"
    return "microexponent" if isinstance(fmt, MicroexponentFormat) else "block"


def number_line(formats: Iterable[Any]) -> Figure:
    """Every positive finite value of each element format (at most 16 bits)
    as a tick on a log2 axis, one row per format."""
    fmts = [get_format(f) for f in formats]
    if not fmts:
        raise ValueError("formats is empty")
    for fmt in fmts:
        if not isinstance(fmt, ElementFormat) or fmt.nbits > 16:
            raise ValueError(f"number_line draws element formats of at most 16 bits; {fmt.name} is not one "
                             "(for a block format, pass its element format: fmt.element)")
    positives = [fmt.values()[fmt.values() > 0] for fmt in fmts]
    fig = Figure(figsize=(10, 0.55 * len(fmts) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    ax.eventplot(positives, lineoffsets=range(len(fmts)), linelengths=0.7, linewidths=0.6, colors="C0")
    ax.set_xscale("log", base=2)
    ax.set_yticks(range(len(fmts)), [f"{f.name} ({len(p)})" for f, p in zip(fmts, positives)])
    ax.invert_yaxis()
    ax.set_xlabel("value (log scale, powers of two)")
    ax.set_ylabel("format (number of positive values)")
    ax.set_title("Positive values of each format")
    ax.grid(axis="x", alpha=0.3)
    return fig


def relative_error(formats: Iterable[Any], low: float | None = None, high: float | None = None,
                   points: int = 4001) -> Figure:
    """The worst relative error of round-to-nearest near x, for ``points``
    values of x spaced evenly in log2 from ``low`` to ``high``: ulp(x) / 2x
    (capped at 1, where x rounds to zero), and beyond the largest value the
    error of saturating, (x - max) / x, where that is larger. Within a binade it falls as x grows
    and jumps at each power of two: the sawtooth.

    Element formats: x is the value itself; the default range runs from
    half the smallest subnormal to twice the largest value of all the
    formats. Scaled formats: each block holds 1.0 first and x last (another
    sub-block), so x is an element's size relative to its block's largest
    (default 2**-24 .. 1),
    which shows how much precision small elements keep beside a large one.
    All formats must be of one kind.
    """
    fmts = [get_format(f) for f in formats]
    if not fmts:
        raise ValueError("formats is empty")
    scaled = isinstance(fmts[0], ScaledFormat)
    if any(isinstance(f, ScaledFormat) != scaled for f in fmts):
        raise ValueError("relative_error draws element formats or scaled formats, not both in one figure")
    if scaled:
        low, high = low or 2.0 ** -24, high or 1.0
    else:
        low = low or min(f.min_subnormal for f in fmts) / 2
        high = high or max(f.max for f in fmts) * 2
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low!r}, high={high!r}")
    x = np.logspace(np.log2(low), np.log2(high), points, base=2.0)
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    for fmt in fmts:
        if scaled:
            blocks = np.zeros((points, fmt.block_size))
            blocks[:, 0], blocks[:, -1] = 1.0, x  # x in another sub-block than 1.0 (microexponents)
            ulp, largest = (g[:, -1] for g in fmt.grid(blocks, axis=-1))
        else:
            ulp, largest = fmt.grid(x)
        rounding = np.minimum(ulp / (2 * x), 1.0)
        worst = np.where(x > largest, np.maximum((x - largest) / x, rounding), rounding)
        ax.plot(x, worst, lw=1, label=fmt.name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_ylabel("worst relative error of round-to-nearest (log scale)")
    if scaled:
        ax.set_xlabel("x / largest magnitude in its block (log scale)")
        ax.set_title("Relative error of an element beside a block maximum of 1.0")
    else:
        ax.set_xlabel("x (log scale)")
        ax.set_title("Relative error across the dynamic range (beyond max: saturation)")
    ax.grid(which="major", alpha=0.3)
    ax.legend(fontsize="small", ncols=2)
    return fig


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[tuple[float, float]]:
    """The (bits, quality) points that no other point beats: none has fewer
    or equal bits and better quality (higher, or lower with
    ``higher_is_better=False``, as for perplexity); NaN qualities are never
    on it. Sorted by bits."""
    sign = 1 if higher_is_better else -1
    front: list[tuple[float, float]] = []
    for bits, quality in sorted((p for p in points if not np.isnan(p[1])), key=lambda p: (p[0], -sign * p[1])):
        if not front or sign * quality > sign * front[-1][1]:
            front.append((bits, quality))
    return front


def _label_points(ax: Any, points: Sequence[tuple[float, float, str]], column_width: float = 0.5) -> None:
    """Labels to the right of points, stacked apart where points of nearly
    the same x would make them overlap (a thin line joins a moved label)."""
    if not points:
        return
    low, high = ax.get_ylim()
    gap = 0.045 * (high - low)
    placed: list[tuple[float, float]] = []  # (x, label y) of labels so far
    for x, y, text in sorted(points, key=lambda p: p[1]):
        label_y = max([y] + [py + gap for px, py in placed if abs(px - x) < column_width])
        placed.append((x, label_y))
        ax.annotate(text, (x, y), xytext=(x + 0.12, label_y), fontsize=6.5, va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if label_y - y > gap / 4 else None)


def sqnr_vs_bits(records: Sequence[Mapping[str, Any]], columns: int = 3) -> Figure:
    """SQNR (dB) against bits per element for every setting of a sweep, a
    panel per data set, the Pareto front as a dashed line. Markers: circles
    for element formats, squares for block formats, triangles for
    microexponent formats."""
    if not records:
        raise ValueError("no records to plot")
    names = list(dict.fromkeys(r["data"] for r in records))
    columns = min(columns, len(names))
    rows = -(-len(names) // columns)
    fig = Figure(figsize=(5.2 * columns, 4.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        mine = [r for r in records if r["data"] == name and np.isfinite(r["sqnr_db"])]
        for r in mine:
            family = _family(get_format(r["format"]))
            ax.scatter(r["bits"], r["sqnr_db"], marker=MARKERS[family], color=f"C{list(MARKERS).index(family)}",
                       s=28, zorder=3)
        front = pareto_front([(r["bits"], r["sqnr_db"]) for r in mine])
        if front:
            ax.plot(*zip(*front), ls="--", color="0.4", lw=1, drawstyle="steps-post", zorder=2)
        _label_points(ax, [(r["bits"], r["sqnr_db"], r["label"].replace(" absmax-scaled", "")) for r in mine])
        ax.set_title(name)
        ax.set_xlabel("bits per element (block scales included)")
        ax.set_ylabel("SQNR (dB)")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    scaled = any(r["tensor_scaling"] != "none" for r in records)
    handles = [axes[0].scatter([], [], marker=m, color=f"C{i}", label=f"{family} formats"
                               + (" (per-tensor scaled)" if family == "element" and scaled else ""))
               for i, (family, m) in enumerate(MARKERS.items())]
    handles.append(axes[0].plot([], [], ls="--", color="0.4", label="Pareto front")[0])
    fig.legend(handles=handles, loc="outside lower center", ncols=4)
    fig.suptitle("Signal-to-quantization-noise ratio against storage cost (higher is better)")
    return fig


def histogram_vs_grid(data: Mapping[str, Any], setting: Setting | Any, bins: int = 200,
                      axis: int = -1, columns: int = 3) -> Figure:
    """A histogram of each data set (a panel each; log counts where they
    span more than 20x) with the values ``setting`` can produce on it as
    vertical lines: the element format's values (times the per-tensor
    scale), or for scaled formats the distinct values the data was
    quantized to."""
    setting = setting if isinstance(setting, Setting) else Setting(setting)
    if not data:
        raise ValueError("data is empty")
    fmt = setting.format
    columns = min(columns, len(data))
    rows = -(-len(data) // columns)
    fig = Figure(figsize=(5.2 * columns, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, values) in zip(axes, data.items()):
        values = as_array(values)
        if isinstance(fmt, ElementFormat) and fmt.nbits <= 16:
            scale = absmax_scale(values, fmt.max) if setting.tensor_scaling == "absmax" else 1.0
            grid, how = fmt.values() * scale, "values"
        else:
            grid, how = np.unique(setting.apply(values, axis).values), "values used"
        x = values.astype(np.float64).ravel()
        x = x[np.isfinite(x)]
        lo, hi = np.percentile(x, [0.05, 99.95])
        shown = grid[(grid >= lo) & (grid <= hi)]
        counts, _, _ = ax.hist(x[(x >= lo) & (x <= hi)], bins=bins, color="C0", alpha=0.8)
        wide = counts.max() > 20 * max(counts[counts > 0].min(), 1)
        if wide:
            ax.set_yscale("log")
        if len(shown) <= 300:
            for g in shown:
                ax.axvline(g, color="C3", lw=0.5, alpha=0.6)
        else:
            ax.plot(shown, np.zeros_like(shown), "|", color="C3", ms=8, alpha=0.5)
        ax.set_title(f"{name}: {len(shown)} {how} in view")
        ax.set_xlabel("value (0.05th to 99.95th percentile)")
        ax.set_ylabel("count (log scale)" if wide else "count")
    for ax in axes[len(data):]:
        ax.set_visible(False)
    fig.suptitle(f"Data (blue) against the grid of {setting.label} (red)")
    return fig


def layer_sensitivity(records: Sequence[Mapping[str, Any]], title: str = "SQNR per layer") -> Figure:
    """A heat map of SQNR (dB): a column per layer (the records' ``data``,
    in order), a row per setting (``label``, fewest bits at the top), each
    cell written out in whole dB (∞ where quantizing changed nothing). Low
    cells are the sensitive layers."""
    if not records:
        raise ValueError("no records to plot")
    layers = list(dict.fromkeys(r["data"] for r in records))
    bits = {r["label"]: r["bits"] for r in records}
    labels = sorted(bits, key=lambda label: bits[label])
    cell = {(r["label"], r["data"]): r["sqnr_db"] for r in records}
    sqnr = np.array([[cell.get((label, layer), np.nan) for layer in layers] for label in labels], dtype=float)
    prefix = os.path.commonprefix(layers) if len(layers) > 1 else ""
    suffix = os.path.commonprefix([layer[::-1] for layer in layers])[::-1] if len(layers) > 1 else ""
    names = [layer[len(prefix): len(layer) - len(suffix)] or layer for layer in layers]
    fig = Figure(figsize=(max(7.0, 0.36 * len(layers) + 4), 0.32 * len(labels) + 3.2), layout="constrained")
    ax = fig.add_subplot()
    shown = np.where(np.isfinite(sqnr), sqnr, np.nan)
    image = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    for (i, j), value in np.ndenumerate(sqnr):
        if not np.isnan(value):
            light = np.isfinite(value) and value < np.nanmean(shown)
            ax.text(j, i, f"{value:.0f}" if np.isfinite(value) else "∞", ha="center", va="center", fontsize=6,
                    color="white" if light else "black")
    ax.set_xticks(range(len(layers)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), [f"{label} ({bits[label]:g})" for label in labels], fontsize=7)
    ax.set_xlabel(f"layer ({prefix}…{suffix})" if prefix or suffix else "layer")
    ax.set_ylabel("format (bits per element)")
    ax.set_title(title + " (dB; higher is better)")
    fig.colorbar(image, ax=ax, label="SQNR (dB)", shrink=0.8)
    return fig


def quality_vs_bits(rows: Sequence[Mapping[str, Any]], metric: str, higher_is_better: bool,
                    title: str, name: str | None = None) -> Figure:
    """A model's quality (``metric`` of each row) against bits per weight
    (``weight_bits``), a point per row labelled by its ``label``, one
    colour per ``method``, the Pareto front dashed (the k-bit scaling-law
    view: the best quality each storage cost buys). Rows whose metric is
    not finite are left out; a full-precision row (``kind`` "full") is a
    horizontal line. ``name``: the metric as the axis says it (default:
    its key with spaces)."""
    shown = [r for r in rows if r["kind"] == "grid" and r.get(metric) is not None and np.isfinite(r[metric])]
    if not shown:
        raise ValueError(f"no finite {metric} to plot")
    fig = Figure(figsize=(8.0, 5.2), layout="constrained")
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(r["method"] for r in shown))
    for i, method in enumerate(methods):
        mine = [r for r in shown if r["method"] == method]
        ax.scatter([r["weight_bits"] for r in mine], [r[metric] for r in mine], color=f"C{i}", s=28, zorder=3,
                   label=method)
    front = pareto_front([(r["weight_bits"], r[metric]) for r in shown], higher_is_better)
    ax.plot(*zip(*front), ls="--", color="0.4", lw=1, drawstyle="steps-post", zorder=2, label="Pareto front")
    full = [r[metric] for r in rows if r["kind"] == "full" and r.get(metric) is not None]
    if full:
        ax.axhline(full[0], color="0.2", lw=0.8, ls=":", label=f"full precision ({full[0]:.4g})")
    values = [r[metric] for r in shown]
    if metric == "perplexity" and min(values) > 0 and max(values) / min(values) > 3:  # spans 4-bit collapses
        ax.set_yscale("log")
    _label_points(ax, [(r["weight_bits"], r[metric], r["spec"]) for r in shown], column_width=0.3)
    ax.set_xlabel("bits per weight of the rounded layers (block scales included)")
    ax.set_ylabel((name or metric.replace("_", " ")) + (" (higher is better)" if higher_is_better else " (lower is better)"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def layer_costs(names: Sequence[str], costs: Sequence[float], title: str, xlabel: str, top: int = 30) -> Figure:
    """Horizontal bars of what rounding each layer alone costs (``costs``,
    e.g. the rise in perplexity), the ``top`` costliest first."""
    if not names:
        raise ValueError("no layers to plot")
    order = sorted(range(len(names)), key=lambda i: -costs[i] if np.isfinite(costs[i]) else -np.inf)[:top]
    fig = Figure(figsize=(8.0, 0.28 * len(order) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(range(len(order)), [costs[i] for i in order], color="C3")
    ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    return fig


def save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> str:
    """Write the figure as PNG and give back the path."""
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return os.fspath(path)
