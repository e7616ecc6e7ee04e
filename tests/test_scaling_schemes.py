"""Scaling schemes of BlockFormat (issue 19): integer groups with fp16 scales,
zero points (GPTQ), whole-axis (rowwise) blocks, 2-D tiles, the "mse" and
"4over6" scale rules and double quantization, against independent per-block
references written in plain Python/numpy from the issue's specification
(fractions.Fraction for every scale rounding, float64 for the element
roundings), compared bit for bit.

Why float64 decides every element rounding exactly here: x is a float32
(24-bit significand) and every scale has at most 24 significant bits, so a
grid point g (at most 8 bits) or a midpoint between two grid points (at most
9 bits) times the scale has at most 33 bits. x - g*s, when not zero, is
therefore at least 2^-33 |x| away from zero, far more than the 2^-53 by which
the float64 quotient x / s can miss the exact one: the float64 quotient lies
on a grid point or midpoint exactly when the exact quotient does, and on the
same side of every other one. Products element * scale (at most 8 + 24 bits)
are exact in float64 and are rounded once to the output dtype.
"""

import math
from dataclasses import dataclass
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from lowbit.formats import BlockFormat, FloatFormat, IntFormat, get_format, unpack  # noqa: F401

MODES = ["nearest_even", "toward_zero", "up", "down"]
F32_MAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------
# reference: roundings
# --------------------------------------------------------------------------

ROUND = {
    "nearest_even": np.rint,
    "toward_zero": np.trunc,
    "up": np.ceil,
    "down": np.floor,
}


@dataclass(frozen=True)
class Elem:
    """An element grid: a float format (man bits, min normal exponent, max)
    or a signed/unsigned integer range."""

    kind: str
    man: int = 0
    emin: int = 0
    max: float = 0.0
    lo: int = 0
    hi: int = 0

    @property
    def max_elem(self) -> float:  # the divisor of the "amax" rule
        return self.max if self.kind == "float" else float(self.hi)

    @property
    def emax(self) -> int:  # exponent of the largest element (E8M0 floor rule)
        return math.frexp(self.max_elem)[1] - 1


E4M3 = Elem("float", man=3, emin=-6, max=448.0)
E2M1 = Elem("float", man=1, emin=0, max=6.0)
INT4 = Elem("int", lo=-8, hi=7)
INT8 = Elem("int", lo=-128, hi=127)



def zero_point_codes(enc, shape):
    """The zero points of an Encoded (bit-packed in block order), unpacked to ``shape``."""
    codes = unpack(to_np(enc.zero_points), enc.format.element.nbits, int(np.prod(shape)))
    return np.asarray(codes).reshape(shape)

def round_elem(q: np.ndarray, elem: Elem, mode: str) -> np.ndarray:
    """Round float64 quotients onto the element grid with `mode`, saturating."""
    q = np.asarray(q, dtype=np.float64)
    rnd = ROUND[mode]
    if elem.kind == "int":
        return np.clip(rnd(q), elem.lo, elem.hi) + 0.0  # integers have no -0
    _, ex = np.frexp(np.abs(q))
    e = np.maximum(ex - 1, elem.emin)
    quantum = np.ldexp(1.0, (e - elem.man).astype(np.int64))
    return np.clip(rnd(q / quantum) * quantum, -elem.max, elem.max)


def floor_log2_frac(v: Fraction) -> int:
    e = v.numerator.bit_length() - v.denominator.bit_length()
    if Fraction(2) ** e > v:
        e -= 1
    assert Fraction(2) ** e <= v < Fraction(2) ** (e + 1)
    return e


@dataclass(frozen=True)
class ScaleFmt:
    name: str
    man: int = 0
    emin: int = 0
    max: float = 0.0
    tiny: float = 0.0

    def round(self, v: Fraction) -> float:
        """Exact v >= 0 rounded once, nearest even, saturating to max."""
        assert self.name != "e8m0"
        v = Fraction(v)
        assert v >= 0
        if v == 0:
            return 0.0
        e = max(floor_log2_frac(v), self.emin)
        quantum = Fraction(2) ** (e - self.man)
        r = round(v / quantum) * quantum  # Fraction.__round__: half to even
        return float(min(r, Fraction(self.max)))

    def codes(self, s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, dtype=np.float64)
        if self.name == "fp16":
            c = s.astype(np.float16)
            assert np.array_equal(c.astype(np.float64), s)
            return c.view(np.uint16).astype(np.int64)
        if self.name == "fp32":
            c = s.astype(np.float32)
            assert np.array_equal(c.astype(np.float64), s)
            return c.view(np.uint32).astype(np.int64)
        if self.name == "e4m3":
            c = s.astype(ml_dtypes.float8_e4m3fn)
            assert np.array_equal(c.astype(np.float64), s)
            return c.view(np.uint8).astype(np.int64)
        if self.name == "e8m0":
            m, ex = np.frexp(s)
            assert (m == 0.5).all()
            return (ex - 1 + 127).astype(np.int64)
        raise AssertionError(self.name)


FP16 = ScaleFmt("fp16", man=10, emin=-14, max=65504.0, tiny=2.0**-24)
FP32 = ScaleFmt("fp32", man=23, emin=-126, max=F32_MAX, tiny=2.0**-149)
SE4M3 = ScaleFmt("e4m3", man=3, emin=-6, max=448.0, tiny=2.0**-9)
E8M0 = ScaleFmt("e8m0")


def seq_sq_err(v: np.ndarray, b: np.ndarray) -> float:
    """sum over the block, in index order, sequentially in float64, of (v_j - x_j)**2"""
    err = 0.0
    for d in (np.asarray(v, np.float64) - b).tolist():
        err += d * d
    return err


def pick_first_least(cands, err_of):
    """The first candidate with the strictly least error (and the index chosen)."""
    best, best_err, best_k = cands[0], err_of(cands[0]), 0
    for k, c in enumerate(cands[1:], 1):
        e = err_of(c)
        if e < best_err:
            best, best_err, best_k = c, e, k
    return best, best_k


P_MSE = [Fraction(32 - k, 32) for k in range(16)]


# --------------------------------------------------------------------------
# reference: per-block schemes. A block function takes one padded block
# (float64, length k, row-major within a tile) and returns
# (values float64, scale float, zero point or None, chosen candidate index).
# --------------------------------------------------------------------------


def scaled_values(b, s, elem, mode):
    if s == 0:  # a block whose scale rounds to 0 decodes to zeros
        return np.zeros_like(b)
    return round_elem(b / s, elem, mode) * s


def mantissa_scale_rule(elem: Elem, sfmt: ScaleFmt, mode: str, rule: str = "amax"):
    def f(b):
        amax = Fraction(float(np.max(np.abs(b))))
        if rule == "amax":
            s, k = sfmt.round(amax / Fraction(elem.max_elem)), 0
        elif rule == "mse":
            cands = [sfmt.round(amax * p / Fraction(elem.max_elem)) for p in P_MSE]
            s, k = pick_first_least(cands, lambda c: seq_sq_err(scaled_values(b, c, elem, "nearest_even"), b))
        elif rule == "4over6":
            assert elem == E2M1
            cands = [sfmt.round(amax / 6), sfmt.round(amax / 4)]
            s, k = pick_first_least(cands, lambda c: seq_sq_err(scaled_values(b, c, elem, "nearest_even"), b))
        else:
            raise AssertionError(rule)
        return scaled_values(b, s, elem, mode), s, None, k

    return f


def e8m0_scale_rule(elem: Elem, mode: str, rule: str = "floor"):
    def clamp(e):
        return max(-127, min(127, e))

    def f(b):
        amax = float(np.max(np.abs(b)))
        e0 = -127 if amax == 0 else clamp(math.frexp(amax)[1] - 1 - elem.emax)
        if rule == "floor":
            e, k = e0, 0
        elif rule == "mse" and amax == 0:  # an all-zero block keeps the smallest scale (as every rule)
            e, k = e0, 0
        elif rule == "mse":
            cands = [clamp(e0 + d) for d in (1, 0, -1, -2)]
            e, k = pick_first_least(
                cands, lambda c: seq_sq_err(round_elem(b / 2.0**c, elem, "nearest_even") * 2.0**c, b))
        else:
            raise AssertionError(rule)
        s = 2.0**e
        return round_elem(b / s, elem, mode) * s, s, None, k

    return f


def zero_point_rule(bits: int, sfmt: ScaleFmt, mode: str, rule: str = "minmax"):
    nmax = 2**bits - 1

    def params(lo: Fraction, hi: Fraction):
        if lo == 0 and hi == 0:
            return 1.0, 0
        s = sfmt.round((hi - lo) / nmax)
        if s == 0:
            s = sfmt.tiny
        z = min(max(round(-lo / Fraction(s)), 0), nmax)  # round(Fraction): half to even
        return s, z

    def values(b, s, z, m):
        q = np.clip(ROUND[m](b / s) + z, 0, nmax)
        return (q - z) * s

    def f(b):
        lo = Fraction(min(float(b.min()), 0.0))
        hi = Fraction(max(float(b.max()), 0.0))
        if rule == "minmax":
            (s, z), k = params(lo, hi), 0
        elif rule == "mse":
            cands = [params(lo * p, hi * p) for p in P_MSE]
            (s, z), k = pick_first_least(cands, lambda c: seq_sq_err(values(b, c[0], c[1], "nearest_even"), b))
        else:
            raise AssertionError(rule)
        return values(b, s, z, mode), s, z, k

    return f


# --------------------------------------------------------------------------
# reference: layouts (1-D blocks, whole axis, 2-D tiles)
# --------------------------------------------------------------------------


class Layout:
    """Blocks of `block` elements along `axis` (None: the whole axis), or
    tiles (r, c) over (row_axis, col_axis). blocks() gives (G, k) padded
    blocks in the order of the scale array (the other axes in order, then
    the block index or the tile grid); grid_shape is that scale array's shape."""

    def __init__(self, shape, axis=-1, block=None, tile=None):
        self.shape = tuple(shape)
        nd = len(self.shape)
        self.tile = tile
        if tile is None:
            ax = axis % nd
            self.perm = [a for a in range(nd) if a != ax] + [ax]
            L = self.shape[ax]
            self.k = L if block is None else block
            self.nb = -(-L // self.k)
            self.L = L
        else:
            if isinstance(axis, tuple):
                ra, ca = (a % nd for a in axis)
            else:
                ca = axis % nd
                assert ca in (nd - 2, nd - 1)
                ra = nd - 1 if ca == nd - 2 else nd - 2
            assert ra != ca
            self.perm = [a for a in range(nd) if a not in (ra, ca)] + [ra, ca]
            self.R, self.C = self.shape[ra], self.shape[ca]
            r, c = tile
            self.nR, self.nC = -(-self.R // r), -(-self.C // c)
            self.k = r * c
        self.other = tuple(self.shape[a] for a in self.perm[: nd - (1 if tile is None else 2)])
        self.grid_shape = self.other + ((self.nb,) if tile is None else (self.nR, self.nC))

    def blocks(self, x64):
        xm = np.transpose(x64, self.perm)
        if self.tile is None:
            xp = np.zeros(self.other + (self.nb * self.k,))
            xp[..., : self.L] = xm
            return xp.reshape(-1, self.k)
        r, c = self.tile
        xp = np.zeros(self.other + (self.nR * r, self.nC * c))
        xp[..., : self.R, : self.C] = xm
        t = xp.reshape(self.other + (self.nR, r, self.nC, c))
        t = np.swapaxes(t, -3, -2)  # (..., nR, nC, r, c): row-major within a tile
        return t.reshape(-1, self.k)

    def unblock(self, vals):
        if self.tile is None:
            v = vals.reshape(self.other + (self.nb * self.k,))[..., : self.L]
        else:
            r, c = self.tile
            t = vals.reshape(self.other + (self.nR, self.nC, r, c))
            t = np.swapaxes(t, -3, -2).reshape(self.other + (self.nR * r, self.nC * c))
            v = t[..., : self.R, : self.C]
        return np.transpose(v, np.argsort(self.perm))


@dataclass
class Ref:
    values: np.ndarray  # float64, x's shape, before the cast to the output dtype
    scales: np.ndarray  # float64, grid shape
    zero_points: np.ndarray | None
    chosen: np.ndarray  # candidate index per block (mse / 4over6)


def ref_blocked(x, block_fn, axis=-1, block=None, tile=None) -> Ref:
    x64 = to_np(x).astype(np.float64)
    lay = Layout(x64.shape, axis, block, tile)
    outs = [block_fn(b) for b in lay.blocks(x64)]
    vals = np.stack([o[0] for o in outs]) if outs else np.zeros((0, lay.k))
    scales = np.array([o[1] for o in outs], dtype=np.float64).reshape(lay.grid_shape)
    zps = None
    if outs and outs[0][2] is not None:
        zps = np.array([o[2] for o in outs], dtype=np.int64).reshape(lay.grid_shape)
    chosen = np.array([o[3] for o in outs], dtype=np.int64).reshape(lay.grid_shape)
    return Ref(lay.unblock(vals), scales, zps, chosen)


def ref_double_quant(x, axis=-1):
    """fp8_e4m3 x 64 blocks with an fp32 amax/448 scale; the scales, minus
    their float32 mean, in fp8_e4m3 x 256 blocks with an fp32 scale."""
    x64 = to_np(x).astype(np.float64)
    lay = Layout(x64.shape, axis, 64)
    blocks = lay.blocks(x64)
    s1 = np.array([FP32.round(Fraction(float(np.max(np.abs(b)))) / 448) for b in blocks])
    elems = np.stack([round_elem(b / s, E4M3, "nearest_even") if s else np.zeros_like(b) for b, s in zip(blocks, s1)])
    offset = np.float32(math.fsum(s1.tolist()) / len(s1))
    d = s1 - np.float64(offset)
    for a, dd in zip(s1.tolist(), d.tolist()):  # the data keep s - offset exact in float64
        assert Fraction(a) - Fraction(float(offset)) == Fraction(dd)
    lvl2 = ref_blocked(d, mantissa_scale_rule(E4M3, FP32, "nearest_even"), axis=0, block=256)
    dec2 = lvl2.values.astype(np.float32)
    s_prime = dec2 + offset  # float32 + float32 in float32
    assert s_prime.dtype == np.float32
    vals = elems * s_prime.astype(np.float64)[:, None]
    return {"values": lay.unblock(vals), "offset": offset, "dec2": dec2, "lvl2": lvl2, "grid_shape": lay.grid_shape}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def to_np(a):
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def like(x, arr32):
    """arr32 (numpy float32) in x's kind."""
    return torch.from_numpy(np.ascontiguousarray(arr32)) if isinstance(x, torch.Tensor) else arr32


def assert_bits(got, want, what="", x=None):
    """got (array/tensor) equals want bit for bit as float64 values: NaN == NaN,
    and the sign of zero counts."""
    g = to_np(got).astype(np.float64)
    w = np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    same = ((g == w) & (np.signbit(g) == np.signbit(w))) | (np.isnan(g) & np.isnan(w))
    if not same.all():
        bad = np.argwhere(~same)[:6]
        lines = []
        for i in map(tuple, bad):
            xi = "" if x is None else f" x={to_np(x)[i]!r}"
            lines.append(f"  at {i}:{xi} want {w[i]!r} got {g[i]!r}")
        raise AssertionError(f"{what}: {int((~same).sum())} of {same.size} differ\n" + "\n".join(lines))


def assert_codes(got, want, what=""):
    g = to_np(got)
    w = np.asarray(want)
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    g = g.astype(np.int64)
    if not np.array_equal(g, w):
        bad = np.argwhere(g != w)[:6]
        raise AssertionError(f"{what}: {int((g != w).sum())} differ; " + ", ".join(
            f"at {tuple(i)} want {w[tuple(i)]} got {g[tuple(i)]}" for i in bad))


def check_quantize(fmt, x, ref_values, what="", **kw):
    q = fmt.quantize(x, **kw)
    assert type(q) is type(x), what
    assert q.dtype == x.dtype, what
    assert_bits(q, ref_values.astype(np.float32), what, x)
    return q


def data(shape, seed, spread=6):
    """Normal-range float32: standard normal times a power of two per lane
    along the last axis (so blocks along other axes mix magnitudes)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x *= np.exp2(rng.integers(-spread, spread + 1, size=shape[:-1] + (1,)))
    return x.astype(np.float32)


def lane(x, axis, i):
    """A writable view of lane i along `axis` (lanes in the order of the other axes)."""
    ax = axis % x.ndim
    other = [n for a, n in enumerate(x.shape) if a != ax]
    idx = [int(j) for j in np.unravel_index(i, other)]
    idx.insert(ax, slice(None))
    return x[tuple(idx)]


def block_region(x, axis, block=None, tile=None, g=0):
    """A writable view of block (or tile) g of x, g in the order of the scale array."""
    lay = Layout(x.shape, axis, block, tile)
    xm = np.transpose(x, lay.perm)
    idx = [int(i) for i in np.unravel_index(g, lay.grid_shape)]
    other = tuple(idx[: len(lay.other)])
    if tile is None:
        j = idx[-1]
        return xm[other + (slice(j * lay.k, (j + 1) * lay.k),)]
    (r, c), (i, j) = tile, idx[-2:]
    return xm[other + (slice(i * r, (i + 1) * r), slice(j * c, (j + 1) * c))]


def put_pattern(x, axis, pattern, i=0, power=0):
    """Write `pattern` * 2**power, repeated, along `axis` in lane i."""
    row = lane(x, axis, i)
    row[:] = np.resize(np.float32(pattern) * np.float32(2.0**power), row.shape)
    return x


TIES_INT4 = [7, 2.5, -3.5, 0.5, -0.5, 1.5, -6.5, 4.5]  # amax 7 -> s = 1, every other value a tie
TIES_INT8 = [127, 2.5, -3.5, 0.5, -0.5, 100.5, -126.5, 64.5]
TIES_E4M3 = [448, 17, -17, 8.5, -(2.0**-10), 3 * 2.0**-10, 232, -232]
TIES_E2M1 = [6, 2.5, -5, 0.25, -0.25, 1.25, -0.75, 3.5]


def fmt_dq():
    return BlockFormat(get_format("fp8_e4m3"), 64, scale=get_format("fp32"),
                       double_quant=BlockFormat(get_format("fp8_e4m3"), 256, scale=get_format("fp32")))


def fmt_tile_e4m3(r=4, c=8):
    return BlockFormat(get_format("fp8_e4m3"), block_shape=(r, c), scale=get_format("fp32"))


def fmt_tile_e2m1(r=2, c=4):
    return BlockFormat(get_format("fp4_e2m1"), block_shape=(r, c), scale=get_format("fp8_e4m3"))


# --------------------------------------------------------------------------
# the reference itself, against numpy's and ml_dtypes' correctly rounded casts
# --------------------------------------------------------------------------


def test_reference_roundings_agree_with_numpy_and_ml_dtypes():
    rng = np.random.default_rng(0)
    v = (rng.standard_normal(4000) * np.exp2(rng.integers(-12, 9, 4000))).astype(np.float32).astype(np.float64)
    v = np.concatenate([v, np.arange(-500, 500) / 4, [0.0, -0.0, 2.0**-10, -(2.0**-10), 3 * 2.0**-10]])
    inrange = v[np.abs(v) <= 448]
    assert_bits(round_elem(inrange, E4M3, "nearest_even"),
                inrange.astype(ml_dtypes.float8_e4m3fn).astype(np.float64), "e4m3")
    small = v[np.abs(v) <= 6]
    assert_bits(round_elem(small, E2M1, "nearest_even"),
                small.astype(ml_dtypes.float4_e2m1fn).astype(np.float64), "e2m1")
    assert_bits(round_elem(np.float64([500, -1e6, 465]), E4M3, "up"), [448, -448, 448], "e4m3 saturates")
    for w in np.abs(v[v != 0])[:800]:
        assert FP16.round(Fraction(float(w)) / 7) == float(np.float16(w / 7))  # w/7 exact enough (see header)
        assert FP32.round(Fraction(float(w)) / 127) == float(np.float32(w / 127))
        if w / 6 <= 448:
            assert SE4M3.round(Fraction(float(w)) / 6) == float(ml_dtypes.float8_e4m3fn(w / 6))
    assert SE4M3.round(Fraction(10**6)) == 448.0 and FP16.round(Fraction(10**6)) == 65504.0
    assert_bits(round_elem(np.float64([-0.3, 0.3, -7.6, 9, -9]), INT4, "nearest_even"), [0, 0, -8, 7, -8], "int4")


def test_reference_layout_round_trips():
    x = np.arange(3 * 7 * 13, dtype=np.float64).reshape(3, 7, 13) + 1
    for kw in [{"axis": -1, "block": 5}, {"axis": 0, "block": 2}, {"axis": 1, "block": None},
               {"axis": -1, "tile": (4, 8)}, {"axis": -2, "tile": (4, 8)}, {"axis": (0, 2), "tile": (2, 3)},
               {"axis": (2, 0), "tile": (5, 2)}]:
        lay = Layout(x.shape, kw.pop("axis"), **kw)
        b = lay.blocks(x)
        assert b.shape == (int(np.prod(lay.grid_shape)), lay.k)
        assert np.array_equal(lay.unblock(b), x)
        assert np.count_nonzero(b) == x.size
    # row-major within a tile: r rows along the row axis, c columns along the col axis
    lay = Layout((4, 6), -1, tile=(2, 3))
    b = lay.blocks(np.arange(24.0).reshape(4, 6))
    assert b[0].tolist() == [0, 1, 2, 6, 7, 8] and b[1].tolist() == [3, 4, 5, 9, 10, 11]


# --------------------------------------------------------------------------
# 1. int4_g128, int8_rowwise, fp8_e4m3_rowwise
# --------------------------------------------------------------------------

SYMMETRIC = {
    "int4_g128": (INT4, FP16, 128, TIES_INT4),
    "int8_rowwise": (INT8, FP32, None, TIES_INT8),
    "fp8_e4m3_rowwise": (E4M3, FP32, None, TIES_E4M3),
}


@pytest.mark.parametrize("name", list(SYMMETRIC))
@pytest.mark.parametrize("axis,shape", [(-1, (6, 300)), (0, (300, 5)), (1, (2, 260, 3))])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_symmetric_schemes(name, axis, shape, kind):
    elem, sfmt, block, ties = SYMMETRIC[name]
    fmt = get_format(name)
    x = data(shape, seed=len(shape) * 10 + axis % 3)
    put_pattern(x, axis, ties, 0, power=0)
    put_pattern(x, axis, ties, 1, power=-5)
    lane(x, axis, 2)[: (block or shape[axis])] = 0.0  # an all-zero first block (rowwise: an all-zero row)
    if kind == "torch":
        x = torch.from_numpy(x)
    modes = MODES if kind == "numpy" else ["nearest_even"]
    for mode in modes:
        ref = ref_blocked(x, mantissa_scale_rule(elem, sfmt, mode), axis=axis, block=block)
        check_quantize(fmt, x, ref.values, f"{name} axis={axis} {mode}", axis=axis, rounding=mode)
    enc = fmt.encode(x, axis=axis)
    ref = ref_blocked(x, mantissa_scale_rule(elem, sfmt, "nearest_even"), axis=axis, block=block)
    codes = sfmt.codes(ref.scales)
    if block is None:  # one scale per lane; its shape is not specified beyond the count
        assert_codes(to_np(enc.scales).reshape(-1), codes.reshape(-1), f"{name} scale codes")
    else:
        assert_codes(enc.scales, codes, f"{name} scale codes")
    assert_bits(enc.decode(), ref.values.astype(np.float32), f"{name} decode", x)


# --------------------------------------------------------------------------
# 2. int4_g128_asym: zero points (GPTQ)
# --------------------------------------------------------------------------


def asym_data(shape, axis, seed):
    """Groups of 128 along `axis`: random, all-zero, all-positive, all-negative,
    a tiny range (scale rounds to 0 -> smallest fp16), exact ties, one value."""
    x = data(shape, seed)
    rng = np.random.default_rng(seed + 1)
    n = shape[axis]
    lane(x, axis, 0)[:] = 0.0                                                  # all-zero groups
    lane(x, axis, 1)[:] = np.abs(lane(x, axis, 1)) + np.float32(0.25)          # all-positive groups
    lane(x, axis, 2)[:] = -np.abs(lane(x, axis, 2)) - np.float32(0.125)        # all-negative groups
    tiny = lane(x, axis, 3)
    tiny[:] = 0.0
    tiny[5] = np.float32(1e-8)                        # tiny ranges: the scale rounds to 0 -> 2**-24
    tiny[min(n - 1, 130)] = np.float32(-3e-9)
    # lo = -3, hi = 12: s = 1, z = 3; x/s = n + 1/2 rounds to even before z is added
    put_pattern(x, axis, [-3, 12, 2.5, -0.5, 1.5, 3.5, -2.5, 0.5, 11.5, -1.5], 4)
    # lo = -7.5, hi = 0 -> s = 0.5, z = 15; ties again
    put_pattern(x, axis, [-7.5, -0.25, -1.75, -3.25, -0.0, -6.75], 5)
    lane(x, axis, 6)[:] = rng.uniform(-1, 3, n).astype(np.float32)
    return x


@pytest.mark.parametrize("axis,shape", [(-1, (9, 300)), (0, (260, 8)), (1, (3, 200, 3))])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_int4_g128_asym(axis, shape, kind):
    fmt = get_format("int4_g128_asym")
    x = asym_data(shape, axis, seed=7 + len(shape))
    if kind == "torch":
        x = torch.from_numpy(x)
    modes = MODES if kind == "numpy" else ["nearest_even", "down"]
    for mode in modes:
        ref = ref_blocked(x, zero_point_rule(4, FP16, mode), axis=axis, block=128)
        check_quantize(fmt, x, ref.values, f"asym axis={axis} {mode}", axis=axis, rounding=mode)
        enc = fmt.encode(x, axis=axis, rounding=mode)
        assert_codes(zero_point_codes(enc, ref.zero_points.shape), ref.zero_points, f"asym zero points {mode}")
        assert_codes(enc.scales, FP16.codes(ref.scales), f"asym scale codes {mode}")
        assert_bits(enc.decode(), ref.values.astype(np.float32), f"asym decode {mode}", x)
    # the special groups are what the spec says
    ref = ref_blocked(x, zero_point_rule(4, FP16, "nearest_even"), axis=axis, block=128)
    zero_lane = tuple(np.unravel_index(0, ref.scales.shape[:-1]))
    assert (ref.scales[zero_lane] == 1).all() and (ref.zero_points[zero_lane] == 0).all()


def test_int4_g128_asym_tie_rounds_before_the_zero_point():
    fmt = get_format("int4_g128_asym")
    x = np.zeros(128, np.float32)
    x[:4] = [-3, 12, 2.5, -0.5]  # s = 1, z = 3: round(2.5) + 3 = 5 -> 2 (not round(5.5) = 6 -> 3)
    got = fmt.quantize(x)
    assert got[2] == 2.0 and got[3] == 0.0 and not np.signbit(got[3])
    enc = fmt.encode(x)
    assert int(zero_point_codes(enc, (1,))[0]) == 3
    assert int(to_np(enc.scales).reshape(-1)[0]) == int(np.float16(1).view(np.uint16))


def test_int4_g128_asym_nonfinite_group_decodes_to_nan():
    fmt = get_format("int4_g128_asym")
    x = data((2, 256), seed=3)
    x[0, 5] = np.nan
    x[1, 200] = np.inf
    got = fmt.quantize(x)
    assert np.isnan(got[0, :128]).all() and np.isnan(got[1, 128:]).all()
    ref0 = ref_blocked(x[0:1, 128:], zero_point_rule(4, FP16, "nearest_even"), block=128)
    ref1 = ref_blocked(x[1:2, :128], zero_point_rule(4, FP16, "nearest_even"), block=128)
    assert_bits(got[0:1, 128:], ref0.values.astype(np.float32), "finite group 0")
    assert_bits(got[1:2, :128], ref1.values.astype(np.float32), "finite group 1")


# --------------------------------------------------------------------------
# 3. tiles
# --------------------------------------------------------------------------

TILE_CASES = [
    # (format factory, elem, scale fmt, tile, shape, axis)
    ("fp8_e4m3_b128x128", E4M3, FP32, (128, 128), (130, 20), -1),
    ("fp8_e4m3_b128x128", E4M3, FP32, (128, 128), (20, 130), 0),
    ("nvfp4_16x16", E2M1, SE4M3, (16, 16), (40, 50), -1),
    ("nvfp4_16x16", E2M1, SE4M3, (16, 16), (3, 20, 18), -2),
    ("nvfp4_16x16", E2M1, SE4M3, (16, 16), (20, 18, 3), (0, 1)),
    ("tile_e4m3_4x8", E4M3, FP32, (4, 8), (10, 19), -1),
    ("tile_e4m3_4x8", E4M3, FP32, (4, 8), (10, 19), 0),
    ("tile_e4m3_4x8", E4M3, FP32, (4, 8), (10, 19), (1, 0)),
    ("tile_e4m3_4x8", E4M3, FP32, (4, 8), (3, 7, 13), -1),
    ("tile_e4m3_4x8", E4M3, FP32, (4, 8), (3, 7, 13), -2),
    ("tile_e4m3_4x8", E4M3, FP32, (4, 8), (3, 7, 13), (0, 2)),
    ("tile_e4m3_4x8", E4M3, FP32, (4, 8), (3, 7, 13), (2, 0)),
    ("tile_e2m1_2x4", E2M1, SE4M3, (2, 4), (5, 9), -1),
    ("tile_e2m1_2x4", E2M1, SE4M3, (2, 4), (4, 5, 7), (0, 2)),
]


def tile_fmt(name):
    if name == "tile_e4m3_4x8":
        return fmt_tile_e4m3()
    if name == "tile_e2m1_2x4":
        return fmt_tile_e2m1()
    return get_format(name)


@pytest.mark.parametrize("name,elem,sfmt,tile,shape,axis", TILE_CASES)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_tiles(name, elem, sfmt, tile, shape, axis, kind):
    fmt = tile_fmt(name)
    x = data(shape, seed=sum(shape))
    if kind == "torch":
        x = torch.from_numpy(x)
    modes = MODES if kind == "numpy" else ["nearest_even"]
    for mode in modes:
        ref = ref_blocked(x, mantissa_scale_rule(elem, sfmt, mode), axis=axis, tile=tile)
        check_quantize(fmt, x, ref.values, f"{name} {shape} axis={axis} {mode}", axis=axis, rounding=mode)
    enc = fmt.encode(x, axis=axis)
    ref = ref_blocked(x, mantissa_scale_rule(elem, sfmt, "nearest_even"), axis=axis, tile=tile)
    lay = Layout(shape, axis, tile=tile)
    assert tuple(to_np(enc.scales).shape) == lay.grid_shape
    assert_codes(enc.scales, sfmt.codes(ref.scales), f"{name} scale codes")
    assert_bits(enc.decode(), ref.values.astype(np.float32), f"{name} decode", x)


def test_tile_ties_and_default_axis():
    """A tile with amax 448 (scale 1) holding E4M3 ties, and default axis = tiles over (-2, -1)."""
    fmt = fmt_tile_e4m3()
    x = data((8, 16), seed=5)
    x[:4, :8] = np.float32(TIES_E4M3 * 4).reshape(4, 8)
    ref = ref_blocked(x, mantissa_scale_rule(E4M3, FP32, "nearest_even"), axis=-1, tile=(4, 8))
    assert ref.scales[0, 0] == 1.0
    check_quantize(fmt, x, ref.values, "ties")
    assert tuple(to_np(fmt.encode(x).scales).shape) == (2, 2)


# --------------------------------------------------------------------------
# 4. scale_rule="mse" and "4over6"
# --------------------------------------------------------------------------

MSE_CASES = [
    # name, factory, block fn(mode), block, tile, shape, axis
    ("nvfp4", lambda m: mantissa_scale_rule(E2M1, SE4M3, m, "mse"), 16, None, (6, 72), -1),
    ("nvfp4", lambda m: mantissa_scale_rule(E2M1, SE4M3, m, "mse"), 16, None, (40, 5), 0),
    ("int4_g128", lambda m: mantissa_scale_rule(INT4, FP16, m, "mse"), 128, None, (3, 300), -1),
    ("int8_rowwise", lambda m: mantissa_scale_rule(INT8, FP32, m, "mse"), None, None, (4, 300), -1),
    ("mxfp4", lambda m: e8m0_scale_rule(E2M1, m, "mse"), 32, None, (6, 80), -1),
    ("mxfp4", lambda m: e8m0_scale_rule(E2M1, m, "mse"), 32, None, (70, 4), 0),
    ("mxfp8_e4m3", lambda m: e8m0_scale_rule(E4M3, m, "mse"), 32, None, (4, 96), -1),
    ("int4_g128_asym", lambda m: zero_point_rule(4, FP16, m, "mse"), 128, None, (7, 260), -1),
    ("int4_g128_asym", lambda m: zero_point_rule(4, FP16, m, "mse"), 128, None, (200, 7), 0),
    ("tile_e2m1_2x4", lambda m: mantissa_scale_rule(E2M1, SE4M3, m, "mse"), None, (2, 4), (5, 9), -1),
]


def scale_fmt_of(name):
    return {"nvfp4": SE4M3, "int4_g128": FP16, "int8_rowwise": FP32, "mxfp4": E8M0, "mxfp8_e4m3": E8M0,
            "int4_g128_asym": FP16, "tile_e2m1_2x4": SE4M3, "nvfp4_16x16": SE4M3}[name]


@pytest.mark.parametrize("name,rule_fn,block,tile,shape,axis", MSE_CASES)
def test_scale_rule_mse(name, rule_fn, block, tile, shape, axis):
    fmt = tile_fmt(name)
    x = asym_data(shape, axis, seed=11) if name == "int4_g128_asym" else data(shape, seed=11)
    if name != "int4_g128_asym":
        lane(x, axis, 1)[:] = 0.0  # all-zero blocks
        if name == "int8_rowwise":  # integers and one outlier: s_1 = amax * 31/32 / 127 ~ 1 fits them
            row = lane(x, axis, 2)
            row[:] = np.random.default_rng(5).integers(-120, 121, row.shape)
            row[0] = np.float32(127 * 32 / 31)
        if name == "mxfp8_e4m3":
            # E4M3's relative grid is the same for e0 + 1 and e0 (so e0 + 1, first, is kept) unless
            # elements fall among the subnormals: amax 1 with elements near 1e-4 makes e0 win
            row = lane(x, axis, 2)
            row[:] = np.random.default_rng(6).standard_normal(row.shape) * np.float32(0.3)
            row[1::2] *= np.float32(3e-4)
            row[::32] = np.float32(1.0)
    xt = torch.from_numpy(x.copy())
    for mode in ["nearest_even", "toward_zero", "up"]:
        ref = ref_blocked(x, rule_fn(mode), axis=axis, block=block, tile=tile)
        check_quantize(fmt, x, ref.values, f"{name} mse axis={axis} {mode}", axis=axis, rounding=mode,
                       scale_rule="mse")
        if mode == "nearest_even":
            assert len(np.unique(ref.chosen)) > 1, "test data should make the search choose more than one candidate"
            check_quantize(fmt, xt, ref.values, f"{name} mse torch", axis=axis, scale_rule="mse")
        enc = fmt.encode(x, axis=axis, rounding=mode, scale_rule="mse")
        codes = scale_fmt_of(name).codes(ref.scales)
        if scale_fmt_of(name) is E8M0:  # all-zero blocks: see test_scale_rule_mse_e8m0_all_zero_block
            zero = np.array([not b.any() for b in Layout(x.shape, axis, block, tile).blocks(x)])
            zero = zero.reshape(ref.scales.shape)
            assert zero.any() and not zero.all()
            assert_codes(to_np(enc.scales)[~zero], codes[~zero], f"{name} mse scale codes")
        elif block is None and tile is None:
            assert_codes(to_np(enc.scales).reshape(-1), codes.reshape(-1), f"{name} mse scale codes")
        else:
            assert_codes(enc.scales, codes, f"{name} mse scale codes")
        if ref.zero_points is not None:
            assert_codes(zero_point_codes(enc, ref.zero_points.shape), ref.zero_points, f"{name} mse zero points")
        assert_bits(enc.decode(), ref.values.astype(np.float32), f"{name} mse decode", x)


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3"])
def test_scale_rule_mse_e8m0_all_zero_block(name):
    """An all-zero block keeps the smallest scale, 2**-127 (code 0), under
    mse as under every power-of-two rule; its elements are zeros."""
    fmt = get_format(name)
    x = np.zeros((2, 64), np.float32)
    x[1] = data((1, 64), seed=1)[0]
    elem = E2M1 if name == "mxfp4" else E4M3
    ref = ref_blocked(x, e8m0_scale_rule(elem, "nearest_even", "mse"), block=32)
    assert ref.scales[0].tolist() == [2.0**-127, 2.0**-127]
    check_quantize(fmt, x, ref.values, f"{name} mse", scale_rule="mse")
    enc = fmt.encode(x, scale_rule="mse")
    assert_codes(enc.scales, E8M0.codes(ref.scales), f"{name} mse scale codes")


@pytest.mark.parametrize("name,block,tile,shape,axis", [
    ("nvfp4", 16, None, (8, 70), -1),
    ("nvfp4", 16, None, (50, 6), 0),
    ("nvfp4_16x16", None, (16, 16), (40, 36), -1),
    ("nvfp4_16x16", None, (16, 16), (20, 3, 17), (0, 2)),
    ("tile_e2m1_2x4", None, (2, 4), (9, 13), -2),
])
def test_scale_rule_4over6(name, block, tile, shape, axis):
    fmt = tile_fmt(name)
    x = data(shape, seed=21)
    for g, pattern in [(1, TIES_E2M1),  # amax 6: s6 = 1, s4 = 1.5
                       (2, [4, 1, -2, 3, -4, 0.5, 2, -1]),  # fits the grid of s4 = 1 exactly
                       (3, [6, 0, 3, -1.5, 0, 0, 0, 0])]:  # error 0 with s6 = 1 and s4 = 1.5: s6 kept
        region = block_region(x, axis, block, tile, g)
        region[...] = np.resize(np.float32(pattern), region.shape)
    xt = torch.from_numpy(x.copy())
    for mode in ["nearest_even", "toward_zero", "down"]:
        ref = ref_blocked(x, mantissa_scale_rule(E2M1, SE4M3, mode, "4over6"), axis=axis, block=block, tile=tile)
        check_quantize(fmt, x, ref.values, f"{name} 4over6 {mode}", axis=axis, rounding=mode,
                       scale_rule="4over6")
        enc = fmt.encode(x, axis=axis, rounding=mode, scale_rule="4over6")
        assert_codes(enc.scales, SE4M3.codes(ref.scales), f"{name} 4over6 scale codes")
        assert_bits(enc.decode(), ref.values.astype(np.float32), f"{name} 4over6 decode", x)
    assert set(np.unique(ref.chosen)) == {0, 1}, "test data should exercise both s6 and s4"
    assert ref.scales.reshape(-1)[3] == 1.0
    check_quantize(fmt, xt, ref_blocked(x, mantissa_scale_rule(E2M1, SE4M3, "down", "4over6"), axis=axis,
                                        block=block, tile=tile).values,
                   f"{name} 4over6 torch", axis=axis, rounding="down", scale_rule="4over6")
    # the default rule is still plain amax/6
    ref = ref_blocked(x, mantissa_scale_rule(E2M1, SE4M3, "nearest_even"), axis=axis, block=block, tile=tile)
    check_quantize(fmt, x, ref.values, f"{name} amax", axis=axis)


# --------------------------------------------------------------------------
# 5. double quantization
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis", [((40, 512), -1), ((300, 7), 0), ((3, 200), -1), ((2, 130, 5), 1)])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_double_quant(shape, axis, kind):
    fmt = fmt_dq()
    rng = np.random.default_rng(31)
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 4, size=shape[:-1] + (1,))).astype(np.float32)
    if kind == "torch":
        x = torch.from_numpy(x)
    ref = ref_double_quant(x, axis)
    check_quantize(fmt, x, ref["values"], f"dq {shape} axis={axis}", axis=axis)
    enc = fmt.encode(x, axis=axis)
    off = np.float32(to_np(enc.scale_offset))
    assert off.view(np.uint32) == ref["offset"].view(np.uint32), (float(off), float(ref["offset"]))
    lvl2 = enc.scales
    assert not isinstance(lvl2, (np.ndarray, torch.Tensor)), "Encoded.scales is an Encoded of double_quant"
    assert_bits(lvl2.decode(), ref["dec2"], "second level decode")
    assert_codes(to_np(lvl2.scales).reshape(-1), FP32.codes(ref["lvl2"].scales).reshape(-1), "second-level scales")
    assert_bits(enc.decode(), ref["values"].astype(np.float32), "dq decode", x)


def test_double_quant_encodes_the_exact_difference_of_scale_and_offset():
    """The second level encodes each scale less the offset exactly, even
    where float64 cannot hold that difference. nf4_dq's block scales are
    the blocks' amaxes, here 457.5, 2**-60 and 100 of c:
    offset = (457.5 + 2**-60 + 100 c) / 102 rounds to 9.5, the second level's
    amax is 457.5 - 9.5 = 448, so its fp32 scale is 1. 2**-60 - 9.5 lies
    just inside the e4m3 tie between -9 and -10 (step 1 in [8, 16)), so it
    rounds to -9 and that block's scale decodes to -9 + 9.5 = 0.5; its
    element x / 2**-60 = 1 is NF4's 1.0, so it quantizes to +0.5. float64
    rounds 2**-60 - 9.5 to the tie -9.5, whose even neighbour -10 gives
    -0.5."""
    fmt = get_format("nf4_dq")
    c = np.float32((9.5 * 102 - 457.5) / 100)
    x = np.zeros((102, 64), np.float32)
    x[0, 0], x[1, 0], x[2:, 0] = 457.5, 2.0 ** -60, c
    encoded = fmt.encode(x)
    assert encoded.scale_offset == 9.5
    assert float(np.float64(2.0 ** -60) - 9.5) == -9.5  # what a float64 difference would encode
    for got in (fmt.quantize(x), fmt.decode(encoded), fmt.quantize(x, backend="reference")):
        assert got[1, 0] == 0.5 and got[0, 0] == 457.5


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=8),
       st.floats(width=32, allow_nan=False, allow_infinity=False))
@example([2.0 ** -60, 2.0 ** -60 + 2.0 ** -83, -(2.0 ** -149)], 9.5)  # inexact: odd below, odd above, tiny
@example([3.0e38, 1.0], -(2.0 ** -149))
def test_difference_rounded_to_odd(values, subtrahend):
    """The float64 nearest the exact difference where they are equal, else
    whichever float64 neighbour of the exact difference has an odd last bit."""
    from lowbit.formats.arrays import difference_rounded_to_odd

    got = difference_rounded_to_odd(torch.tensor(values, dtype=torch.float64), subtrahend).tolist()
    for v, g in zip(values, got):
        exact = Fraction(v) - Fraction(subtrahend)
        nearest = float(exact)
        if Fraction(nearest) == exact:
            assert g == nearest, (v, subtrahend, g)
            continue
        other = float(np.nextafter(nearest, np.inf if exact > Fraction(nearest) else -np.inf))
        odd = nearest if np.float64(nearest).view(np.int64) & 1 else other
        assert g == odd, (v, subtrahend, g, nearest, other)


def fsum_mean_float32(values) -> np.float32:
    """The double-quantization offset as written in the spec: float32(fsum / n) of the finite values."""
    finite = [float(v) for v in values if math.isfinite(v)]
    return np.float32(math.fsum(finite) / len(finite)) if finite else np.float32(0.0)


MEAN_CASES = [
    [1.0, 1.0 + 2.0 ** -23],  # the mean is a float32 midpoint: no bound decides it
    [1e30, 1.0, -1e30],  # cancellation: the float64 sum is 0, the exact one 1
    [3.0e38, 3.0e38, -3.0e38, np.nan, np.inf],  # the finite ones only
    [2.0 ** -149, 2.0 ** -149, 0.0],  # subnormal
    [],
    [np.nan],
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(width=32), max_size=40) | st.sampled_from(MEAN_CASES))
def test_double_quant_offset_is_the_float32_of_the_exactly_summed_mean(values):
    """finite_mean_float32 (the offset the second level subtracts) is
    float32(math.fsum(finite) / n), whether its float64 sum's bound decides
    it or math.fsum must (midpoints, cancellation)."""
    from lowbit.formats.arrays import finite_mean_float32

    got = finite_mean_float32(torch.tensor(values, dtype=torch.float64))
    assert np.float32(got).view(np.uint32) == fsum_mean_float32(values).view(np.uint32), (values, got)


def test_double_quant_offset_takes_math_fsum_only_where_the_bound_cannot_decide(monkeypatch):
    from lowbit.formats import arrays

    calls, fsum = [], math.fsum
    expected = [fsum_mean_float32(case) for case in MEAN_CASES[:2]]
    monkeypatch.setattr(arrays.math, "fsum", lambda v: (calls.append(1), fsum(v))[1])
    rng = np.random.default_rng(4)
    arrays.finite_mean_float32(torch.from_numpy(np.abs(rng.standard_normal(100_000))))
    assert not calls
    for case, mean in zip(MEAN_CASES[:2], expected):
        assert arrays.finite_mean_float32(torch.tensor(case, dtype=torch.float64)) == mean
    assert len(calls) == 2


# --------------------------------------------------------------------------
# 6. properties
# --------------------------------------------------------------------------

magnitudes = st.floats(min_value=2.0**-12, max_value=2.0**10, width=32)
values = st.one_of(
    st.just(0.0),
    magnitudes,
    magnitudes.map(lambda v: -v),
    st.integers(-24, 24).map(lambda i: i / 2),  # ties on coarse grids
)


@st.composite
def arrays(draw, max_rows=4, max_cols=70):
    """float32 arrays of 2 or 3 dims (at most 3 x max_rows x max_cols, in any
    order): numpy-generated from a drawn seed (normal values over 2**-8..2**8,
    half-integers for ties, zeros, in drawn proportions, magnitudes kept in
    2**-12..2**10), plus a few values drawn by hypothesis."""
    dims = [draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))]
    if draw(st.booleans()):
        dims = [draw(st.integers(1, 3))] + dims
    perm = draw(st.permutations(range(len(dims))))
    shape = tuple(dims[p] for p in perm)
    n = int(np.prod(shape))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p_zero = draw(st.sampled_from([0.0, 0.1, 0.5]))
    p_half = draw(st.sampled_from([0.0, 0.2, 0.7]))
    normal = rng.standard_normal(n) * np.exp2(rng.integers(-8, 9, n))
    half = rng.integers(-24, 25, n) / 2
    u = rng.random(n)
    x = np.where(u < p_zero, 0.0, np.where(u < p_zero + p_half, half, normal))
    x = np.clip(x, -(2.0**10), 2.0**10)
    x = np.where((np.abs(x) < 2.0**-12) & (x != 0), np.copysign(2.0**-12, x), x)
    for i, v in draw(st.lists(st.tuples(st.integers(0, n - 1), values), max_size=6)):
        x[i] = v
    return x.astype(np.float32).reshape(shape)


def blocked_axis(draw, x, tiled):
    nd = x.ndim
    if not tiled:
        return draw(st.integers(-nd, nd - 1))
    return draw(st.one_of(st.sampled_from([-1, -2]),
                          st.permutations(range(nd)).map(lambda p: (p[0], p[1]))))


# (label, format factory, scale_rule, tiled)
POW2_SCHEMES = [
    ("mxfp4", lambda: get_format("mxfp4"), None, False),
    ("mxfp4 mse", lambda: get_format("mxfp4"), "mse", False),
    ("mxfp8_e4m3 mse", lambda: get_format("mxfp8_e4m3"), "mse", False),
    ("int8_rowwise", lambda: get_format("int8_rowwise"), None, False),
    ("int8_rowwise mse", lambda: get_format("int8_rowwise"), "mse", False),
    ("fp8_e4m3_rowwise", lambda: get_format("fp8_e4m3_rowwise"), None, False),
    ("tile e4m3 fp32 4x8", fmt_tile_e4m3, None, True),
    ("tile e4m3 fp32 4x8 mse", fmt_tile_e4m3, "mse", True),
    ("double quant", fmt_dq, None, False),
]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_power_of_two_input_scaling_scales_e8m0_and_fp32_scaled_outputs(d):
    label, factory, rule, tiled = d.draw(st.sampled_from(POW2_SCHEMES))
    x = d.draw(arrays())
    axis = blocked_axis(d.draw, x, tiled)
    k = d.draw(st.integers(-8, 8))
    mode = d.draw(st.sampled_from(MODES))
    fmt = factory()
    kw = {"axis": axis, "rounding": mode} | ({"scale_rule": rule} if rule else {})
    q = fmt.quantize(x, **kw)
    q2 = fmt.quantize(x * np.float32(2.0**k), **kw)
    assert_bits(q2, q.astype(np.float64) * 2.0**k, f"{label} k={k} axis={axis} {mode}", x)


# Idempotent (nearest_even): int4_g128 (amax' = 7 s exactly, so s' = s), MX
# floor (the scale's binade survives), NVFP4 amax and 4over6 with normal
# E4M3 scales (amax/s rounds to 6, or to 4 for s4, so the chosen scale is
# found again with error 0), and the fp32-scaled rowwise and tile formats
# when their outputs are float64 (127 s and 448 s exact).
# Not asserted:
# - fp32-scaled formats with float32 outputs: 127 s (448 s) is rounded to
#   float32, and fp32(fl32(127 s) / 127) != s for some s;
# - directed rounding (amax may round down: 6.9 -> 6 changes int4's scale);
# - "mse": the candidates are recomputed from the new amax and need not
#   include the scale chosen before;
# - zero points (int4_g128_asym): the range [lo, hi] of the result need not
#   span 15 s nor give the same z;
# - double quantization: values use s' = decoded scale, not s, so the
#   second pass sees another amax.
IDEMPOTENT = [
    ("int4_g128", lambda: get_format("int4_g128"), None, False, np.float32),
    ("int4 g16 fp16", lambda: BlockFormat(IntFormat(4), 16, scale=get_format("fp16")), None, False, np.float32),
    ("mxfp4", lambda: get_format("mxfp4"), None, False, np.float32),
    ("mxfp8_e4m3", lambda: get_format("mxfp8_e4m3"), None, False, np.float32),
    ("nvfp4", lambda: get_format("nvfp4"), None, False, np.float32),
    ("nvfp4 4over6", lambda: get_format("nvfp4"), "4over6", False, np.float32),
    ("nvfp4_16x16", lambda: get_format("nvfp4_16x16"), None, True, np.float32),
    ("nvfp4_16x16 4over6", lambda: get_format("nvfp4_16x16"), "4over6", True, np.float32),
    ("tile e2m1 2x4 4over6", fmt_tile_e2m1, "4over6", True, np.float32),
    ("int8_rowwise (float64)", lambda: get_format("int8_rowwise"), None, False, np.float64),
    ("fp8_e4m3_rowwise (float64)", lambda: get_format("fp8_e4m3_rowwise"), None, False, np.float64),
    ("tile e4m3 fp32 (float64)", fmt_tile_e4m3, None, True, np.float64),
]

# NVFP4 idempotence needs normal E4M3 scales: block amax >= 6 * 2**-6 unless the block is all zero
big_values = st.one_of(st.just(0.0), st.floats(min_value=0.125, max_value=2.0**10, width=32),
                       st.floats(min_value=-(2.0**10), max_value=-0.125, width=32),
                       st.integers(-24, 24).map(lambda i: i / 2))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_symmetric_schemes_are_idempotent(d):
    label, factory, rule, tiled, dtype = d.draw(st.sampled_from(IDEMPOTENT))
    x = d.draw(arrays())
    if "nvfp4" in label or "e2m1" in label:
        x = np.where((np.abs(x) < 0.125) & (x != 0), np.float32(0.125), x)
    x = x.astype(dtype)
    axis = blocked_axis(d.draw, x, tiled)
    fmt = factory()
    kw = {"axis": axis} | ({"scale_rule": rule} if rule else {})
    q = fmt.quantize(x, **kw)
    assert q.dtype == dtype
    assert_bits(fmt.quantize(q, **kw), q, f"{label} axis={axis}", x)


ALL_SCHEMES = [
    ("int4_g128", lambda: get_format("int4_g128"), None, False),
    ("int4_g128 mse", lambda: get_format("int4_g128"), "mse", False),
    ("int4_g128_asym", lambda: get_format("int4_g128_asym"), None, False),
    ("int4_g128_asym mse", lambda: get_format("int4_g128_asym"), "mse", False),
    ("asym g8", lambda: BlockFormat(IntFormat(4, signed=False), 8, scale=get_format("fp16"), zero_point=True),
     None, False),
    ("int8_rowwise", lambda: get_format("int8_rowwise"), None, False),
    ("fp8_e4m3_rowwise", lambda: get_format("fp8_e4m3_rowwise"), None, False),
    ("fp8_e4m3_b128x128", lambda: get_format("fp8_e4m3_b128x128"), None, True),
    ("nvfp4_16x16", lambda: get_format("nvfp4_16x16"), None, True),
    ("nvfp4_16x16 4over6", lambda: get_format("nvfp4_16x16"), "4over6", True),
    ("nvfp4 4over6", lambda: get_format("nvfp4"), "4over6", False),
    ("nvfp4 mse", lambda: get_format("nvfp4"), "mse", False),
    ("mxfp4 mse", lambda: get_format("mxfp4"), "mse", False),
    ("tile e4m3 fp32 4x8", fmt_tile_e4m3, None, True),
    ("tile e2m1 2x4 mse", fmt_tile_e2m1, "mse", True),
    ("double quant", fmt_dq, None, False),
]


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_decode_of_encode_is_quantize(d):
    label, factory, rule, tiled = d.draw(st.sampled_from(ALL_SCHEMES))
    x = d.draw(arrays())
    axis = blocked_axis(d.draw, x, tiled)
    mode = d.draw(st.sampled_from(MODES))
    as_torch = d.draw(st.booleans())
    xin = torch.from_numpy(x) if as_torch else x
    fmt = factory()
    kw = {"axis": axis, "rounding": mode} | ({"scale_rule": rule} if rule else {})
    q = fmt.quantize(xin, **kw)
    assert_bits(fmt.encode(xin, **kw).decode(), to_np(q), f"{label} axis={axis} {mode}", x)


TILED = [
    ("tile e4m3 fp32 4x8", fmt_tile_e4m3, None, (4, 8)),
    ("tile e4m3 fp32 4x8 mse", fmt_tile_e4m3, "mse", (4, 8)),
    ("tile e2m1 2x4", fmt_tile_e2m1, None, (2, 4)),
    ("tile e2m1 2x4 4over6", fmt_tile_e2m1, "4over6", (2, 4)),
    ("nvfp4_16x16", lambda: get_format("nvfp4_16x16"), None, (16, 16)),
    ("nvfp4_16x16 4over6", lambda: get_format("nvfp4_16x16"), "4over6", (16, 16)),
]


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_tile_padding_independence(d):
    label, factory, rule, (r, c) = d.draw(st.sampled_from(TILED))
    x = d.draw(arrays(max_rows=20, max_cols=20))
    axis = blocked_axis(d.draw, x, True)
    mode = d.draw(st.sampled_from(MODES))
    lay = Layout(x.shape, axis, tile=(r, c))
    ra, ca = lay.perm[-2], lay.perm[-1]
    pad = [(0, 0)] * x.ndim
    pad[ra] = (0, lay.nR * r - lay.R)
    pad[ca] = (0, lay.nC * c - lay.C)
    xp = np.pad(x, pad)
    fmt = factory()
    kw = {"axis": axis, "rounding": mode} | ({"scale_rule": rule} if rule else {})
    q = fmt.quantize(x, **kw)
    qp = fmt.quantize(xp, **kw)
    crop = tuple(slice(0, n) for n in x.shape)
    assert_bits(q, qp[crop], f"{label} axis={axis} {mode}", x)


# --------------------------------------------------------------------------
# 7. bits and nbytes
# --------------------------------------------------------------------------


def test_bits():
    assert get_format("int4_g128").bits == 4 + 16 / 128
    assert get_format("int4_g128_asym").bits == 4 + (16 + 4) / 128
    assert get_format("int8_rowwise").bits == 8
    assert get_format("fp8_e4m3_rowwise").bits == 8
    assert get_format("fp8_e4m3_b128x128").bits == 8 + 32 / (128 * 128)
    assert get_format("nvfp4_16x16").bits == 4 + 8 / 256
    assert fmt_tile_e4m3().bits == 8 + 32 / 32
    dq = fmt_dq()
    assert dq.double_quant.bits == 8 + 32 / 256
    assert dq.bits == 8 + (8 + 32 / 256) / 64


def test_nbytes():
    x = data((4, 256), seed=1)
    # int4 x 128 + fp16 scale: 8 groups x (64 B + 2 B)
    assert get_format("int4_g128").encode(x).nbytes == 8 * (64 + 2)
    # partial groups are stored padded, as for MX: (4, 200) -> 8 groups
    assert get_format("int4_g128").encode(x[:, :200]).nbytes == 8 * (64 + 2)
    y = data((5, 70), seed=2)
    enc = get_format("int8_rowwise").encode(y)
    assert enc.nbytes == 5 * 70 + 5 * 4
    assert enc.bits == 8 + 32 / 70
    enc = get_format("fp8_e4m3_rowwise").encode(y, axis=0)
    assert enc.nbytes == 5 * 70 + 70 * 4
    assert enc.bits == 8 + 32 / 5
    z = data((32, 48), seed=3)
    assert get_format("nvfp4_16x16").encode(z).nbytes == 32 * 48 // 2 + 6
    assert fmt_tile_e4m3().encode(z).nbytes == 32 * 48 + 48 * 4
    w = data((128, 256), seed=4)
    assert get_format("fp8_e4m3_b128x128").encode(w).nbytes == 128 * 256 + 2 * 4
    # double quantization: elements + the second level's own bytes + the float32 offset
    enc = fmt_dq().encode(x)
    assert enc.scales.nbytes == 256 * 1 + 4  # 16 scales in one (padded) fp8 block of 256, fp32 scale
    assert enc.nbytes == 4 * 256 + enc.scales.nbytes + 4


def test_nbytes_zero_points():
    """Zero points are b-bit codes (fmt.bits counts 4 bits per group): eight
    4-bit zero points take 4 bytes, and Encoded.bits agrees with fmt.bits."""
    fmt = get_format("int4_g128_asym")
    x = data((4, 256), seed=1)
    enc = fmt.encode(x)
    assert enc.nbytes == 8 * (64 + 2) + 4
    assert enc.bits == fmt.bits
    assert fmt.encode(x[:, :200]).nbytes == 8 * (64 + 2) + 4
