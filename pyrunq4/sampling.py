"""Choosing the next token from logits (numpy).

temperature 0 is greedy (the first index of the maximum, as np.argmax);
otherwise the logits are divided by the temperature, optionally cut to the
top_k largest (top_k 0: no cut), turned into probabilities (softmax in
float64), optionally cut to the smallest set of most likely tokens whose
probability sums to at least top_p (top_p 1: no cut), renormalised, and one
token is drawn with a seeded numpy Generator, so a seed reproduces a run.
top_k == 1 is greedy whatever the temperature.
"""

from __future__ import annotations

import numpy as np

from .checks import check_sampling

__all__ = ["Sampler"]


class Sampler:
    """Sampler(temperature=0.0, top_p=1.0, top_k=0, seed=None); sampler(logits)
    -> token id. seed None draws fresh OS entropy (not reproducible). Bad
    parameters raise ArgumentError (a ValueError; checks.check_sampling)."""

    def __init__(self, temperature=0.0, top_p=1.0, top_k=0, seed=None):
        check_sampling(temperature, top_p, top_k, seed)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.rng = np.random.default_rng(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def __call__(self, logits) -> int:
        logits = np.asarray(logits).reshape(-1)
        if self.greedy:
            return int(np.argmax(logits))
        # the maximum subtracted before dividing: (x - max) / T is <= 0 and
        # finite or -inf however small T is (x / T would overflow to inf and
        # inf - inf is NaN); a T so small that every other logit underflows is greedy
        x = logits.astype(np.float64)
        x[np.isnan(x)] = -np.inf  # a NaN logit is never drawn
        mx = x.max()
        if mx == -np.inf:  # nothing to draw from
            return int(np.argmax(logits))
        with np.errstate(over="ignore", invalid="ignore"):  # -inf for the others is the intended result
            x = np.where(x == mx, 0.0, (x - mx) / self.temperature)  # mx == +inf: the +inf logits share
        idx = np.arange(x.size)
        if 0 < self.top_k < x.size:
            idx = np.argpartition(-x, self.top_k - 1)[: self.top_k]
            x = x[idx]
        # most likely first (stable, so ties keep index order)
        order = np.argsort(-x, kind="stable")
        idx, x = idx[order], x[order]
        p = np.exp(x - x[0])
        p /= p.sum()
        if self.top_p < 1.0:
            # keep the smallest prefix whose mass reaches top_p (at least one)
            keep = int(np.searchsorted(np.cumsum(p), self.top_p)) + 1
            idx, p = idx[:keep], p[:keep]
            p /= p.sum()
        cdf = np.cumsum(p)
        r = self.rng.random() * cdf[-1]
        j = min(int(np.searchsorted(cdf, r, side="right")), len(idx) - 1)
        return int(idx[j])
