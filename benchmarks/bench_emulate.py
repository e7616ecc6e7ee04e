"""Cost of quantized layers against the plain ones, measured alternately in
the same run (best of --repeat): a Linear 4096x4096 on a batch of 64 in
inference (the issue's target: at most 2x the plain Linear) and a training
step (forward and backward), for a few specs; then a small Llama
(transformers, random init: hidden 256, 4 layers, 4 x 64 tokens, one
thread) in fp32, swapped by quantize_model, and run under emulating
(issue 18's targets: quantize_model forward <= 1.5x fp32, emulating <=
1.3x quantize_model, a training step <= 2x).

    python benchmarks/bench_emulate.py [--repeat 20] [--threads N]
"""

from __future__ import annotations

import argparse

import warnings

import torch

from lowbit.bench import best_seconds, machine
from lowbit.emulate import QuantLinear, QuantSpec, emulating, quantize_model

SPECS = {
    "mxfp8_e4m3 input, mxfp4 weight": QuantSpec(input="mxfp8_e4m3", weight="mxfp4"),
    "mxfp8_e4m3 input and weight": QuantSpec(input="mxfp8_e4m3", weight="mxfp8_e4m3"),
    "mx6 input, nvfp4 weight": QuantSpec(input="mx6", weight="nvfp4"),
    "+ mxfp8_e5m2 gradients": QuantSpec(input="mxfp8_e4m3", weight="mxfp4", grad_output="mxfp8_e5m2",
                                        grad_input="mxfp8_e5m2", grad_weight="mxfp8_e5m2"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = torch.nn.Linear(4096, 4096)
    x = torch.randn(64, 4096)
    print(f"machine: {machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)\n")
    print("Linear 4096 x 4096, batch 64; each ratio divides the quantized layer's best time by the plain one's,")
    print("measured alternately.\n")
    print("| spec | inference ms | plain ms | ratio | training step ms | plain ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, spec in SPECS.items():
        layer = QuantLinear(plain, spec)
        with torch.no_grad():
            q_inf, p_inf = best_seconds(lambda: layer(x), lambda: plain(x), args.repeat)
        xg = x.clone().requires_grad_()

        def step(module):
            return lambda: module(xg).sum().backward()

        q_train, p_train = best_seconds(step(layer), step(plain), max(3, args.repeat // 4))
        print(f"| {name} | {q_inf * 1e3:.2f} | {p_inf * 1e3:.2f} | {q_inf / p_inf:.2f} "
              f"| {q_train * 1e3:.1f} | {p_train * 1e3:.1f} | {q_train / p_train:.2f} |")


def llama_small() -> None:
    """The small Llama's forward and training step: fp32, quantize_model, emulating."""
    try:
        import transformers
    except ImportError:
        print("\n(transformers is not installed: no Llama measurement)")
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=4, vocab_size=1024)
    model = transformers.LlamaForCausalLM(config)
    tokens = torch.randint(0, 1024, (4, 64))
    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize_model(model, spec, inplace=False)

    def under_emulating(m):
        def run():
            with emulating(spec):
                return m(tokens).logits
        return run

    def step(run):
        return lambda: run().square().mean().backward()

    print("\nLlama, hidden 256, 4 layers, 4 x 64 tokens, 1 thread, mxfp8_e4m3 inputs and mxfp4 weights;")
    print("each ratio divides the first time by the second, the two measured alternately.\n")
    print("| comparison | ms | ms | ratio |")
    print("|---|---:|---:|---:|")
    fp32 = lambda: model(tokens).logits  # noqa: E731
    swapped = lambda: quantized(tokens).logits  # noqa: E731
    with torch.no_grad():
        rows = [("forward: quantize_model / fp32", *best_seconds(swapped, fp32, 10)),
                ("forward: emulating / quantize_model", *best_seconds(under_emulating(model), swapped, 10))]
    rows += [("training step: quantize_model / fp32", *best_seconds(step(swapped), step(fp32), 5)),
             ("training step: emulating / fp32", *best_seconds(step(under_emulating(model)), step(fp32), 5))]
    for name, first, second in rows:
        print(f"| {name} | {first * 1e3:.1f} | {second * 1e3:.1f} | {first / second:.2f} |")
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
    llama_small()
