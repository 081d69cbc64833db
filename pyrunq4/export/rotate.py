"""Rotations folded into the weights (the QuaRot / SpinQuant idea), exact in float.

The residual stream h of a Llama model is rotated by an orthogonal matrix Q
(h' = Q^T h, column vectors). RMSNorm only sees |h|, which Q keeps, so every
norm can run on the rotated stream once its weight g is moved into the
matrices that read the norm's output:

    reads the stream    (wq, wk, wv after attention_norm; w1, w3 after
                         ffn_norm; the classifier after norm):  W' = W diag(g) Q
    writes the stream   (wo, w2):                             W' = Q^T W
    the embedding table (a token's row is the stream's start): E' = E Q
    every norm weight                                         g' = 1

except on the few channels that some norm switches off (outlier_channels: a
Llama model's massive activations live there): Q leaves them alone and the
norms keep (most of) their weights on them.

Nothing changes at run time and the float model computes the same logits
(up to rounding); what changes is the quantization: a randomized Hadamard Q
spreads the few very large channels of the stream over all channels, so the
weights that read it (and their int8 activations) have no outlier columns.

A tied embedding is both the lookup table (needs E Q) and the classifier
(needs E diag(g) Q). Both only agree if the final norm's weight is 1, so a
tied model comes out untied: tok_embeddings = E Q and output = E diag(g) Q
(header tied_embeddings = 0).

FfnRotatedSource adds the one rotation that is not folded: the input of
every w2 (the SwiGLU product, where the FFN's outliers are) is multiplied by a
randomized Hadamard Q at run time (header ffn_rotation, docs/FORMAT.md; the
engine's src/hadamard.c) and w2 is stored as W2 Q^T.

Q is a Hadamard matrix with random signs on its columns, H diag(s) / sqrt(n),
for every n = 2^k * m where m is 1 or a product of Paley orders (q + 1 for a
prime q = 3 mod 4: 4, 8, 12, 20, 24, 32, 44, 48, ...; SmolLM2's 576 is
12 * 12 * 4); for other n a random orthogonal matrix (QR of a Gaussian one).
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import ExportError
from ..reference import rotate_ffn_input
from .format import FFN_ROTATION_FACTOR, FFN_ROTATION_HADAMARD, FFN_ROTATION_SIGNS, MAX_ROTATION_FACTOR
from .sources.base import Source

__all__ = ["hadamard", "random_rotation", "outlier_channels", "rotation", "rotate_weights",
           "RotatedSource", "ffn_rotation", "FfnRotatedSource"]

_ROW_CHUNK = 8192  # rows of a large matrix rotated at once


def _is_prime(q):
    return q >= 2 and all(q % p for p in range(2, int(q ** 0.5) + 1))


def _paley(n):
    """Paley construction I: a +-1 Hadamard matrix of order n = q + 1, q a prime = 3 mod 4."""
    q = n - 1
    residues = np.zeros(q, bool)
    residues[(np.arange(1, q) ** 2) % q] = True
    chi = np.where(residues, 1, -1)
    chi[0] = 0
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    core = chi[idx]                          # Jacobsthal matrix, skew-symmetric
    h = np.ones((n, n), np.int64)
    h[1:, 0] = -1
    h[1:, 1:] = core + np.eye(q, dtype=np.int64)
    return h


@functools.lru_cache(maxsize=None)
def _hadamard_pm1(n):
    """A +-1 Hadamard matrix of order n (H H^T = n I), or None if not constructed here
    (cached: callers must not modify it)."""
    if n == 1:
        return np.ones((1, 1), np.int64)
    if n % 2 == 0:
        h = _hadamard_pm1(n // 2)
        if h is not None:
            return np.block([[h, h], [h, -h]])          # Sylvester doubling
    if n % 4 == 0 and _is_prime(n - 1) and (n - 1) % 4 == 3:
        return _paley(n)
    for m in range(12, int(n ** 0.5) + 1, 4):           # a Kronecker product of two orders
        if n % m == 0:
            a, b = _hadamard_pm1(m), _hadamard_pm1(n // m)
            if a is not None and b is not None:
                return np.kron(a, b)
    return None


def hadamard(n):
    """The orthonormal Hadamard matrix H / sqrt(n) (float64), or None for an order
    this module cannot construct."""
    h = _hadamard_pm1(int(n))
    return None if h is None else h / np.sqrt(n)


def random_rotation(n, seed=0):
    """An n x n orthogonal float64 matrix: a Hadamard matrix with random column
    signs when one of order n is known, else a random orthogonal matrix."""
    rng = np.random.default_rng(seed)
    h = hadamard(n)
    if h is not None:
        return h * rng.choice((-1.0, 1.0), size=n)[None, :]
    a, r = np.linalg.qr(rng.standard_normal((n, n)))
    return a * np.sign(np.diag(r))[None, :]


def outlier_channels(norm_weights, ratio=0.01):
    """Channels of the residual stream that some RMSNorm all but switches off:
    |g_c| < ratio * median |g| in at least one of the norm weights given (1-D
    arrays). These are where a Llama model keeps its massive activations
    (values in the thousands on the first tokens): rotated, such a value would
    reach every channel of the normalized stream, and the matrices that read it
    would have to keep it cancelled to 4-bit precision; left out of the
    rotation, the norm keeps switching it off."""
    g = np.abs(np.stack([np.asarray(w, np.float64).reshape(-1) for w in norm_weights]))
    med = np.median(g, axis=1, keepdims=True)
    return np.flatnonzero((g < ratio * med).any(axis=0))


def rotation(dim, keep=(), seed=0):
    """dim x dim orthogonal: identity on the channels `keep`, random_rotation on the rest."""
    q = np.eye(dim)
    rest = np.setdiff1d(np.arange(dim), np.asarray(keep, dtype=np.int64))
    q[np.ix_(rest, rest)] = random_rotation(len(rest), seed)
    return q


def _right(w, m):
    """w @ m in float32 row chunks (float32 products are ~1e-7 relative, far below
    any quantization step, at half the time of float64 ones)."""
    w = np.asarray(w)
    m = np.asarray(m, np.float32)
    out = np.empty((w.shape[0], m.shape[1]), np.float32)
    for r0 in range(0, w.shape[0], _ROW_CHUNK):
        np.matmul(np.asarray(w[r0:r0 + _ROW_CHUNK], np.float32), m, out=out[r0:r0 + _ROW_CHUNK])
    return out


def _rotated(name, get, q, tied, keep):
    """Entry `name` of the rotated model from get(name) of the original one.
    Norm weights are folded into the matrices that read the norm, except on the
    channels `keep` (which q leaves alone): there the matrices get the RMS of the
    other channels' weights (so those columns keep the scale of their
    neighbours in a quantization group) and the norm the rest of the weight."""
    def split(norm):
        """(weight folded into the matrices, weight left in the norm), float64."""
        g = np.asarray(get(norm), np.float64).reshape(-1)
        fold, stay = g.copy(), np.ones_like(g)
        if keep.size:
            rest = np.ones(g.size, bool)
            rest[keep] = False
            s = np.sqrt(np.mean(g[rest] ** 2)) if rest.any() else 1.0
            fold[keep] = s
            stay[keep] = g[keep] / s
        return fold, stay

    if name == "norm" or name.endswith("_norm"):
        return split(name)[1].astype(np.float32)
    if name == "tok_embeddings":
        return _right(get("tok_embeddings"), q)
    if name == "output":
        return _right(get("tok_embeddings" if tied else "output"), split("norm")[0][:, None] * q)
    layer, _, kind = name.rpartition(".")
    if kind in ("wo", "w2"):
        return np.ascontiguousarray(q.T.astype(np.float32) @ np.asarray(get(name), np.float32))
    norm = {"wq": "attention_norm", "wk": "attention_norm", "wv": "attention_norm",
            "w1": "ffn_norm", "w3": "ffn_norm"}[kind]
    return _right(get(name), split(f"{layer}.{norm}")[0][:, None] * q)


def rotate_weights(weights, cfg, q, keep=()):
    """(weights, cfg) of the rotated model from a dict of float arrays (FORMAT.md
    names) and its header; q: dim x dim orthogonal (rotation(dim, keep, seed)).
    A tied model comes out untied."""
    tied = bool(int(cfg.get("tied_embeddings", 0)))
    keep = np.asarray(keep, dtype=np.int64)
    names = list(weights) + (["output"] if tied else [])
    out = {k: _rotated(k, weights.__getitem__, q, tied, keep) for k in names}
    return out, dict(cfg, tied_embeddings=0)


class RotatedSource(Source):
    """A source whose tensors are those of `src` rotated by rotation(dim, keep, seed),
    keep = outlier_channels of all its norms. Needs src.read (random access: a
    matrix that reads a norm needs the norm first)."""

    def __init__(self, src, seed=0):
        self.src = src
        self.tied = bool(int(src.header.get("tied_embeddings", 0)))
        self.header = dict(src.header, tied_embeddings=0)
        self.blobs = src.blobs
        self._cache = {}
        self.keep = outlier_channels([self._get(k) for k in src.tensor_names()
                                      if k == "norm" or k.endswith("_norm")])
        self.q = rotation(int(src.header["dim"]), self.keep, seed)
        note = getattr(src, "note", None)
        self.note = ((note + "; ") if note else "") + (
            f"rotated (seed {seed}), channels left out: {', '.join(map(str, self.keep)) or 'none'}")

    def tensor_names(self):
        names = list(self.src.tensor_names())
        return names + (["output"] if self.tied else [])

    def _get(self, name):
        """The source's float32 tensor; norms (read by several matrices) kept."""
        if name in self._cache:
            return self._cache[name]
        w = self.src.read(name)
        if name == "norm" or name.endswith("_norm"):
            self._cache[name] = w
        return w

    def read(self, name):
        if name not in self.tensor_names():
            raise KeyError(name)
        return _rotated(name, self._get, self.q, self.tied, self.keep)

    def tensors(self):
        for name in self.tensor_names():
            yield name, self.read(name)

    def close(self):
        self.src.close()


def ffn_rotation(hidden_dim, seed=0):
    """(signs (1, hidden_dim), factor (m, m)) float32 of header ffn_rotation
    HADAMARD: Q = kron(F, H_p) diag(s) / sqrt(hidden_dim) with F the smallest
    Hadamard matrix this module builds (Sylvester, Paley, their products) whose
    order m divides hidden_dim with a power of two p as the quotient (1 for
    Llama-3.2-1B's 8192, 12 for SmolLM2's 1536). ExportError if there is none
    up to MAX_ROTATION_FACTOR."""
    n = int(hidden_dim)
    m = n // (n & -n)                            # the odd part of n, then doubled
    while m <= MAX_ROTATION_FACTOR and n % m == 0 and _hadamard_pm1(m) is None:
        m *= 2
    if m > MAX_ROTATION_FACTOR or n % m:
        raise ExportError(f"--rotate-ffn: hidden_dim {n} has no Hadamard factor of order <= "
                          f"{MAX_ROTATION_FACTOR} times a power of two that this exporter builds")
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=n)
    return signs.astype(np.float32)[None, :], _hadamard_pm1(m).astype(np.float32)


class FfnRotatedSource(Source):
    """A source whose w2 matrices are those of `src` times Q^T, Q the online
    rotation of w2's input (ffn_rotation(hidden_dim, seed)), with the header
    field and the two entries that tell the engine to apply Q. Needs src.read."""

    def __init__(self, src, seed=0):
        self.src = src
        self.header = dict(src.header, ffn_rotation=FFN_ROTATION_HADAMARD)
        self.blobs = src.blobs
        self.signs, self.factor = ffn_rotation(int(src.header["hidden_dim"]), seed)
        note = getattr(src, "note", None)
        self.note = ((note + "; ") if note else "") + (
            f"w2's input rotated at run time (Hadamard of order {self.factor.shape[0]} x "
            f"{self.signs.shape[1] // self.factor.shape[0]}, seed {seed})")

    def tensor_names(self):
        return [FFN_ROTATION_SIGNS, FFN_ROTATION_FACTOR] + list(self.src.tensor_names())

    def read(self, name):
        if name == FFN_ROTATION_SIGNS:
            return self.signs
        if name == FFN_ROTATION_FACTOR:
            return self.factor
        w = self.src.read(name)
        if name.endswith(".w2"):       # W2 Q^T: each row r of it is Q W2[r]
            w = rotate_ffn_input(np.asarray(w, np.float32), self.signs, self.factor)
        return w

    def tensors(self):
        for name in self.tensor_names():
            yield name, self.read(name)

    def close(self):
        self.src.close()
