"""--max-size: per-matrix group sizes chosen so the file fits a byte budget.

Every matrix stays int4 of --weight-type; what varies is its group size:
--group-size, or a finer one (halved down to MIN_GROUP). A finer group costs
one more fp16 scale (and with q4a a minimum) per group, so the question is
where those bytes lower the model's error most, as llama.cpp's K-quant mixes
give more bits to some tensors by name and depth.

The model of the error (docs/QUALITY.md, "Size-budgeted mix"): a matrix of
n weights at group size g adds to the model's error

    loss(name, g) = n * sensitivity(name) * err(name, g)

err: the relative squared error of round-to-nearest at group g, measured on
the matrix itself (no data needed: it sees, e.g., that a source already
quantized in groups of 32 loses nothing at 32). sensitivity(name): how much
KL divergence from the float model a unit of that error costs per weight, by
the role of the matrix (wq ... w2, the embedding) and its depth: a fixed
table measured once (SENSITIVITY), as llama.cpp's mixes are rules by name and
depth. So the plan is the same for the same weights, budget and options.
Finer groups are bought greedily, the step that saves the most loss per extra
byte first, while the whole file still fits; ties go to the earlier matrix of
the file.
"""

import re

import numpy as np

from .format import ENTRY_SIZE, FFN_ROTATION_ENTRIES, HEADER_SIZE, MIN_GROUP, TYPE_F32, TYPE_IDS, align, entry_size
from .quant import dequantize, quantize_rtn
from .quantizers import quantize_q4t

__all__ = ["parse_size", "matrix_shapes", "group_choices", "plan_group_sizes", "plan_export", "file_size",
           "rtn_errors", "sensitivity", "MixError"]

# Units --max-size accepts: decimal (as `ls -l` and the docs' MB) and binary.
SIZE_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9,
              "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*$")

LAYER_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
EMBEDDINGS = ("tok_embeddings", "output")

# KL divergence from the float model per million weights and unit of relative
# squared error, by role and fifth of the layers: the KL of round-to-nearest
# q4a at group 128 in that role and fifth (the rest float) over its weights and
# error (docs/QUALITY.md, "Size-budgeted mix": SmolLM2-135M, calibration text).
DEPTH_BINS = 5
SENSITIVITY = {
    "wq": (0.090, 0.16, 0.27, 0.33, 0.10),
    "wk": (0.38, 0.35, 0.85, 0.77, 0.55),
    "wv": (5.8, 3.0, 3.7, 4.0, 1.7),
    "wo": (0.29, 0.16, 0.22, 0.18, 0.14),
    "w1": (0.12, 0.11, 0.13, 0.11, 0.22),
    "w2": (0.45, 1.5, 0.11, 0.19, 1.4),
    "w3": (0.16, 0.18, 0.19, 0.26, 0.40),
}
EMBEDDING_SENSITIVITY = 0.22            # the tied embedding (lookup and classifier), or each untied table


class MixError(ValueError):
    """A budget that cannot be met, or a size that cannot be read: one line for the user."""


def parse_size(text):
    """'79MB', '79.1 MB', '75MiB', '79100000' -> bytes (int). MB = 10^6 bytes."""
    m = _SIZE_RE.match(str(text))
    unit = m and m.group(2).lower()
    if not m or unit not in SIZE_UNITS:
        raise MixError(f"--max-size {text!r}: expected a number with an optional unit "
                       f"(B, kB, MB, GB, KiB, MiB, GiB), e.g. 79MB")
    size = int(float(m.group(1)) * SIZE_UNITS[unit])
    if size <= 0:
        raise MixError(f"--max-size {text!r}: must be positive")
    return size


def matrix_shapes(cfg):
    """{name: (rows, cols)} of the int4 matrices of a Llama model described by the
    header cfg, in the exporter's file order."""
    dim, hidden = int(cfg["dim"]), int(cfg["hidden_dim"])
    q_dim = int(cfg["n_heads"]) * int(cfg["head_dim"])
    kv_dim = int(cfg["n_kv_heads"]) * int(cfg["head_dim"])
    shapes = {"wq": (q_dim, dim), "wk": (kv_dim, dim), "wv": (kv_dim, dim), "wo": (dim, q_dim),
              "w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim)}
    out = {f"layers.{i}.{k}": shapes[k] for i in range(int(cfg["n_layers"])) for k in LAYER_MATRICES}
    if not int(cfg.get("tied_embeddings", 0)):
        out["output"] = (int(cfg["vocab_size"]), dim)
    out["tok_embeddings"] = (int(cfg["vocab_size"]), dim)
    return out


def group_choices(base):
    """The group sizes a matrix may get: base, base/2, ... down to MIN_GROUP
    (those that are multiples of MIN_GROUP), coarsest first."""
    out = [base]
    while out[-1] // 2 >= MIN_GROUP and (out[-1] // 2) % MIN_GROUP == 0:
        out.append(out[-1] // 2)
    return out


def file_size(entry_sizes, n_entries):
    """Bytes of an .rq4 file whose entries (in file order) have these sizes, as
    Rq4Writer lays it out: the header and a table of n_entries entries, each
    entry at the next multiple of ALIGN, no padding after the last."""
    pos = HEADER_SIZE + n_entries * ENTRY_SIZE
    for size in entry_sizes:
        pos = align(pos) + size
    return pos


def plan_group_sizes(shapes, losses, file_type, base, fixed_sizes, n_entries, budget):
    """{matrix name: group size} for the matrices `shapes` ({name: (rows, cols)}, file
    order) of type file_type (q4s, q4a, q4t, or an interleaved one; or {name: type}), each of
    group_choices(base), so that the file (those matrices, then the entries of
    fixed_sizes: bytes of the norms and blobs, the last one last in the file) is
    at most `budget` bytes. losses: {name: {group size: loss}}. Greedy: the step
    to the next finer group size that saves the most loss per extra byte first
    (ties: earlier matrix), skipping a step that would not fit. Raises MixError
    if even the coarsest groups do not fit."""
    choices = group_choices(base)
    names = list(shapes)
    type_id = {n: TYPE_IDS[file_type if isinstance(file_type, str) else file_type[n]] for n in names}
    size = {(n, g): entry_size(type_id[n], *shapes[n], g) for n in names for g in choices}
    level = dict.fromkeys(names, 0)                 # index into choices

    def total():
        return file_size([size[n, choices[level[n]]] for n in names] + list(fixed_sizes), n_entries)

    smallest = total()
    if smallest > budget:
        raise MixError(f"--max-size {budget / 1e6:.2f} MB: the smallest file of this model with "
                       f"--group-size {base} is {smallest / 1e6:.2f} MB; raise the budget or the group size")
    used = smallest
    while True:
        best = None
        for k, n in enumerate(names):
            if level[n] + 1 >= len(choices):
                continue
            g0, g1 = choices[level[n]], choices[level[n] + 1]
            extra = size[n, g1] - size[n, g0]
            if used + align(extra) > budget:    # an upper bound of what the step adds
                continue
            gain = (losses[n][g0] - losses[n][g1]) / extra
            if best is None or gain > best[0]:
                best = (gain, k, n)
        if best is None:
            break
        level[best[2]] += 1
        used = total()
    return {n: choices[level[n]] for n in names}


def sensitivity(name, n_layers):
    """KL divergence per weight and unit of relative squared error of matrix
    `name` (SENSITIVITY: by role, and for layers by depth, in DEPTH_BINS equal
    parts of the model)."""
    if not name.startswith("layers."):
        return EMBEDDING_SENSITIVITY
    _, i, role = name.split(".")
    return SENSITIVITY[role][int(i) * DEPTH_BINS // n_layers]


def rtn_errors(w, weight_type, choices):
    """{group size: relative squared error of round-to-nearest} of the matrix w."""
    w = np.asarray(w, dtype=np.float32)
    norm = float(np.sum(np.square(w, dtype=np.float64))) or 1.0
    out = {}
    for g in choices:
        qt = quantize_q4t(w, g, "rtn") if weight_type == "q4t" else quantize_rtn(w, g, weight_type)
        out[g] = float(np.sum(np.square(w - dequantize(qt), dtype=np.float64))) / norm
    return out


def plan_export(cfg, names, blobs, read, weight_type, file_type, base, embedding_q8, budget,
                embedding_type=None, embedding_file_type=None, embedding_group_size=None):
    """The exporter's plan for --max-size: {matrix name: group size} for a model
    with header cfg whose tensors are `names` (matrices and 1-D norms) and whose
    blobs are `blobs` ({name: bytes}), its matrices of weight_type written as
    file_type, the embedding (and an untied output) of embedding_type written as
    embedding_file_type (default: the matrices'; q8 when embedding_q8: fixed, not
    planned; embedding_group_size: fixed at that group size, not planned), within
    `budget` bytes. read(name): the float matrix `name` of the source (for the
    errors of round-to-nearest; read one at a time)."""
    shapes = matrix_shapes(cfg)
    types = {n: (embedding_type or weight_type) if n in EMBEDDINGS else weight_type for n in shapes}
    file_types = {n: (embedding_file_type or file_type) if n in EMBEDDINGS else file_type for n in shapes}
    dim = int(cfg["dim"])
    fixed = []
    for name in names:
        if name in FFN_ROTATION_ENTRIES:
            fixed.append(entry_size(TYPE_F32, *np.shape(read(name)), 0))
        elif name not in shapes:
            if not name.endswith("norm"):
                raise MixError(f"--max-size: cannot plan the size of tensor {name!r}")
            fixed.append(entry_size(TYPE_F32, 1, dim, 0))
    fixed_groups = {}
    if embedding_q8 or embedding_group_size:
        for name in EMBEDDINGS:
            if name in shapes:
                fixed_groups[name] = embedding_group_size or base
                fixed.append(entry_size(TYPE_IDS["q8" if embedding_q8 else file_types[name]], *shapes.pop(name),
                                        fixed_groups[name]))
    fixed += [len(b) for b in (blobs or {}).values()]
    n_entries = len(names) + len(blobs or {})
    # fails early, before any matrix is read, if even the coarsest groups do not fit
    plan_group_sizes(shapes, {n: dict.fromkeys(group_choices(base), 0.0) for n in shapes}, file_types, base,
                     fixed, n_entries, budget)
    n_layers = int(cfg["n_layers"])
    losses = {}
    for n, (rows, cols) in shapes.items():
        err = rtn_errors(read(n), types[n], group_choices(base))
        losses[n] = {g: rows * cols * sensitivity(n, n_layers) * e for g, e in err.items()}
    plan = plan_group_sizes(shapes, losses, file_types, base, fixed, n_entries, budget)
    if not embedding_q8:
        plan.update(fixed_groups)
    return plan
