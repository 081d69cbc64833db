"""The GPTQ core (Frantar et al. 2022) in float32, for matrices of any height.

quantize_gptq(w, H, ...) quantizes the columns of w one at a time against the
Hessian H of its inputs, spreading each column's rounding error over the
columns not yet quantized through U, the upper Cholesky factor of H^-1.

Costs that matter at Llama-3.2-1B size (8192-wide Hessians, a 128256-row
embedding):
  - No inverse at all: with J the order-reversing permutation,
    J H J = L L^T (lower Cholesky) gives H = V V^T with V = J L J upper,
    and U = V^-1. GPTQ's updates only say W - Q = E U (E: the scaled
    errors), so E = (W - Q) V, and the columns of a block B start from
    W[:, B] + (W - Q)[:, <B] V[<B, B] U[B, B] ("left-looking": one product
    per block with the residuals of the columns before it). Only the
    diagonal blocks of U are inverted (128 x 128 each), so H costs one
    Cholesky (n^3/3 flops) where an inverse and a Cholesky cost 7n^3/3.
  - Rows are independent given V and the group scales, so a matrix is done
    in chunks of rows, one chunk per thread at a time (parallel_map): every
    core works, and a 128256 x 2048 embedding never has a full-size float
    copy beside its input.
  - A chunk is worked on transposed (columns x rows): the column being
    quantized, and each row of an update, is contiguous in memory.
  - Inside a block, a column updates the rest of its SUB_BLOCK columns
    element-wise, a sub-block's errors the rest of the block by one matrix
    product.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["cholesky_upper", "block_inverses", "gptq_rows", "row_chunks", "parallel_map", "workers",
           "ROW_CHUNK", "BLOCK"]

ROW_CHUNK = 1024            # rows quantized together by one thread (their working set stays in cache)
MIN_CHUNKS = 2              # chunks of a matrix at least: both cores of a small machine busy
BLOCK = 128                 # columns per block (one product with the earlier residuals each)
SUB_BLOCK = 32              # columns updated element-wise inside a block
_CHOL_PANEL = 256           # columns per panel of the blocked Cholesky factorization


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
    oversubscribe the cores. Single-threaded also with one worker, so that a
    product's rounding does not depend on the core count. Results in the
    order of items."""
    items = list(items)
    n = min(workers(), len(items))
    with threadpool_limits(limits=1, user_api="blas"):
        if n <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(n) as ex:
            return list(ex.map(fn, items))


def row_chunks(rows):
    """(r0, r1) chunks of at most ROW_CHUNK rows, at least MIN_CHUNKS of them: a
    function of rows alone, so that the file does not depend on the core count."""
    step = max(1, min(ROW_CHUNK, -(-rows // MIN_CHUNKS)))
    return [(r0, min(r0 + step, rows)) for r0 in range(0, rows, step)]


def _cholesky_lower(A):
    """Lower Cholesky factor of the symmetric positive definite A, in place (the
    upper triangle is zeroed); raises np.linalg.LinAlgError as np.linalg.cholesky.
    Left-looking by panels of _CHOL_PANEL columns: nearly all the flops are one
    large matrix product per panel (multi-threaded BLAS), which runs several
    times faster here than LAPACK's potrf as numpy calls it; the small diagonal
    factors and inverses run single-threaded (threads only cost at that size)."""
    n = A.shape[0]
    for j0 in range(0, n, _CHOL_PANEL):
        j1 = min(j0 + _CHOL_PANEL, n)
        if j0:
            A[j0:, j0:j1] -= A[j0:, :j0] @ A[j0:j1, :j0].T
        with threadpool_limits(limits=1, user_api="blas"):
            L = np.linalg.cholesky(A[j0:j1, j0:j1])
            Linv = np.linalg.inv(L)
        A[j0:j1, j0:j1] = L
        A[j0:j1, j1:] = 0
        if j1 < n:
            # panel below the diagonal block: A L^-T
            A[j1:, j0:j1] = A[j1:, j0:j1] @ Linv.T
    return A


def cholesky_upper(H, damp=0.01, order=None):
    """Upper V (float32, n x n) with V V^T = H_o + damp * mean(diag H_o) * I, where
    H_o = H[order][:, order] (order: a permutation, default none) and a zero on the
    diagonal (an input that is always zero) counts as 1; GPTQ's U is V^-1. H is not
    modified. More dampening (x10 up to 5 times) if H is not positive definite, in
    float64 if float32 still fails."""
    n = H.shape[0]
    idx = (np.arange(n) if order is None else np.asarray(order))[::-1]
    for dtype in (np.float32, np.float64):
        for k in range(6):
            Hr = np.asarray(H, dtype=dtype)[np.ix_(idx, idx)]
            diag = Hr[np.diag_indices(n)]
            diag[diag == 0] = 1
            Hr[np.diag_indices(n)] = diag + dtype(damp * (10 ** k) * float(np.mean(diag)))
            try:
                L = _cholesky_lower(Hr)
            except np.linalg.LinAlgError:
                continue
            if np.all(np.isfinite(L)):
                return np.ascontiguousarray(L[::-1, ::-1], dtype=np.float32)
    raise np.linalg.LinAlgError("Hessian not positive definite even with heavy dampening")


def block_inverses(V, block_size=BLOCK):
    """U[B, B] = V[B, B]^-1 (float32) of every block B of block_size columns: the
    only parts of U = V^-1 that gptq_rows uses (inverted in float64)."""
    n = V.shape[0]
    with threadpool_limits(limits=1, user_api="blas"):
        return [np.linalg.inv(V[b0:b0 + block_size, b0:b0 + block_size].astype(np.float64)).astype(np.float32)
                for b0 in range(0, n, block_size)]


def gptq_rows(W, V, Ub, quantize_column, qdtype, block_size=BLOCK):
    """GPTQ of the rows W (rows, cols) float32, columns in the order of V (W
    already permuted to it). V: cholesky_upper of the Hessian; Ub:
    block_inverses(V, block_size). quantize_column(i, x, block_rest) ->
    (q, dequantized x) for permuted column i (x: its current values, one per
    row; block_rest (n, rows): the not yet quantized columns of its block from
    i on, transposed, for a scale searched on the error-updated weights:
    up to date at the start of every SUB_BLOCK columns). Returns q (rows,
    cols) of qdtype, in permuted order."""
    rows, cols = W.shape
    R = np.ascontiguousarray(W.T)      # (cols, rows): weights, then W - Q once a block is done
    Q = np.empty((cols, rows), qdtype)
    for b, b0 in enumerate(range(0, cols, block_size)):
        b1 = min(b0 + block_size, cols)
        n = b1 - b0
        U = Ub[b]
        X = R[b0:b1]                    # this block's columns, updated in place
        orig = X.copy()
        if b0:
            # the errors of all earlier columns, in one product: E[:, <B] U[<B, B]
            # = -(W - Q)[:, <B] V[<B, B] U[B, B]
            X += U.T @ (V[:b0, b0:b1].T @ R[:b0])
        E = np.empty((n, rows), np.float32)
        for s0 in range(0, n, SUB_BLOCK):
            s1 = min(s0 + SUB_BLOCK, n)
            for i in range(s0, s1):
                x = X[i]
                q, xq = quantize_column(b0 + i, x, X[i:])
                Q[b0 + i] = q
                err = (x - xq) / U[i, i]
                X[i + 1:s1] -= U[i, i + 1:s1, None] * err
                E[i] = err
                X[i] = xq
            if s1 < n:
                X[s1:] -= U[s0:s1, s1:].T @ E[s0:s1]
        np.subtract(orig, X, out=X)     # residuals W - Q of the block
    return Q.T
