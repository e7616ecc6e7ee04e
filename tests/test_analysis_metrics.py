"""Error metrics against closed forms and hand-computed cases."""

import math

import numpy as np
import pytest
import torch

import lowbit
from lowbit.analysis import ErrorStats, Setting, error_stats


def measured(x, fmt, **options):
    return error_stats(x, *Setting(fmt, **options).apply(x))


def test_uniform_quantizer_on_uniform_data_has_mse_step_squared_over_12():
    """int8's step is 1: on U(-100, 100) the error is uniform on [-1/2, 1/2]:
    MSE 1/12, mean |e| 1/4 (and 1/4 ulp), bias 0, each within 6 sigma."""
    n = 1 << 20
    x = np.random.default_rng(1).uniform(-100, 100, n)
    stats = measured(x, "int8")
    assert abs(stats.mse - 1 / 12) < 6 * math.sqrt(1 / 80 - 1 / 144) / math.sqrt(n)
    assert abs(stats.mean_abs_error - 1 / 4) < 6 * math.sqrt(1 / 12 - 1 / 16) / math.sqrt(n)
    assert stats.mean_ulp_error == pytest.approx(stats.mean_abs_error)
    assert abs(stats.bias) < 6 * math.sqrt(1 / 12) / math.sqrt(n)
    assert stats.max_abs_error <= 0.5 and stats.max_ulp_error <= 0.5
    assert stats.overflow_fraction == 0


def test_step_scales_the_mse():
    """int8 with 4 fraction bits has step 1/16: MSE (1/16)**2 / 12."""
    n = 1 << 20
    x = np.random.default_rng(2).uniform(-7, 7, n)
    stats = measured(x, lowbit.IntFormat(8, frac_bits=4))
    expected = (1 / 16) ** 2 / 12
    assert abs(stats.mse - expected) / expected < 6 * math.sqrt(1 / 80 - 1 / 144) * 12 / math.sqrt(n)


def test_sqnr_of_a_full_scale_uniform_signal_is_6_02_db_per_bit():
    """U(-127.5, 127.5) in int8: signal power 127.5**2 / 3, noise 1/12, so
    SQNR = 10 log10(4 * 127.5**2) = 20 log10(255) dB."""
    x = np.random.default_rng(3).uniform(-127.5, 127.5, 1 << 20)
    assert measured(x, "int8").sqnr_db == pytest.approx(20 * math.log10(255), abs=0.02)


def test_toward_zero_on_positive_data_is_biased_by_half_a_step():
    n = 1 << 18
    x = np.random.default_rng(4).uniform(0, 100, n)
    stats = measured(x, "int8", rounding="toward_zero")
    assert abs(stats.bias + 0.5) < 6 * math.sqrt(1 / 12) / math.sqrt(n)
    assert stats.max_ulp_error < 1


def test_hand_computed_case():
    stats = error_stats(np.array([3.0, 4.0, 0.0]), np.array([3.0, 5.0, 0.0]))
    assert stats.count == 3 and stats.nonzero_count == 2
    assert stats.mse == pytest.approx(1 / 3)
    assert stats.sqnr_db == pytest.approx(10 * math.log10(25))
    assert stats.max_abs_error == 1 and stats.mean_abs_error == pytest.approx(1 / 3)
    assert stats.max_rel_error == 0.25 and stats.mean_rel_error == 0.125
    assert stats.bias == pytest.approx(1 / 3)
    assert math.isnan(stats.max_ulp_error) and stats.overflow_fraction == 0  # no grid given


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp4_e2m1", "int4", "bf16", "p3109_8p3"])
def test_representable_values_have_no_error(name):
    fmt = lowbit.get_format(name)
    x = fmt.values()
    stats = measured(x, fmt)
    assert stats.sqnr_db == math.inf
    assert stats.mse == stats.max_abs_error == stats.max_rel_error == stats.max_ulp_error == 0
    assert stats.bias == 0 and stats.overflow_fraction == 0 and stats.underflow_fraction == 0


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4", "mxint8", "mx6", "mx9"])
def test_quantized_blocks_have_no_error_the_second_time(name):
    """Power-of-two block scales: quantizing quantized data changes nothing."""
    q = lowbit.quantize(np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32), name)
    stats = measured(q, name)
    assert stats.mse == 0 and stats.sqnr_db == math.inf and stats.max_ulp_error == 0


def test_overflow_underflow_and_nonfinite_fractions():
    x = np.array([500.0, -1000.0, 1.0, 2.0 ** -12])  # fp8_e4m3: max 448, smallest 2**-9
    stats = measured(x, "fp8_e4m3")
    assert stats.overflow_fraction == 0.5 and stats.underflow_fraction == 0.25
    assert stats.nonfinite_fraction == 0
    inf = measured(np.array([1e6, 1.0]), "fp8_e5m2")  # overflows to Inf by default
    assert inf.nonfinite_fraction == 0.5 and inf.overflow_fraction == 0.5 and inf.mse == math.inf


def test_nonfinite_inputs_are_left_out():
    x = np.array([np.nan, np.inf, 1.0, 1.1])
    stats = measured(x, "fp8_e4m3")
    assert stats.count == 2
    assert stats.max_abs_error == pytest.approx(1.125 - 1.1)


def test_stats_add_up_to_those_of_all_the_data():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal(1024), 10 * rng.standard_normal(3072)  # whole blocks: none straddles a and b
    setting = Setting("mxfp4")
    parts = error_stats(a, *setting.apply(a)) + error_stats(b, *setting.apply(b))
    whole = error_stats(np.concatenate([a, b]), *setting.apply(np.concatenate([a, b])))
    assert sum([error_stats(a, *setting.apply(a)), error_stats(b, *setting.apply(b))]) == parts
    for name, value in whole.metrics().items():
        assert parts.metrics()[name] == pytest.approx(value, rel=1e-9), name


def test_tensors_are_accepted():
    t = torch.randn(4, 32, dtype=torch.bfloat16)
    q = lowbit.quantize(t, "mxfp4")
    assert error_stats(t, q).count == 128


def test_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        error_stats(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="floating-point"):
        error_stats(np.zeros(3, dtype=np.int32), np.zeros(3))
    with pytest.raises(ValueError, match="ulp must have x's shape"):
        error_stats(np.zeros(3), np.zeros(3), ulp=np.ones(2))
    with pytest.raises(TypeError):
        ErrorStats() + 1
    empty = error_stats(np.array([np.nan]), np.array([np.nan]))
    assert empty.count == 0 and math.isnan(empty.mse) and math.isnan(empty.sqnr_db)
