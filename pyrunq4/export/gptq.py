"""The GPTQ core (Frantar et al. 2022) in float32, for matrices of any height.

quantize_gptq(w, H, ...) quantizes the columns of w one at a time against the
Hessian H of its inputs, spreading each column's rounding error over the
columns not yet quantized through U, the upper Cholesky factor of H^-1.

Costs that matter at Llama-3.2-1B size (8192-wide Hessians, a 128256-row
embedding):
  - U without inverting H: with J the order-reversing permutation,
    J H J = L L^T (lower Cholesky) gives U = J L^-1 J, so U costs one
    Cholesky and one triangular inverse (2n^3/3 flops) instead of an inverse
    and a Cholesky (7n^3/3), all in float32 (the dampening keeps H well
    conditioned; a failure retries with more dampening, then in float64).
  - Rows are independent given U and the group scales, so a matrix is done in
    chunks of rows, one chunk per thread at a time (parallel_map): every
    core works, and a 128256 x 2048 embedding never has a full-size float
    copy beside its input.
  - Lazy updates on two levels: a column updates the rest of its
    SUB_BLOCK columns element-wise, a sub-block's errors update the rest of
    its BLOCK by one matrix product, a block's errors the later columns by
    another. Narrow sub-blocks keep the element-wise work small, wide
    blocks keep the passes over the later columns few.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["inverse_cholesky_upper", "gptq_rows", "row_chunks", "parallel_map", "workers",
           "ROW_CHUNK", "BLOCK"]

ROW_CHUNK = 1024            # rows quantized together by one thread (their working set stays in cache)
BLOCK = 128                 # columns per lazy-update block
SUB_BLOCK = 32              # columns updated element-wise inside a block
_TRI_LEAF = 256             # triangular blocks inverted directly below this size


def workers():
    """Threads to use: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def parallel_map(fn, items):
    """[fn(x) for x in items], on workers() threads with BLAS single-threaded
    meanwhile: numpy releases the GIL in BLAS calls and in ufuncs over large
    arrays, and a multi-threaded BLAS under several threads would
    oversubscribe the cores. Results in the order of items."""
    items = list(items)
    n = min(workers(), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(n) as ex:
        return list(ex.map(fn, items))


def row_chunks(rows):
    """(r0, r1) chunks of at most ROW_CHUNK rows, at least one per worker thread."""
    step = max(1, min(ROW_CHUNK, -(-rows // workers())))
    return [(r0, min(r0 + step, rows)) for r0 in range(0, rows, step)]


def _tri_inv_lower(L):
    """Inverts a lower-triangular matrix in place, by halves (matrix products
    only; in place, so an 8192-wide factor needs no second full-size array)."""
    n = L.shape[0]
    if n <= _TRI_LEAF:
        L[...] = np.linalg.inv(L)
        return
    k = n // 2
    _tri_inv_lower(L[:k, :k])
    _tri_inv_lower(L[k:, k:])
    # [[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]
    L[k:, :k] = -(L[k:, k:] @ (L[k:, :k] @ L[:k, :k]))


def inverse_cholesky_upper(H, damp=0.01, order=None):
    """Upper U (float32, n x n) with U^T U = (H_o + damp * mean(diag H_o) * I)^-1, where
    H_o = H[order][:, order] (order: a permutation, default none) and a zero on the
    diagonal (an input that is always zero) counts as 1. H is not modified. More
    dampening (x10 up to 5 times) if H is not positive definite, in float64 if
    float32 still fails."""
    n = H.shape[0]
    idx = (np.arange(n) if order is None else np.asarray(order))[::-1]
    for dtype in (np.float32, np.float64):
        for k in range(6):
            Hr = np.asarray(H, dtype=dtype)[np.ix_(idx, idx)]
            diag = Hr[np.diag_indices(n)]
            diag[diag == 0] = 1
            Hr[np.diag_indices(n)] = diag + dtype(damp * (10 ** k) * float(np.mean(diag)))
            try:
                L = np.linalg.cholesky(Hr)
            except np.linalg.LinAlgError:
                continue
            del Hr
            _tri_inv_lower(L)
            if np.all(np.isfinite(L)):
                return np.ascontiguousarray(L[::-1, ::-1], dtype=np.float32)
    raise np.linalg.LinAlgError("Hessian not positive definite even with heavy dampening")


def gptq_rows(W, U, perm, quantize_column, block_size=BLOCK):
    """GPTQ of the rows W (rows, cols) float32, columns visited in order perm
    (W and U already permuted: column i of W is column perm[i] of the file).
    quantize_column(i, x, block_rest, rest) -> (q, dequantized x) for permuted
    column i (x: its current values; block_rest, rest: the not yet quantized
    columns of its block from i on, and those after the block, for a scale
    searched on the error-updated weights: block_rest is up to date at the
    start of every SUB_BLOCK columns). Returns q (rows, cols) int8 in
    permuted order. W is overwritten."""
    rows, cols = W.shape
    Q = np.zeros((rows, cols), np.int8)
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        E1 = np.zeros((rows, b1 - b0), np.float32)
        for s0 in range(b0, b1, SUB_BLOCK):
            s1 = min(s0 + SUB_BLOCK, b1)
            for i in range(s0, s1):
                x = W[:, i]
                q, xq = quantize_column(i, x, W[:, i:b1], W[:, b1:])
                Q[:, i] = q
                err = (x - xq) / U[i, i]
                W[:, i:s1] -= np.outer(err, U[i, i:s1])
                E1[:, i - b0] = err
            if s1 < b1:
                W[:, s1:b1] -= E1[:, s0 - b0:s1 - b0] @ U[s0:s1, s1:b1]
        if b1 < cols:
            W[:, b1:] -= E1 @ U[b0:b1, b1:]
    return Q
