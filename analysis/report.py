"""The error report (``lowbit report``): a sweep of formats over data sets,
written as ``report.md`` with its tables, ``results.csv`` with every metric,
and PNG figures beside them.

The report holds no timestamps or machine facts: the same arguments give
the same ``report.md`` and ``results.csv``, byte for byte.

Scaled formats block along each tensor's last axis. Whole-axis (rowwise)
and tiled formats need rows, which the 1-D distributions do not have: the
report lays 1-D data out as rows of :data:`~lowbit.analysis.defaults.ROW_WIDTH`
(1024) values for them (the last row zero-padded, the padding measured
nowhere; see :class:`~lowbit.analysis.settings.Setting`), as
``llm_activations`` holds tokens of 1024 channels, and says so in the
report. A whole-axis format's bits count its one scale per row over the
row's length, per data set.

With a model that runs (``--model tiny-lm``, ``minilm``, a transformers
folder), the report adds the model-level section of
:mod:`~lowbit.analysis.model_report`: quality per format spec x method,
quality against bits, per-layer sensitivity. Its sweep keeps finished
cells and resumes; its numbers depend on the model's weights, which the
report names by a fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import secrets
import shlex
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import torch

import lowbit
from lowbit.emulate.calibrating import default_forward
from lowbit.formats import BlockFormat, ElementFormat, ScaledFormat, get_format

from . import plots
from .data import DISTRIBUTIONS, dataset
from .defaults import (DEFAULT_DATA, DEFAULT_FORMATS, DEFAULT_METHODS, DEFAULT_MODEL_SPECS, DEFAULT_SCALE_RULES,
                       DEFAULT_SIZE, ROW_WIDTH)
from .model_report import MODEL_FILES, ModelPlan, earlier_rows, model_section, plan_model, remove_leftovers
from .model_tasks import DEFAULT_EVALUATION_TOKENS, is_model_name
from .models import minilm_tensors, model_weights, recording
from .settings import Setting, needs_rows, takes_scale_rule
from .sweep import markdown_table, measure, pivot, record, sweep, write_csv

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
- **bits**: storage per element, block scales included (MXFP4: 4 + 8/32 = 4.25; zero points too:
  int4_g128_asym is 4 + (16 + 4)/128). Element formats are scaled per tensor by amax / max first
  (one 32-bit scale per tensor, not counted). Whole-axis (rowwise) formats: one scale per row of the
  data set, so 8 + 32/1024 for fp8_e4m3_rowwise on rows of 1024; tiles count whole tiles.
- **rule=R** in a label: the setting's scale rule where it is not the format's own (4over6: each NVFP4
  block keeps the scale that maps its amax to 6 or to 4, whichever gives less squared error).
"""


#: Every file a report writes. A folder holding only these (or nothing) is
#: a previous report, which a new one replaces whole; any other entry makes
#: write_report refuse the folder rather than delete it.
REPORT_FILES = frozenset({
    "report.md", "results.csv", "model_weights.csv", "model_activations.csv", "sqnr_vs_bits.png",
    "number_line.png", "relative_error.png", "block_relative_error.png", "histograms.png",
    "layer_sensitivity_weights.png", "layer_sensitivity_activations.png", *MODEL_FILES,
})


class ReportInterrupted(KeyboardInterrupt):
    """Ctrl-C during a model sweep: the report was written with the cells
    finished so far (marked partial) before this was raised."""


def write_report(out_dir: str | os.PathLike, *, formats: Sequence[Any] = DEFAULT_FORMATS,
                 data: Sequence[str] = DEFAULT_DATA, size: int = DEFAULT_SIZE, seed: int = 0,
                 roundings: Sequence[str] = ("nearest_even",),
                 scale_rules: Sequence[str | None] = DEFAULT_SCALE_RULES,
                 model: Any = None, model_specs: Sequence[str] = DEFAULT_MODEL_SPECS,
                 methods: Sequence[str] = DEFAULT_METHODS, sensitivity: str | None = "auto",
                 model_tokens: int = DEFAULT_EVALUATION_TOKENS, progress: bool | TextIO = False) -> pathlib.Path:
    """Write the report into the folder ``out_dir`` and give back the path
    of its ``report.md``.

    ``formats``: names or format objects. ``data``: names of built-in
    distributions (:data:`lowbit.analysis.data.DISTRIBUTIONS`), ``size``
    elements each, drawn from ``seed``, or paths of tensors saved as
    ``.npy`` or ``.pt`` (blocked along their last axis; 1-D data as rows of
    :data:`ROW_WIDTH` for whole-axis and tiled formats). ``roundings``
    multiply the settings; so do ``scale_rules`` (None: each format's own),
    each for the block formats that take it (see :func:`report_settings`;
    the default adds NVFP4 with ``"4over6"``). ``model``: None, ``"minilm"`` (its
    Linear weights and the activations it records on built-in sentences),
    or an ``nn.Module``, a state_dict, or a path to a saved state_dict (its
    weights): adds a per-layer section. A model that can run (``"tiny-lm"``,
    ``"minilm"``, a local transformers folder or a
    :class:`~lowbit.analysis.model_tasks.ModelTask`; see
    :mod:`~lowbit.analysis.model_tasks`) adds the model-level section
    (:mod:`~lowbit.analysis.model_report`): its quality under every spec of
    ``model_specs`` (``WEIGHT`` or ``WEIGHT/INPUT``) x method of ``methods``
    (``rtn``, ``gptq``, ..., chains such as ``rotate+gptq``), and each
    linear layer rounded alone to ``sensitivity`` (``"auto"``: the spec
    with the fewest bits; None: none), perplexity on ``model_tokens``
    held-out tokens. Its cells are kept as they finish: a rerun into the
    same folder measures only what an interrupted run left, and Ctrl-C
    during the model sweep writes the report with the finished cells (marked
    partial), then raises :class:`ReportInterrupted`.

    The whole report is written into a new folder beside ``out_dir`` and
    moved into place when complete, replacing a previous report there: an
    error or an interruption leaves ``out_dir`` as it was. ``out_dir`` must
    be new, empty, or a previous report (see :func:`check_out_dir`). Every
    argument is checked, and the data and model loaded, before any work.
    """
    check_out_dir(out_dir)
    plan = plan_report(formats=formats, data=data, size=size, seed=seed, roundings=roundings,
                       scale_rules=scale_rules, model=model, model_specs=model_specs, methods=methods,
                       sensitivity=sensitivity, model_tokens=model_tokens, progress=progress)
    return plan.write(out_dir, progress=progress)


def check_out_dir(out_dir: str | os.PathLike, what: str = "out_dir") -> None:
    """Raise ValueError (naming the argument as ``what``) unless a report
    can go to ``out_dir``: a folder that does not exist yet (it is made, its
    parents too), an empty folder, or a previous report (only entries named
    in :data:`REPORT_FILES`), which the new report replaces whole. A folder
    holding anything else is refused: the report would delete it. So are a
    path whose nearest existing parent is a file or not writable, and the
    current folder or one above it (it cannot be replaced)."""
    path = pathlib.Path(os.path.realpath(out_dir))
    shown = f"{what} {os.fspath(out_dir)!r}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"{shown} is a file, not a folder")
    if path.is_dir():
        if pathlib.Path.cwd().resolve().is_relative_to(path):
            raise ValueError(f"{shown} is the current folder or holds it; give a folder for the report alone")
        foreign = sorted(entry.name for entry in os.scandir(path)
                         if entry.name not in REPORT_FILES or not entry.is_file(follow_symlinks=False))
        if foreign:
            listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ValueError(f"{shown} holds files a report does not write ({listed}); a report replaces its "
                             "folder whole, so give a new or empty folder or a previous report's")
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        raise ValueError(f"{shown} cannot be made: {os.fspath(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{shown} cannot be made: no permission to write in {os.fspath(parent)!r}")


#: The largest block a report takes: its error curve of a scaled format
#: holds a few thousand blocks at once (about 90 KB of memory per element
#: of a block). Whole-axis and tiled formats are exempt: their curves are
#: drawn with blocks of :data:`CURVE_BLOCK` (see :func:`curve_format`).
MAX_REPORT_BLOCK = 4096
#: The block length the error curve of a whole-axis or tiled format is drawn with.
CURVE_BLOCK = 32


def report_settings(formats: Sequence[Any], roundings: Sequence[str] = ("nearest_even",),
                    scale_rules: Sequence[str | None] = DEFAULT_SCALE_RULES) -> list[Setting]:
    """Every format x rounding x scale rule the format takes
    (:func:`~lowbit.analysis.settings.takes_scale_rule`): a rule other than
    None applies to the block formats that take it, and a format that takes
    none of the rules gets one setting with its own. Element formats are
    scaled per tensor (absmax); whole-axis and tiled formats get 1-D data as
    rows of :data:`ROW_WIDTH`."""
    settings = []
    for fmt in map(get_format, formats):
        rules = [rule for rule in scale_rules if takes_scale_rule(fmt, rule)] or [None]
        scaling = "absmax" if isinstance(fmt, ElementFormat) else "none"
        width = ROW_WIDTH if needs_rows(fmt) else None
        settings += [Setting(fmt, rounding=rounding, scale_rule=rule, tensor_scaling=scaling, row_width=width)
                     for rounding in roundings for rule in rules]
    return settings


def curve_format(fmt: Any) -> Any:
    """The format whose error curve (an element x beside a block maximum of
    1.0, every other element zero) is drawn for ``fmt``: ``fmt`` itself,
    except that a whole-axis or tiled block format is drawn as blocks of
    :data:`CURVE_BLOCK` along one axis with the same element, scale, rule,
    zero point and second level. Its curve is the same: a block's scale and
    zero point depend on its largest magnitude and its range, which zeros do
    not change, and a searched scale on the error, to which zeros add none."""
    if isinstance(fmt, BlockFormat) and needs_rows(fmt):
        return dataclasses.replace(fmt, block_size=CURVE_BLOCK, block_shape=None)
    return fmt


def measured_bits(records: list[dict[str, Any]], settings: Sequence[Setting],
                  data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The records of :func:`~lowbit.analysis.sweep.measure` over ``data``
    and ``settings`` (in its order) with each one's bits on its own data
    (:meth:`Setting.bits_on`: a whole-axis format's scale per row of that data set)."""
    pairs = [(name, setting) for name in data for setting in settings]
    for r, (name, setting) in zip(records, pairs, strict=True):
        r["bits"] = setting.bits_on(np.shape(data[name]))
    return records


@dataclass(frozen=True)
class ReportPlan:
    """What a report measures, checked and loaded: its formats, data sets,
    settings and model tensors (see :func:`write_report`). ``write`` does
    the measuring and writing."""

    formats: list[ElementFormat | ScaledFormat]
    data: list[str]
    datasets: dict[str, np.ndarray]
    size: int
    seed: int
    roundings: list[str]
    scale_rules: list[str | None]
    settings: list[Setting]
    model: Any
    model_data: dict[str, dict[str, np.ndarray]] | None
    model_plan: ModelPlan | None = None

    def write(self, out_dir: str | os.PathLike, progress: bool | TextIO = False) -> pathlib.Path:
        """Measure and write the report into ``out_dir`` through a staging
        folder (see :func:`write_report`); give back the path of its report.md."""
        check_out_dir(out_dir)
        done = earlier_rows(self.model_plan, out_dir) if self.model_plan is not None else {}
        with _staged(out_dir) as stage:
            interrupted = self._write_into(stage, progress, done, out_dir)
        remove_leftovers(pathlib.Path(os.path.realpath(out_dir)))
        path = pathlib.Path(out_dir) / "report.md"
        if interrupted:
            raise ReportInterrupted(f"interrupted: wrote a partial report to {os.fspath(path)} ({interrupted}); "
                                    "run the same command again to finish it")
        return path

    def _write_into(self, out: pathlib.Path, progress: bool | TextIO,
                    done: Mapping[tuple[str, str, str, str], Mapping[str, Any]], out_dir: str | os.PathLike) -> str:
        """Every file of the report, written into the existing folder ``out``
        (bound for ``out_dir``); gives back what an interrupted model sweep
        finished ("" when whole)."""
        records = measured_bits(sweep(self.datasets, self.settings, progress=progress), self.settings,
                                self.datasets)
        write_csv(records, out / "results.csv")
        command = _command(self.formats, self.data, self.size, self.seed, self.roundings, self.scale_rules,
                           self.model, self.model_plan)
        settings = self.settings
        md = [f"# lowbit error report\n\nlowbit {lowbit.__version__}. Reproduce with `{command}`.\n",
              f"Data: {_describe(self.datasets, self.size, self.seed)}. "
              f"Settings: {len(settings)} ({', '.join(s.label for s in settings)}). "
              "Every metric of every run is in [results.csv](results.csv).\n"]
        md += _layout_note(self.datasets, settings)
        sqnr = _bits_ranges(pivot(records, "sqnr_db"), records)
        by_bits = sorted(range(len(settings)), key=lambda i: (min(r["bits"] for r in records
                                                                   if r["label"] == settings[i].label), i))
        md += ["## SQNR (dB) by format and data\n", "Higher is better; rows by storage bits per element.\n",
               markdown_table([sqnr[i] for i in by_bits], decimals=1)]
        md += ["## SQNR against storage cost\n",
               "Each panel is one data set; the dashed line is the Pareto front (no format has more SQNR at "
               "fewer or equal bits).\n",
               _figure(_room_for_labels(plots.sqnr_vs_bits(_with_formats(records, settings))), out, "sqnr_vs_bits")]
        md += _format_figures(self.formats, self.datasets, settings, out)
        md += ["## Every metric\n", markdown_table(records, TABLE_COLUMNS, digits=3)]
        if self.model_data is not None:
            md += _model_section(self.model_data, settings, out, progress)
            if self.model_plan is None:
                md.append("These are the model's tensors alone: with no way to run the model on data, the report has "
                          "no perplexity, fidelity or per-layer sensitivity. For those give a model that runs: "
                          "`--model tiny-lm`, `minilm`, a transformers folder, or a `ModelTask` to `write_report` "
                          "in Python (docs/analysis.md).\n")
        interrupted = ""
        if self.model_plan is not None:
            section, result = model_section(self.model_plan, out, done, progress)
            md += section
            if result.interrupted:
                interrupted = f"{len(result.rows)} of {result.total} model cells"
                resume = f"{command} --out {shlex.quote(os.fspath(out_dir))}"
                md.insert(2, f"**This report is partial:** interrupted after {interrupted}; run `{resume}` to "
                             "finish it (the finished cells are kept).\n")
        md += ["## Definitions\n", DEFINITIONS]
        (out / "report.md").write_text("\n".join(md))
        return interrupted


def plan_report(*, formats: Sequence[Any] = DEFAULT_FORMATS, data: Sequence[str] = DEFAULT_DATA,
                size: int = DEFAULT_SIZE, seed: int = 0, roundings: Sequence[str] = ("nearest_even",),
                scale_rules: Sequence[str | None] = DEFAULT_SCALE_RULES, model: Any = None,
                model_specs: Sequence[str] = DEFAULT_MODEL_SPECS, methods: Sequence[str] = DEFAULT_METHODS,
                sensitivity: str | None = "auto", model_tokens: int = DEFAULT_EVALUATION_TOKENS,
                progress: bool | TextIO = False) -> ReportPlan:
    """Check the arguments of :func:`write_report` (ValueError or TypeError
    naming the one at fault) and load its data and model, measuring nothing
    (training the tiny LM on its first use, with ``progress`` lines)."""
    fmts = [get_format(f) for f in formats]
    if not fmts:
        raise ValueError("formats is empty: give at least one format")
    if not data:
        raise ValueError("data is empty: give at least one distribution")
    for what, values in (("formats", [f.name for f in fmts]), ("roundings", roundings),
                         ("scale_rules", scale_rules), ("data", [os.fspath(d) for d in data])):
        repeated = sorted({v for v in values if list(values).count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f"{what} lists {', '.join(map(str, repeated))} more than once; give each once")
    for fmt in fmts:
        if (getattr(curve_format(fmt), "block_size", 0) or 0) > MAX_REPORT_BLOCK:
            raise ValueError(f"formats: {fmt.name} has blocks of {fmt.block_size}; the report's error curves "
                             f"(one row per point) hold blocks of at most {MAX_REPORT_BLOCK} elements")
    datasets = {os.fspath(name): dataset(os.fspath(name), size, seed) for name in data}
    settings = report_settings(fmts, roundings, scale_rules)
    model_plan = (plan_model(model, model_specs, methods, sensitivity, model_tokens, progress)
                  if is_model_name(model) else None)
    model_data = _model_tensors(model, model_plan) if model is not None else None
    tensors = {name: x for name, x in datasets.items()}
    for kind, named in (model_data or {}).items():
        tensors.update({f"{kind} {name}": x for name, x in named.items()})
    _check_layouts(settings, tensors)
    return ReportPlan(fmts, list(data), datasets, size, seed, list(roundings), list(scale_rules), settings, model,
                      model_data, model_plan)


def _check_layouts(settings: Sequence[Setting], tensors: Mapping[str, np.ndarray]) -> None:
    """ValueError, before any work, where a block format cannot block a
    tensor as the report lays it out (a whole-axis row longer than the
    largest block, tiles on data of one dimension)."""
    for setting in settings:
        fmt = setting.format
        if not isinstance(fmt, BlockFormat):
            continue
        for name, x in tensors.items():
            try:
                fmt.layout(setting.laid_out_shape(np.shape(x)), -1)
            except ValueError as error:
                raise ValueError(f"formats: {fmt.name} cannot block {name} (shape {np.shape(x)}): {error}") from None


def _layout_note(datasets: Mapping[str, np.ndarray], settings: Sequence[Setting]) -> list[str]:
    """A paragraph on how 1-D data sets are laid out for whole-axis and tiled formats, where that happens."""
    laid_out = [s for s in settings if s.row_width is not None]
    flat = [name for name, x in datasets.items() if np.ndim(x) == 1]
    if not laid_out or not flat:
        return []
    names = ", ".join(dict.fromkeys(s.format.name for s in laid_out))
    widths = ", ".join(map(str, sorted({s.row_width for s in laid_out})))
    return [f"Whole-axis (rowwise) and tiled formats ({names}) scale rows and 2-D tiles, which 1-D data has "
            f"not: they see each 1-D data set ({', '.join(flat)}) as rows of {widths} values in order (the last "
            "row zero-padded; the padding is measured nowhere), as llm_activations holds tokens of 1024 "
            "channels. Their scales are per row of 1024 values or per tile of rows; other formats block the "
            "data as it is.\n"]


def _bits_ranges(rows: list[dict[str, Any]], records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pivoted rows whose bits differ between data sets (a whole-axis format
    on rows of different lengths) show their range, "low to high"."""
    for row in rows:
        bits = sorted({r["bits"] for r in records if r["label"] == row["label"]})
        if len(bits) > 1:
            row["bits"] = f"{bits[0]} to {bits[-1]}"
    return rows


def _with_formats(records: Sequence[Mapping[str, Any]], settings: Sequence[Setting]) -> list[dict[str, Any]]:
    """The records with the format objects in place of their names (a
    format built in Python has a name get_format cannot read back)."""
    formats = {s.label: s.format for s in settings}
    return [{**r, "format": formats[r["label"]]} for r in records]


@contextlib.contextmanager
def _staged(out_dir: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A new, empty folder beside ``out_dir`` (same file system) to write
    into. When the block ends normally it replaces ``out_dir`` whole (see
    :func:`_replace`); when it raises, KeyboardInterrupt included, the
    folder is removed and ``out_dir`` is left as it was."""
    target = pathlib.Path(os.path.realpath(out_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        yield stage
        check_out_dir(out_dir)  # again: files may have appeared while the report was measured
        _replace(target, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _replace(target: pathlib.Path, new: pathlib.Path) -> None:
    """Put the folder ``new`` at ``target``: rename the folder there aside,
    rename ``new`` in, then delete the old one. If the second rename fails
    or is interrupted, the old folder is renamed back first."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    try:
        os.rename(target, old)
        os.rename(new, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old)


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
               "largest element (the other elements zero, which leaves the curve the same for any block "
               "length: rows and tiles are drawn as blocks of 32).\n",
               _figure(_distinct_lines(plots.relative_error, [curve_format(f) for f in scaled]), out,
                       "block_relative_error")]
    lowest = min(settings, key=lambda s: (not isinstance(s.format, ElementFormat), s.bits))
    md += [f"## The data against the grid of {lowest.label}\n",
           "Histograms of each data set with the values this setting can give them (red): where the data "
           "crowds between two red lines, it loses most.\n",
           _figure(plots.histogram_vs_grid(datasets, lowest), out, "histograms")]
    return md


def _room_for_labels(fig: Any, span: float = 1.5) -> Any:
    """Widen each panel of an SQNR-vs-bits figure to at least ``span`` bits:
    its labels sit a fixed 0.12 bits right of their points, so settings a
    few hundredths of a bit apart (8.002 and 8.03: tiles and rows of fp32
    scales) would put them far outside a narrow panel and collapse the layout."""
    for ax in fig.axes:
        low, high = ax.get_xlim()
        if ax.get_visible() and high - low < span:
            middle = (low + high) / 2
            ax.set_xlim(middle - span / 3, middle + 2 * span / 3)
    return fig


def _distinct_lines(draw: Any, *args: Any) -> Any:
    """``draw(*args)`` with 20 distinguishable line styles: matplotlib's ten
    colours solid, then dashed (its default cycle repeats after ten)."""
    import matplotlib
    from matplotlib import cycler

    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    with matplotlib.rc_context({"axes.prop_cycle": cycler(linestyle=["-", "--"]) * cycler(color=colours)}):
        return draw(*args)


def _model_tensors(model: Any, plan: ModelPlan | None) -> dict[str, dict[str, np.ndarray]]:
    """The weights of a model's layers and, for a model that runs, the
    inputs of its Linear layers (MiniLM on its built-in sentences, another
    model on its first calibration batch)."""
    if plan is None:
        return {"weights": model_weights(model)}
    task = plan.task
    if task.name == "minilm":
        weights, activations = minilm_tensors(task.model)
        return {"weights": weights, "activations": activations}
    with torch.no_grad(), recording(task.model) as activations:
        (task.forward or default_forward)(task.model, task.calibration[0])
    return {"weights": model_weights(task.model), "activations": activations}


def _model_section(model_data: Mapping[str, Mapping[str, np.ndarray]], settings, out, progress) -> list[str]:
    md = ["## The model, layer by layer\n"]
    for kind, tensors in model_data.items():
        results = measure(dict(tensors), settings, progress=progress)
        records = [{**record(name, setting, stats), "bits": setting.bits_on(np.shape(tensors[name]))}
                   for name, setting, stats in results]
        write_csv(records, out / f"model_{kind}.csv")
        count = sum(t.size for t in tensors.values())
        total = [{**record(f"all {kind}", setting, sum(stats for _, s, stats in results if s is setting)),
                  "bits": sum(setting.bits_on(np.shape(t)) * t.size for t in tensors.values()) / count}
                 for setting in settings]
        bits = {r["label"]: r["bits"] for r in total}  # the heat map's rows: each setting's bits over the model
        md += [f"### {kind.capitalize()}: {len(tensors)} tensors, {count} values\n",
               "Scaled formats block along each tensor's last axis (a Linear layer's input features). "
               f"Per-layer metrics: [model_{kind}.csv](model_{kind}.csv).\n",
               markdown_table(sorted(total, key=lambda r: r["bits"]), MODEL_COLUMNS, digits=4),
               _figure(plots.layer_sensitivity([{**r, "bits": bits[r["label"]]} for r in records],
                                               f"SQNR per layer: {kind}"), out, f"layer_sensitivity_{kind}")]
    return md


def _command(fmts, data, size, seed, roundings, scale_rules, model, model_plan) -> str:
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
    if tuple(scale_rules) != DEFAULT_SCALE_RULES:
        words.append("--scale-rule " + " ".join(r or "default" for r in scale_rules))
    if isinstance(model, str | os.PathLike):
        words.append(f"--model {os.fspath(model)}")
    if model_plan is not None:
        words += _model_options(model_plan)
    return " ".join(words)


def _model_options(plan: ModelPlan) -> list[str]:
    """The command-line options of a model sweep that differ from the defaults."""
    words = []
    if tuple(plan.specs) != DEFAULT_MODEL_SPECS:
        words.append("--model-specs " + " ".join(plan.specs))
    if tuple(plan.methods) != DEFAULT_METHODS:
        words.append("--methods " + " ".join(plan.methods))
    if plan.sensitivity_option != "auto":
        words.append(f"--sensitivity {plan.sensitivity_option or 'none'}")
    if plan.tokens != DEFAULT_EVALUATION_TOKENS:
        words.append(f"--model-tokens {plan.tokens}")
    return words
