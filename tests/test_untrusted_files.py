"""Encoded files are untrusted input: a tampered ``.npz`` either fails to
load with a ValueError naming what is wrong, or loads into an Encoded that
every backend decodes exactly as the reference does. Never garbage, never a
read past a buffer (which would show as values that differ between
backends, or as a crash of this process)."""

import json
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.formats import MicroexponentFormat, backends

from helpers import assert_same_values

#: formats with each part an Encoded can have: packed elements, E8M0 and
#: E4M3 scales, a tensor scale, sub-block shifts, shared exponents narrower
#: than their dtype
FORMATS = {
    "mxfp4": lowbit.get_format("mxfp4"),
    "mxint8": lowbit.get_format("mxint8"),
    "nvfp4_tensor": lowbit.BlockFormat(lowbit.get_format("fp4_e2m1"), 16, lowbit.get_format("fp8_e4m3"),
                                       tensor_scale=True),
    "mx6": lowbit.get_format("mx6"),
    "narrow_exponent": MicroexponentFormat(3, 8, 2, exp_bits=4, micro_bits=2),
}


def cpu_backends():
    """Every backend that decodes CPU data here, the reference last (the CPU
    builds of the CUDA extension need a C++ compiler)."""
    try:
        backends.get("cuda_host"), backends.get("cuda_emulated")
    except backends.BackendUnavailable:
        return ["cpu", "reference"]
    return ["cpu", "cuda_host", "cuda_emulated", "reference"]


BACKENDS = cpu_backends()


def decoded(encoded, backend):
    try:
        return encoded.decode(dtype=torch.float64, backend=backend)
    except ValueError as error:
        return f"ValueError: {error}"


def saved(tmp_path, name, kind, axis):
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1)) * 4.0
    x[1, 3] = float("nan")
    data = x.numpy() if kind == "numpy" else x
    path = tmp_path / f"{name}_{kind}_{axis}.npz"
    lowbit.encode(data, FORMATS[name], axis=axis).save(path)
    return path


def read(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# -- the tampering ------------------------------------------------------------------------
META_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(),
                        st.text(max_size=5), st.lists(st.integers(-3, 200), max_size=4))


@st.composite
def meta_edit(draw, meta):
    """The meta record with one field (of the format record too) replaced,
    removed, or one added."""
    meta = json.loads(json.dumps(meta))
    record = meta if draw(st.booleans()) else meta["format"]
    if record is meta["format"] and "element" in record and draw(st.booleans()):
        record = record["element"]
    key = draw(st.sampled_from(sorted(record) + ["extra"]))
    action = draw(st.sampled_from(["replace", "remove", "nudge"]))
    if action == "remove":
        record.pop(key, None)
    elif action == "nudge" and isinstance(record.get(key), int) and not isinstance(record.get(key), bool):
        record[key] += draw(st.sampled_from([-1, 1, 2, 31, -(2 ** 40), 2 ** 40]))
    elif action == "nudge" and isinstance(record.get(key), list) and record[key]:
        i = draw(st.integers(0, len(record[key]) - 1))
        record[key][i] += draw(st.sampled_from([-1, 1, 7, -(2 ** 40), 2 ** 40]))
    else:
        record[key] = draw(META_VALUES)
    return meta


@st.composite
def array_edit(draw, array):
    """The array truncated, extended, retyped, reshaped, or with bytes overwritten."""
    action = draw(st.sampled_from(["truncate", "extend", "retype", "reshape", "bytes", "large"]))
    flat = array.reshape(-1)
    if action == "truncate":
        return flat[: draw(st.integers(0, max(flat.size - 1, 0)))]
    if action == "extend":
        return np.concatenate([flat, np.full(draw(st.integers(1, 64)), 255, flat.dtype)])
    if action == "retype":
        return array.astype(draw(st.sampled_from([np.uint16, np.int8, np.int64, np.float32, np.bool_])))
    if action == "reshape":
        return flat.reshape(1, -1) if flat.ndim == array.ndim else flat
    if action == "large":
        out = flat.copy()
        out[draw(st.integers(0, max(flat.size - 1, 0)))] = np.iinfo(flat.dtype).max if flat.size else 0
        return out.reshape(array.shape)
    out = array.copy()
    view = out.reshape(-1).view(np.uint8)
    for _ in range(draw(st.integers(1, 8))):
        if view.size:
            view[draw(st.integers(0, view.size - 1))] = draw(st.integers(0, 255))
    return out


@st.composite
def tampered(draw, arrays):
    """The file's arrays with one part tampered with (or dropped, or added)."""
    arrays = dict(arrays)
    part = draw(st.sampled_from(sorted(arrays) + ["subscales"]))
    if part == "meta":
        arrays["meta"] = np.array(json.dumps(draw(meta_edit(json.loads(str(arrays["meta"]))))))
    elif part not in arrays or draw(st.integers(0, 9)) == 0:
        if part in arrays:
            del arrays[part]
        else:
            arrays[part] = np.zeros(draw(st.integers(0, 40)), np.uint8)
    else:
        arrays[part] = draw(array_edit(arrays[part]))
    return arrays


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(FORMATS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_tampered_file_raises_a_clear_error_or_decodes_exactly(tmp_path, name, kind, data):
    path = saved(tmp_path, name, kind, axis=data.draw(st.sampled_from([0, -1])))
    changed = tmp_path / "changed.npz"
    write(changed, data.draw(tampered(read(path))))
    try:
        encoded = lowbit.Encoded.load(changed)
    except ValueError as error:
        assert str(changed) in str(error)
        return
    results = [decoded(encoded, b) for b in BACKENDS]
    for backend, result in zip(BACKENDS, results):
        if isinstance(result, str) or isinstance(results[-1], str):
            assert result == results[-1], backend
        else:
            assert_same_values(result, results[-1], f"{backend} on {name}", nan_sign=True)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_file_saved_and_loaded_decodes_as_before(tmp_path, name):
    path = saved(tmp_path, name, "numpy", axis=-1)
    encoded = lowbit.Encoded.load(path)
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1)) * 4.0
    x[1, 3] = float("nan")
    expected = lowbit.quantize(x.numpy(), FORMATS[name])
    for backend in BACKENDS:
        assert_same_values(encoded.decode(backend=backend), expected, backend, nan_sign=True)


# -- the reproducers, each a clear error ------------------------------------------------
def test_an_encoded_whose_shape_outgrows_its_buffers_is_refused():
    e = lowbit.encode(np.ones((1, 32), np.float32), "mxfp4")
    with pytest.raises(ValueError, match=r"elements must have shape \(320000,\)"):
        lowbit.Encoded(e.format, (20000, 32), 1, e.elements, e.scales, kind="numpy")


def test_a_block_size_beyond_the_limit_is_refused():
    with pytest.raises(ValueError, match="block_size must be a positive int of at most 131072"):
        lowbit.BlockFormat(lowbit.get_format("fp4_e2m1"), 2 ** 40)
    with pytest.raises(ValueError, match="block_size"):
        lowbit.get_format("mx(fp4_e2m1,100000000000)")


def test_missing_or_ill_typed_parts_are_named():
    mx6 = lowbit.encode(np.ones((1, 32), np.float32), "mx6")
    with pytest.raises(ValueError, match="subscales are missing"):
        lowbit.Encoded(mx6.format, mx6.shape, mx6.axis, mx6.elements, mx6.scales, None, kind="numpy")
    e = lowbit.encode(np.ones((1, 32), np.float32), "mxfp4")
    with pytest.raises(ValueError, match="scales must have dtype uint8, got uint16"):
        lowbit.Encoded(e.format, e.shape, e.axis, e.elements, np.array([[60000]], np.uint16), kind="numpy")
    with pytest.raises(ValueError, match="subscales must be None"):
        lowbit.Encoded(e.format, e.shape, e.axis, e.elements, e.scales, e.elements, kind="numpy")
    with pytest.raises(TypeError, match="elements must be a numpy array or torch tensor"):
        lowbit.Encoded(e.format, e.shape, e.axis, list(e.elements), e.scales, kind="numpy")
    with pytest.raises(TypeError, match="format must be a scaled format"):
        lowbit.Encoded(lowbit.get_format("fp4_e2m1"), e.shape, e.axis, e.elements, e.scales, kind="numpy")


def test_a_shared_exponent_beyond_its_width_is_refused():
    fmt = FORMATS["narrow_exponent"]
    e = fmt.encode(np.ones((1, 8), np.float32))
    scales = e.scales.copy()
    scales[0, 0] = 1 << fmt.exp_bits
    with pytest.raises(ValueError, match=r"scales must lie in \[0, 16\) for 4-bit codes, got 16"):
        lowbit.Encoded(fmt, e.shape, e.axis, e.elements, scales, e.subscales, kind="numpy")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), 3e-5, "1", True, 10 ** 400,
                                 float(np.finfo(np.float32).max)])
def test_a_tensor_scale_must_be_a_positive_float32_value_that_cannot_overflow_decoding(bad):
    fmt = FORMATS["nvfp4_tensor"]
    e = fmt.encode(np.ones((1, 16), np.float32))
    with pytest.raises(ValueError, match="tensor_scale must be a"):
        lowbit.Encoded(fmt, e.shape, e.axis, e.elements, e.scales, tensor_scale=bad, kind="numpy")


def test_the_largest_tensor_scale_encode_gives_is_accepted_as_any_real_number():
    fmt = FORMATS["nvfp4_tensor"]
    big = np.full((1, 16), np.finfo(np.float32).max, np.float32)
    e = fmt.encode(big)
    for scale in (e.tensor_scale, np.float32(e.tensor_scale)):
        again = lowbit.Encoded(fmt, e.shape, e.axis, e.elements, e.scales, tensor_scale=scale, kind="numpy")
        assert np.array_equal(again.decode(), e.decode()) and np.isfinite(e.decode()).all()


@pytest.mark.parametrize("fmt", [
    lowbit.BlockFormat(lowbit.get_format("fp4_e2m1"), 16, scale=lowbit.get_format("bf16")),
    lowbit.BlockFormat(lowbit.get_format("fp4_e2m1"), 16, scale=lowbit.get_format("fp32")),
    MicroexponentFormat(7, exp_bits=10),
], ids=lambda f: f.name)
def test_wide_scale_codes_decode(fmt):
    x = np.random.default_rng(7).standard_normal((3, 64))
    for backend in BACKENDS:
        assert_same_values(lowbit.encode(x, fmt).decode(backend=backend, dtype=np.float64), lowbit.quantize(x, fmt),
                           backend)


def test_parts_torch_cannot_wrap_are_read_as_their_values():
    e = lowbit.encode(np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32), "mxfp4")
    backwards = e.elements[::-1].copy()[::-1]  # negative strides
    read_only = e.scales.copy()
    read_only.flags.writeable = False
    again = lowbit.Encoded(e.format, e.shape, e.axis, backwards, read_only, kind="numpy")
    assert np.array_equal(again.decode(), e.decode())


def test_meta_parts_are_refused():
    e = lowbit.encode(torch.ones(2, 32), "mxfp4")
    with pytest.raises(ValueError, match="elements is on the meta device"):
        lowbit.Encoded(e.format, e.shape, e.axis, e.elements.to("meta"), e.scales.to("meta"))


def test_a_part_resized_in_place_after_construction_is_caught_before_decoding():
    e = lowbit.encode(torch.ones(2, 32), "mxfp4")
    e.elements.resize_(4)
    with pytest.raises(ValueError, match="elements must have shape"):
        e.decode()


def test_files_that_are_not_encodings_are_refused(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not an .npz file"):
        lowbit.Encoded.load(path)
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(ValueError, match="no 'meta' array"):
        lowbit.Encoded.load(tmp_path / "empty.npz")
    arrays = read(saved(tmp_path, "mxfp4", "numpy", -1))
    meta = json.loads(str(arrays["meta"]))
    meta["format"]["family"] = "Unknown"
    write(tmp_path / "family.npz", {**arrays, "meta": np.array(json.dumps(meta))})
    with pytest.raises(ValueError, match="'family' is one of"):
        lowbit.Encoded.load(tmp_path / "family.npz")
    deep = json.dumps(meta).replace(json.dumps(meta["format"]),
                                    '{"family": "BlockFormat", "element": ' * 5000 + "{}" + "}" * 5000)
    write(tmp_path / "deep.npz", {**arrays, "meta": np.array(deep)})
    with pytest.raises(ValueError):
        lowbit.Encoded.load(tmp_path / "deep.npz")
    with pytest.raises(FileNotFoundError):
        lowbit.Encoded.load(tmp_path / "absent.npz")


def test_the_cpu_kernels_bound_their_own_reads():
    # a direct call past Encoded's checks: the backend refuses to read beyond the buffers
    from lowbit.formats.blocking import BlockLayout
    from lowbit.formats.cpu import scaled_backend

    e = lowbit.encode(torch.ones(1, 32), "mxfp4")
    with pytest.raises(ValueError, match="elements: 16 bytes hold fewer than"):
        scaled_backend.decode(e.format, BlockLayout((20000, 32), 1, 32), e.elements, e.scales, None, None,
                              torch.float32)
    with pytest.raises(ValueError, match="scales: 1 codes for 2 blocks"):
        two = lowbit.encode(torch.ones(2, 32), "mxfp4")
        scaled_backend.decode(e.format, BlockLayout((2, 32), 1, 32), two.elements, e.scales, None, None,
                              torch.float32)
