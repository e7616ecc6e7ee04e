"""Element encode against the input's offset in its 64-byte cache line.

    python benchmarks/encode_alignment.py [--format fp8_e4m3] [--size 24] [--repeat 7]

Copies the same float32 normals to starts 0, 4, 16, 32 and 48 bytes past a
page boundary (torch's allocator returns 64-byte-aligned memory, numpy's
large arrays start 16 bytes past one) and times ``encode`` (uint8 codes)
and ``quantize`` (float32 values) on each, with outputs reused. Prints
G elements/s per offset; on the 2-core Xeon of docs/performance.md encode
ran 2x faster at offsets 4 and 16 than at 0, 32 and 48, and quantize did
not depend on the offset.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import lowbit
from lowbit.bench import Copies, best_seconds
from lowbit.formats.cpu.buffers import reused_outputs

OFFSETS = (0, 4, 16, 32, 48)


def at_offset(values: np.ndarray, offset: int) -> torch.Tensor:
    """A float32 tensor holding ``values`` whose data starts ``offset`` bytes past a page boundary."""
    room = np.empty(values.size + 2048, np.float32)
    start = ((-room.ctypes.data) % 4096 + offset) // 4
    placed = room[start:start + values.size]
    placed[:] = values
    return torch.from_numpy(placed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", default="fp8_e4m3", help="an element format of the catalogue")
    parser.add_argument("--size", type=int, default=24, help="log2 of the element count")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    fmt = lowbit.get_format(args.format)
    n = 1 << args.size
    values = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    copies = Copies(values)
    print(f"{args.format}, 2^{args.size} float32 elements, G elements/s, outputs reused "
          f"(ratio to the preallocated copy timed alternately)")
    print("| input offset (bytes) | encode | quantize |")
    print("|---:|---:|---:|")
    with reused_outputs():
        for offset in OFFSETS:
            x = at_offset(values, offset)
            row = []
            for call in (lambda: fmt.encode(x, backend="cpu"), lambda: fmt.quantize(x, backend="cpu")):
                seconds, copy = best_seconds(call, copies.preallocated, args.repeat)
                row.append(f"{n / seconds / 1e9:.2f} ({copy / seconds:.2f})")
            print(f"| {x.data_ptr() % 4096} | {' | '.join(row)} |")

if __name__ == "__main__":
    main()
