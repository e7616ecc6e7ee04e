import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit import pack, unpack


def test_documented_layout():
    assert pack(np.array([0x1, 0x2], np.uint8), 4).tolist() == [0x21]
    assert pack(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b00001101, 0b1]
    assert pack(np.array([0b111111, 0b000001]), 6).tolist() == [0b01111111, 0b0000]
    assert pack(np.array([0xABC]), 12).tolist() == [0xBC, 0x0A]


@given(st.integers(1, 16), st.lists(st.integers(0, 2**16 - 1), max_size=100))
def test_round_trip(bits, values):
    codes = np.array([v % (1 << bits) for v in values], dtype=np.int64)
    packed = pack(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size * bits // 8)
    np.testing.assert_array_equal(unpack(packed, bits, codes.size), codes)


def test_torch_in_torch_out():
    codes = torch.randint(0, 64, (1000,))
    packed = pack(codes, 6)
    assert isinstance(packed, torch.Tensor) and packed.numel() == 750
    assert torch.equal(unpack(packed, 6, 1000).long(), codes)


def test_errors():
    with pytest.raises(ValueError, match="bits must be an int in 1..16"):
        pack(np.array([1]), 17)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        pack(np.array([16]), 4)
    with pytest.raises(TypeError, match="integers"):
        pack(np.array([1.0]), 4)
    with pytest.raises(ValueError, match="fewer than count"):
        unpack(np.zeros(1, np.uint8), 4, 3)
    with pytest.raises(TypeError, match="uint8"):
        unpack(np.zeros(1, np.int32), 4, 1)
