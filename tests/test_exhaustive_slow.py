"""Every float32 bit pattern through the 8- and 16-bit casts torch also has.
Slow (minutes per format with the reference backend): run with -m slow."""

import pytest
import torch

import lowbit

from helpers import assert_same_values

CASTS = [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2), ("bf16", torch.bfloat16), ("fp16", torch.float16)]


@pytest.mark.slow
@pytest.mark.parametrize("name,dtype", CASTS, ids=[n for n, _ in CASTS])
def test_every_float32_bit_pattern(name, dtype):
    fmt = lowbit.get_format(name)
    chunk = 1 << 24
    for start in range(0, 1 << 32, chunk):
        x = torch.arange(start, start + chunk, dtype=torch.int64).to(torch.int32).view(torch.float32)
        assert_same_values(fmt.quantize(x).numpy(), x.to(dtype).float().numpy(), f"{name} from 0x{start:08x}")
