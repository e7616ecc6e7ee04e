"""`lowbit bench` runs and prints its table (a smoke test: timings are not checked)."""

import torch

import lowbit
from lowbit.cli import main
from lowbit.formats.cpu.buffers import new_tensor, reused_outputs


def test_bench_prints_a_row_per_operation(capsys):
    assert main(["bench", "--sizes", "10", "--formats", "fp8_e4m3", "mxfp4", "--repeat", "1", "--no-cold-start"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    for row in ("| parallel float32 copy (best seen) |", "| lowbit fp8_e4m3 quantize |", "| lowbit mxfp4 encode |"):
        assert row in out


def test_bench_times_a_format_under_a_scale_rule_and_refuses_a_rule_it_does_not_take(capsys):
    assert main(["bench", "--sizes", "12", "--formats", "nvfp4:4over6", "--repeat", "1", "--no-cold-start"]) == 0
    assert "| lowbit nvfp4:4over6 quantize |" in capsys.readouterr().out
    assert main(["bench", "--formats", "mxfp4:4over6"]) == 2
    assert "argument --formats: scale_rule for e8m0 scales must be one of" in capsys.readouterr().err


def test_reused_outputs_hands_out_one_buffer_per_shape_and_restores_the_allocator():
    with reused_outputs():
        a, b = new_tensor((4,), torch.float32), new_tensor((4,), torch.float32)
        assert a is b
        assert new_tensor((5,), torch.float32) is not a
        x = torch.randn(64)
        assert lowbit.quantize(x, "mxfp4", backend="cpu") is lowbit.quantize(2 * x, "mxfp4", backend="cpu")
    assert new_tensor((4,), torch.float32) is not new_tensor((4,), torch.float32)
    x = torch.randn(64)
    assert lowbit.quantize(x, "mxfp4", backend="cpu") is not lowbit.quantize(x, "mxfp4", backend="cpu")
