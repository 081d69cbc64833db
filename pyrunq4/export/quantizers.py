"""Better-than-RTN int4 quantizers for the Q4S and Q4A formats (docs/FORMAT.md).

Every method returns a QuantizedTensor of weight_type "q4s": q in [-8, 7], one
fp16 scale per group of `group_size` consecutive values of a row (the last
group of a row shorter), w ~= d * q; or "q4a": q in [0, 15], an fp16 scale and
an fp16 minimum per group, w ~= d * q + m (mse: search_affine; gptq: the same
search for its groups, each column rounded to d * q + m). Only how q, d (and
m) are chosen changes, so the files are read by the same engine.

    rtn   quant.quantize_rtn: d = max|w| / 7, q = round(w / d)  (baseline)
    mse   per group, search d over clipping ratios of max|w| and over both
          signs of d (so that the largest-magnitude value may map to -8, the
          int4 code RTN never uses), minimising the group's squared error,
          optionally weighted by a per-column importance (diag of the Hessian);
          then one least-squares refinement of d. Data-free.
    gptq  Frantar et al. 2022: inputs X of each linear collected by running
          calibration tokens through the already-quantized earlier layers
          (pyrunq4.reference, float32), H = 2 X^T X, dampening, Cholesky of
          H^-1, column blocks of 128 with error compensation; group scales by
          the mse search, taken when the group's first column is reached
          (or, with act_order, up front from the original weights: "static
          groups", so groups stay contiguous in the file's column order).
    awq   (experimental, not a --method: it measured worse than mse on
          SmolLM2-135M, docs/QUALITY.md) activation-aware scaling (Lin et al. 2023): per input channel
          s = mean|x|^alpha, W * s quantized with mse, 1/s folded into the
          preceding RMSNorm weight (wq/wk/wv, w1/w3) or the preceding linear's
          rows (w3 rows for w2; wv rows for wo when n_kv_heads == n_heads);
          alpha searched per block on the block output error.

quantize_model() drives a whole model layer by layer (methods.py wires it into
the exporter's command line); the per-matrix functions quantize_mse() and
quantize_gptq() are usable alone.
"""

from __future__ import annotations

import time

import numpy as np

from .. import reference as R
from ..progress import progress_bar
from . import gptq
from .format import FFN_ROTATION_ENTRIES, FFN_ROTATION_NONE
from .quant import Q4T_LEVELS, QuantizedTensor, _apply, _group_reduce, dequantize, quantize_rtn

__all__ = [
    "METHODS",
    "EXPERIMENTAL",
    "DEFAULT_RATIOS",
    "quantize",
    "quantize_mse",
    "WEIGHT_TYPES",
    "search_scales",
    "search_affine",
    "search_params",
    "quantize_with_scales",
    "quantize_gptq",
    "hessian_accumulator",
    "quantize_model",
    "calibration_sequences",
]

METHODS = ("rtn", "mse", "gptq")          # the exporter's --method choices
EXPERIMENTAL = ("awq",)                    # quantize_model() only: measured worse than mse (docs/QUALITY.md)

# Clipping ratios of max|w| tried by the mse search (for each sign of d).
DEFAULT_RATIOS = tuple(np.round(np.linspace(0.70, 1.0, 13), 4))

QMIN, QMAX = -8, 7
QA_MAX = 15                                # q4a levels: 0 .. QA_MAX
WEIGHT_TYPES = ("q4s", "q4a", "q4t")       # the int4 types the quantizers write (--weight-type)
Q4T_TOP = 127                              # a fitted q4t table's largest |level| (int8)
Q4T_FIT_VALUES = 1 << 16                   # values a q4t table is fitted on, at most (a fixed sample)
Q4T_FIT_ITERS = 30                         # Lloyd-Max iterations of the table fit
# Steps of the q4a search: scales (15 + step) / (max - min), as llama.cpp's make_qkx2_quants.
AFFINE_STEPS = tuple(np.round(np.linspace(-1.0, 1.0, 11), 4))
_ROW_CHUNK_ELEMS = 1 << 18  # rows processed together by the mse search: ~1 MB of float32, its passes stay in cache


def _group_bounds(cols, group_size):
    """[(c0, c1), ...] of the groups of a row: gs wide, the last one shorter."""
    return [(c0, min(c0 + group_size, cols)) for c0 in range(0, cols, group_size)]


def _check(w, group_size):
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {w.shape}")
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weight matrix contains NaN or Inf")
    return w


def _to_fp16_scale(d):
    """Scales rounded to fp16 (what the file stores), as float32; overflow is an error."""
    with np.errstate(over="ignore"):  # overflow is reported below, as an error
        d16 = np.asarray(d, dtype=np.float32).astype(np.float16)
    if not np.all(np.isfinite(d16)):
        raise ValueError("a group scale overflows fp16 (|w| > ~4.6e5)")
    return d16


def _table_mids(table):
    """float32 levels of a q4t table and the midpoints between neighbours (nearest-level rounding)."""
    t = np.asarray(table, np.int8).astype(np.float32)
    return t, (t[:-1] + t[1:]) / np.float32(2)


def _quantize_table(w, d, table):
    """q4t indices for w (..., g) and float32 d (...,): the nearest level of w / d in the
    (increasing) table; where d == 0 the level nearest 0. Through a lookup table over
    half-integer buckets: the levels are integers, so every midpoint between two is a
    bucket boundary and a whole bucket has one nearest level (a value exactly on a
    midpoint, equally far from both, takes the upper one); |w / d| past the buckets'
    256 takes an end level, as it would."""
    t, mids = _table_mids(table)
    lut = np.searchsorted(mids, (np.arange(-512, 512) + 0.5) / 2).astype(np.uint8)
    safe = np.where(d == 0, np.float32(1), d)[..., None]
    k = np.floor(w / safe * np.float32(2))
    np.clip(k, -512, 511, out=k)
    q = lut[k.astype(np.intp) + 512]
    q[d == 0] = np.argmin(np.abs(t))
    return q


def _quantize_values(w, d, m=None):
    """Levels for w (..., g) and float32 d (...,): q = clip(round(w / d), -8, 7), or with
    mins m (q4a) q = clip(round((w - m) / d), 0, 15); q = 0 where d == 0."""
    safe = np.where(d == 0, np.float32(1), d)[..., None]
    if m is None:
        q = np.clip(np.rint(w / safe), QMIN, QMAX)
    else:
        q = np.clip(np.rint((w - m[..., None]) / safe), 0, QA_MAX)
    q[d == 0] = 0
    return q


# ---------------------------------------------------------------------------
# mse: per-group scale search
# ---------------------------------------------------------------------------

def _search_block(wg, imp, ratios, refine):
    """Best fp16 scales for groups wg (rows, n, g) with importance imp (n, g) or None.
    Returns d (rows, n) float16."""
    amax = np.abs(wg).max(axis=-1)                                   # (rows, n)
    idx = np.abs(wg).argmax(axis=-1)
    sgn = np.sign(np.take_along_axis(wg, idx[..., None], axis=-1)[..., 0])
    sgn[sgn == 0] = 1
    best_d = np.zeros(amax.shape, np.float16)
    best_e = np.full(amax.shape, np.inf, np.float32)
    r = np.empty_like(wg)

    def consider(d16):
        nonlocal best_d, best_e
        # the residual of _quantize_values' levels, in one buffer (no temporaries);
        # where d == 0 it is w whatever the levels, so they are not zeroed
        d = d16.astype(np.float32)[..., None]
        np.divide(wg, np.where(d == 0, np.float32(1), d), out=r)
        np.rint(r, out=r)
        np.clip(r, QMIN, QMAX, out=r)
        np.multiply(r, d, out=r)
        np.subtract(wg, r, out=r)
        np.multiply(r, r, out=r)
        if imp is not None:
            np.multiply(r, imp, out=r)
        e = r.sum(axis=-1)
        better = e < best_e
        best_e = np.where(better, e, best_e)
        best_d = np.where(better, d16, best_d)

    for ratio in ratios:
        # extreme value -> +7 (RTN's side) or -> -8 (the code RTN never uses)
        consider(_to_fp16_scale(sgn * amax * (ratio / 7.0)))
        consider(_to_fp16_scale(-sgn * amax * (ratio / 8.0)))
    for _ in range(refine):
        # least-squares d for the chosen integers: d = sum(i w q) / sum(i q^2)
        d = best_d.astype(np.float32)
        q = _quantize_values(wg, d)
        iq = q if imp is None else q * imp
        den = (iq * q).sum(axis=-1)
        num = (iq * wg).sum(axis=-1)
        d_ls = np.where(den > 0, num / np.where(den > 0, den, 1), d)
        consider(_to_fp16_scale(d_ls))
    return best_d


def _search_groups(w, group_size, imp, search_block, nout):
    """search_block(wg (rows, n, g), imp (n, g) or None) -> nout arrays (rows, n) float16,
    applied to every group of w in row chunks; returns the nout arrays (rows, ngroups)."""
    w = _check(w, group_size)
    rows, cols = w.shape
    if imp is not None:
        imp = np.asarray(imp, dtype=np.float32).reshape(-1)
        if imp.shape[0] != cols:
            raise ValueError(f"importance has {imp.shape[0]} values for {cols} columns")
    bounds = _group_bounds(cols, group_size)
    out = [np.zeros((rows, len(bounds)), np.float16) for _ in range(nout)]
    nfull = cols // group_size
    step = max(1, _ROW_CHUNK_ELEMS // max(cols, 1))
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        parts = []
        if nfull:
            wg = w[r0:r1, :nfull * group_size].reshape(r1 - r0, nfull, group_size)
            ig = None if imp is None else imp[:nfull * group_size].reshape(nfull, group_size)
            parts.append((slice(0, nfull), search_block(wg, ig)))
        if nfull < len(bounds):  # the shorter last group
            c0 = nfull * group_size
            ig = None if imp is None else imp[None, c0:]
            parts.append((slice(nfull, None), search_block(w[r0:r1, None, c0:], ig)))
        for sl, got in parts:
            for o, a in zip(out, got):
                o[r0:r1, sl] = a
    return out


def search_scales(w, group_size, imp=None, ratios=DEFAULT_RATIOS, refine=1):
    """fp16 scales (rows, ngroups) minimising each group's (importance-weighted)
    squared error over clipping ratios of max|w| and both signs of d.
    imp: optional (cols,) non-negative column importance (e.g. diag of H)."""
    return _search_groups(w, group_size, imp,
                          lambda wg, ig: (_search_block(wg, ig, ratios, refine),), 1)[0]


def _fit_affine(wg, imp):
    """fit(q, d_old, m_old) -> least-squares (d, m) of sum imp * (d q + m - w)^2 for the
    levels q of the groups wg (rows, n, g), per group (float32 products summed in
    float64); where the 2x2 system is singular (fewer than two distinct levels with
    weight) the old values are kept. The sums that do not depend on q are made once."""
    wx = wg if imp is None else wg * imp
    s0 = np.float64(wg.shape[-1]) if imp is None else imp.sum(-1, dtype=np.float64)
    t0 = wx.sum(-1, dtype=np.float64)

    def fit(q, d_old, m_old):
        wq = q if imp is None else q * imp
        s1 = wq.sum(-1, dtype=np.float64)
        s2 = (wq * q).sum(-1, dtype=np.float64)
        t1 = (wx * q).sum(-1, dtype=np.float64)
        det = s0 * s2 - s1 * s1
        ok = det > 1e-9 * np.maximum(s0 * s2, 1e-300)
        det = np.where(ok, det, 1.0)
        return np.where(ok, (s0 * t1 - s1 * t0) / det, d_old), np.where(ok, (s2 * t0 - s1 * t1) / det, m_old)
    return fit


def _search_block_affine(wg, imp, steps, refine):
    """Best fp16 (d, m) of q4a groups wg (rows, n, g), importance imp (n, g) or None:
    RTN's d = (max - min) / 15, m = min, then candidate level assignments from the
    scales (15 + step) / (max - min) anchored at the group's min and at its max, each
    followed by a least-squares refit of d and m; the best refit is refined `refine`
    more times (requantize, refit). Error measured with the fp16 values stored."""
    lo, hi = wg.min(axis=-1), wg.max(axis=-1)
    span = hi - lo
    best_d = _to_fp16_scale(span / QA_MAX)
    best_m = _to_fp16_scale(lo)
    best_e = np.full(lo.shape, np.inf, np.float32)

    def consider(d, m):
        nonlocal best_d, best_m, best_e
        with np.errstate(over="ignore", invalid="ignore"):
            d16, m16 = np.asarray(d, np.float32).astype(np.float16), np.asarray(m, np.float32).astype(np.float16)
        valid = np.isfinite(d16) & np.isfinite(m16) & (d16 >= 0)
        d16 = np.where(valid, d16, best_d)
        m16 = np.where(valid, m16, best_m)
        d32, m32 = d16.astype(np.float32), m16.astype(np.float32)
        r = wg - (_quantize_values(wg, d32, m32) * d32[..., None] + m32[..., None])
        r *= r
        if imp is not None:
            r *= imp
        e = r.sum(axis=-1)
        better = valid & (e < best_e)
        best_e = np.where(better, e, best_e)
        best_d = np.where(better, d16, best_d)
        best_m = np.where(better, m16, best_m)

    consider(best_d, best_m)
    fit = _fit_affine(wg, imp)
    safe = np.where(span > 0, span, np.float32(1))[..., None]
    for step in steps:
        iscale = np.float32(QA_MAX + step) / safe
        for q in (np.clip(np.rint((wg - lo[..., None]) * iscale), 0, QA_MAX),
                  np.clip(QA_MAX - np.rint((hi[..., None] - wg) * iscale), 0, QA_MAX)):
            consider(*fit(q, best_d.astype(np.float32), best_m.astype(np.float32)))
    for _ in range(refine):
        d32, m32 = best_d.astype(np.float32), best_m.astype(np.float32)
        consider(*fit(_quantize_values(wg, d32, m32), d32, m32))
    return best_d, best_m


def search_affine(w, group_size, imp=None, steps=AFFINE_STEPS, refine=2):
    """fp16 (d, m), each (rows, ngroups), of q4a groups w ~ d * q + m, q in [0, 15],
    minimising each group's (importance-weighted) squared error (see
    _search_block_affine). imp: optional (cols,) non-negative column importance."""
    return tuple(_search_groups(w, group_size, imp,
                                lambda wg, ig: _search_block_affine(wg, ig, steps, refine), 2))


def fit_table(w, group_size, imp=None):
    """The q4t table of w (rows, cols): Lloyd-Max (weighted k-means in one dimension)
    with 16 levels over the group-normalised values w / max|w of its group| in
    [-1, 1], each weighted by its column's importance imp (cols,) when given (the
    Hessian diagonal for gptq); at most Q4T_FIT_VALUES values, a fixed random
    sample. The levels, scaled so the largest |level| is Q4T_TOP, rounded to int8
    and made strictly increasing: (16,) int8."""
    w = _check(w, group_size)
    rows, cols = w.shape
    amax = _group_reduce(np.abs(w), group_size, np.max)
    u = _apply(np.divide, w, np.where(amax > 0, amax, np.float32(1)), group_size, np.empty_like(w)).reshape(-1)
    wt = None if imp is None else np.broadcast_to(np.asarray(imp, np.float32).reshape(1, cols), w.shape).reshape(-1)
    if u.size > Q4T_FIT_VALUES:
        pick = np.random.default_rng(0).choice(u.size, Q4T_FIT_VALUES, replace=False)
        u, wt = u[pick], None if wt is None else wt[pick]
    u = u.astype(np.float64)
    wt = np.ones_like(u) if wt is None else np.maximum(wt.astype(np.float64), 0) + 1e-12
    n = Q4T_LEVELS
    levels = np.quantile(u, (np.arange(n) + 0.5) / n)
    for _ in range(Q4T_FIT_ITERS):
        k = np.searchsorted((levels[:-1] + levels[1:]) / 2, u)
        mass = np.bincount(k, wt, n)
        new = np.where(mass > 0, np.bincount(k, wt * u, n) / np.where(mass > 0, mass, 1), levels)
        if np.allclose(new, levels, rtol=0, atol=1e-7):
            break
        levels = np.sort(new)
    top = np.abs(levels).max()
    t = np.rint(levels * (Q4T_TOP / top if top > 0 else 1.0)).astype(np.int64)
    for i in range(1, n):                      # strictly increasing, within int8
        t[i] = max(t[i], t[i - 1] + 1)
    for i in range(n - 1, -1, -1):
        t[i] = min(t[i], 127 - (n - 1 - i), t[i + 1] - 1 if i < n - 1 else 127)
    return t.astype(np.int8)


def _covering_scale(wg, t, sign):
    """The smallest d of that sign with every value of each group (rows, n, g) within
    [d * t[0], d * t[-1]] (for d < 0 the ends swap)."""
    hi, lo = wg.max(axis=-1), wg.min(axis=-1)
    top, bot = (t[-1], t[0]) if sign > 0 else (-t[0], -t[-1])
    a = hi / top if top > 0 else np.zeros_like(hi)
    b = lo / bot if bot < 0 else np.zeros_like(lo)
    return sign * np.maximum(np.maximum(a, b), 0)


def _search_block_table(wg, imp, table, ratios, refine):
    """Best fp16 scales of q4t groups wg (rows, n, g) for `table`: the covering scale
    of each sign times the clipping ratios, then `refine` least-squares refits of d
    for the chosen levels; error measured with the fp16 scale stored. ratios = (1,)
    and refine = 0: RTN's covering scale."""
    t, _ = _table_mids(table)
    best_d = _to_fp16_scale(_covering_scale(wg, t, 1))
    best_e = np.full(best_d.shape, np.inf, np.float32)

    def consider(d16):
        nonlocal best_d, best_e
        d = d16.astype(np.float32)
        r = wg - t[_quantize_table(wg, d, table)] * d[..., None]
        r *= r
        if imp is not None:
            r *= imp
        e = r.sum(axis=-1)
        better = e < best_e
        best_e = np.where(better, e, best_e)
        best_d = np.where(better, d16, best_d)

    for sign in (1, -1):
        cover = _covering_scale(wg, t, sign)
        for ratio in ratios:
            consider(_to_fp16_scale(cover * np.float32(ratio)))
    for _ in range(refine):
        d = best_d.astype(np.float32)
        tq = t[_quantize_table(wg, d, table)]
        itq = tq if imp is None else tq * imp
        den = (itq * tq).sum(axis=-1)
        num = (itq * wg).sum(axis=-1)
        consider(_to_fp16_scale(np.where(den > 0, num / np.where(den > 0, den, 1), d)))
    return best_d


def search_table_scales(w, group_size, table, imp=None, ratios=DEFAULT_RATIOS, refine=2):
    """fp16 scales (rows, ngroups) of q4t groups w ~ d * table[q] (nearest level),
    minimising each group's (importance-weighted) squared error."""
    return _search_groups(w, group_size, imp,
                          lambda wg, ig: (_search_block_table(wg, ig, table, ratios, refine),), 1)[0]


def quantize_q4t(w, group_size, method="mse", imp=None, table=None) -> QuantizedTensor:
    """q4t of w: the table fitted to w (fit_table, weighted by imp) unless given;
    per group the covering scale (rtn) or the searched one (mse), nearest levels."""
    w = _check(w, group_size)
    table = fit_table(w, group_size, imp) if table is None else np.asarray(table, np.int8)
    if method == "rtn":
        d = search_table_scales(w, group_size, table, ratios=(1.0,), refine=0)
    else:
        d = search_table_scales(w, group_size, table, imp=imp)
    return QuantizedTensor("q4t", group_size, quantize_with_table(w, d, group_size, table), d, table=table)


def quantize_with_table(w, d, group_size, table):
    """q4t indices (rows, cols) uint8 for fp16 scales d (rows, ngroups): nearest levels."""
    w = _check(w, group_size)
    q = np.empty(w.shape, np.uint8)
    d32 = np.asarray(d, dtype=np.float16).astype(np.float32)
    for g, (c0, c1) in enumerate(_group_bounds(w.shape[1], group_size)):
        q[:, c0:c1] = _quantize_table(w[:, c0:c1], d32[:, g], table)
    return q


def search_params(w, group_size, weight_type="q4s", imp=None, table=None):
    """(d, m) of the mse search for weight_type: q4s -> (search_scales, None),
    q4a -> search_affine, q4t -> (search_table_scales for `table`, None)."""
    if weight_type == "q4t":
        return search_table_scales(w, group_size, table, imp=imp), None
    if weight_type == "q4a":
        return search_affine(w, group_size, imp=imp)
    if weight_type == "q4s":
        return search_scales(w, group_size, imp=imp), None
    raise ValueError(f"unknown weight type {weight_type!r}; expected one of {WEIGHT_TYPES}")


def quantize_with_scales(w, d, group_size, m=None):
    """Levels (rows, cols) for given fp16 scales d (rows, ngroups): int8 in [-8, 7],
    or with mins m (q4a) uint8 in [0, 15]."""
    w = _check(w, group_size)
    q = np.empty(w.shape, np.int8 if m is None else np.uint8)
    d32 = np.asarray(d, dtype=np.float16).astype(np.float32)
    m32 = None if m is None else np.asarray(m, dtype=np.float16).astype(np.float32)
    for g, (c0, c1) in enumerate(_group_bounds(w.shape[1], group_size)):
        q[:, c0:c1] = _quantize_values(w[:, c0:c1], d32[:, g], None if m32 is None else m32[:, g])
    return q


def quantize_mse(w, group_size, imp=None, weight_type="q4s") -> QuantizedTensor:
    """weight_type (q4s, q4a, q4t) with per-group searched parameters (search_params;
    q4t: quantize_q4t, its table fitted first)."""
    if weight_type == "q4t":
        return quantize_q4t(w, group_size, "mse", imp=imp)
    d, m = search_params(w, group_size, weight_type, imp=imp)
    return QuantizedTensor(weight_type, group_size, quantize_with_scales(w, d, group_size, m), d, m)


# ---------------------------------------------------------------------------
# gptq
# ---------------------------------------------------------------------------

def quantize_gptq(w, H, group_size, act_order=False, block_size=gptq.BLOCK, damp=0.01,
                  static_groups=None, weight_type="q4s") -> QuantizedTensor:
    """GPTQ of w (rows, cols) with Hessian H (cols, cols) ~ 2 X^T X of its inputs.

    Columns are quantized one at a time (in order of decreasing diag(H) with
    act_order); each one's rounding error, divided by the diagonal of the upper
    Cholesky factor U of H^-1, is spread over the not-yet-quantized columns
    (lazily per block of block_size columns; gptq.py). Scales are one
    fp16 per group of the file's column order (with a min per group for q4a):
    with static groups (the default with act_order) they are searched up front
    on the original weights, else when a group's first column is reached, on
    the error-updated weights (search_params, weighted by diag(H)).
    Rows are done in chunks (gptq.row_chunks: each row depends only on H and
    its own scales), on every core (gptq.parallel_map)."""
    w = _check(w, group_size)
    rows, cols = w.shape
    H = np.asarray(H)
    if H.shape != (cols, cols):
        raise ValueError(f"Hessian shape {H.shape} does not match {cols} columns")
    if static_groups is None:
        static_groups = act_order
    if act_order and not static_groups:
        # a group's columns are scattered in act order: its scale must be known up front
        raise ValueError("act_order needs static groups")
    if not static_groups:
        # a group searched on the updated weights must lie inside one block
        block_size = group_size * max(1, block_size // group_size)
    diag = np.diag(H).astype(np.float64)
    dead = diag == 0                            # inputs that are always zero
    diag[dead] = 1.0
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(cols)
    V = gptq.cholesky_upper(H, damp, perm)
    Ub = gptq.block_inverses(V, block_size)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(cols)
    diag_p = diag[perm]
    ngroups = len(_group_bounds(cols, group_size))
    d = np.zeros((rows, ngroups), np.float16)
    m = np.zeros((rows, ngroups), np.float16) if weight_type == "q4a" else None
    Q = np.empty((rows, cols), np.int8 if weight_type == "q4s" else np.uint8)
    # q4t: one table for the tensor, fitted to the original weights weighted by diag(H)
    table = fit_table(np.where(dead[None, :], np.float32(0), w), group_size, imp=diag) \
        if weight_type == "q4t" else None
    levels = None if table is None else _table_mids(table)[0]

    def quantize_rows(chunk):
        r0, r1 = chunk
        Wc = np.array(w[r0:r1], dtype=np.float32)
        Wc[:, dead] = 0.0
        if static_groups:
            d[r0:r1], mc = search_params(Wc, group_size, weight_type, imp=diag, table=table)
            if m is not None:
                m[r0:r1] = mc
        # per group (rows of these), one value per row of the chunk: what
        # _quantize_values uses, made once instead of once per column
        d32 = d[r0:r1].T.astype(np.float32)
        safe = np.where(d32 == 0, np.float32(1), d32)
        nonzero = (d32 != 0).astype(np.float32)
        m32 = None if m is None else m[r0:r1].T.astype(np.float32)
        lo, hi = (QMIN, QMAX) if m is None else (0, QA_MAX)

        def quantize_column(i, x, block_rest):
            j = perm[i]                         # column in file order
            g = j // group_size
            if not static_groups and j % group_size == 0:
                # scale of this group from the current (error-updated) weights;
                # without act_order the group is columns i .. i+len-1
                c1 = min(j + group_size, cols)
                dg, mg = search_params(block_rest[:c1 - j].T, group_size, weight_type,
                                       imp=diag_p[i:i + c1 - j], table=table)
                d[r0:r1, g] = dg[:, 0]
                d32[g] = dg[:, 0].astype(np.float32)
                safe[g] = np.where(d32[g] == 0, np.float32(1), d32[g])
                nonzero[g] = d32[g] != 0
                if m is not None:
                    m[r0:r1, g] = mg[:, 0]
                    m32[g] = mg[:, 0].astype(np.float32)
            if table is not None:               # the nearest level of the table
                q = _quantize_table(x[:, None], d32[g], table)[:, 0]
                return q, levels[q] * d32[g]
            # as _quantize_values: q = clip(round((x [- m]) / d)), 0 where d == 0
            q = (x if m32 is None else x - m32[g]) / safe[g]
            np.rint(q, out=q)
            np.clip(q, lo, hi, out=q)
            q *= nonzero[g]
            xq = q * d32[g]
            if m32 is not None:
                xq += m32[g]
            return q, xq

        Qc = gptq.gptq_rows(np.ascontiguousarray(Wc[:, perm]), V, Ub, quantize_column, Q.dtype, block_size)
        Q[r0:r1] = Qc[:, inv]

    gptq.parallel_map(quantize_rows, gptq.row_chunks(rows))
    return QuantizedTensor(weight_type, group_size, Q, d, m, table=table)


class hessian_accumulator:
    """H = 2/n * sum X^T X over calibration batches X (T, cols), in float32.
    Batches are kept until hessian() (a few MB each): one product over all of
    them is one large BLAS call on every core, and its sum does not depend on
    the order threads added the batches in (add() is called in order)."""

    def __init__(self, cols):
        self.cols = cols
        self.xtx = None                             # sum X^T X of the batches folded so far
        self.pending = []
        self.n = 0
        self.absmean = np.zeros(cols, np.float64)   # sum |x| per channel, for awq

    def add(self, x):
        x = np.array(x, dtype=np.float32).reshape(-1, self.cols)   # a copy: callers reuse buffers
        self.pending.append(x)
        self.absmean += np.abs(x).sum(axis=0, dtype=np.float64)
        self.n += x.shape[0]

    def hessian(self):
        """2/n * X^T X as float32 (what GPTQ factorizes)."""
        if self.pending:
            X = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
            self.pending = []
            xtx = X.T @ X
            self.xtx = xtx if self.xtx is None else self.xtx + xtx
        if self.xtx is None:
            return np.zeros((self.cols, self.cols), np.float32)
        return self.xtx * np.float32(2.0 / max(self.n, 1))

    def mean_abs(self):
        return self.absmean / max(self.n, 1)


# ---------------------------------------------------------------------------
# whole model
# ---------------------------------------------------------------------------

def quantize(w, method, group_size, H=None, act_order=False, weight_type="q4s"):
    """One matrix of weight_type (q4s, q4a): rtn, mse (H's diagonal as importance if
    given) or gptq (needs H)."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"unknown weight type {weight_type!r}; expected one of {WEIGHT_TYPES}")
    if method == "rtn" and weight_type == "q4t":
        return quantize_q4t(w, group_size, "rtn")
    if method == "rtn":
        return quantize_rtn(np.asarray(w, dtype=np.float32), group_size, weight_type)
    if method == "mse" or (method in ("gptq", "awq") and H is None):
        return quantize_mse(w, group_size, imp=None if H is None else np.diag(H), weight_type=weight_type)
    if method == "gptq":
        return quantize_gptq(w, H, group_size, act_order=act_order, weight_type=weight_type)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def calibration_sequences(ids, seq_len=512, n_tokens=8192, bos_id=-1):
    """Token ids -> list of int arrays of seq_len tokens (BOS first when bos_id >= 0),
    n_tokens in total at most, taken evenly spread over the text."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    body = seq_len - (1 if bos_id >= 0 else 0)
    nseq = max(1, min(n_tokens // seq_len, len(ids) // body))
    if len(ids) < body:
        starts = [0]
    else:
        starts = np.linspace(0, len(ids) - body, nseq).astype(np.int64)
    out = []
    for s in starts:
        seq = ids[s:s + body]
        if bos_id >= 0:
            seq = np.concatenate([[bos_id], seq])
        out.append(seq)
    return out


_ATTN_IN = ("wq", "wk", "wv")
_FFN_IN = ("w1", "w3")
_LINEARS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def quantize_model(get, cfg, method, group_size, calib_ids=None, act_order=False,
                   embed_method=None, embed_qtype=None, awq_alphas=(0.0, 0.25, 0.5, 0.75),
                   progress=True, weight_type="q4s", embed_group_size=None, group_sizes=None):
    """Quantize a whole Llama model; yields (entry name, value): the entries of
    an ffn_rotation (cfg's, as the source gives them), per layer attention_norm
    wq wk wv wo ffn_norm w1 w2 w3, then norm, then the classifier (output,
    untied) and tok_embeddings. value: QuantizedTensor, or a float32 ndarray
    (norms, 1-D; the rotation's). The exporter writes them in this order.

    get(name) -> float32 array of the FORMAT.md entry `name` (matrices 2-D,
    norms 1-D) from the source; a lazy source keeps about one layer in memory
    (tok_embeddings is read twice by calibrated methods: first for the
    calibration inputs, then to quantize it against the classifier Hessian).
    cfg: header fields (dim, n_layers, n_heads, n_kv_heads, head_dim, ...).
    calib_ids: list of token-id sequences (gptq/awq; see calibration_sequences).
    progress: a progress bar per layer on stderr when it is a terminal.

    weight_type: the int4 type of every matrix, q4s or q4a (awq: q4s only).
    embed_group_size: group size of the embedding table (and untied classifier);
    default group_size. group_sizes: {entry name: group size} of every matrix
    (mix.plan_group_sizes), in place of group_size and embed_group_size.
    The embedding table: embed_qtype "q8" (RTN int8) or weight_type (the default) by embed_method:
    rtn, mse, or gptq (default for gptq/awq): as the classifier it is a linear
    of the final-norm outputs, so when tied it gets GPTQ with the Hessian of
    those outputs (the untied `output` likewise; the untied lookup table mse)."""
    if method not in METHODS + EXPERIMENTAL:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS + EXPERIMENTAL}")
    calibrated = method in ("gptq", "awq")
    if weight_type not in WEIGHT_TYPES or (method == "awq" and weight_type != "q4s"):
        raise ValueError(f"weight type {weight_type!r} is not available for method {method}")
    embed_qtype = embed_qtype or weight_type
    embed_gs = embed_group_size or group_size
    if group_sizes is not None and method == "awq":
        raise ValueError("awq takes one group size for every matrix")

    def gs_of(name):
        if group_sizes is not None:
            return group_sizes[name]
        return embed_gs if name in ("tok_embeddings", "output") else group_size
    if embed_method is None:
        embed_method = {"rtn": "rtn", "mse": "mse"}.get(method, "gptq")
    if embed_method == "gptq" and not calibrated:
        raise ValueError("embed_method gptq needs a calibrated method (gptq or awq)")
    if calibrated and not calib_ids:
        raise ValueError(f"method {method} needs calibration token sequences")
    n_layers = int(cfg["n_layers"])
    tied = bool(int(cfg.get("tied_embeddings", 0)))
    bar = progress_bar(total=n_layers + 1, desc=f"quantize ({method})", unit="layer",
                       quiet=not progress)
    timing = {"forward": 0.0, "quantize": 0.0}   # seconds: calibration forward/capture, GPTQ

    def quantize_table(name, w, H=None):
        embed_gs = gs_of(name)
        if embed_qtype == "q8":
            return quantize_rtn(w, embed_gs, "q8")
        if embed_method == "gptq" and H is not None:
            return quantize_gptq(w, H, embed_gs, act_order=act_order, weight_type=embed_qtype)
        if embed_method == "rtn":
            return quantize(w, "rtn", embed_gs, weight_type=embed_qtype)
        if embed_qtype == "q4t":  # one table for the whole tensor: not chunk by chunk
            return quantize(w, "mse", embed_gs, weight_type=embed_qtype)
        return _by_row_chunks(lambda rows: quantize(rows, "mse", embed_gs, weight_type=embed_qtype), w)

    if calibrated:
        # calibration inputs: the embedding rows of the calibration tokens as they will
        # be looked up (quantized data-free; rows are quantized independently)
        used, where = np.unique(np.concatenate(calib_ids), return_inverse=True)
        rows = np.asarray(get("tok_embeddings"), dtype=np.float32)[used]
        qrows = dequantize(quantize(rows, "rtn" if embed_method == "rtn" else "mse", gs_of("tok_embeddings"),
                                    weight_type=embed_qtype)
                           if embed_qtype != "q8" else quantize_rtn(rows, gs_of("tok_embeddings"), "q8"))
        del rows
        ends = np.cumsum([len(s) for s in calib_ids])[:-1]
        hs = [qrows[w] for w in np.split(where, ends)]
        del qrows

    # the rotation of w2's input: part of every layer's forward (reference.layer)
    rotation = {} if int(cfg.get("ffn_rotation", FFN_ROTATION_NONE)) == FFN_ROTATION_NONE else \
        {k: np.asarray(get(k), np.float32) for k in FFN_ROTATION_ENTRIES}
    yield from rotation.items()

    for i in range(n_layers):
        p = f"layers.{i}."
        W = {p + k: np.asarray(get(p + k), dtype=np.float32) for k in _LINEARS}
        W.update(rotation)
        W[p + "attention_norm"] = np.asarray(get(p + "attention_norm"), np.float32).reshape(-1)
        W[p + "ffn_norm"] = np.asarray(get(p + "ffn_norm"), np.float32).reshape(-1)
        if not calibrated:
            out = {k: quantize(W[k], method, gs_of(k), weight_type=weight_type)
                   for k in W if not k.endswith("norm") and k not in rotation}
        else:
            if method == "gptq":
                out = _gptq_layer(W, cfg, i, hs, gs_of, act_order, timing, weight_type)
            else:
                out = _awq_layer(W, cfg, i, hs, group_size, awq_alphas)
            # inputs of the next layer: this layer run with its quantized weights
            t1 = time.time()
            Wq = {k: (v if isinstance(v, np.ndarray) else dequantize(v)) for k, v in out.items()}
            for k in ("attention_norm", "ffn_norm"):
                Wq.setdefault(p + k, W[p + k])
            Wq.update(rotation)
            hs = gptq.parallel_map(lambda h: R.layer(Wq, cfg, i, h, dtype=np.float32), hs)
            del Wq
            timing["forward"] += time.time() - t1
        for k in ("attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"):
            yield p + k, out.get(p + k, W[p + k])
        del W, out
        if method == "gptq":
            bar.set_postfix(forward=f"{timing['forward']:.0f}s", gptq=f"{timing['quantize']:.0f}s")
        bar.update(1)

    norm = np.asarray(get("norm"), dtype=np.float32).reshape(-1)
    yield "norm", norm
    H = None
    if calibrated and embed_method == "gptq":
        # Hessian of the classifier's inputs: the final-norm outputs
        acc = hessian_accumulator(norm.shape[0])
        for h in hs:
            acc.add(R.rms_norm(h, norm, float(cfg["norm_eps"]), np.float32))
        H = acc.hessian()
        del hs
    if not tied:
        yield "output", quantize_table("output", np.asarray(get("output"), dtype=np.float32), H)
        H = None  # the untied lookup table is not a classifier
    yield "tok_embeddings", quantize_table("tok_embeddings", np.asarray(get("tok_embeddings"), np.float32), H)
    bar.update(1)
    bar.close()


def _by_row_chunks(quantize_rows, w):
    """quantize_rows over chunks of rows of w on every core (a data-free
    quantizer treats rows independently), joined into one QuantizedTensor."""
    step = max(1, _ROW_CHUNK_ELEMS // max(w.shape[1], 1))
    parts = gptq.parallel_map(lambda r0: quantize_rows(w[r0:r0 + step]), range(0, w.shape[0], step))
    if len(parts) == 1:
        return parts[0]
    p = parts[0]
    return QuantizedTensor(p.type, p.group_size, np.concatenate([t.q for t in parts]),
                           np.concatenate([t.d for t in parts]),
                           None if p.m is None else np.concatenate([t.m for t in parts]))


def _capture_hessians(W32, cfg, i, hs, names):
    """Run layer i over every calibration sequence (sequences in parallel);
    accumulate the Hessians of the inputs of `names` (one accumulator per
    distinct input), batches added in sequence order."""
    def inputs(h):
        seen = {}

        def capture(name, x):
            k = name.rsplit(".", 1)[1]
            if k in names:
                seen[k] = np.asarray(x, dtype=np.float32)
        R.layer(W32, cfg, i, h, capture=capture, dtype=np.float32, inputs_only=True)
        return seen

    acc = {}
    for seen in gptq.parallel_map(inputs, hs):
        for k, x in seen.items():
            if k not in acc:
                acc[k] = hessian_accumulator(x.shape[1])
            acc[k].add(x)
    return acc


def _gptq_layer(W, cfg, i, hs, gs_of, act_order, timing=None, weight_type="q4s"):
    """All seven matrices of layer i by GPTQ, matrix `name` in groups of
    gs_of(name). Inputs captured with the float weights of this layer (earlier
    layers already quantized in hs); wq/wk/wv share one Hessian, w1/w3 another."""
    timing = {"forward": 0.0, "quantize": 0.0} if timing is None else timing
    t0 = time.time()
    p = f"layers.{i}."
    acc = _capture_hessians(W, cfg, i, hs, ("wq", "wo", "w1", "w2"))
    t1 = time.time()
    timing["forward"] += t1 - t0
    out = {}
    for k in _LINEARS:
        src = {"wk": "wq", "wv": "wq", "w3": "w1"}.get(k, k)
        out[p + k] = quantize_gptq(W[p + k], acc[src].hessian(), gs_of(p + k), act_order=act_order,
                                   weight_type=weight_type)
    timing["quantize"] += time.time() - t1
    return out


def _awq_layer(W, cfg, i, hs, group_size, alphas):
    """AWQ-style scaling + mse quantization for layer i (see module doc)."""
    p = f"layers.{i}."
    acc = _capture_hessians(W, cfg, i, hs, ("wq", "wo", "w1", "w2"))
    # a few calibration rows to measure the output error of each choice
    xs = {}

    def keep(name, x):
        k = name.rsplit(".", 1)[1]
        if k in ("wq", "wo", "w1", "w2"):
            xs.setdefault(k, []).append(x[::4])
    for h in hs[:4]:
        R.layer(W, cfg, i, h, capture=keep, dtype=np.float32)
    X = {k: np.concatenate(v).astype(np.float32) for k, v in xs.items()}
    nh, nkv = int(cfg["n_heads"]), int(cfg["n_kv_heads"])
    # blocks folding into a previous linear's rows go first, before that linear is quantized;
    # w2's input scales fold into w3 only where no rotation stands between them
    groups = [("w2", ("w2",), p + "w3")] if int(cfg.get("ffn_rotation", FFN_ROTATION_NONE)) == FFN_ROTATION_NONE else []
    if nkv == nh:
        groups.append(("wo", ("wo",), p + "wv"))
    groups += [("wq", ("wq", "wk", "wv"), p + "attention_norm"),
               ("w1", ("w1", "w3"), p + "ffn_norm")]
    out = {}
    W = dict(W)
    for src, mats, prev in groups:
        x = X[src]
        m = np.maximum(acc[src].mean_abs(), 1e-8)
        ref = [x @ W[p + k].T for k in mats]
        best = None
        for a in alphas:
            s = (m ** a).astype(np.float32)
            s /= np.sqrt(s.max() * s.min())
            qs = [quantize_mse(W[p + k] * s[None, :], group_size) for k in mats]
            err = sum(float(np.sum((x @ (dequantize(q) / s[None, :]).T - r) ** 2))
                      for q, r in zip(qs, ref))
            if best is None or err < best[0]:
                best = (err, a, s, qs)
        _, a, s, qs = best
        for k, q in zip(mats, qs):
            out[p + k] = q
        if a != 0.0:
            # fold 1/s into what produces x: the norm weight, or the rows of the previous linear
            if prev.endswith("norm"):
                W[prev] = (W[prev] / s).astype(np.float32)
                out[prev] = W[prev]
            else:
                W[prev] = (W[prev] / s[:, None]).astype(np.float32)
    for k in _LINEARS:
        if p + k not in out:
            out[p + k] = quantize_mse(W[p + k], group_size)
    return out
