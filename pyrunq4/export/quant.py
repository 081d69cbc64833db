"""Group quantization of weight matrices, and the packed bytes of docs/FORMAT.md.

A matrix (rows, cols) is cut, row by row, into ngroups = ceil(cols / group_size)
groups of group_size consecutive values; the last group of a row is shorter
when cols % group_size != 0 (576 at 128: 128, 128, 128, 128, 64). cols must be
a multiple of 32. Each group has one fp16 scale d (and, for q4a, one fp16 m):

    q4s: w ~ d * q,      q in [-8, 7]     (RTN: d = max|w| / 7)
    q4a: w ~ d * q + m,  q in [0, 15]     (RTN: d = (max - min) / 15, m = min)
    q8:  w ~ d * q,      q in [-128, 127] (RTN: d = max|w| / 127)
    q4t: w ~ d * t[q],   q in [0, 15], t the tensor's table of 16 increasing int8
                         levels (quantizers.py chooses it; RTN with a given
                         table: d = the smallest scale that covers the group,
                         q = the nearest level)

The scale is rounded to fp16 *before* the levels are computed,
q = round(w / float(fp16(d))), so the levels fit the scale the file stores
(quantizing with the float32 scale and storing a rounded one would shift every
value of the group by the rounding error). round() is numpy's rint: half to
even, as torch.round in llama2.c's export.py. A group whose scale is 0 (all
zeros, or so tiny that max|w|/7 underflows fp16) gets q = 0: no division by 0.

Everything works on row chunks of about CHUNK_VALUES values, so a 128256 x 2048
embedding is quantized in seconds without full-size temporaries.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .format import (INTERLEAVE, INTERLEAVED, LAYOUTS, Q4T_LEVELS, TYPE_IDS, TYPE_NAMES, TYPE_Q4A,  # noqa: F401
                     TYPE_Q8, n_groups, quantized_layout, stored_rows, table_offset, validate_group_size)

CHUNK_VALUES = 1 << 22  # values per row chunk (16 MB of float32)

# Inclusive level range and storage dtype of q per type.
LEVELS = {"q4s": (-8, 7, np.int8), "q4a": (0, 15, np.uint8), "q8": (-128, 127, np.int8),
          "q4t": (0, Q4T_LEVELS - 1, np.uint8)}


@dataclass
class QuantizedTensor:
    type: str                      # 'q4s' | 'q4a' | 'q8' | 'q4t'
    group_size: int
    q: np.ndarray                  # (rows, cols) integer levels (int8; uint8 for q4a; q4t: table indices)
    d: np.ndarray                  # (rows, ngroups) float16 scales
    m: Optional[np.ndarray] = None  # (rows, ngroups) float16 minimums, q4a only
    layout: str = "rows"           # how the file stores it: 'rows' or 'r4' (q4s/q4a only, FORMAT.md)
    table: Optional[np.ndarray] = None  # (Q4T_LEVELS,) int8 increasing levels, q4t only

    @property
    def shape(self):
        return self.q.shape

    @property
    def file_type(self):
        """The entry type name it is written as: q4s_r4 / q4a_r4 for the r4 layout."""
        return self.type + "_r4" if self.layout == "r4" else self.type

    @property
    def ngroups(self):
        return n_groups(self.q.shape[1], self.group_size)

    def validate(self):
        """Raises ValueError unless this tensor can be written as FORMAT.md says."""
        if self.type not in LEVELS:
            raise ValueError(f"unknown quantized type {self.type!r} (q4s, q4a, q8 or q4t)")
        if self.layout not in LAYOUTS or (self.layout == "r4" and self.type not in ("q4s", "q4a")):
            raise ValueError(f"layout {self.layout!r}: must be one of {', '.join(LAYOUTS)} (r4: int4 types only, q4s and q4a)")
        check_table(self.type, self.table)
        validate_group_size(self.group_size)
        if self.q.ndim != 2:
            raise ValueError(f"levels must be 2-D, got shape {self.q.shape}")
        rows, cols = self.q.shape
        if rows < 1 or cols < 1 or cols % 32:
            raise ValueError(f"shape {rows}x{cols}: cols must be a positive multiple of 32")
        if not np.issubdtype(self.q.dtype, np.integer):
            raise ValueError(f"levels must be integers, got {self.q.dtype}")
        lo, hi, _ = LEVELS[self.type]
        if self.q.size and (self.q.min() < lo or self.q.max() > hi):
            raise ValueError(f"{self.type} levels must be in [{lo}, {hi}]")
        want = (rows, self.ngroups)
        for what, a in (("scales", self.d), ("mins", self.m)):
            if what == "mins" and self.type != "q4a":
                if a is not None:
                    raise ValueError(f"{self.type} has no mins")
                continue
            if a is None or a.dtype != np.float16 or a.shape != want:
                got = None if a is None else f"{a.dtype} {a.shape}"
                raise ValueError(f"{what} must be float16 of shape {want}, got {got}")
            if not np.isfinite(a).all():
                raise ValueError(f"{what} must be finite")


def check_table(qtype, table):
    """Raises ValueError unless `table` fits qtype: for q4t Q4T_LEVELS strictly
    increasing int8 levels (what the C loader accepts), for the others None."""
    if qtype != "q4t":
        if table is not None:
            raise ValueError(f"{qtype} has no table")
        return
    t = None if table is None else np.asarray(table)
    if t is None or t.dtype != np.int8 or t.shape != (Q4T_LEVELS,):
        raise ValueError(f"q4t needs a table of {Q4T_LEVELS} int8 levels, got "
                         f"{None if t is None else f'{t.dtype} {t.shape}'}")
    if not (np.diff(t.astype(np.int16)) > 0).all():
        raise ValueError(f"the q4t table is not strictly increasing: {t.tolist()}")


def _row_chunks(rows, cols):
    step = max(1, CHUNK_VALUES // max(cols, 1))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _group_reduce(x, gs, fn):
    """fn over each group of each row: (r, cols) -> (r, ngroups)."""
    r, cols = x.shape
    nfull = cols // gs
    parts = []
    if nfull:
        parts.append(fn(x[:, :nfull * gs].reshape(r, nfull, gs), axis=2))
    if cols % gs:
        parts.append(fn(x[:, nfull * gs:], axis=1, keepdims=True))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _grouped(a, gs):
    """Views of a (r, cols) array as [(r, nfull, gs) full groups, (r, 1, tail) last short
    group], each with the slice of group indices it covers (no copies)."""
    r, cols = a.shape
    nfull = cols // gs
    out = []
    if nfull:
        out.append((a[:, :nfull * gs].reshape(r, nfull, gs), slice(0, nfull)))
    if cols % gs:
        out.append((a[:, nfull * gs:].reshape(r, 1, cols - nfull * gs), slice(nfull, nfull + 1)))
    return out


def _apply(ufunc, x, g, gs, out):
    """out = ufunc(x, g broadcast over each group), groupwise without a (r, cols) temporary."""
    for (xv, sl), (ov, _) in zip(_grouped(x, gs), _grouped(out, gs)):
        ufunc(xv, g[:, sl, None], out=ov)
    return out


def _to_fp16(x, what):
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    if not np.isfinite(h).all():
        raise ValueError(f"{what} overflows fp16 (|value| up to {float(np.abs(x).max()):.6g})")
    return h


def quantize_rtn(w, group_size, qtype="q4s"):
    """Round-to-nearest group quantization of a float matrix (rows, cols).

    q4s (the seed's formula): d = fp16(max|w| / 7), q = clip(round(w / d), -8, 7).
    q8: the same with 127. q4a: d = fp16((max - min) / 15), m = fp16(min),
    q = clip(round((w - m) / d), 0, 15). Raises ValueError on non-finite values,
    a bad shape or group size."""
    if qtype not in LEVELS:
        raise ValueError(f"unknown quantized type {qtype!r} (q4s, q4a or q8)")
    if qtype == "q4t":
        raise ValueError("q4t needs a table: quantizers.quantize_q4t fits one")
    validate_group_size(group_size)
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1 or w.shape[1] % 32:
        raise ValueError(f"shape {w.shape}: need a 2-D matrix whose cols are a positive multiple of 32")
    rows, cols = w.shape
    lo, hi, qdtype = LEVELS[qtype]
    ng = n_groups(cols, group_size)
    q = np.empty((rows, cols), qdtype)
    d = np.empty((rows, ng), np.float16)
    m = np.empty((rows, ng), np.float16) if qtype == "q4a" else None
    for r0, r1 in _row_chunks(rows, cols):
        x = np.asarray(w[r0:r1], np.float32)
        if not np.isfinite(x).all():
            raise ValueError("non-finite value (NaN or Inf) in the weights")
        if qtype == "q4a":
            gmin = _group_reduce(x, group_size, np.min)
            gmax = _group_reduce(x, group_size, np.max)
            dh = _to_fp16((gmax - gmin) / np.float32(15), "scale")
            mh = _to_fp16(gmin, "minimum")
            m[r0:r1] = mh
            x = _apply(np.subtract, x, mh.astype(np.float32), group_size, np.empty_like(x))
        else:
            amax = _group_reduce(np.abs(x), group_size, np.max)
            dh = _to_fp16(amax / np.float32(hi), "scale")
        d[r0:r1] = dh
        df = dh.astype(np.float32)
        df[df == 0] = 1.0  # zero scale: the group's values are (nearly) 0 and round to q = 0
        y = _apply(np.divide, x, df, group_size, np.empty_like(x))
        np.rint(y, out=y)
        np.clip(y, lo, hi, out=y)
        q[r0:r1] = y
    return QuantizedTensor(qtype, group_size, q, d, m)


def dequantize(qt):
    """The float32 matrix (rows, cols) a quantized tensor stands for (w = d*q [+ m]; q4t: d*table[q])."""
    rows, cols = qt.q.shape
    gs = qt.group_size
    out = np.empty((rows, cols), np.float32)
    for r0, r1 in _row_chunks(rows, cols):
        y = out[r0:r1]
        y[...] = qt.q[r0:r1] if qt.table is None else qt.table[qt.q[r0:r1]]
        _apply(np.multiply, y, qt.d[r0:r1].astype(np.float32), gs, y)
        if qt.m is not None:
            _apply(np.add, y, qt.m[r0:r1].astype(np.float32), gs, y)
    return out


def rms_rel_error(w, qt):
    """sqrt(mean((w - dequantize(qt))^2)) / sqrt(mean(w^2)), chunked (0 for an all-zero w)."""
    rows, cols = qt.q.shape
    err = ref = 0.0
    for r0, r1 in _row_chunks(rows, cols):
        x = np.ascontiguousarray(w[r0:r1], np.float32)
        y = dequantize(QuantizedTensor(qt.type, qt.group_size, qt.q[r0:r1], qt.d[r0:r1],
                                       None if qt.m is None else qt.m[r0:r1], table=qt.table))
        y -= x
        # float32 dot products per chunk (BLAS), summed in float64: ~1e-6 relative, for a printout
        err += float(np.dot(y.ravel(), y.ravel()))
        ref += float(np.dot(x.ravel(), x.ravel()))
    return (err / ref) ** 0.5 if ref > 0 else (0.0 if err == 0 else float("inf"))


# ---- exact imports: integer levels + fp16 scales from another format ----

def _exact_fp16(a, what, shape):
    a = np.asarray(a)
    if a.dtype == np.uint16:      # raw IEEE half bits, as read from a file
        h = a.view(np.float16)
    else:
        h = a.astype(np.float16)
        if a.dtype != np.float16 and not np.array_equal(h.astype(np.float64), a.astype(np.float64)):
            raise ValueError(f"{what} are not exactly representable in fp16")
    if h.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {h.shape}")
    return np.ascontiguousarray(h)


def from_levels(qtype, q, d, group_size, m=None, table=None):
    """A QuantizedTensor from integer levels q (rows, cols) and per-group fp16
    scales d (and mins m for q4a), each (rows, ngroups); d/m may be float16,
    uint16 raw half bits, or floats that are exact fp16 values; q4t: q indexes
    `table`. Nothing is re-rounded: the stored values are exactly these.
    Raises ValueError."""
    if qtype not in LEVELS:
        raise ValueError(f"unknown quantized type {qtype!r} (q4s, q4a, q8 or q4t)")
    check_table(qtype, table)
    validate_group_size(group_size)
    q = np.asarray(q)
    if q.ndim != 2 or not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"levels must be a 2-D integer array, got {q.dtype} {q.shape}")
    lo, hi, qdtype = LEVELS[qtype]
    if q.size and (q.min() < lo or q.max() > hi):
        raise ValueError(f"{qtype} levels must be in [{lo}, {hi}]")
    shape = (q.shape[0], n_groups(q.shape[1], group_size))
    dh = _exact_fp16(d, "scales", shape)
    mh = None
    if qtype == "q4a":
        if m is None:
            raise ValueError("q4a needs mins")
        mh = _exact_fp16(m, "mins", shape)
    elif m is not None:
        raise ValueError(f"{qtype} has no mins")
    qt = QuantizedTensor(qtype, group_size, np.ascontiguousarray(q, qdtype), dh, mh, table=table)
    qt.validate()
    return qt


def q4s_from_levels(q, d, group_size):
    """Symmetric int4, q in [-8, 7] (llama.cpp Q4_0: q = u - 8, same d)."""
    return from_levels("q4s", q, d, group_size)


def q4a_from_levels(q, d, m, group_size):
    """Asymmetric int4, q in [0, 15], w = d*q + m (llama.cpp Q4_1: same q, d, m)."""
    return from_levels("q4a", q, d, group_size, m)


def q4t_from_levels(q, d, table, group_size):
    """Table int4, q in [0, 15] indexing the 16 increasing int8 levels of table, w = d*table[q]."""
    return from_levels("q4t", q, d, group_size, table=np.asarray(table))


def q8_from_levels(q, d, group_size):
    """int8, q in [-128, 127] (llama.cpp Q8_0: same q, d)."""
    return from_levels("q8", q, d, group_size)


# ---- packing (docs/FORMAT.md "Tensor data") ----

def _interleave_values(values):
    """Row-major packed values (rows, cols/2) in the r4 layout (FORMAT.md): rows
    padded with zeros to a multiple of INTERLEAVE; per group of rows and block, the
    rows' 16 bytes in 4-byte chunks (chunk k of row i at (4k + i) * 4)."""
    rows, half = values.shape
    prows = -(-rows // INTERLEAVE) * INTERLEAVE
    v = np.zeros((prows, half), np.uint8)
    v[:rows] = values
    # (groups, rows, blocks, chunks, bytes) -> (groups, blocks, chunks, rows, bytes)
    v = v.reshape(prows // INTERLEAVE, INTERLEAVE, half // 16, 4, 4).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(v).reshape(-1)


def _interleave_scales(scales):
    """Per-group scales or minimums (rows, ngroups) in the r4 layout: the rows of a
    group side by side, (row groups, ngroups, INTERLEAVE), padding rows 0."""
    rows, ng = scales.shape
    prows = -(-rows // INTERLEAVE) * INTERLEAVE
    sc = np.zeros((prows, ng), scales.dtype)
    sc[:rows] = scales
    return np.ascontiguousarray(sc.reshape(prows // INTERLEAVE, INTERLEAVE, ng).transpose(0, 2, 1)).reshape(-1)


def _deinterleave_values(flat, rows, cols):
    prows = -(-rows // INTERLEAVE) * INTERLEAVE
    v = flat.reshape(prows // INTERLEAVE, cols // 32, 4, INTERLEAVE, 4).transpose(0, 3, 1, 2, 4)
    return v.reshape(prows, cols // 2)[:rows]


def _deinterleave_scales(flat, rows, ng):
    prows = -(-rows // INTERLEAVE) * INTERLEAVE
    return flat.reshape(prows // INTERLEAVE, ng, INTERLEAVE).transpose(0, 2, 1).reshape(prows, ng)[:rows]


def pack_parts(qt):
    """The entry bytes of qt as (total size, [(offset from the tensor start, array)]);
    the gaps are zero padding. The writer streams the parts; pack() joins them."""
    qt.validate()
    rows, cols = qt.q.shape
    type_id = TYPE_IDS[qt.file_type]
    _, scales_off, mins_off, size = quantized_layout(type_id, rows, cols, qt.group_size)
    if type_id == TYPE_Q8:
        values = np.ascontiguousarray(qt.q, np.int8).view(np.uint8)
    else:
        values = np.empty((rows, cols // 2), np.uint8)
        for r0, r1 in _row_chunks(rows, cols):
            u = qt.q[r0:r1].astype(np.uint8)  # int4 two's complement: the low nibble is the level
            # byte j = (value 2j & 0x0F) | (value 2j+1 << 4)
            values[r0:r1] = (u[:, 0::2] & 0x0F) | (u[:, 1::2] << 4)
    d = np.ascontiguousarray(qt.d, "<f2")
    m = np.ascontiguousarray(qt.m, "<f2") if qt.m is not None else None
    if type_id in INTERLEAVED:
        values, d = _interleave_values(values), _interleave_scales(d)
        m = None if m is None else _interleave_scales(m)
    parts = [(0, values), (scales_off, d)]
    if m is not None:
        parts.append((mins_off, m))
    if qt.table is not None:
        parts.append((table_offset(rows, cols, qt.group_size), np.ascontiguousarray(qt.table, np.int8)))
    return size, parts


def pack(qt):
    """The exact entry bytes of qt (values, scales[, mins], each 64-aligned)."""
    size, parts = pack_parts(qt)
    buf = bytearray(size)
    for off, a in parts:
        b = a.tobytes()
        buf[off:off + len(b)] = b
    return bytes(buf)


def unpack(type_name, rows, cols, group_size, buf):
    """The QuantizedTensor of packed entry bytes (the inverse of pack, copying)."""
    type_id = TYPE_IDS[type_name]
    _, scales_off, mins_off, size = quantized_layout(type_id, rows, cols, group_size)
    raw = np.frombuffer(buf, np.uint8, count=size)
    ng = n_groups(cols, group_size)
    srows = stored_rows(type_id, rows)
    d = raw[scales_off:scales_off + srows * ng * 2].view("<f2").astype(np.float16)
    m = None
    if mins_off is not None:
        m = raw[mins_off:mins_off + srows * ng * 2].view("<f2").astype(np.float16)
    if type_id == TYPE_Q8:
        q = raw[:rows * cols].view(np.int8).reshape(rows, cols).copy()
        return QuantizedTensor(type_name, group_size, q, d.reshape(rows, ng), None)
    b = raw[:srows * cols // 2]
    layout = "rows"
    if type_id in INTERLEAVED:
        layout = "r4"
        type_name = TYPE_NAMES[INTERLEAVED[type_id]]
        b, d = _deinterleave_values(b, rows, cols), _deinterleave_scales(d, rows, ng)
        m = None if m is None else _deinterleave_scales(m, rows, ng)
    b = b.reshape(rows, cols // 2)
    q = np.empty((rows, cols), np.uint8)
    q[:, 0::2] = b & 0x0F
    q[:, 1::2] = b >> 4
    if type_name == "q4s":  # sign-extend the nibble
        q = ((q ^ 8).astype(np.int8) - 8).astype(np.int8)
    d = np.ascontiguousarray(d.reshape(rows, ng))
    m = None if m is None else np.ascontiguousarray(m.reshape(rows, ng))
    table = None
    if type_name == "q4t":
        at = table_offset(rows, cols, group_size)
        table = raw[at:at + Q4T_LEVELS].view(np.int8).copy()
    return QuantizedTensor(type_name, group_size, q, d, m, layout, table)
