"""CPU kernel throughput against a parallel copy, ml_dtypes, torch and the
reference implementation (the same as ``lowbit bench``).

    python benchmarks/bench_cpu.py [--sizes 16 18 20 22 24 26] [--formats ...] [--repeat 5]
"""

import sys

from lowbit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
