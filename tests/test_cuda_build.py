"""The CUDA extension's checks that need no GPU: every ``.cu`` file
compiles with nvcc for sm_75, sm_80 and sm_90 (the MX matmul with the
tensor-core instructions of each, none on sm_75) and the objects link into
one library, the bindings compile against torch
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


#: the MMA instructions mx_matmul.cu's PTX holds for each architecture: none
#: on sm_75 (its matmul traps; the binding refuses it), int8 and fp16 on
#: sm_80; every FP8 pair too from sm_89 on (compiled out below it, where the
#: binding refuses them)
MX_MATMUL_MMAS = {
    "75": set(),
    "80": {"m16n8k32.row.col.s32.s8.s8.s32", "m16n8k16.row.col.f32.f16.f16.f32"},
    "90": {"m16n8k32.row.col.s32.s8.s8.s32", "m16n8k16.row.col.f32.f16.f16.f32",
           *(f"m16n8k32.row.col.f32.{a}.{b}.f32" for a in ("e4m3", "e5m2") for b in ("e4m3", "e5m2"))},
}
#: the C++ standard torch's JIT builder passes nvcc (torch 2.13; 2.11 passed c++17, which built on an H200 too)
CXX_STANDARD = "-std=c++20"


@pytest.fixture(scope="module")
def kernel_objects(tmp_path_factory):
    """Each .cu compiled as the JIT compiles it (position-independent, torch's
    C++ standard, lowbit's nvcc flags) for sm_75, sm_80 and sm_90, all at
    once: {source: (object path, compiler output)}, with the kept PTX beside."""
    nvcc = build.nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found")
    folder = tmp_path_factory.mktemp("kernels")
    jobs = {}
    for source in build.KERNELS:
        target = folder / source.replace(".cu", ".o")
        command = [nvcc, CXX_STANDARD, *build.NVCC_FLAGS, "-Xcompiler", "-fPIC", "-c", source, "-o", str(target),
                   "-keep", "--keep-dir", str(folder),
                   *(f"-gencode=arch=compute_{a},code=sm_{a}" for a in MX_MATMUL_MMAS)]
        jobs[source] = (target, subprocess.Popen(command, cwd=CSRC, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True))
    objects = {}
    for source, (target, job) in jobs.items():
        output = job.communicate()[0]
        assert job.returncode == 0, output
        objects[source] = (target, output)
    return objects


@pytest.mark.parametrize("source", build.KERNELS)
def test_every_kernel_file_compiles_with_nvcc_for_sm75_sm80_and_sm90(source, kernel_objects):
    """Each .cu compiles without warnings; mx_matmul.cu's kept PTX holds the
    MMAs each architecture has, and no cp.async below sm_80."""
    target, output = kernel_objects[source]
    assert "warning" not in output.lower(), output
    if source == "mx_matmul.cu":
        for arch, instructions in MX_MATMUL_MMAS.items():
            ptx = (target.parent / f"mx_matmul.compute_{arch}.ptx").read_text()
            assert set(re.findall(r"mma\.sync\.aligned\.([\w.]+)", ptx)) == instructions, arch
            assert ("cp.async" in ptx) == (arch != "75"), arch


def test_the_kernel_files_link_into_one_library(kernel_objects, tmp_path):
    """The objects link together as the JIT links them: a function defined in
    a header without inline linkage (seen: one marked __noinline__) is
    defined once per object, and the first GPU build failed on it."""
    objects = [str(target) for target, _ in kernel_objects.values()]
    run([build.nvcc_path(), "-shared", "-o", str(tmp_path / "kernels.so"), *objects], tmp_path)


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


def test_a_failed_build_is_tried_once_per_process():
    """functools.cache caches no exceptions: a failing build would recompile
    on every quantized forward. build.once remembers the failure."""
    attempts = []

    @build.once
    def failing_build():
        attempts.append(1)
        raise RuntimeError("Error building extension 'lowbit_cuda_sm90'")

    for _ in range(3):
        with pytest.raises(RuntimeError, match="Error building extension"):
            failing_build()
    assert attempts == [1]


def test_the_cuda_build_names_its_architectures():
    """The build folder is named by the GPUs' architectures, and the flags
    lowbit passes replace torch's own arch flags (torch adds none when given
    some), so a shared extensions cache never hands one GPU another's build."""
    from torch.utils import cpp_extension

    flags = build.arch_flags(["80", "90"])
    assert flags == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
    assert cpp_extension._get_cuda_arch_flags([*build.NVCC_FLAGS, *flags]) == []


def test_the_cuda_load_names_compiles_and_times_its_build(monkeypatch, tmp_path, capsys):
    """load_cuda's own logic, its compiler replaced: the build is named by
    the GPUs' architectures, gets their -gencode flags, and the first use
    says what compiles where."""
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(build, "missing", lambda: None)
    monkeypatch.setattr(build, "architectures", lambda: ["80", "90"])
    monkeypatch.setattr(build, "_load", lambda name, sources, **flags: calls.append((name, flags)))
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path / name))
    build.load_cuda.__wrapped__()
    (name, flags), = calls
    assert name == "lowbit_cuda_sm80_sm90"
    assert flags["extra_cuda_cflags"] == [*build.NVCC_FLAGS, *build.arch_flags(["80", "90"])]
    assert f"compiling the CUDA extension for sm_80, sm_90 in {tmp_path / name}" in capsys.readouterr().err
