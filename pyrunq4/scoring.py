"""Per-token scores of models on one token sequence: the negative log-likelihood
of each next token, and, against a reference model (the float weights), the KL
divergence of the next-token distributions and whether their top tokens agree.

The sequence is cut into non-overlapping windows of `window` tokens, each
evaluated from an empty cache; every token after a window's first is scored
(the first is context only). A window is fed in chunks of chunk_rows(vocab)
tokens (CHUNK, fewer for a large vocabulary) that continue the cache, so the
logits held at once are one chunk's float32 rows (what processing the window
as a prompt computes anyway, not a window's worth), every log-softmax is taken
in float32 on those rows, in place (the exponentials of EXP_ROWS rows at a
time), and one buffer per model takes the chunks' logits.

    KL(P_ref || P) = sum_v P_ref(v) (log P_ref(v) - log P(v))   per scored token
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["CHUNK", "chunk_rows", "log_softmax", "target_log_probs", "kl_divergence", "Scores", "score",
           "FloatReference"]

# Tokens fed per call while scoring: at most the engine's own prompt chunk
# (RQ4_BATCH); the engine computes each token the same whatever the chunks, so
# feeding in chunks scores what one call for the window would.
CHUNK = 64
# The logits of one chunk held at once, in bytes: a large vocabulary gets
# fewer rows per chunk (never under MIN_CHUNK), so scoring stays within the
# model's own footprint plus a constant.
LOGITS_BUDGET = 16 << 20
MIN_CHUNK = 16


def chunk_rows(vocab_size):
    """Tokens per scoring chunk for a vocabulary of vocab_size."""
    return max(MIN_CHUNK, min(CHUNK, LOGITS_BUDGET // (4 * max(int(vocab_size), 1))))
# Rows whose exponentials exist at once in log_softmax (a row at a time would
# cost a numpy call per row; all at once a second copy of the logits).
EXP_ROWS = 8


def log_softmax(logits):
    """float32 log-softmax of each row of (n, vocab) logits, in place; returns it."""
    x = np.asarray(logits, dtype=np.float32)
    x -= x.max(axis=1, keepdims=True)
    lse = np.empty((len(x), 1), dtype=np.float32)
    for i in range(0, len(x), EXP_ROWS):
        lse[i:i + EXP_ROWS] = np.log(np.exp(x[i:i + EXP_ROWS]).sum(axis=1, keepdims=True))
    x -= lse
    return x


def target_log_probs(logits, targets):
    """log p(target) per row of float32 logits (n, vocab), as float64 (n,).
    The logits are overwritten (their log-softmax)."""
    lp = log_softmax(logits)
    return lp[np.arange(len(targets)), np.asarray(targets)].astype(np.float64)


def kl_divergence(ref_log_probs, log_probs):
    """KL(P_ref || P) per row of two (n, vocab) float32 log-probability arrays, float64 (n,)."""
    p = np.exp(ref_log_probs)
    d = ref_log_probs - log_probs
    return np.einsum("ij,ij->i", p, d, dtype=np.float64)


class Scores:
    """What score() measured for one model: float64 per scored token (nll; kl
    and same_top only with a reference) and the seconds its forward took."""

    def __init__(self):
        self.nll, self.kl, self.same_top = [], [], []
        self.seconds = 0.0

    def finish(self):
        for k in ("nll", "kl", "same_top"):
            v = getattr(self, k)
            setattr(self, k, np.concatenate(v) if v else np.zeros(0))
        return self

    @property
    def perplexity(self):
        return float(np.exp(self.nll.mean()))

    def summary(self):
        """dict: perplexity, tokens, and with a reference kl_mean, kl_p99, same_top."""
        out = {"perplexity": self.perplexity, "tokens": int(self.nll.size)}
        if self.kl.size:
            out.update(kl_mean=float(self.kl.mean()), kl_p99=float(np.percentile(self.kl, 99)),
                       same_top=float(self.same_top.mean()))
        return out


class FloatReference:
    """The float model of a file, by the numpy reference forward (pyrunq4.reference,
    float64): the weights as the file stores them, dequantized (an all-F32 file
    is the float model itself), activations never quantized. A window's layers
    run at once; its logits are made CHUNK rows at a time."""

    class _Config:
        def __init__(self, header):
            self.vocab_size = int(header["vocab_size"])
            self.n_ctx = int(header["max_seq_len"])

    def __init__(self, path):
        from . import reference
        from .export.reader import weights_from_rq4

        self._ref = reference
        self.weights, self.header = weights_from_rq4(path)
        self.config = self._Config(self.header)

    def chunks(self, ids, rows):
        """(float32 logits of ids[a:b], a, b) for the chunks of `rows` tokens of one window."""
        R = self._ref
        h = R.embed(self.weights, ids)
        for i in range(int(self.header["n_layers"])):
            h = R.layer(self.weights, self.header, i, h)
        for a in range(0, len(ids), rows):
            b = min(a + rows, len(ids))
            yield R.head(self.weights, self.header, h[a:b]).astype(np.float32), a, b


def _chunks(model, ids, rows):
    """(logits of ids[a:b] continuing the cache, a, b) for the chunks of `rows`
    tokens of one window, all in one buffer (the caller is done with a chunk
    when it asks for the next)."""
    if hasattr(model, "chunks"):
        yield from model.chunks(ids, rows)
        return
    model.rewind(0)
    buf = np.empty((rows, model.config.vocab_size), dtype=np.float32)
    for a in range(0, len(ids), rows):
        b = min(a + rows, len(ids))
        yield model.feed(ids[a:b], all_logits=True, out=buf[:b - a]), a, b


def score(models, ids, window=512, reference=None, progress=None):
    """[Scores] of each model in `models` on the same ids, scored in lockstep
    (the reference's logits of a chunk are computed once for all models).
    progress(done_tokens, total_tokens), if given, is called after each window."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    for m in list(models) + ([reference] if reference is not None else []):
        if window > m.config.n_ctx:
            raise ValueError(f"window {window} exceeds the context {m.config.n_ctx}")
    out = [Scores() for _ in models]
    # one chunk size for every model, so their chunks stay in lockstep
    rows = chunk_rows(max(m.config.vocab_size for m in list(models) + ([reference] if reference is not None else [])))
    starts = [s for s in range(0, len(ids), window) if len(ids[s:s + window]) >= 2]
    for s in starts:
        win = ids[s:s + window]
        ref_iter = _chunks(reference, win, rows) if reference is not None else None
        iters = [_chunks(m, win, rows) for m in models]
        while True:
            ref_lp = None
            if ref_iter is not None:
                got = next(ref_iter, None)
                if got is None:
                    break
                ref_lp = log_softmax(got[0])
            done = False
            for m_iter, sc in zip(iters, out):
                t0 = time.perf_counter()
                got = next(m_iter, None)
                sc.seconds += time.perf_counter() - t0
                if got is None:
                    done = True
                    break
                logits, a, b = got
                # row t predicts token t+1 of the window; the window's last row predicts nothing
                n = min(b, len(win) - 1) - a
                lp = log_softmax(logits)
                sc.nll.append(-lp[np.arange(n), win[a + 1:a + 1 + n]].astype(np.float64))
                if ref_lp is not None:
                    sc.kl.append(kl_divergence(ref_lp[:n], lp[:n]))
                    sc.same_top.append((ref_lp[:n].argmax(axis=1) == lp[:n].argmax(axis=1)).astype(np.float64))
            if done:
                break
        if progress is not None:
            progress(s + len(win), len(ids))
    return [sc.finish() for sc in out]
