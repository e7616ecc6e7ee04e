"""The model-level section of a report (``lowbit report --model NAME``):
quality of a runnable model (:mod:`~lowbit.analysis.model_tasks`) under a
grid of format specs x methods, quality against bits per weight with its
Pareto front, and each linear layer's cost when rounded alone.

The sweep's rows go to ``model_results.csv`` cell by cell as they finish
(:mod:`~lowbit.analysis.model_sweep`); a rerun into the same folder reuses
the rows of the same run (the same model, data and lowbit version) from
the previous report there, and from the partial folder a killed run left
beside it, and measures only the rest. Ctrl-C ends the sweep after the last
finished cell and the report is written with what is done, marked
partial.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from . import plots
from .model_sweep import Cell, Journal, SweepResult, check_sweep, finished_rows, parse_spec, plan_cells, \
    run_fingerprint, run_sweep, with_delta
from .model_tasks import DEFAULT_EVALUATION_TOKENS, ModelTask, model_task
from .sweep import markdown_table

#: the files the model section writes
MODEL_FILES = ("model_results.csv", "model_quality_vs_bits.png", "model_layer_sensitivity.png")
#: how the report names each metric
METRIC_NAMES = {"perplexity": "perplexity", "kl_divergence": "KL divergence", "top1_agreement": "top-1 agreement",
                "cosine_similarity": "cosine similarity", "relative_error": "relative error"}
#: metrics where a higher value is better (the others: lower)
HIGHER_IS_BETTER = ("top1_agreement", "cosine_similarity")


@dataclass(frozen=True)
class ModelPlan:
    """A model sweep, checked: the task, its specs, methods, sensitivity
    spec (None: no per-layer cells), its cells and run fingerprint, and the
    options as given (``tokens``; ``sensitivity_option``, "auto" included)."""

    task: ModelTask
    specs: list[str]
    methods: list[str]
    sensitivity: str | None
    cells: list[Cell]
    run: str
    tokens: int
    sensitivity_option: str | None


def plan_model(model: Any, specs: Sequence[str], methods: Sequence[str], sensitivity: str | None = "auto",
               tokens: int = DEFAULT_EVALUATION_TOKENS, progress: bool | TextIO = False) -> ModelPlan:
    """Load the model (:func:`~lowbit.analysis.model_tasks.model_task`)
    and check the sweep. ``sensitivity``: a spec to round each linear
    layer to alone, ``"auto"`` for the spec of ``specs`` with the fewest
    weight bits, or None for no per-layer cells. ``progress``: see
    :func:`~lowbit.analysis.model_tasks.model_task`."""
    check_sweep(specs, methods)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 2:
        raise ValueError(f"model tokens must be an int of at least 2, got {tokens!r}")
    if sensitivity == "auto":
        chosen = min(specs, key=lambda spec: parse_spec(spec).weight.bits)
    else:
        chosen = sensitivity
        if chosen is not None:
            try:
                parse_spec(chosen)
            except ValueError as error:
                raise ValueError(f"sensitivity {chosen!r} is not a spec ({error}); give a spec, 'auto' or None "
                                 "('none' on the command line)") from None
    task = model_task(model, tokens=tokens, progress=progress)
    cells = plan_cells(task, list(specs), list(methods), chosen)
    return ModelPlan(task, list(specs), list(methods), chosen, cells, run_fingerprint(task), tokens, sensitivity)


def earlier_rows(plan: ModelPlan, out_dir: str | os.PathLike) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """The finished rows of the plan's run in the report at ``out_dir`` and
    in the partial folders killed runs left beside it."""
    target = pathlib.Path(os.path.realpath(out_dir))
    return finished_rows([target / MODEL_FILES[0], *(p / MODEL_FILES[0] for p in leftover_folders(target))], plan.run)


def leftover_folders(target: pathlib.Path) -> list[pathlib.Path]:
    """The partial folders of earlier runs into ``target`` that were killed before they could clean up."""
    return sorted(p for p in target.parent.glob(f".{target.name}.partial-*") if p.is_dir())


def remove_leftovers(target: pathlib.Path) -> None:
    """Delete the partial folders killed runs left beside ``target`` (their rows were taken over)."""
    for folder in leftover_folders(target):
        shutil.rmtree(folder, ignore_errors=True)


def model_section(plan: ModelPlan, out: pathlib.Path, done: Mapping[tuple[str, str, str, str], Mapping[str, Any]],
                  progress: bool | TextIO) -> tuple[list[str], SweepResult]:
    """Run the sweep into ``out`` (its CSV and figures) and give back the
    section's Markdown and the sweep's result."""
    journal = Journal(out / MODEL_FILES[0])
    try:
        result = run_sweep(plan.task, plan.cells, journal, plan.run, done=done, progress=progress)
    finally:
        journal.close()
    task, metric = plan.task, plan.task.quality
    rows = with_delta(result.rows, metric)
    md = ["## The model: quality under each format and method\n",
          f"Model: {task.description}. Each setting rounds a copy of the model: the methods (`rtn` is round to "
          "nearest alone) calibrated on training data, then `quantize_model(model, spec, rules=...)` "
          f"({_rules(task)}). A spec `W/A` rounds the linear layers' weights to W and their inputs to A; `W` "
          f"the weights only. Run `{plan.run}`; every number is in [{MODEL_FILES[0]}]({MODEL_FILES[0]}).\n"]
    if result.interrupted:
        md.append(f"**Partial:** the sweep was interrupted after {len(rows)} of {result.total} cells; run the same "
                  "command again to measure the rest (finished cells are kept).\n")
    grid = [r for r in rows if r["kind"] in ("full", "grid")]
    md += [f"### {_capitalized(METRIC_NAMES[metric])} by spec and method\n",
           _direction(metric) + " Bits: per weight of the rounded layers (block scales included) and per "
           "parameter of the whole model (every other parameter at its own width). Δ: the change from full "
           "precision. Pareto: no setting has fewer or equal bits per weight and a better value.\n",
           markdown_table(_grid_table(grid, metric), digits=4)]
    if any("outliers" in method.split("+") for method in plan.methods):
        md.append("Bits of `outliers` settings count the dense format only: the sparse part's storage (outlier "
                  "columns or weights kept in fp16) is what `lowbit.emulate.methods.changes_table` lists per layer "
                  "in Python.\n")
    if sum(r["kind"] == "grid" for r in grid) >= 1:
        title = f"{task.name}: {METRIC_NAMES[metric]} against bits per weight"
        figure = plots.quality_vs_bits(grid, metric, metric in HIGHER_IS_BETTER, title, METRIC_NAMES[metric])
        md.append(_figure(figure, out, MODEL_FILES[1]))
    layers = [r for r in rows if r["kind"] == "layer"]
    if layers:
        names, costs = [r["layer"] for r in layers], [_cost(r["delta"], metric) for r in layers]
        worst = sorted(range(len(layers)), key=lambda i: -costs[i] if math.isfinite(costs[i]) else math.inf)[:10]
        planned = sum(c.kind == "layer" for c in plan.cells)
        measured = f"{len(layers)} of {planned} measured" if len(layers) < planned else f"all {planned}"
        md += [f"### Layer sensitivity: each layer alone in {plan.sensitivity}\n",
               f"Every layer with a weight rounded alone to {plan.sensitivity} (round to nearest), the rest in full "
               f"precision ({measured}): the {len(worst)} that cost most below, the 30 costliest in the figure, "
               f"every one in [{MODEL_FILES[0]}]({MODEL_FILES[0]}).\n",
               markdown_table([{"layer": names[i], metric: layers[i][metric], "Δ": layers[i]["delta"]}
                               for i in worst], digits=4),
               _figure(plots.layer_costs(names, costs, f"{task.name}: one layer at a time in {plan.sensitivity}",
                                         f"{'loss' if metric in HIGHER_IS_BETTER else 'rise'} in "
                                         f"{METRIC_NAMES[metric]}"), out, MODEL_FILES[2])]
    noted = result.warnings_raised()
    if noted:
        md += ["### What the settings warned\n"] + [f"- {message} ({_cells(labels)})"
                                                    for message, labels in noted.items()] + [""]
    return md, result


def _grid_table(rows: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    shown = [r for r in rows if r.get(metric) is not None]
    points = [(r["weight_bits"], r[metric]) for r in shown if r["kind"] == "grid"]
    front = set(plots.pareto_front(points, metric in HIGHER_IS_BETTER))
    table = []
    for r in sorted(shown, key=lambda r: (r["kind"] != "full", r["weight_bits"], r["spec"])):
        on_front = r["kind"] == "grid" and (r["weight_bits"], r[metric]) in front
        table.append({"spec": r["spec"], "method": r["method"] if r["kind"] == "grid" else "",
                      "bits/weight": r["weight_bits"], "bits/parameter": r["bits_per_parameter"],
                      metric: r[metric], "Δ": r["delta"], "Pareto": "✓" if on_front else ""})
    return table


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _direction(metric: str) -> str:
    return "Higher is better." if metric in HIGHER_IS_BETTER else "Lower is better."


def _cost(delta: float | None, metric: str) -> float:
    """How much worse a change of ``delta`` makes ``metric``: a rise, or a fall where higher is better."""
    if delta is None:
        return math.nan
    return -delta if metric in HIGHER_IS_BETTER else delta


def _rules(task: ModelTask) -> str:
    left = [getattr(key, "__name__", None) or repr(key) for key, value in task.rules.items() if value is None]
    return f"{', '.join(left)} left in full precision" if left else "every layer lowbit rounds"


def _cells(labels: list[str]) -> str:
    return ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")


def _figure(fig: Any, out: pathlib.Path, name: str) -> str:
    plots.save(fig, out / name)
    return f"![{name[:-4]}]({name})\n"

