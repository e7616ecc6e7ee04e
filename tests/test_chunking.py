"""The reference works through large inputs a chunk at a time; results must
not depend on where the chunks fall."""

import numpy as np
import pytest
import torch

import lowbit
from lowbit.formats import chunks

pytestmark = pytest.mark.usefixtures("each_backend")


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 37)


@pytest.mark.parametrize("name", ["fp8_e4m3", "bf16", "int4", "mxfp4", "mxfp6_e3m2", "nvfp4", "mx6", "mx9", "msfp12"])
def test_chunked_equals_whole(name, monkeypatch):
    fmt = lowbit.get_format(name)
    x = (np.random.default_rng(1).standard_normal((5, 300)) * 10).astype(np.float32)
    x[2, 17] = np.nan
    scaled = not isinstance(fmt, lowbit.formats.ElementFormat)
    options = {"axis": 0} if scaled else {}
    if not scaled and not fmt.has_nan:
        x[2, 17] = 1.0  # int4 cannot encode NaN
    whole_q, whole_e = fmt.quantize(x, **options), fmt.encode(x, **options)
    whole_d = fmt.decode(whole_e)
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 37)
    np.testing.assert_array_equal(fmt.quantize(x, **options), whole_q)
    chunked_e = fmt.encode(x, **options)
    if scaled:
        assert chunked_e == whole_e
    else:
        np.testing.assert_array_equal(chunked_e, whole_e)
    np.testing.assert_array_equal(fmt.decode(whole_e), whole_d)
    np.testing.assert_array_equal(whole_d, whole_q)


def test_nvfp4_tensor_scale_spans_chunks(tiny_chunks):
    fmt = lowbit.BlockFormat(lowbit.get_format("fp4_e2m1"), 16, scale=lowbit.get_format("fp8_e4m3"), tensor_scale=True)
    x = torch.ones(64, 16)
    x[-1, -1] = 1e6
    assert fmt.encode(x).tensor_scale == float(np.float32(1e6) / np.float32(2688))


def test_encode_error_in_a_later_chunk(tiny_chunks):
    x = np.ones(500, np.float32)
    x[450] = np.nan
    with pytest.raises(ValueError, match="has no NaN"):
        lowbit.encode(x, "int8")
