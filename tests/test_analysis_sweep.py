"""Settings, sweeps and their tables."""

import csv
import io
import math

import numpy as np
import pytest
import torch

import lowbit
from lowbit.analysis import Setting, markdown_table, pivot, settings_grid, sweep, write_csv
from lowbit.analysis.metrics import METRICS
from lowbit.analysis.settings import absmax_scale
from lowbit.analysis.sweep import COLUMNS


def test_absmax_scaling_maps_the_largest_magnitude_onto_the_format_max():
    x = np.array([0.5, -3.0, 1.25], dtype=np.float32)
    q = Setting("int8", tensor_scaling="absmax").apply(x)
    scale = 3.0 / 127
    np.testing.assert_allclose(q.values, np.round(x.astype(np.float64) / scale) * scale, rtol=1e-15)
    assert q.values[1] == -3.0 and not q.out_of_range.any()
    assert np.allclose(q.ulp, scale)
    assert absmax_scale(np.zeros(4), 127.0) == 1.0
    for amax in np.random.default_rng(0).uniform(0.1, 1e6, 1000):  # amax / scale never exceeds max
        assert amax / absmax_scale(np.array([amax]), 7.0) <= 7.0


def test_unscaled_settings_match_quantize():
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    for name in ("fp8_e4m3", "mxfp4", "nvfp4", "mx6"):
        q = Setting(name).apply(x)
        np.testing.assert_array_equal(q.values, lowbit.quantize(x, name).astype(np.float64))
    q = Setting("mxfp4", scale_rule="rceil", rounding="toward_zero").apply(x, axis=0)
    np.testing.assert_array_equal(q.values, lowbit.quantize(x, "mxfp4", axis=0, scale_rule="rceil",
                                                            rounding="toward_zero"))
    stochastic = Setting("int4", rounding="stochastic", seed=5)
    np.testing.assert_array_equal(stochastic.apply(x).values, stochastic.apply(x).values)


def test_half_precision_data_is_measured_in_float32():
    """bf16 rounds float16's largest value, 65504, up to 65536, which float16
    cannot hold: the analysis works on an exact float32 copy."""
    x = np.array([65504.0, 1.0], dtype=np.float16)
    q = Setting("bf16").apply(x)
    assert q.values.tolist() == [65536.0, 1.0]
    assert Setting("mxfp4").apply(torch.tensor([1.0, 3.0], dtype=torch.bfloat16)).values.tolist() == [1.0, 3.0]


def test_labels_and_bits():
    assert Setting("mxfp4").label == "mxfp4" and Setting("mxfp4").bits == 4.25
    assert Setting("mxfp4", scale_rule="ceil", rounding="up").label == "mxfp4 rule=ceil up"
    assert Setting("int8", tensor_scaling="absmax").label == "int8 absmax-scaled"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"format": "mxfp5"}, ValueError, "unknown format"),
    ({"format": "int8", "rounding": "nearest"}, ValueError, "rounding must be one of"),
    ({"format": "int8", "tensor_scaling": "max"}, ValueError, "tensor_scaling must be one of"),
    ({"format": "mxfp4", "tensor_scaling": "absmax"}, ValueError, "carries its own scales"),
    ({"format": "int8", "scale_rule": "floor"}, ValueError, "scale_rule applies to block formats"),
    ({"format": "mxfp4", "scale_rule": "round"}, ValueError, "scale_rule for e8m0 scales must be one of"),
])
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        Setting(**kwargs)


def test_settings_grid_applies_rules_and_scaling_where_they_belong():
    grid = settings_grid(["int8", "mxfp4", "nvfp4", "mx6"], roundings=["nearest_even", "toward_zero"],
                         scale_rules=["floor", "rceil"])
    labels = [s.label for s in grid]
    assert labels == [
        "int8 absmax-scaled", "int8 toward_zero absmax-scaled",
        "mxfp4 rule=floor", "mxfp4 rule=rceil", "mxfp4 rule=floor toward_zero", "mxfp4 rule=rceil toward_zero",
        "nvfp4", "nvfp4 toward_zero", "mx6", "mx6 toward_zero",
    ]
    assert [s.label for s in settings_grid(["int8"], tensor_scaling="none")] == ["int8"]


def test_sweep_records_and_tables():
    rng = np.random.default_rng(2)
    data = {"a": rng.standard_normal(256).astype(np.float32),
            "layers": {"w1": rng.standard_normal((4, 32)), "w2": rng.standard_normal((2, 64))}}
    progress = io.StringIO()
    records = sweep(data, ["mxfp4", Setting("int8", tensor_scaling="absmax")], progress=progress)
    assert [(r["data"], r["label"]) for r in records] == [
        ("a", "mxfp4"), ("a", "int8 absmax-scaled"), ("layers", "mxfp4"), ("layers", "int8 absmax-scaled")]
    assert list(records[0]) == list(COLUMNS)
    assert records[2]["count"] == 256
    assert progress.getvalue().splitlines() == [
        "[1/4] mxfp4 on a", "[2/4] int8 absmax-scaled on a", "[3/4] mxfp4 on layers",
        "[4/4] int8 absmax-scaled on layers"]

    out = io.StringIO()
    write_csv(records, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [float(r["sqnr_db"]) for r in rows] == [r["sqnr_db"] for r in records]  # exact, by repr
    assert rows[0]["scale_rule"] == ""

    table = markdown_table(records, ["data", "label", "bits", "sqnr_db"], digits=3)
    lines = table.splitlines()
    assert lines[0] == "| data | label | bits | sqnr_db |" and lines[1] == "|---|---|---:|---:|"
    assert lines[2].startswith("| a | mxfp4 | 4.25 | ")

    wide = pivot(records, "sqnr_db")
    assert wide[0] == {"label": "mxfp4", "bits": 4.25, "a": records[0]["sqnr_db"], "layers": records[2]["sqnr_db"]}
    with pytest.raises(ValueError, match="unknown metric"):
        pivot(records, "snr")
    with pytest.raises(ValueError, match="data is empty"):
        sweep({}, ["mxfp4"])
    with pytest.raises(ValueError, match="no rows"):
        markdown_table([])


def test_number_cells():
    from lowbit.analysis.sweep import format_number

    assert [format_number(v) for v in (math.inf, -math.inf, math.nan, None, 3, 0.000123456)] == [
        "inf", "-inf", "nan", "", "3", "0.0001235"]
    assert format_number(12.345, decimals=1) == "12.3"
    assert set(METRICS) <= set(COLUMNS)
