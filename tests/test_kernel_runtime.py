"""The CPU kernels' runtime (docs/reliability.md): their on-disk cache
never serves machine code of older sources, and they give the reference's
results in fork children, process pools, DataLoader workers and concurrent
threads, on the threading layer lowbit selects and on its fallback.

Each scenario runs in a fresh interpreter (the layer is fixed per process
at its first parallel launch) under a timeout, so that a crash or a hang
fails the test instead of the run."""

import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numba
import pytest

from lowbit.formats.cpu import compiling, threads

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: seconds a scenario's interpreter may take (import ~5 s, a cold compile of
#: the fp8 kernels ~20 s on a 2-core machine)
TIMEOUT = 240
#: numba settings of the environment that would change what a scenario tests
NUMBA_SETTINGS = ("NUMBA_CACHE_DIR", "NUMBA_CACHE_LOCATOR_CLASSES", "NUMBA_THREADING_LAYER",
                  "NUMBA_THREADING_LAYER_PRIORITY", "NUMBA_DISABLE_JIT")


def run_python(code: str, *args: str, cwd: pathlib.Path = ROOT, **env: str) -> dict:
    """Run ``code`` with ``args`` in a fresh interpreter; the JSON object it prints last."""
    environment = {k: v for k, v in os.environ.items() if k not in NUMBA_SETTINGS} | env
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=environment, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the cache ---------------------------------------------------------------------------------
def test_the_cache_key_covers_every_module_the_kernels_import():
    files = {p.relative_to(ROOT).as_posix() for p in compiling.source_files()}
    assert {"formats/cpu/fast32.py", "formats/cpu/reductions.py", "formats/cpu/bits.py", "formats/cpu/scalar.py",
            "formats/abi.py", "formats/rounding.py"} <= files
    for source in (ROOT / "formats" / "cpu").glob("*.py"):
        for line in source.read_text().splitlines():
            if line.startswith("from .."):
                module = line.split()[1].removeprefix("..")
                assert f"formats/{module}.py" in files, (source.name, module)


def test_the_kernels_cache_in_their_directory_and_numbas_settings_are_left_as_they_were(tmp_path, monkeypatch):
    from lowbit.formats.cpu import bits

    directory = compiling.cache_directory()
    assert directory.name == f"lowbit-kernels-{compiling.source_key()}"
    assert pathlib.Path(bits.whole_bytes.stats.cache_path).parent == directory
    assert numba.config.CACHE_DIR == os.environ.get("NUMBA_CACHE_DIR", "")
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    assert compiling.cache_directory.__wrapped__() == tmp_path / f"lowbit-kernels-{compiling.source_key()}"


def test_directories_of_other_versions_are_deleted_once_old_and_many(tmp_path, monkeypatch):
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    day = 24 * 3600
    for i in range(compiling.KEEP + 3):  # with the recent one, the oldest four are past both limits
        old = tmp_path / f"lowbit-kernels-old{i:02d}"
        old.mkdir()
        os.utime(old, (time.time() - 2 * day - i, time.time() - 2 * day - i))
    (tmp_path / "lowbit-kernels-recent").mkdir()
    (tmp_path / "other-package").mkdir()
    ours = compiling.cache_directory.__wrapped__()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([ours.name, "other-package", "lowbit-kernels-recent"]
                          + [f"lowbit-kernels-old{i:02d}" for i in range(compiling.KEEP - 1)])


#: decode one block of four 4-bit codes through fast_block_decode.decode_blocks,
#: a parallel kernel that inlines bits.unpack_row (another file): one small compile
DECODE = """
import json, numpy as np
from lowbit.formats.cpu import compiling, fast_block_decode
out = np.zeros((1, 1, 1, 4), np.float32)
fast_block_decode.decode_blocks(np.array([0x21, 0x43], np.uint8), np.zeros(1, np.uint8), np.zeros(0, np.uint8), out,
                                np.arange(16, dtype=np.float64), np.ones(1), None, 4, 0, False)
stats = fast_block_decode.decode_blocks.stats
print(json.dumps(dict(values=out.ravel().tolist(), source=compiling.__file__, cache=stats.cache_path,
                      hits=sum(stats.cache_hits.values()))))
"""


def test_editing_a_helper_module_reaches_the_kernels_that_inline_it(tmp_path):
    """numba keys its cache by the kernel's own file: an edit of a helper it
    inlines (bits.py here) used to leave the old machine code in use, and so
    did restoring the source after it. The copy is laid out as installed
    (lowbit/formats/...), so that it, not this checkout, is imported."""
    package = tmp_path / "lowbit"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "lowbit", package, ignore=ignore)
    shutil.copytree(ROOT / "formats", package / "formats", ignore=ignore)
    bits = package / "formats" / "cpu" / "bits.py"
    original = bits.read_text()
    unpack = "codes[2 * j], codes[2 * j + 1] = row[j] & 0xF, row[j] >> 4"
    assert unpack in original, "bits.unpack_row changed: update this test's edit"
    env = dict(PYTHONPATH=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "xdg"))

    first = run_python(DECODE, cwd=tmp_path, **env)
    assert first["source"].startswith(str(tmp_path)) and first["cache"].startswith(str(package))
    assert first["values"] == [1.0, 2.0, 3.0, 4.0]
    bits.write_text(original.replace(unpack, "codes[2 * j], codes[2 * j + 1] = row[j] >> 4, row[j] & 0xF"))
    edited = run_python(DECODE, cwd=tmp_path, **env)
    assert edited["values"] == [2.0, 1.0, 4.0, 3.0] and edited["hits"] == 0
    bits.write_text(original)
    restored = run_python(DECODE, cwd=tmp_path, **env)
    assert restored["values"] == [1.0, 2.0, 3.0, 4.0]
    assert restored["cache"] == first["cache"] and restored["hits"] == 1  # the first run's machine code, reused


# -- fork and threads --------------------------------------------------------------------------
#: the scenarios: each computes fp8 quantize and encode on the cpu backend and
#: compares them with the reference backend's results. The parent runs them
#: first (so the threading layer is running when it forks) and computes the
#: references itself: torch ops of its own (the reference backend) hang in a
#: fork child once the parent has used torch's GNU OpenMP threads.
SCENARIOS = """
import json, sys, threading
import multiprocessing as mp
import numpy as np, torch, lowbit
from lowbit.formats.cpu import threads

fork_context = mp.get_context("fork")

def data(i, rows=16):
    return np.random.default_rng(i).standard_normal((rows, 1024)).astype(np.float32) * 100

def cpu(i, rows=16):
    return lowbit.quantize(data(i, rows), "fp8_e4m3"), lowbit.encode(data(i, rows), "fp8_e4m3")

def right(i, *results, rows=16):
    reference = (lowbit.quantize(data(i, rows), "fp8_e4m3", backend="reference"),
                 lowbit.encode(data(i, rows), "fp8_e4m3", backend="reference"))
    return all(np.array_equal(a, b) for result in results for a, b in zip(result, reference))

def fork():
    queue = fork_context.Queue()
    children = [fork_context.Process(target=lambda i=i: queue.put((i, cpu(i)))) for i in (1, 2)]
    for child in children:
        child.start()
    results = dict(queue.get(timeout=60) for _ in children)
    for child in children:
        child.join(60)
    return [c.exitcode for c in children] == [0, 0] and all(right(i, results[i]) for i in (1, 2))

def pool():
    with fork_context.Pool(2) as workers:
        results = workers.map_async(cpu, range(1, 5)).get(timeout=60)
    return all(right(i, result) for i, result in zip(range(1, 5), results))

class Quantized(torch.utils.data.Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return torch.from_numpy(lowbit.quantize(data(i), "fp8_e4m3")), i

def dataloader():
    loader = torch.utils.data.DataLoader(Quantized(), batch_size=2, num_workers=2, timeout=60,
                                         multiprocessing_context="fork")
    batches = list(loader)
    return len(batches) == 4 and all(
        np.array_equal(values[k].numpy(), lowbit.quantize(data(int(i)), "fp8_e4m3", backend="reference"))
        for values, indices in batches for k, i in enumerate(indices))

def concurrent_threads():  # 4 threads, each its own 256K values 20 times: launches release the GIL, and overlap
    start, results = threading.Barrier(4), {}
    def run(t):
        start.wait()
        results[t] = [cpu(t, rows=256) for _ in range(20)]
    workers = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return len(results) == 4 and all(right(t, *results[t], rows=256) for t in results)

assert right(0, cpu(0))
checks = {name: globals()[name]() for name in sys.argv[1:]}
print(json.dumps(dict(layer=threads.threading_layer(), checks=checks)))
"""


def scenario(*checks: str, prelude: str = "", **env: str) -> dict:
    """Run the SCENARIOS named ``checks`` after ``prelude``."""
    return run_python(prelude + SCENARIOS, *checks, **env)


def tbb_installed() -> bool:
    try:
        importlib.metadata.distribution("tbb")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.parametrize("check", ["fork", "pool", "dataloader", "concurrent_threads"])
def test_kernels_are_right_in_fork_children_pools_dataloader_workers_and_threads(check):
    result = scenario(check)
    assert result["checks"] == {check: True}
    assert result["layer"] == ("tbb" if tbb_installed() else "workqueue")


def test_without_tbb_lowbit_falls_back_to_workqueue_and_serializes_its_launches():
    """tbb made unavailable (numba's import of its TBB layer fails): the
    workqueue layer, fork-safe, with one launch at a time."""
    result = scenario("concurrent_threads", "fork", prelude="import sys; sys.modules['numba.np.ufunc.tbbpool'] = None\n")
    assert result == dict(layer="workqueue", checks=dict(concurrent_threads=True, fork=True))


def test_a_layer_the_user_chose_is_kept():
    result = scenario("concurrent_threads", NUMBA_THREADING_LAYER="workqueue")
    assert result == dict(layer="workqueue", checks=dict(concurrent_threads=True))


def test_parallel_kernels_are_wrapped_only_where_the_layer_needs_it():
    from lowbit.formats.cpu import fast32

    wrapped = not isinstance(fast32.quantize_float, numba.core.dispatcher.Dispatcher)
    assert wrapped == (threads.threading_layer() == "workqueue")
