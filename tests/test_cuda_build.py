"""The CUDA extension's checks that need no GPU: every ``.cu`` file
compiles with nvcc for sm_80 and sm_90 (the MX matmul with the tensor-core
instructions of each), the bindings compile against torch
for CUDA, the headers compile warning-free with g++, and the two CPU
builds (the host twin: the kernels' math in host loops; the emulated
build: the .cu kernels run thread after thread) build and run. Their
results are checked against the reference by every formats test (they are
the ``cuda_host`` and ``cuda_emulated`` backends of conftest.py), by
test_backends.py, test_cuda_host.py and test_cuda.py."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.cuda import extension as build
from lowbit.formats import Policy, backends

CSRC = build.CSRC
TORCH_INCLUDE = Path(torch.__file__).parent / "include"


def run(command, cwd):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_the_extension_sources_are_all_listed():
    assert sorted(p.name for p in CSRC.glob("*.cu")) == sorted(build.KERNELS)
    assert sorted(p.name for p in CSRC.glob("*.cuh")) + sorted(p.name for p in CSRC.glob("*.h")) == sorted(
        h for h in build.HEADERS if h.endswith(".cuh")) + sorted(h for h in build.HEADERS if h.endswith(".h"))
    assert sorted(p.name for p in CSRC.glob("*.cpp")) == ["bindings.cpp", "emulated_kernels.cpp",
                                                          "host_launchers.cpp"]


def test_without_cuda_the_extension_says_what_is_missing():
    reason = lowbit.cuda.missing()
    if reason is None:
        pytest.skip("the CUDA extension can run here")
    assert not lowbit.cuda.available()
    with pytest.raises(lowbit.cuda.CudaUnavailable, match=f"cannot be used: {re.escape(reason)}"):
        lowbit.cuda.build()


#: the MMA instructions mx_matmul.cu's PTX holds for each architecture: int8
#: and fp16 on sm_80; every FP8 pair too from sm_89 on (compiled out below
#: it, where the launcher refuses them)
MX_MATMUL_MMAS = {
    "80": {"m16n8k32.row.col.s32.s8.s8.s32", "m16n8k16.row.col.f32.f16.f16.f32"},
    "90": {"m16n8k32.row.col.s32.s8.s8.s32", "m16n8k16.row.col.f32.f16.f16.f32",
           *(f"m16n8k32.row.col.f32.{a}.{b}.f32" for a in ("e4m3", "e5m2") for b in ("e4m3", "e5m2"))},
}


@pytest.mark.parametrize("source", build.KERNELS)
def test_every_kernel_file_compiles_with_nvcc_for_sm80_and_sm90(source, tmp_path):
    """Each .cu compiles without warnings; mx_matmul.cu's kept PTX holds the MMAs each architecture has."""
    nvcc = build.nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found")
    output = run([nvcc, "-std=c++17", *build.NVCC_FLAGS, "-c", source, "-o", str(tmp_path / "kernels.o"),
                  "-keep", "--keep-dir", str(tmp_path),
                  "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"], CSRC)
    assert "warning" not in output.lower(), output
    if source == "mx_matmul.cu":
        for arch, instructions in MX_MATMUL_MMAS.items():
            ptx = (tmp_path / f"mx_matmul.compute_{arch}.ptx").read_text()
            assert set(re.findall(r"mma\.sync\.aligned\.([\w.]+)", ptx)) == instructions, arch


def test_the_bindings_compile_for_cuda(tmp_path):
    """The CUDA flavour of bindings.cpp against this torch's headers (a CPU
    torch lacks one generated header of c10/cuda, stubbed here empty)."""
    cuda_include = build.cuda_include()
    if shutil.which("g++") is None or cuda_include is None:
        pytest.skip("g++ or the CUDA headers not found")
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    run(["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-I.", f"-I{tmp_path}",
         f"-isystem{TORCH_INCLUDE}", f"-isystem{TORCH_INCLUDE / 'torch/csrc/api/include'}", f"-isystem{cuda_include}",
         "bindings.cpp"], CSRC)


def test_the_host_math_compiles_without_warnings():
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    run(["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Wconversion", "-Werror", "-DLOWBIT_HOST_ONLY",
         "host_launchers.cpp"], CSRC)


@pytest.mark.parametrize("cpu_build", ["cuda_host", "cuda_emulated"])
def test_the_cpu_builds_build_and_run(cpu_build):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    built = backends.get(cpu_build)
    x = torch.tensor([0.3, -500.0, float("nan")])
    out, exact = built.elements.quantize(lowbit.get_format("fp8_e4m3"), x, Policy(overflow="saturate"))
    assert exact and torch.equal(out[:2], torch.tensor([0.3125, -448.0])) and out[2].isnan()
