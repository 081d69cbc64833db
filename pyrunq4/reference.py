"""An independent numpy float64 reference of the Llama 3 forward pass.

Written from Hugging Face ``LlamaForCausalLM`` semantics, not from the C
engine: rotate-half RoPE (value ``i`` of a head pairs with ``i + head_dim/2``),
the ``llama3`` RoPE frequency rule of HF's ``_compute_llama3_parameters``,
grouped-query attention by repeating each kv head ``n_heads // n_kv_heads``
times (query head ``j`` reads kv head ``j // n_rep``, as ``repeat_kv`` does),
``head_dim`` from the config (it need not be ``dim // n_heads``),
``rms(x) = x / sqrt(mean(x^2) + eps) * w``, a SwiGLU FFN, and a tied or untied
classifier. A file whose header has ffn_rotation (docs/FORMAT.md) stores w2 as
``W2 Q^T``; its input is multiplied by ``Q`` here (rotate_ffn_input), written
from the format's definition of ``Q``, not from the C transform.

Inputs:
  weights: dict entry name (docs/FORMAT.md) -> float32 ndarray; matrices are
           (rows, cols) = (out_features, in_features), norms 1-D (a 1 x dim
           array is accepted too).
  cfg:     dict of the .rq4 header fields (dim, n_heads, n_kv_heads, head_dim,
           norm_eps, rope_theta, rope_scaling, rope_factor, ...).

Everything is computed in float64 (layer() can run in float32 for speed) and
vectorised over the sequence (full causal
attention), so SmolLM2-135M on 512 tokens takes a few seconds.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "rope_inv_freq",
    "rms_norm",
    "embed",
    "layer",
    "rotate_ffn_input",
    "head",
    "forward",
]

# Values of the header fields rope_scaling that selects the llama3 rule and
# ffn_rotation that selects the Hadamard rotation of w2's input (docs/FORMAT.md;
# RQ4_ROPE_LLAMA3, RQ4_FFN_ROTATION_HADAMARD in runq4.h). The reference
# deliberately does not import the compiled library, so it stays usable
# without a C compiler.
_ROPE_LLAMA3 = 1
_FFN_ROTATION_HADAMARD = 1


def _w(weights, name, dtype=np.float64):
    """A weight as dtype (norms flattened to 1-D)."""
    return np.asarray(weights[name], dtype=dtype)


def rope_inv_freq(cfg) -> np.ndarray:
    """Inverse frequencies (head_dim/2,) with HF's llama3 adjustment if enabled.

    HF _compute_llama3_parameters: wavelengths longer than
    original_max_pos/low_freq_factor are divided by `factor` (frequency / factor),
    shorter than original_max_pos/high_freq_factor are kept, and in between the
    frequency is interpolated with smooth = (orig/wavelen - low) / (high - low).
    """
    hd = int(cfg["head_dim"])
    base = float(cfg["rope_theta"])
    inv_freq = 1.0 / base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if int(cfg.get("rope_scaling", 0)) != _ROPE_LLAMA3:
        return inv_freq
    factor = float(cfg["rope_factor"])
    low = float(cfg["rope_low_freq_factor"])
    high = float(cfg["rope_high_freq_factor"])
    orig = float(cfg["rope_original_max_pos"])
    low_freq_wavelen = orig / low
    high_freq_wavelen = orig / high
    wavelen = 2.0 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (orig / wavelen - low) / (high - low)
    smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled)


def _rope_cos_sin(cfg, positions):
    """cos, sin of shape (T, head_dim): HF's emb = cat(freqs, freqs)."""
    freqs = np.outer(np.asarray(positions, dtype=np.float64), rope_inv_freq(cfg))
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _apply_rope(x, cos, sin):
    """x: (T, heads, head_dim); cos/sin: (T, head_dim)."""
    return x * cos[:, None, :] + _rotate_half(x) * sin[:, None, :]


def rms_norm(x, w, eps, dtype=np.float64) -> np.ndarray:
    """x: (T, dim) -> x / sqrt(mean(x^2) + eps) * w, in dtype (float64 unless asked)."""
    x = np.asarray(x, dtype=dtype)
    w = np.asarray(w, dtype=dtype).reshape(-1)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + dtype(eps)) * w


def _silu(x):
    return x / (1.0 + np.exp(-x))


def embed(weights, tokens) -> np.ndarray:
    """Token ids (T,) -> the embedding rows (T, dim), float64."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    return np.asarray(weights["tok_embeddings"][tokens], dtype=np.float64)


def _linear(weights, name, x, capture):
    """y = x @ W.T for W (out, in) in x's dtype; capture(name, x) sees the input first."""
    if capture is not None:
        capture(name, x)
    return x @ _w(weights, name, x.dtype).T


def rotate_ffn_input(x, signs, factor):
    """Rows of x (T, n) multiplied by Q = kron(F, H_p) diag(s) / sqrt(n): s = signs
    (n values +-1), F = factor (m x m), H_p Sylvester's Hadamard matrix of order
    p = n / m (H_1 = [1], H_2k = [[H_k, H_k], [H_k, -H_k]]). In x's dtype."""
    x = np.asarray(x)
    T, n = x.shape
    f = np.asarray(factor, x.dtype)
    m = f.shape[0]
    p = n // m
    y = (x * np.asarray(signs, x.dtype).reshape(-1)).reshape(T, m, p)
    h = 1
    while h < p:                     # kron(I_m, H_p): H_2h on every run of 2h values
        y = y.reshape(T, m, p // (2 * h), 2, h)
        y = np.stack([y[:, :, :, 0] + y[:, :, :, 1], y[:, :, :, 0] - y[:, :, :, 1]], axis=3)
        h *= 2
    y = f @ y.reshape(T, m, p)       # kron(F, I_p): segment a = sum over j of F[a, j] segment j
    return y.reshape(T, n) / x.dtype.type(math.sqrt(n))


def layer(weights, cfg, i, h, pos0=0, capture=None, dtype=np.float64, inputs_only=False):
    """One transformer block over a fresh sequence h (T, dim) at positions
    pos0..pos0+T-1, with full causal attention inside h. Returns (T, dim).
    Computed in dtype: float64, or float32 where speed matters more than the
    last digits (GPTQ's calibration forward).

    capture(name, x), if given, is called with the (T, cols) input of every
    linear layer layers.{i}.wq/wk/wv/wo/w1/w2/w3 (wq, wk, wv share one input,
    as do w1 and w3). inputs_only: stop once capture has seen w2's input and
    return None (a caller collecting the inputs skips the last product)."""
    h = np.asarray(h, dtype=dtype)
    T, dim = h.shape
    nh, nkv, hd = int(cfg["n_heads"]), int(cfg["n_kv_heads"]), int(cfg["head_dim"])
    eps = float(cfg["norm_eps"])
    p = f"layers.{i}."
    n_rep = nh // nkv

    # attention: x = rms(h); q, k, v projections, (T, heads, head_dim)
    x = rms_norm(h, weights[p + "attention_norm"], eps, dtype)
    q = _linear(weights, p + "wq", x, capture).reshape(T, nh, hd)
    k = _linear(weights, p + "wk", x, capture).reshape(T, nkv, hd)
    v = _linear(weights, p + "wv", x, capture).reshape(T, nkv, hd)

    # rotate-half RoPE at absolute positions pos0..pos0+T-1
    cos, sin = (c.astype(dtype) for c in _rope_cos_sin(cfg, np.arange(pos0, pos0 + T)))
    q = _apply_rope(q, cos, sin)
    k = _apply_rope(k, cos, sin)

    # GQA: query head j uses kv head j // n_rep (HF repeat_kv)
    k = np.repeat(k, n_rep, axis=1)  # (T, nh, hd)
    v = np.repeat(v, n_rep, axis=1)

    # scores (nh, T, T), causal mask, softmax over keys
    qh = q.transpose(1, 0, 2)  # (nh, T, hd)
    scores = np.matmul(qh, k.transpose(1, 2, 0))
    scores *= 1.0 / math.sqrt(hd)
    future = np.triu_indices(T, k=1)  # causal mask: key s > query t
    scores[:, future[0], future[1]] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores, out=scores)  # in place: (nh, T, T) is the largest temporary
    probs /= probs.sum(axis=-1, keepdims=True)
    att = np.matmul(probs, v.transpose(1, 0, 2))  # (nh, T, hd)
    att = att.transpose(1, 0, 2).reshape(T, nh * hd)
    h = h + _linear(weights, p + "wo", att, capture)

    # SwiGLU FFN: h + W2 (silu(W1 rms(h)) * W3 rms(h))
    x = rms_norm(h, weights[p + "ffn_norm"], eps, dtype)
    gate = _linear(weights, p + "w1", x, capture)
    up = _linear(weights, p + "w3", x, capture)
    x = _silu(gate) * up
    if int(cfg.get("ffn_rotation", 0)) == _FFN_ROTATION_HADAMARD:
        x = rotate_ffn_input(x, weights["ffn_rotation.signs"], weights["ffn_rotation.factor"])
    if inputs_only:
        capture(p + "w2", x)
        return None
    return h + _linear(weights, p + "w2", x, capture)


def head(weights, cfg, h, capture=None) -> np.ndarray:
    """Final RMSNorm and classifier: (T, dim) -> (T, vocab) float64 logits.
    The classifier is tok_embeddings when cfg["tied_embeddings"], else output.
    capture("output", x) sees the classifier input if given."""
    x = rms_norm(h, weights["norm"], float(cfg["norm_eps"]))
    name = "tok_embeddings" if int(cfg["tied_embeddings"]) else "output"
    if capture is not None:
        capture("output", x)
    return _linear(weights, name, x, None)


def forward(weights, cfg, tokens) -> np.ndarray:
    """Logits (T, vocab) float64 for tokens at positions 0..T-1."""
    h = embed(weights, tokens)
    for i in range(int(cfg["n_layers"])):
        h = layer(weights, cfg, i, h)
    return head(weights, cfg, h)

