"""Sweeps: every setting on every tensor, as a tidy table.

:func:`sweep` returns a list of records (plain dicts, one per setting and
data set): the setting (``data``, ``format``, ``label``, ``bits``,
``rounding``, ``scale_rule``, ``tensor_scaling``), then the metrics of
:mod:`lowbit.analysis.metrics`. :func:`write_csv` and :func:`markdown_table`
write them out; :func:`pivot` lays one metric out as data x settings.
A data set given as several tensors (a model's layers) is measured tensor
by tensor and its statistics added up, so its metrics are those of all its
elements together.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from lowbit.formats import BlockFormat, ElementFormat, get_format

from .metrics import METRICS, ErrorStats, error_stats
from .settings import Setting

SETTING_COLUMNS = ("data", "format", "label", "bits", "rounding", "scale_rule", "tensor_scaling")
COLUMNS = (*SETTING_COLUMNS, "count", *METRICS)
#: columns of names, left-aligned in Markdown tables (the others hold numbers)
TEXT_COLUMNS = ("data", "format", "label", "spec", "method", "layer", "Pareto")


def settings_grid(formats: Iterable[Any], roundings: Sequence[str] = ("nearest_even",),
                  scale_rules: Sequence[str | None] = (None,), tensor_scaling: str = "absmax") -> list[Setting]:
    """Every format x rounding x scale rule. Scale rules other than None
    apply to MX formats only (other formats get one setting without);
    ``tensor_scaling`` applies to element formats only."""
    settings = []
    for fmt in map(get_format, formats):
        rules = [r for r in scale_rules if r is None or (isinstance(fmt, BlockFormat) and fmt.scale.man_bits == 0)]
        scaling = tensor_scaling if isinstance(fmt, ElementFormat) else "none"
        for rounding in roundings:
            for rule in rules or [None]:
                settings.append(Setting(fmt, rounding=rounding, scale_rule=rule, tensor_scaling=scaling))
    return settings


class Progress:
    """A one-line progress indicator on a stream (``\\r``-updated on a terminal,
    one line per step elsewhere); silent when the stream is None."""

    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.interactive = stream is not None and stream.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.stream is None:
            return
        line = f"[{self.done}/{self.total}] {what}"
        if self.interactive:
            self.stream.write(f"\r\033[K{line}" + ("\n" if self.done == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def measure(data: Mapping[str, Any], settings: Iterable[Setting | Any], *, axis: int = -1,
            progress: bool | TextIO = False) -> list[tuple[str, Setting, ErrorStats]]:
    """The :class:`ErrorStats` of every setting on every data set (what
    :func:`sweep` tabulates), as (data name, setting, stats)."""
    settings = [s if isinstance(s, Setting) else Setting(s) for s in settings]
    if not data:
        raise ValueError("data is empty: give at least one named array")
    stream = sys.stderr if progress is True else (progress or None)
    meter = Progress(len(settings) * len(data), stream)
    results = []
    for name, tensors in data.items():
        parts = tensors.values() if isinstance(tensors, Mapping) else [tensors]
        for setting in settings:
            results.append((name, setting, sum(error_stats(x, *setting.apply(x, axis)) for x in parts)))
            meter.step(f"{setting.label} on {name}")
    return results


def sweep(data: Mapping[str, Any], settings: Iterable[Setting | Any], *, axis: int = -1,
          progress: bool | TextIO = False) -> list[dict[str, Any]]:
    """Measure every setting on every data set: a record per pair.

    ``data`` maps names to an array/tensor or to a mapping of several
    (a model's tensors, measured one by one and added up). ``settings``:
    :class:`Setting` objects or formats (applied with the defaults).
    Scaled formats block along ``axis``. ``progress``: True for a progress
    line on stderr, or a stream to write it to.
    """
    return [record(name, setting, stats) for name, setting, stats in measure(data, settings, axis=axis,
                                                                             progress=progress)]


def record(data: str, setting: Setting, stats: ErrorStats) -> dict[str, Any]:
    """One row of a sweep's table."""
    return {
        "data": data, "format": setting.format.name, "label": setting.label, "bits": setting.bits,
        "rounding": setting.rounding, "scale_rule": setting.scale_rule, "tensor_scaling": setting.tensor_scaling,
        **stats.metrics(),
    }


def write_csv(records: Sequence[Mapping[str, Any]], destination: str | os.PathLike | TextIO) -> None:
    """The records as CSV with a header row (floats written exactly, by repr)."""
    if isinstance(destination, str | os.PathLike):
        with open(destination, "w", newline="") as f:
            write_csv(records, f)
        return
    columns = list(records[0]) if records else list(COLUMNS)
    writer = csv.DictWriter(destination, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in records:
        writer.writerow({k: "" if v is None else repr(v) if isinstance(v, float) else v for k, v in row.items()})


def format_number(value: Any, digits: int = 4, decimals: int | None = None) -> str:
    """A table cell: ints as they are, floats to ``digits`` significant
    digits (or ``decimals`` places after the point, when given)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}" if decimals is not None else f"{value:.{digits}g}"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 4,
                   decimals: int | None = None) -> str:
    """A Markdown table of the rows (all columns of the first row by
    default); numbers as :func:`format_number` writes them, except ``bits``,
    which is always written in full."""
    if not rows:
        raise ValueError("no rows to tabulate")
    columns = list(columns or rows[0])
    out = io.StringIO()
    out.write("| " + " | ".join(columns) + " |\n")
    out.write("|" + "|".join("---" if c in TEXT_COLUMNS else "---:" for c in columns) + "|\n")
    for row in rows:
        cells = (str(row.get(c)) if c == "bits" else format_number(row.get(c), digits, decimals) for c in columns)
        out.write("| " + " | ".join(cells) + " |\n")
    return out.getvalue()


def pivot(records: Sequence[Mapping[str, Any]], metric: str, rows: str = "label",
          columns: str = "data") -> list[dict[str, Any]]:
    """One metric laid out with a row per ``rows`` value and a column per
    ``columns`` value (both in order of first appearance)."""
    if metric not in COLUMNS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    table: dict[Any, dict[str, Any]] = {}
    for r in records:
        first = {rows: r[rows], "bits": r["bits"]} if rows in ("label", "format") else {rows: r[rows]}
        table.setdefault(r[rows], first)[r[columns]] = r[metric]
    return list(table.values())
