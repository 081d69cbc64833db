"""The .rq4 format (versions 1 and 2) in Python: constants, header and table layout, validation.

The one place the Python side spells out docs/FORMAT.md. The constants the C
library declares in src/runq4.h come from it through pyrunq4._lib, never
retyped; the struct layouts below are checked against them at import. The
writer and the reader both use the struct layouts and the validators below,
so they cannot drift apart.
"""

import math
import operator
import struct

# ---- constants (src/runq4.h; NAME_MAX counts the terminating NUL) ----
from .._lib import (ALIGN, ENTRY_SIZE, FORMAT_VERSION, HEADER_SIZE, MAX_DIM, MAX_ENTRIES,  # noqa: F401
                    MAX_EOS, MAX_GROUP, MAX_HEAD_DIM, MAX_HEADS, MAX_HIDDEN_DIM, MAX_LAYERS, MAX_SEQ_LEN,
                    MAX_VOCAB, MIN_GROUP, NAME_MAX, ROPE_LLAMA3, ROPE_NONE, TYPE_BLOB, TYPE_F32, TYPE_Q4A,
                    TYPE_Q4S, TYPE_Q8, TYPE_Q4S_R4, TYPE_Q4A_R4, TYPE_Q4T, Q4T_LEVELS, INTERLEAVE,
                    MIN_FORMAT_VERSION, FFN_ROTATION_NONE, FFN_ROTATION_HADAMARD, MAX_ROTATION_FACTOR)

MAGIC = b"RUNQ4\0\0\0"

TYPE_NAMES = {TYPE_F32: "f32", TYPE_Q4S: "q4s", TYPE_Q4A: "q4a", TYPE_Q8: "q8", TYPE_BLOB: "blob",
              TYPE_Q4S_R4: "q4s_r4", TYPE_Q4A_R4: "q4a_r4", TYPE_Q4T: "q4t"}
TYPE_IDS = {v: k for k, v in TYPE_NAMES.items()}
# The interleaved types (rows in groups of INTERLEAVE, FORMAT.md) and the
# row-major type each holds the values of.
INTERLEAVED = {TYPE_Q4S_R4: TYPE_Q4S, TYPE_Q4A_R4: TYPE_Q4A}
# The weight layouts the exporter writes (--layout): the int4 type per layout.
LAYOUTS = ("rows", "r4")

# ---- header: 256 bytes, little-endian; field names are those of FORMAT.md ----
HEADER_STRUCT = struct.Struct(
    "<8s I I Q"     # magic, version, header_size, file_size            0..24
    " 9I"           # dim .. tied_embeddings                             24..60
    " i I 4i"       # bos_id, n_eos, eos_ids[4]                          60..84
    " I I 5f"       # rope_scaling, rope_original_max_pos, 5 floats      84..112
    " I I Q"        # group_size, n_entries, table_offset                112..128
    " I"            # ffn_rotation (version 2; reserved in version 1)    128..132
    " 124x")        # reserved                                           132..256
assert HEADER_STRUCT.size == HEADER_SIZE

# The model fields a caller provides (the writer fills in the rest).
MODEL_FIELDS = (
    "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
    "vocab_size", "max_seq_len", "tied_embeddings", "bos_id", "eos_ids",
    "rope_scaling", "rope_original_max_pos", "norm_eps", "rope_theta",
    "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "group_size", "ffn_rotation",
)
INT_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size",
              "max_seq_len", "tied_embeddings", "bos_id", "rope_scaling", "rope_original_max_pos",
              "group_size", "ffn_rotation")
FLOAT_FIELDS = ("norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor")
# Defaults for the optional ones (rope fields are unused when rope_scaling = 0).
MODEL_DEFAULTS = {
    "tied_embeddings": 0, "bos_id": -1, "eos_ids": (), "rope_scaling": ROPE_NONE,
    "rope_original_max_pos": 0, "rope_factor": 1.0, "rope_low_freq_factor": 1.0,
    "rope_high_freq_factor": 4.0, "group_size": 0, "ffn_rotation": FFN_ROTATION_NONE,
}

# The entries of ffn_rotation = FFN_ROTATION_HADAMARD (runq4.h): F32 always.
FFN_ROTATION_SIGNS = "ffn_rotation.signs"     # 1 x hidden_dim, each +1 or -1
FFN_ROTATION_FACTOR = "ffn_rotation.factor"   # m x m, a Hadamard matrix
FFN_ROTATION_ENTRIES = (FFN_ROTATION_SIGNS, FFN_ROTATION_FACTOR)


def format_version(h):
    """The version a file with header fields h is written as: the oldest that holds
    them (1 unless ffn_rotation is set), so older readers load what they can run."""
    return FORMAT_VERSION if h["ffn_rotation"] != FFN_ROTATION_NONE else MIN_FORMAT_VERSION

# ---- entry table: 96 bytes per entry ----
ENTRY_STRUCT = struct.Struct("<64s I I I I Q Q")  # name, type, group_size, rows, cols, offset, size
assert ENTRY_STRUCT.size == ENTRY_SIZE


def align(n, a=ALIGN):
    """n rounded up to a multiple of a."""
    return (n + a - 1) // a * a


def n_groups(cols, group_size):
    return -(-cols // group_size)


def stored_rows(type_id, rows):
    """The rows a tensor stores: the interleaved types pad to a multiple of INTERLEAVE."""
    return -(-rows // INTERLEAVE) * INTERLEAVE if type_id in INTERLEAVED else rows


def quantized_layout(type_id, rows, cols, group_size):
    """(values_offset, scales_offset, mins_offset or None, size) of a quantized tensor,
    relative to the tensor's start (FORMAT.md "Tensor data"); q4t's table is its last
    Q4T_LEVELS bytes (table_offset)."""
    rows = stored_rows(type_id, rows)
    values = rows * cols if type_id == TYPE_Q8 else rows * cols // 2
    scales_off = align(values)
    scales = rows * n_groups(cols, group_size) * 2
    if type_id in (TYPE_Q4A, TYPE_Q4A_R4):
        mins_off = align(scales_off + scales)
        return 0, scales_off, mins_off, mins_off + scales
    if type_id == TYPE_Q4T:
        return 0, scales_off, None, align(scales_off + scales) + Q4T_LEVELS
    return 0, scales_off, None, scales_off + scales


def table_offset(rows, cols, group_size):
    """Where a q4t tensor's table of Q4T_LEVELS int8 levels starts, from the tensor's start."""
    return quantized_layout(TYPE_Q4T, rows, cols, group_size)[3] - Q4T_LEVELS


def entry_size(type_id, rows, cols, group_size):
    """The byte size an entry of this type and shape must have (None for a blob: any)."""
    if type_id == TYPE_F32:
        return rows * cols * 4
    if type_id == TYPE_BLOB:
        return None
    return quantized_layout(type_id, rows, cols, group_size)[3]


def complete_header(fields):
    """The model fields of `fields` with defaults filled in and eos_ids as a tuple;
    n_eos is derived from eos_ids. Raises ValueError on a missing or unknown key."""
    unknown = set(fields) - set(MODEL_FIELDS) - {"n_eos", "magic", "version", "header_size",
                                                 "file_size", "n_entries", "table_offset"}
    if unknown:
        raise ValueError(f"unknown header field(s): {', '.join(sorted(unknown))}")
    h = dict(MODEL_DEFAULTS)
    h.update({k: v for k, v in fields.items() if k in MODEL_FIELDS})
    missing = [k for k in MODEL_FIELDS if k not in h]
    if missing:
        raise ValueError(f"missing header field(s): {', '.join(missing)}")
    for k in INT_FIELDS:
        try:
            h[k] = operator.index(h[k])
        except TypeError:
            raise ValueError(f"header field {k} = {h[k]!r}: must be an integer") from None
    for k in FLOAT_FIELDS:
        try:
            h[k] = float(h[k])
            struct.pack("<f", h[k])  # stored as f32: must fit
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"header field {k} = {h[k]!r}: must be a number that fits a float32") from None
    eos = [int(e) for e in h["eos_ids"]]
    if "n_eos" in fields:
        eos = eos[:int(fields["n_eos"])]
    h["eos_ids"] = tuple(eos)
    h["n_eos"] = len(eos)
    return h


def validate_model_header(h):
    """Checks the model fields against the ranges of FORMAT.md; raises ValueError
    naming the first bad field. `h` as returned by complete_header or unpack_header."""
    def check(ok, field, why):
        if not ok:
            raise ValueError(f"header field {field} = {h[field]!r}: {why}")

    check(1 <= h["dim"] <= MAX_DIM and h["dim"] % 32 == 0, "dim", f"must be in 1..{MAX_DIM} and a multiple of 32")
    check(1 <= h["hidden_dim"] <= MAX_HIDDEN_DIM and h["hidden_dim"] % 32 == 0, "hidden_dim",
          f"must be in 1..{MAX_HIDDEN_DIM} and a multiple of 32")
    check(1 <= h["n_layers"] <= MAX_LAYERS, "n_layers", f"must be in 1..{MAX_LAYERS}")
    check(1 <= h["n_heads"] <= MAX_HEADS, "n_heads", f"must be in 1..{MAX_HEADS}")
    check(1 <= h["n_kv_heads"] <= h["n_heads"] and h["n_heads"] % h["n_kv_heads"] == 0, "n_kv_heads",
          "must be in 1..n_heads and divide n_heads")
    check(2 <= h["head_dim"] <= MAX_HEAD_DIM and h["head_dim"] % 2 == 0, "head_dim",
          f"must be even and in 2..{MAX_HEAD_DIM}")
    check((h["n_heads"] * h["head_dim"]) % 32 == 0 and (h["n_kv_heads"] * h["head_dim"]) % 32 == 0,
          "head_dim", "n_heads*head_dim and n_kv_heads*head_dim must be multiples of 32")
    check(1 <= h["vocab_size"] <= MAX_VOCAB, "vocab_size", f"must be in 1..{MAX_VOCAB}")
    check(1 <= h["max_seq_len"] <= MAX_SEQ_LEN, "max_seq_len", f"must be in 1..{MAX_SEQ_LEN}")
    check(h["tied_embeddings"] in (0, 1), "tied_embeddings", "must be 0 or 1")
    check(h["bos_id"] == -1 or 0 <= h["bos_id"] < h["vocab_size"], "bos_id", "must be -1 or < vocab_size")
    check(0 <= h["n_eos"] <= MAX_EOS, "n_eos", f"must be in 0..{MAX_EOS}")
    for e in h["eos_ids"][:h["n_eos"]]:
        check(0 <= e < h["vocab_size"], "eos_ids", "every eos id must be in 0..vocab_size-1")
    check(h["rope_scaling"] in (ROPE_NONE, ROPE_LLAMA3), "rope_scaling", "must be 0 (none) or 1 (llama3)")
    for k in ("norm_eps", "rope_theta"):
        check(math.isfinite(h[k]) and h[k] > 0, k, "must be finite and > 0")
    if h["rope_scaling"] == ROPE_LLAMA3:
        check(h["rope_original_max_pos"] >= 1, "rope_original_max_pos", "must be >= 1 for llama3 rope")
        check(math.isfinite(h["rope_factor"]) and h["rope_factor"] >= 1, "rope_factor",
              "must be finite and >= 1 for llama3 rope")
        check(math.isfinite(h["rope_low_freq_factor"]) and h["rope_low_freq_factor"] > 0,
              "rope_low_freq_factor", "must be finite and > 0 for llama3 rope")
        check(math.isfinite(h["rope_high_freq_factor"])
              and h["rope_high_freq_factor"] > h["rope_low_freq_factor"],
              "rope_high_freq_factor", "must be finite and > rope_low_freq_factor for llama3 rope")
    check(0 <= h["group_size"] < 1 << 32, "group_size", "must fit in a u32")
    check(h["ffn_rotation"] in (FFN_ROTATION_NONE, FFN_ROTATION_HADAMARD), "ffn_rotation",
          f"must be {FFN_ROTATION_NONE} (none) or {FFN_ROTATION_HADAMARD} (Hadamard)")


def pack_header(h, file_size, n_entries, table_offset=HEADER_SIZE):
    """The 256 header bytes for complete_header(...) fields `h`."""
    eos = list(h["eos_ids"][:h["n_eos"]]) + [-1] * (MAX_EOS - h["n_eos"])
    return HEADER_STRUCT.pack(
        MAGIC, format_version(h), HEADER_SIZE, file_size,
        h["dim"], h["hidden_dim"], h["n_layers"], h["n_heads"], h["n_kv_heads"], h["head_dim"],
        h["vocab_size"], h["max_seq_len"], h["tied_embeddings"],
        h["bos_id"], h["n_eos"], *eos,
        h["rope_scaling"], h["rope_original_max_pos"], h["norm_eps"], h["rope_theta"],
        h["rope_factor"], h["rope_low_freq_factor"], h["rope_high_freq_factor"],
        h["group_size"], n_entries, table_offset, h["ffn_rotation"])


def unpack_header(buf):
    """The header dict (all FORMAT.md fields, eos_ids as a tuple of 4) of 256 bytes."""
    v = HEADER_STRUCT.unpack(bytes(buf[:HEADER_SIZE]))
    names = ("magic", "version", "header_size", "file_size", "dim", "hidden_dim", "n_layers", "n_heads",
             "n_kv_heads", "head_dim", "vocab_size", "max_seq_len", "tied_embeddings", "bos_id", "n_eos")
    h = dict(zip(names, v[:15]))
    h["eos_ids"] = tuple(v[15:19])
    rest = ("rope_scaling", "rope_original_max_pos", "norm_eps", "rope_theta", "rope_factor",
            "rope_low_freq_factor", "rope_high_freq_factor", "group_size", "n_entries", "table_offset",
            "ffn_rotation")
    h.update(zip(rest, v[19:]))
    if h["version"] < FORMAT_VERSION:  # version 1: reserved bytes, never read
        h["ffn_rotation"] = FFN_ROTATION_NONE
    return h


def encode_name(name):
    """An entry name as its 64 table bytes; ValueError if empty, too long or with a NUL."""
    b = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    if not b or len(b) >= NAME_MAX or b"\0" in b:
        raise ValueError(f"entry name {name!r}: must be 1..{NAME_MAX - 1} bytes without NUL")
    return b.ljust(NAME_MAX, b"\0")


def validate_group_size(group_size):
    if not (isinstance(group_size, int) and MIN_GROUP <= group_size <= MAX_GROUP
            and group_size % MIN_GROUP == 0):
        raise ValueError(f"group size {group_size!r}: must be a multiple of {MIN_GROUP} "
                         f"in {MIN_GROUP}..{MAX_GROUP}")
