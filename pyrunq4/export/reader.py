"""read_rq4: a pure-numpy mirror of the C loader (src/runq4.c), for tests and tools.

It checks what the C side checks, in the same order: magic, version, header
size, file size, the model fields, then every table entry (name, type, group
size, shape, 64-aligned offset, size implied by type and shape, inside the
file, finite scales, q4t tables increasing), and, with check_model, that the model's tensors are
all there with the right shapes. Every failure is a ValueError with a
one-line message.
"""

import os

import numpy as np

from .format import (ENTRY_STRUCT, FFN_ROTATION_FACTOR, FFN_ROTATION_NONE, FFN_ROTATION_SIGNS, FORMAT_VERSION,
                     HEADER_SIZE, MAGIC, MAX_ENTRIES, MAX_ROTATION_FACTOR, MIN_FORMAT_VERSION, TYPE_BLOB,
                     TYPE_F32, TYPE_NAMES, ALIGN, entry_size, unpack_header,
                     validate_group_size, validate_model_header)
from .quant import check_table, dequantize, unpack


def model_entry_shapes(h):
    """{name: (rows, cols)} of the tensors a model with header h must have."""
    dim, hid, kv = h["dim"], h["hidden_dim"], h["n_kv_heads"] * h["head_dim"]
    qd = h["n_heads"] * h["head_dim"]
    shapes = {"tok_embeddings": (h["vocab_size"], dim), "norm": (1, dim)}
    if not h["tied_embeddings"]:
        shapes["output"] = (h["vocab_size"], dim)
    for i in range(h["n_layers"]):
        p = f"layers.{i}."
        shapes.update({p + "attention_norm": (1, dim), p + "wq": (qd, dim), p + "wk": (kv, dim),
                       p + "wv": (kv, dim), p + "wo": (dim, qd), p + "ffn_norm": (1, dim),
                       p + "w1": (hid, dim), p + "w2": (dim, hid), p + "w3": (hid, dim)})
    return shapes


def check_ffn_rotation(signs, factor, hidden_dim):
    """Raises ValueError unless signs (hidden_dim values) are all +1 or -1 and
    factor is an m x m Hadamard matrix (entries +1 or -1, F F^T = m I) whose
    order m <= MAX_ROTATION_FACTOR divides hidden_dim with a power of two as the
    quotient: what the C loader checks (src/hadamard.c)."""
    m = factor.shape[0]
    if not 1 <= m <= MAX_ROTATION_FACTOR or factor.shape != (m, m):
        raise ValueError(f"{FFN_ROTATION_FACTOR}: order {factor.shape} outside [1, {MAX_ROTATION_FACTOR}]")
    p = hidden_dim // m
    if hidden_dim % m or p & (p - 1):
        raise ValueError(f"{FFN_ROTATION_FACTOR}: hidden_dim {hidden_dim} / order {m} is not a power of two")
    for name, a in ((FFN_ROTATION_SIGNS, signs), (FFN_ROTATION_FACTOR, factor)):
        if not np.isin(a, (1.0, -1.0)).all():
            raise ValueError(f"{name}: values must be +1 or -1")
    f = factor.astype(np.int64)
    if not (f @ f.T == m * np.eye(m, dtype=np.int64)).all():
        raise ValueError(f"{FFN_ROTATION_FACTOR}: rows are not orthogonal (not a Hadamard matrix)")


def read_table(path):
    """(header dict, [entry dicts]) after validating the header and the table; the
    entry dicts have name, type (a name: 'f32', 'q4s', ...), group_size, rows, cols,
    offset, size. Raises ValueError."""
    path = os.fspath(path)
    actual = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
        if head[:4] == b"GGUF":
            raise ValueError(f"{path}: not an .rq4 file but a GGUF file (convert it with the exporter)")
        if len(head) < 16 or head[:8] != MAGIC:
            raise ValueError(f"{path}: not an .rq4 file (bad magic)")
        version = int.from_bytes(head[8:12], "little")
        if not MIN_FORMAT_VERSION <= version <= FORMAT_VERSION:
            raise ValueError(f"{path}: .rq4 format version {version}, this reader reads versions "
                             f"{MIN_FORMAT_VERSION} to {FORMAT_VERSION}")
        if len(head) < HEADER_SIZE:
            raise ValueError(f"{path}: truncated header ({len(head)} of {HEADER_SIZE} bytes)")
        h = unpack_header(head)
        if h["header_size"] != HEADER_SIZE:
            raise ValueError(f"{path}: header_size {h['header_size']}, expected {HEADER_SIZE}")
        if h["file_size"] != actual:
            raise ValueError(f"{path}: file is {actual} bytes, header says {h['file_size']} (truncated copy?)")
        try:
            validate_model_header(h)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if any(h["eos_ids"][i] != -1 for i in range(h["n_eos"], 4)):
            raise ValueError(f"{path}: unused eos_ids must be -1")
        # (the reserved bytes are written as zero but, as in the C loader, not checked)
        n = h["n_entries"]
        if not 1 <= n <= MAX_ENTRIES:
            raise ValueError(f"{path}: n_entries {n}: must be in 1..{MAX_ENTRIES}")
        if h["table_offset"] != HEADER_SIZE:
            raise ValueError(f"{path}: table_offset {h['table_offset']}, expected {HEADER_SIZE}")
        table_end = HEADER_SIZE + n * ENTRY_STRUCT.size
        if table_end > actual:
            raise ValueError(f"{path}: the entry table ends at {table_end}, past the end of the file ({actual})")
        f.seek(HEADER_SIZE)
        table = f.read(n * ENTRY_STRUCT.size)
    entries, seen = [], set()
    for i in range(n):
        raw_name, t, gs, rows, cols, off, size = ENTRY_STRUCT.unpack_from(table, i * ENTRY_STRUCT.size)
        nul = raw_name.find(b"\0")
        if nul < 0:
            raise ValueError(f"{path}: entry {i}: name is not NUL-terminated")
        if nul == 0:
            raise ValueError(f"{path}: entry {i} has an empty name")
        try:
            name = raw_name[:nul].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: entry {i}: name is not UTF-8") from None
        where = f"{path}: entry {name!r}"
        if name in seen:
            raise ValueError(f"{where}: duplicate name")
        seen.add(name)
        if t not in TYPE_NAMES:
            raise ValueError(f"{where}: unknown type {t}")
        if t in (TYPE_F32, TYPE_BLOB):
            if gs != 0:
                raise ValueError(f"{where}: group_size {gs} must be 0 for {TYPE_NAMES[t]}")
        else:
            try:
                validate_group_size(gs)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        # (a blob's rows/cols are written as 1/0 but, as in the C loader, not checked)
        if t != TYPE_BLOB and (rows < 1 or cols < 1 or (t != TYPE_F32 and cols % 32)):
            raise ValueError(f"{where}: bad shape {rows}x{cols}")
        if off % ALIGN:
            raise ValueError(f"{where}: offset {off} is not a multiple of {ALIGN}")
        if off < table_end:
            raise ValueError(f"{where}: offset {off} overlaps the header or the table")
        want = entry_size(t, rows, cols, gs)
        if want is not None and size != want:
            raise ValueError(f"{where}: size {size}, a {TYPE_NAMES[t]} {rows}x{cols} needs {want}")
        if off + size > actual:
            raise ValueError(f"{where}: data [{off}, {off + size}) runs past the end of the file ({actual})")
        entries.append({"name": name, "type": TYPE_NAMES[t], "group_size": gs, "rows": rows,
                        "cols": cols, "offset": off, "size": size})
    return h, entries


def read_rq4(path, check_model=True, names=None):
    """(header, entries): header = the FORMAT.md fields (eos_ids trimmed to n_eos),
    entries = {name: QuantizedTensor | float32 ndarray (rows, cols) | bytes},
    copied out of a read-only memmap. names: load only these (None: all).
    check_model: also require the model tensors with their shapes (unknown extra
    entries are allowed, as in the C loader). Raises ValueError."""
    path = os.fspath(path)
    h, table = read_table(path)
    h["eos_ids"] = tuple(h["eos_ids"][:h["n_eos"]])
    if check_model:
        byname = {e["name"]: e for e in table}
        for name, shape in model_entry_shapes(h).items():
            e = byname.get(name)
            if e is None:
                raise ValueError(f"{path}: missing tensor {name!r}")
            if e["type"] == "blob" or (e["rows"], e["cols"]) != shape:
                raise ValueError(f"{path}: tensor {name!r} is {e['type']} {e['rows']}x{e['cols']}, "
                                 f"expected {shape[0]}x{shape[1]}")
            if shape[0] == 1 and e["type"] != "f32":
                raise ValueError(f"{path}: norm {name!r} must be f32, is {e['type']}")
        if h["ffn_rotation"] != FFN_ROTATION_NONE:
            for name in (FFN_ROTATION_SIGNS, FFN_ROTATION_FACTOR):
                if name not in byname or byname[name]["type"] != "f32":
                    raise ValueError(f"{path}: ffn_rotation {h['ffn_rotation']} needs the f32 tensor {name!r}")
            if (byname[FFN_ROTATION_SIGNS]["rows"], byname[FFN_ROTATION_SIGNS]["cols"]) != (1, h["hidden_dim"]):
                raise ValueError(f"{path}: tensor {FFN_ROTATION_SIGNS!r} must be 1x{h['hidden_dim']}")
    mm = np.memmap(path, np.uint8, mode="r")
    entries = {}
    for e in table:
        name = e["name"]
        if names is not None and name not in names:
            continue
        raw = mm[e["offset"]:e["offset"] + e["size"]]
        if e["type"] == "blob":
            entries[name] = bytes(raw)
        elif e["type"] == "f32":
            entries[name] = np.array(raw.view("<f4").reshape(e["rows"], e["cols"]), np.float32)
        else:
            qt = unpack(e["type"], e["rows"], e["cols"], e["group_size"], raw)
            for what, a in (("scales", qt.d), ("mins", qt.m)):
                if a is not None and not np.isfinite(a).all():
                    raise ValueError(f"{path}: entry {name!r}: non-finite {what}")
            try:
                check_table(qt.type, qt.table)
            except ValueError as e:
                raise ValueError(f"{path}: entry {name!r}: {e}") from None
            entries[name] = qt
    del mm
    if check_model and h["ffn_rotation"] != FFN_ROTATION_NONE and names is None:
        try:
            check_ffn_rotation(entries[FFN_ROTATION_SIGNS].reshape(-1), entries[FFN_ROTATION_FACTOR],
                               h["hidden_dim"])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return h, entries


def weights_from_rq4(path):
    """(weights, cfg) from an .rq4 file read by read_rq4 (pure numpy, not the
    engine), as pyrunq4.reference takes them: quantized tensors dequantized to
    float32, F32 tensors as stored (norms flattened to 1-D), blobs left out;
    cfg is the header dict."""
    header, entries = read_rq4(path)
    weights = {}
    for name, e in entries.items():
        if isinstance(e, (bytes, bytearray, memoryview)):
            continue
        if isinstance(e, np.ndarray):
            arr = np.asarray(e, dtype=np.float32)
            if name == "norm" or name.endswith("_norm"):
                arr = arr.reshape(-1)
            weights[name] = arr
        else:
            weights[name] = np.asarray(dequantize(e), dtype=np.float32)
    return weights, dict(header)
