"""Per-row Fisher Hessians of a classifier, for GPTQ of its most predicted rows.

The next-token loss weighs the error of row v's logit at position t by
p(v | t), the model's own probability of token v there (the diagonal of the
softmax's Fisher information). GPTQ on the shared Hessian H = 2/n X^T X of the
classifier's inputs treats every context alike for every row; the rows that
carry the predicted mass deserve their own objective

    H_v = sum_t p_tv x_t x_t^T / tr(.) + blend * H / tr(H)

(both terms normalised by their trace, so blend is the share of the shared
Hessian; it keeps H_v well conditioned where a row is predicted in few
contexts). p comes from the float classifier: only each position's `topk`
most likely tokens count, so a row's H_v sums over the positions that
predict it, and all H_v together cost topk * positions rank-one updates,
whatever the vocabulary size.
"""

from __future__ import annotations

import numpy as np

__all__ = ["top_predictions", "predicted_rows", "row_hessian", "FISHER_TOPK", "FISHER_BLEND"]

FISHER_TOPK = 16            # tokens per position whose probabilities count (the rest: ~0)
FISHER_BLEND = 0.3          # share of the shared Hessian in each row's Hessian
_LOGIT_ROWS = 256           # positions per classifier product (256 x vocab float32 logits at a time)


def top_predictions(X, w, topk=FISHER_TOPK):
    """(idx, p), both (positions, topk): the topk most likely rows of the
    classifier w (vocab, dim) at each input X (positions, dim) and their softmax
    probabilities (over the whole vocabulary), float32."""
    X = np.asarray(X, np.float32)
    w = np.asarray(w, np.float32)
    topk = min(topk, w.shape[0])
    idx = np.empty((X.shape[0], topk), np.int64)
    p = np.empty((X.shape[0], topk), np.float32)
    for t0 in range(0, X.shape[0], _LOGIT_ROWS):
        z = X[t0:t0 + _LOGIT_ROWS] @ w.T
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        top = np.argpartition(-z, topk - 1, axis=1)[:, :topk]
        idx[t0:t0 + len(z)] = top
        p[t0:t0 + len(z)] = np.take_along_axis(z, top, axis=1)
    return idx, p


def predicted_rows(idx, p, n_rows):
    """The n_rows rows with the most summed probability over all positions, in
    decreasing order of it, and {row: (positions, probabilities)} for them."""
    flat, weight = idx.reshape(-1), p.reshape(-1)
    mass = np.bincount(flat, weights=weight)
    chosen = np.argsort(-mass, kind="stable")[:n_rows]
    chosen = chosen[mass[chosen] > 0]
    pos = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    keep = np.isin(flat, chosen)
    order = np.argsort(flat[keep], kind="stable")
    rows, pos, weight = flat[keep][order], pos[keep][order], weight[keep][order]
    a = np.searchsorted(rows, chosen)
    b = np.searchsorted(rows, chosen, side="right")
    return chosen, {int(v): (pos[i:j], weight[i:j]) for v, i, j in zip(chosen, a, b)}


def row_hessian(X, positions, probs, H, blend=FISHER_BLEND):
    """H_v (dim, dim) float32 of one row: its Fisher term over `positions` of X
    weighted by `probs`, plus blend times the shared H, each trace-normalised."""
    Xs = np.asarray(X[positions], np.float32)
    F = (Xs * probs[:, None].astype(np.float32)).T @ Xs
    tf, th = float(np.trace(F)), float(np.trace(H))
    out = H * np.float32(blend / th) if th > 0 else np.zeros_like(F)
    if tf > 0:
        out += F * np.float32(1.0 / tf)
    return out
