"""Building the extension on first use with torch.utils.cpp_extension.load.

The sources are the repository's ``cuda/`` folder, installed as the
package data ``lowbit.cuda.sources`` and found through importlib (see
:func:`sources`). Three builds of the same bindings (``bindings.cpp``):

- the CUDA extension, ops ``torch.ops.lowbit_cuda.*`` for CUDA tensors,
  from the ``.cu`` kernels, for the GPU torch runs on;
- the host twin, ops ``torch.ops.lowbit_host.*`` for CPU tensors, from
  ``host_launchers.cpp`` (the same per-element and per-block math in
  plain host loops);
- the emulated build, ops ``torch.ops.lowbit_emulated.*`` for CPU tensors,
  from the ``.cu`` kernels themselves compiled as C++ and run on the host
  thread after thread (``emulated_kernels.cpp``).

Machines without a GPU build the last two with g++ to test the kernels'
math and code, the bindings and the Python glue.

Each is cached by torch (under ``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) and rebuilt only when a source changes.
The CUDA build is compiled for the GPUs torch sees, and its folder is named
by their architectures (``lowbit_cuda_sm90``), so a cache shared between
machines never hands one GPU a build for another. A load is tried once per
process: a failed build is remembered and raised again, not recompiled on
every call.
Floating-point contraction is off in both (``--fmad=false``,
``-ffp-contract=off``): the math rounds each double operation on its own,
as the reference does.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lowbit.formats.backends import BackendUnavailable



def sources() -> Path:
    """The folder holding the extension's sources: the package data
    ``lowbit/cuda/sources/`` of an installed wheel, else (a checkout, an
    editable install) the repository's ``cuda/`` folder, which the wheel's
    package data is built from. It is no Python package: a ``cuda/`` with an
    ``__init__.py`` at the repository root would shadow NVIDIA's
    cuda-python, which torch imports at load."""
    installed = importlib.resources.files("lowbit.cuda") / "sources"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "cuda"


CSRC = sources()
HEADERS = ("abi.h", "element_math.cuh", "block_math.cuh", "codebook_math.cuh", "mx_matmul_math.cuh", "mma_ops.cuh",
           "launch.cuh", "launchers.h", "dispatch.h", "emulated_device.h")
KERNELS = ("element_kernels.cu", "block_kernels.cu", "mx_matmul.cu")
HOST_FLAGS = ["-O2", "-ffp-contract=off"]
NVCC_FLAGS = ["-O3", "--fmad=false"]


class CudaUnavailable(BackendUnavailable):
    """The CUDA extension cannot be built or run here; the message says what is missing."""


def nvcc_path() -> str | None:
    """The nvcc that torch's extension builder would use (under CUDA_HOME), else the one on PATH."""
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    candidate = os.path.join(home, "bin", "nvcc") if home else None
    if candidate and os.path.exists(candidate):
        return candidate
    return shutil.which("nvcc")


def cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (the one holding cuda_runtime.h), if found."""
    from torch.utils import cpp_extension

    nvcc = nvcc_path()
    homes = [os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda",
             nvcc and str(Path(nvcc).resolve().parent.parent)]
    for home in homes:
        if home and (Path(home) / "include" / "cuda_runtime.h").exists():
            return Path(home) / "include"
    return None


def missing() -> str | None:
    """Why the CUDA extension cannot be used here, or None when nothing is missing."""
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA; install a CUDA build of torch"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if cpp_extension.CUDA_HOME is None or nvcc_path() is None:
        return "nvcc was not found: install the CUDA toolkit and set CUDA_HOME"
    if not cpp_extension.is_ninja_available():
        return "ninja was not found: pip install ninja"
    return None


def _load(name: str, sources: list[Path], **flags) -> None:
    from torch.utils import cpp_extension

    cpp_extension.load(name=name, sources=[str(s) for s in sources], extra_include_paths=[str(CSRC)],
                       is_python_module=False, verbose=os.environ.get("LOWBIT_BUILD_VERBOSE") == "1", **flags)


def once(load: Callable[[], None]) -> Callable[[], None]:
    """``load`` run at most once per process: later calls return, or raise
    the first call's exception again (``functools.cache`` caches no
    exceptions, so a failing build would otherwise recompile on every call)."""
    outcome: list[BaseException | None] = []

    @functools.wraps(load)
    def loaded() -> None:
        if not outcome:
            try:
                load()
                outcome.append(None)
            except Exception as error:
                outcome.append(error)
        if outcome[0] is not None:
            raise outcome[0]

    return loaded


def architectures() -> list[str]:
    """The compute capabilities of the GPUs torch sees, as "90", "89", ... (sorted, each once)."""
    return sorted({f"{major}{minor}" for major, minor in
                   (torch.cuda.get_device_capability(d) for d in range(torch.cuda.device_count()))})


def arch_flags(archs: list[str]) -> list[str]:
    """nvcc's flags for machine code of each architecture (torch adds none of its own when these are given)."""
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


@once
def load_cuda() -> None:
    """Build (first call; about a minute) and load the CUDA extension for
    the GPUs torch sees: the ops torch.ops.lowbit_cuda.*."""
    reason = missing()
    if reason is not None:
        raise CudaUnavailable(f"lowbit's CUDA extension cannot be used: {reason}")
    from torch.utils import cpp_extension

    archs = architectures()
    name = "lowbit_cuda_" + "_".join(f"sm{a}" for a in archs)
    build_directory = getattr(cpp_extension, "_get_build_directory", None)  # torch's own, private: may go away
    folder = Path(build_directory(name, verbose=False)) if build_directory else None
    if folder is None or not (folder / f"{name}.so").exists():
        print(f"lowbit: compiling the CUDA extension for sm_{', sm_'.join(archs)} in {folder or 'torch extensions'} "
              f"(once, about a minute; later processes load it in a second)", file=sys.stderr)
    start = time.perf_counter()
    _load(name, [CSRC / "bindings.cpp", *(CSRC / k for k in KERNELS)], extra_cflags=HOST_FLAGS,
          extra_cuda_cflags=[*NVCC_FLAGS, *arch_flags(archs)])
    seconds = time.perf_counter() - start
    if seconds > 5:
        print(f"lowbit: {name} built in {seconds:.0f} s", file=sys.stderr)


@once
def load_host() -> None:
    """Build (first call) and load the host twin: the ops torch.ops.lowbit_host.*."""
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise BackendUnavailable("the host twin needs ninja to build: pip install ninja")
    _load("lowbit_host", [CSRC / "bindings.cpp", CSRC / "host_launchers.cpp"],
          extra_cflags=[*HOST_FLAGS, "-DLOWBIT_HOST_ONLY"])


@once
def load_emulated() -> None:
    """Build (first call) and load the emulated build: the ops torch.ops.lowbit_emulated.*."""
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise BackendUnavailable("the emulated build needs ninja: pip install ninja")
    _load("lowbit_emulated", [CSRC / "bindings.cpp", CSRC / "emulated_kernels.cpp"],
          extra_cflags=[*HOST_FLAGS, "-DLOWBIT_HOST_ONLY", "-DLOWBIT_EMULATE_DEVICE", "-Wno-unknown-pragmas"])
