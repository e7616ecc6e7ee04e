"""Model-level sweeps: a :class:`~lowbit.analysis.model_tasks.ModelTask`
measured under every format spec x method, and one layer at a time
(sensitivity), each finished cell written to a CSV as it goes so that an
interrupted sweep resumes where it stopped.

A spec is written ``WEIGHT`` (weights only) or ``WEIGHT/INPUT`` (the
linear layers' inputs too, as W4A8 reads): ``mxfp4``, ``mxfp4/mxfp8_e4m3``.
A method is a name of :data:`METHODS` or a chain joined by ``+``
(``rotate+gptq``), applied in that order before ``quantize_model``.

The cells: the full-precision model (``spec`` "full precision"), each spec
x method (kind ``grid``), and, for a sensitivity spec, each layer with a
weight that ``quantize_model`` rounds (linear, convolution, attention,
recurrent; not those the task's rules leave alone) rounded alone to it with
round to nearest (kind ``layer``). Each row of
the CSV holds a ``run`` fingerprint of the model, its data and lowbit's
version (a rerun reuses the rows of its own run and ignores the others),
and the warnings its cell raised (one per line), so that a resumed report
says everything the first run heard.
"""

from __future__ import annotations

import copy
import dataclasses
import csv
import hashlib
import os
import pathlib
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import torch

import lowbit
from lowbit.emulate import QuantSpec, quantize_model
from lowbit.emulate.methods import awq, gptq, outliers, rotate, smoothquant
from lowbit.emulate.methods.costs import weight_bits
from lowbit.emulate.methods.layers import is_linear, plain
from lowbit.emulate.modules import QuantModule
from lowbit.emulate.prerounded import Prerounded
from lowbit.emulate.registry import quantized_class
from lowbit.emulate.rules import spec_for
from lowbit.formats import get_format

from .evaluation import fidelity, perplexity
from .model_tasks import ModelTask
from .sweep import Progress

#: method name -> function(model, spec, batches, rules=, forward=) giving back the changed model
METHODS: dict[str, Callable[..., torch.nn.Module]] = {
    "rtn": lambda model, *args, **kwargs: model,
    "gptq": gptq, "awq": awq, "smoothquant": smoothquant, "rotate": rotate, "outliers": outliers,
}
#: the row of the full-precision model
FULL_PRECISION = "full precision"
COLUMNS = ("run", "kind", "spec", "method", "layer", "weight_bits", "bits_per_parameter", "perplexity",
           "kl_divergence", "top1_agreement", "cosine_similarity", "relative_error", "warnings")
NUMBER_COLUMNS = COLUMNS[5:-1]


def parse_spec(text: str) -> QuantSpec:
    """The QuantSpec of ``WEIGHT`` or ``WEIGHT/INPUT`` (format names lowbit
    knows); ValueError naming the part it cannot read."""
    if not isinstance(text, str):
        raise TypeError(f"a model spec must be a string such as 'mxfp4' or 'mxfp4/mxfp8_e4m3', got {type(text).__name__}")
    parts = text.split("/")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"model spec {text!r}: write WEIGHT or WEIGHT/INPUT, e.g. mxfp4 or mxfp4/mxfp8_e4m3")
    return QuantSpec(weight=get_format(parts[0]), input=get_format(parts[1]) if len(parts) == 2 else None)


def parse_method(text: str) -> list[Callable[..., torch.nn.Module]]:
    """The chain of method functions ``text`` names (``gptq``, ``rotate+gptq``)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"a method must be a name such as 'gptq' or a chain such as 'rotate+gptq', got {text!r}")
    steps = text.split("+")
    unknown = [s for s in steps if s not in METHODS]
    if unknown:
        raise ValueError(f"method {text!r}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)} "
                         "(chains joined by +)")
    return [METHODS[s] for s in steps]


@dataclass(frozen=True)
class Cell:
    """One measurement of a sweep: ``kind`` ``"full"``, ``"grid"`` or ``"layer"``."""

    kind: str
    spec: str
    method: str
    layer: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.kind, self.spec, self.method, self.layer)

    @property
    def label(self) -> str:
        if self.kind == "full":
            return FULL_PRECISION
        return f"{self.spec} {self.method}" + (f" on {self.layer}" if self.layer else "")


def check_sweep(specs: Sequence[str], methods: Sequence[str]) -> None:
    """ValueError (naming the one at fault) unless every spec and method
    parses and none is given twice."""
    for what, values in (("model specs", specs), ("methods", methods)):
        if not values:
            raise ValueError(f"{what} is empty: give at least one, such as {'mxfp4' if what == 'model specs' else 'rtn'}")
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            raise ValueError(f"{what} lists {', '.join(repeated)} more than once; give each once")
    for spec in specs:
        parse_spec(spec)
    for method in methods:
        parse_method(method)


def plan_cells(task: ModelTask, specs: Sequence[str], methods: Sequence[str], sensitivity: str | None) -> list[Cell]:
    """Every cell of a sweep (checked by :func:`check_sweep`), in the order
    it is measured: the full-precision model, each spec x method, then each
    layer with a weight alone under the sensitivity spec (round to nearest)."""
    cells = [Cell("full", FULL_PRECISION, "none")]
    cells += [Cell("grid", spec, method) for spec in specs for method in methods]
    if sensitivity is not None:
        cells += [Cell("layer", sensitivity, "rtn", name) for name in weighted_layers(task, parse_spec(sensitivity))]
    return cells


def weighted_layers(task: ModelTask, spec: QuantSpec) -> list[str]:
    """The names of the layers ``quantize_model(task.model, spec,
    task.rules)`` gives a quantized module that rounds a weight of theirs
    (a parameter of two or more dimensions named like ``weight``), in
    module order."""
    return [name for name, module in task.model.named_modules()
            if name and quantized_class(module) is not None and spec_for(task.rules, name, module, spec) is not None
            and _weights(module)]


def _weights(module: torch.nn.Module, recurse: bool = False) -> list[torch.nn.Parameter]:
    """The module's weight parameters (two or more dimensions: not biases
    or norms), its own or, with ``recurse``, its submodules' too."""
    return [p for name, p in module.named_parameters(recurse=recurse) if "weight" in name and p.dim() >= 2]


def run_fingerprint(task: ModelTask) -> str:
    """A digest of the task's model weights, data, window and lowbit's version:
    the ``run`` a sweep's rows belong to."""
    digest = hashlib.sha256(f"{task.name}|{task.metric}|{task.window}|{lowbit.__version__}".encode())
    for name, value in task.model.state_dict().items():
        digest.update(name.encode())
        _update(digest, value)
    _update(digest, task.evaluation)
    _update(digest, task.calibration)
    return digest.hexdigest()[:16]


def _update(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(str((value.dtype, tuple(value.shape))).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        for key in value:
            digest.update(repr(key).encode())
            _update(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(f"[{len(value)}".encode())
        for item in value:
            _update(digest, item)
    else:
        digest.update(repr(value).encode())


class Journal:
    """The CSV a sweep writes as it goes: the header, then one row per
    finished cell, each flushed to disk before the next cell starts, so a
    killed sweep leaves every finished row readable."""

    def __init__(self, path: pathlib.Path) -> None:
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=COLUMNS, lineterminator="\n")
        self.writer.writeheader()
        self._sync()

    def append(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow({k: "" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k]
                              for k in COLUMNS})
        self._sync()

    def close(self) -> None:
        self.file.close()

    def _sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a sweep's CSV (numbers as floats, blanks as None); a
    missing file, a foreign header or a torn last line give what is readable."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                return []
            rows = []
            for raw in reader:
                row = _parsed(raw)
                if row is not None:
                    rows.append(row)
            return rows
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _parsed(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    if any(raw.get(k) is None for k in COLUMNS):  # a torn line
        return None
    row: dict[str, Any] = dict(raw)
    try:
        for k in NUMBER_COLUMNS:
            row[k] = float(raw[k]) if raw[k] != "" else None
    except ValueError:
        return None
    return row


def finished_rows(sources: Iterable[str | os.PathLike], run: str) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """The rows of ``run`` in the CSVs ``sources`` (earlier runs' results
    and journals), by cell key; the first source that has a cell wins."""
    done: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for source in sources:
        for row in read_rows(source):
            if row["run"] == run:
                done.setdefault((row["kind"], row["spec"], row["method"], row["layer"]), row)
    return done


@dataclass
class SweepResult:
    """The rows of a sweep in cell order, whether it was interrupted
    before the end, and how many cells it has."""

    rows: list[dict[str, Any]]
    interrupted: bool
    total: int

    def warnings_raised(self) -> dict[str, list[str]]:
        """Each warning the cells raised, with the labels of the cells that raised it."""
        noted: dict[str, list[str]] = {}
        for row in self.rows:
            for message in filter(None, (row.get("warnings") or "").split("\n")):
                noted.setdefault(message, []).append(Cell(row["kind"], row["spec"], row["method"], row["layer"]).label)
        return noted


def run_sweep(task: ModelTask, cells: Sequence[Cell], journal: Journal, run: str, *,
              done: Mapping[tuple[str, str, str, str], Mapping[str, Any]] | None = None,
              progress: bool | TextIO = False) -> SweepResult:
    """Measure every cell not in ``done`` (copied to the journal as they
    are), writing each row of ``run`` (:func:`run_fingerprint`) to
    ``journal`` as it finishes. Ctrl-C
    (KeyboardInterrupt) stops the sweep after the last finished cell and
    gives back what is done with ``interrupted`` set; nothing half-measured
    is kept."""
    done = done or {}
    meter = Progress(len(cells), sys.stderr if progress is True else (progress or None))
    rows: list[dict[str, Any]] = []
    try:
        for cell in cells:
            if cell.key in done:
                row, source = dict(done[cell.key]), " (kept from the earlier run)"
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    row = measure_cell(task, cell)
                messages = dict.fromkeys(" ".join(str(w.message).split()) for w in caught)  # one line each
                row, source = {"run": run, **row, "warnings": "\n".join(messages)}, ""
            journal.append(row)
            rows.append(row)
            meter.step(f"{cell.label}: " + ", ".join(f"{k} {row[k]:.4g}" for k in NUMBER_COLUMNS[2:]
                                                     if row.get(k) is not None) + source)
    except KeyboardInterrupt:
        return SweepResult(rows, True, len(cells))
    return SweepResult(rows, False, len(cells))


def measure_cell(task: ModelTask, cell: Cell) -> dict[str, Any]:
    """One cell's row (without its run): the model copied, the cell's
    methods and rounding applied, then measured."""
    model = copy.deepcopy(task.model)
    bits: tuple[float | None, float | None] = (32.0, 32.0) if cell.kind == "full" else (None, None)
    if cell.kind == "grid":
        spec = parse_spec(cell.spec)
        for method in parse_method(cell.method):
            model = method(model, spec, task.calibration, rules=task.rules, forward=task.forward)
        model = quantize_model(model, spec, rules=task.rules)
        bits = storage_bits(model)
    elif cell.kind == "layer":
        model = quantize_model(model, None, rules={re.escape(cell.layer): parse_spec(cell.spec)})
    row = {"kind": cell.kind, "spec": cell.spec, "method": cell.method, "layer": cell.layer,
           "weight_bits": bits[0], "bits_per_parameter": bits[1]}
    if task.metric == "perplexity":
        row["perplexity"] = perplexity(model, task.evaluation, window=task.window, forward=task.forward)
    else:
        row.update(fidelity(task.model, model, task.evaluation, forward=task.forward).metrics())
    return row


def storage_bits(model: torch.nn.Module) -> tuple[float, float]:
    """Bits per element of the weights the model's quantized modules round,
    averaged over their elements, and bits per parameter of the whole
    model, every other parameter at its dtype's width. A linear layer's
    weight counts as :func:`~lowbit.emulate.methods.costs.weight_bits`
    says (partial blocks, per-row and per-tensor scales included; a weight
    a method rounded counts its format's); other weights (convolution,
    attention, recurrent; an attention module's output projection with
    it, which it rounds) count their format's ``bits``."""
    rounded: dict[int, tuple[float, int]] = {}
    for module in model.modules():
        if not isinstance(module, QuantModule) or module.spec.weight is None:
            continue
        fmt = module.spec.weight.format if isinstance(module.spec.weight, Prerounded) else module.spec.weight
        if is_linear(module):
            weight = plain(module).weight
            rounded[id(weight)] = (weight_bits(module, dataclasses.replace(module.spec, weight=fmt)), weight.numel())
        else:
            rounded.update({id(p): (float(fmt.bits), p.numel()) for p in _weights(plain(module), recurse=True)})
    if not rounded:
        raise ValueError("the spec rounds no weight of the model: no layer quantize_model swaps has a weight format")
    total = count = 0.0
    for parameter in {id(p): p for p in model.parameters()}.values():
        bits, n = rounded.get(id(parameter), (parameter.element_size() * 8, parameter.numel()))
        total, count = total + bits * n, count + n
    weight_total = sum(b * n for b, n in rounded.values())
    return weight_total / sum(n for _, n in rounded.values()), total / count


def with_delta(rows: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The rows with ``delta``: the metric's change from the full-precision row's."""
    base = next((r[metric] for r in rows if r["kind"] == "full"), None)
    return [{**r, "delta": None if base is None or r.get(metric) is None else r[metric] - base} for r in rows]


__all__ = ["METHODS", "Cell", "Journal", "SweepResult", "check_sweep", "finished_rows", "parse_method", "parse_spec",
           "plan_cells", "read_rows", "run_fingerprint", "run_sweep"]
