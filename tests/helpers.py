"""Small comparison helpers for the tests."""

import numpy as np


def assert_same_values(actual, expected, context="", nan_sign=False):
    """Equal as float64, NaN matching NaN, and the sign of zero included
    (and the sign of NaN with ``nan_sign``)."""
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    nans_match = np.isnan(a) & np.isnan(e) & (np.signbit(a) == np.signbit(e) if nan_sign else True)
    same = (a == e) & (np.signbit(a) == np.signbit(e)) | nans_match
    if not same.all():
        bad = np.flatnonzero(~same.reshape(-1))[:8]
        raise AssertionError(f"{context}: {(~same).sum()} mismatches; first: "
                             + ", ".join(f"[{i}] got {a.reshape(-1)[i]!r} expected {e.reshape(-1)[i]!r}" for i in bad))
