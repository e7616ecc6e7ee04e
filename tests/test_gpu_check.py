"""benchmarks/gpu_check.sh, the first thing to run on a GPU, in its dry mode
(the emulated build on the CPU), so that it cannot rot on machines without
one: every step runs or says why it is skipped, and each writes its log."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.formats import backends

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_dry(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash not found")
    try:
        backends.get("cuda_emulated")
    except backends.BackendUnavailable as why:
        pytest.skip(str(why))
    environment = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=900)
    summary = (tmp_path / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stdout + result.stderr
    for step in ("build (CPU builds)", "kernels (emulated)", "streams (emulated, eager)", "datapaths (CPU side)",
                 "tests -m cuda",
                 "compute-sanitizer", "benchmarks (arguments only)"):
        assert f"| {step} |" in summary, step
    assert "failed steps: 0" in summary
    kernels = (tmp_path / "kernels.log").read_text()
    assert "FAIL" not in kernels and kernels.count("\nok ") > 50, kernels
    assert "ok    mx_matmul" in kernels
    datapaths = (tmp_path / "datapaths.md").read_text()
    assert "| torch.matmul fp16 | adversarial | h100_fp16 | not run |" in datapaths
    assert "every row above is owed to one" in datapaths
