"""A brute-force oracle for element formats of at most 16 bits.

It shares no code with lowbit: it enumerates every code of a format from the
format's defining parameters alone (exact, with Fractions), sorts the finite
values, and rounds each input by looking at its two neighbours in that list.
It reads a format object only for its parameters.

Rounding past the largest finite value follows IEEE 754: the grid continues
one step above max (the step of max's binade) with the next code's parity,
and an input that rounds to that virtual value has overflowed. Round to odd
("odd") keeps exact inputs and otherwise picks the neighbour with the odd code,
and overflows as the nearest modes do.
"""

from __future__ import annotations

import bisect
import itertools
from fractions import Fraction

import numpy as np

NAN, INF = float("nan"), float("inf")


def enumerate_float(exp_bits, man_bits, bias, signed, subnormals, specials):
    """Every code of a FloatFormat as (code, value) with value a float (NaN/Inf)."""
    mag_bits = exp_bits + man_bits
    out = []
    for code in range(1 << (mag_bits + signed)):
        negative = signed and code >> mag_bits
        mag = code & ((1 << mag_bits) - 1)
        e, f = mag >> man_bits, mag & ((1 << man_bits) - 1)
        top_exponent = e == (1 << exp_bits) - 1
        all_ones = mag == (1 << mag_bits) - 1
        if specials == "ieee" and top_exponent:
            value = INF if f == 0 else NAN
        elif specials == "p3109" and not signed and all_ones:
            value = NAN  # unsigned P3109: the all-ones code is the NaN, the code below it +Inf
        elif specials == "p3109" and not signed and mag == (1 << mag_bits) - 2:
            value = INF
        elif specials == "fn" and all_ones:
            value = NAN
        elif specials == "p3109" and all_ones:
            value = INF
        elif specials in ("fnuz", "p3109") and negative and mag == 0:
            value = NAN
        else:
            if e == 0 and subnormals:
                v = Fraction(f, 1 << man_bits) * Fraction(2) ** (1 - bias)
            elif e == 0 and f == 0 and man_bits > 0:
                v = Fraction(0)  # gfloat's model: without subnormals E=0 is a binade whose M=0 code is zero
            else:
                v = (1 + Fraction(f, 1 << man_bits)) * Fraction(2) ** (e - bias)
            value = float(v)
        if negative and value == value:
            value = -value
        out.append((code, value))
    return out


def enumerate_p3109(k, p, signed=True, extended=True):
    """Every code of the IEEE P3109 format K{k}P{p}, signed or unsigned,
    extended (with Inf) or finite, as (code, value): from the draft's
    definition alone (not via enumerate_float).

    Signed: 1 sign bit, k-p exponent bits, bias 2^(k-p-1), the -0 code is the
    single NaN, extended: the top code of each sign is +-Inf. Unsigned: k-p+1
    exponent bits, bias 2^(k-p), the all-ones code is NaN, extended: the
    code below it is +Inf. Subnormals always."""
    t = p - 1
    bias = Fraction(2) ** (k - p - 1) if signed else Fraction(2) ** (k - p)
    out = []
    for code in range(1 << k):
        negative = signed and code >> (k - 1)
        mag = code & ((1 << (k - 1)) - 1) if signed else code
        if (signed and negative and mag == 0) or (not signed and code == (1 << k) - 1):
            value = NAN
        elif extended and ((signed and mag == (1 << (k - 1)) - 1) or (not signed and code == (1 << k) - 2)):
            value = INF
        else:
            e, f = mag >> t, mag & ((1 << t) - 1)
            if e == 0:
                v = Fraction(f, 1 << t) * Fraction(2) ** (1 - bias)
            else:
                v = (1 + Fraction(f, 1 << t)) * Fraction(2) ** (e - bias)
            value = float(v)
        if negative and not np.isnan(value):
            value = -value
        out.append((code, value))
    return out


def enumerate_int(bits, signed, narrow, frac_bits):
    out = []
    for code in range(1 << bits):
        q = code - (1 << bits) if signed and code >> (bits - 1) else code
        out.append((code, float(Fraction(q) * Fraction(2) ** -frac_bits)))
    return out


def enumerate_codes(fmt):
    """(code, value) pairs of a lowbit FloatFormat or IntFormat, from its parameters."""
    if type(fmt).__name__ == "FloatFormat":
        return enumerate_float(fmt.exp_bits, fmt.man_bits, fmt.bias, fmt.signed, fmt.subnormals, fmt.specials)
    return enumerate_int(fmt.bits, fmt.signed, fmt.narrow, fmt.frac_bits)


class Oracle:
    """Correct rounding of float64 inputs into one element format."""

    def __init__(self, fmt, pairs=None, man_bits=None):
        """``pairs``: (code, value) of every code, where the format's own
        parameters cannot be enumerated here (e.g. from enumerate_p3109);
        ``man_bits``: the trailing significand width (else fmt.man_bits)."""
        self.fmt = fmt
        self.is_int = type(fmt).__name__ == "IntFormat"
        self.man_bits = fmt.man_bits if man_bits is None and not self.is_int else man_bits
        pairs = enumerate_codes(fmt) if pairs is None else list(pairs)
        if self.is_int and fmt.narrow:
            pairs = [(c, v) for c, v in pairs if c != 1 << (fmt.bits - 1)]
        finite = {}
        for code, value in pairs:
            if np.isfinite(value):
                key = value + 0.0
                # one parity per value: -0 and +0 share the value 0 (code 0 is even)
                finite.setdefault(key, code)
        values = np.array(sorted(finite), dtype=np.float64)
        parity = np.array([finite[v] & 1 for v in values])
        self.max = values[-1]
        self.min = values[0]
        self.has_nan = any(v != v for _, v in pairs)
        self.has_inf = any(v == INF for _, v in pairs)
        self.has_zero = 0.0 in finite
        # the virtual grid points just outside the range
        top_step = values[-1] - values[-2]
        if not self.is_int:
            top_step = 2.0 ** (np.frexp(self.max)[1] - 1 - self.man_bits)
        ext_values, ext_parity = [values], [parity]
        self.virtual_top = self.max + top_step
        ext_values.append([self.virtual_top])
        ext_parity.append([(finite[self.max] + 1) & 1])
        if self.min < 0:
            step = values[1] - values[0] if self.is_int else top_step
            self.virtual_bottom = self.min - step
            ext_values.insert(0, [self.virtual_bottom])
            if self.is_int:  # two's complement: a code's parity is its integer's parity
                ext_parity.insert(0, [round(self.virtual_bottom * 2.0 ** fmt.frac_bits) & 1])
            else:  # the magnitude code one past max's (the sign bit is the top bit)
                ext_parity.insert(0, [(finite[self.max] + 1) & 1])
        else:
            self.virtual_bottom = None
        self.values = np.concatenate(ext_values)
        self.parity = np.concatenate(ext_parity)
        # a code holding -0.0 (for the lowbit parameters: signed ieee/fn/none formats)
        self.negative_zero = (not self.is_int) and any(v == 0 and np.signbit(v) for _, v in pairs)
        self.unsigned_float = (not self.is_int) and not any(v < 0 for _, v in pairs)

    def round(self, x, rounding="nearest_even", overflow=None):
        """Expected quantize(x) as float64 (NaN where the format cannot hold x)."""
        x = np.asarray(x, dtype=np.float64)
        if overflow is None:
            overflow = "inf" if self.has_inf else "saturate"
        V, P = self.values, self.parity
        finite = np.isfinite(x)
        xf = np.where(finite, x, 0.0)
        idx = np.searchsorted(V, xf, side="left")
        exact = V[np.clip(idx, 0, len(V) - 1)] == xf
        hi_idx = np.clip(idx, 1, len(V) - 1)
        lo_idx = np.where(exact, np.clip(idx, 0, len(V) - 1), hi_idx - 1)
        lo, hi = V[lo_idx], V[hi_idx]
        # inputs beyond the virtual points: both neighbours are that virtual point
        beyond_top = xf > self.virtual_top
        lo = np.where(beyond_top, self.virtual_top, lo)
        hi = np.where(beyond_top, self.virtual_top, hi)
        if self.virtual_bottom is not None:
            beyond_bottom = xf < self.virtual_bottom
            lo = np.where(beyond_bottom, self.virtual_bottom, lo)
            hi = np.where(beyond_bottom, self.virtual_bottom, hi)
        lo_parity = P[lo_idx]
        towards_zero_pick = np.where(xf >= 0, lo, hi)
        away_pick = np.where(xf >= 0, hi, lo)
        if rounding == "nearest_even":
            d_lo, d_hi = xf - lo, hi - xf
            result = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo_parity == 0, lo, hi)))
        elif rounding == "nearest_away":
            d_lo, d_hi = xf - lo, hi - xf
            result = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, away_pick))
        elif rounding == "toward_zero":
            result = towards_zero_pick
        elif rounding == "up":
            result = hi
        elif rounding == "down":
            result = lo
        elif rounding == "odd":  # the neighbour whose code is odd (exact inputs stay, below)
            result = np.where(lo_parity == 1, lo, hi)
        else:
            raise ValueError(rounding)
        result = np.where(exact, xf, result)
        # below the smallest value: formats without negatives or zero clamp there
        if self.min >= 0:
            result = np.where(xf < self.min, self.min, result)

        over = (result > self.max) | (result < self.min)
        toward_zero_mode = {"toward_zero": np.ones_like(xf, bool), "up": xf < 0, "down": xf > 0}.get(rounding, np.zeros_like(xf, bool))
        clamped = np.clip(result, self.min, self.max)
        if overflow == "saturate":
            result = clamped
        else:
            special = np.copysign(INF, xf) if overflow == "inf" else np.full_like(xf, NAN)
            result = np.where(over & ~toward_zero_mode, special, np.where(over, clamped, result))
        # infinities and NaN
        inf_result = {"saturate": np.where(x > 0, self.max, self.min),
                      "inf": np.copysign(INF, x), "nan": np.full_like(x, NAN)}[overflow]
        result = np.where(np.isinf(x), inf_result, result)
        result = np.where(np.isnan(x), NAN, result)
        # the sign of zero
        if self.negative_zero:
            result = np.where(result == 0, np.copysign(0.0, xf), result)
        else:
            result = np.where(result == 0, 0.0, result)
        # what the format cannot hold at all
        if self.unsigned_float:
            result = np.where(np.isfinite(x) & (x < 0), NAN, result)
            result = np.where(np.isinf(x) & (x < 0), NAN, result)
        if not self.has_zero:
            result = np.where(x == 0, NAN, result)
        return result


def boundary_inputs(values: np.ndarray, max_value: float) -> np.ndarray:
    """Every value, every midpoint between neighbours, the float64 numbers
    right next to each, points beyond the range, +-Inf and NaN."""
    v = np.unique(values)
    mids = (v[:-1] + v[1:]) / 2
    pts = np.concatenate([v, mids])
    near = np.concatenate([np.nextafter(pts, np.inf), np.nextafter(pts, -np.inf)])
    outside = np.array([max_value * 1.01, max_value * 1.5, max_value * 4, 1e300, -1e300, np.inf, -np.inf, np.nan, -0.0, 0.0])
    return np.concatenate([pts, -pts, near, -near, outside])


CODEBOOK_MODES = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "odd")


class CodebookOracle:
    """Rounding into a codebook (a sorted table of float32 numbers, code =
    index), with exact rational arithmetic: every deterministic mode of a
    lowbit CodebookFormat, written from the specification alone.

    Below the first value (-Inf included) gives the first value, above the last
    (+Inf included) the last, a table value stays (a zero gives +0.0); between
    lo = values[i] and hi = values[i+1]: nearest_even (ties to the even index),
    nearest_away (ties to the larger magnitude; at |lo| == |hi|, i.e. a zero
    input, hi for +0.0 and lo for -0.0), toward_zero (lo if the input's sign
    bit is clear, else hi), up (hi), down (lo), odd (the odd index)."""

    def __init__(self, values):
        vals = [float(v) + 0.0 for v in values]
        assert all(a < b for a, b in itertools.pairwise(vals)), "strictly increasing"
        assert all(float(np.float32(v)) == v for v in vals), "float32 numbers"
        self.values = vals
        self.exact = [Fraction(v) for v in vals]

    def index(self, x, negative, rounding="nearest_even"):
        """The code of an exact input ``x`` (a Fraction), whose sign bit is
        ``negative`` (it matters only for a zero)."""
        V = self.exact
        if x <= V[0]:
            return 0
        if x >= V[-1]:
            return len(V) - 1
        i = bisect.bisect_right(V, x) - 1
        if V[i] == x:
            return i
        lo, hi = V[i], V[i + 1]
        if rounding in ("nearest_even", "nearest_away"):
            d_lo, d_hi = x - lo, hi - x
            if d_lo < d_hi:
                return i
            if d_hi < d_lo:
                return i + 1
            if rounding == "nearest_even":
                return i if i % 2 == 0 else i + 1
            if abs(lo) != abs(hi):
                return i if abs(lo) > abs(hi) else i + 1
            return i if negative else i + 1
        if rounding == "toward_zero":
            return i + 1 if negative else i
        if rounding == "up":
            return i + 1
        if rounding == "down":
            return i
        if rounding == "odd":
            return i if i % 2 == 1 else i + 1
        raise ValueError(rounding)

    def encode(self, x, rounding="nearest_even"):
        """Codes of float64 inputs (no NaN)."""
        x = np.asarray(x, dtype=np.float64)
        out = []
        for v in x.reshape(-1):
            v = float(v)
            assert not np.isnan(v), "NaN has no code"
            if np.isinf(v):
                out.append(0 if v < 0 else len(self.values) - 1)
            else:
                out.append(self.index(Fraction(v), bool(np.signbit(v)), rounding))
        return np.array(out, dtype=np.int64).reshape(x.shape)

    def round(self, x, rounding="nearest_even"):
        """Expected quantize(x) as float64 (NaN for NaN)."""
        x = np.asarray(x, dtype=np.float64)
        nan = np.isnan(x)
        codes = self.encode(np.where(nan, 0.0, x), rounding)
        table = np.array(self.values, dtype=np.float64)
        return np.where(nan, NAN, table[codes])
