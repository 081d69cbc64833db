"""Choosing the next token from logits: the C sampler (src/sampler.c, the
runq4 binary's), so a seed gives the same ids in Python and in the binary.

The rule (runq4.h, "Sampling"): the repetition penalty over the last
repeat_last_n accepted ids; temperature 0 or top_k 1 is greedy (the first
maximum, as np.argmax); otherwise (logits - max) / temperature, the top_k
largest (0: all), their softmax, and a draw among the most likely tokens cut
to the shortest prefix whose mass reaches top_p and to the tokens at least
min_p times as likely as the first.
"""

from __future__ import annotations

import os

import numpy as np

from . import _lib
from .checks import check_sampling

__all__ = ["Sampler"]


class Sampler:
    """Sampler(temperature=0.0, top_p=1.0, top_k=0, seed=None, min_p=0.0,
    repeat_penalty=1.0, repeat_last_n=RQ4_DEFAULT_REPEAT_LAST_N, vocab_size=None); sampler(logits)
    -> token id. seed None draws fresh OS entropy (not reproducible). Bad
    parameters raise ArgumentError (a ValueError; checks.check_sampling).
    accept(ids) adds ids to the history the repetition penalty reads (a drawn
    id is not added by itself). vocab_size: the logits' length (None: that of
    the first call's logits)."""

    def __init__(self, temperature=0.0, top_p=1.0, top_k=0, seed=None, min_p=0.0,
                 repeat_penalty=1.0, repeat_last_n=_lib.DEFAULT_REPEAT_LAST_N, vocab_size=None):
        check_sampling(temperature, top_p, top_k, seed, min_p, repeat_penalty, repeat_last_n)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.min_p = float(min_p)
        self.repeat_penalty = float(repeat_penalty)
        self.repeat_last_n = int(repeat_last_n)
        self.seed = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed)
        self._history = []   # accepted before the C sampler exists
        self._c = None
        if vocab_size is not None:
            self._create(int(vocab_size))

    def _create(self, vocab_size):
        self._c = _lib.sampler_new(vocab_size, self.temperature, self.top_p, self.top_k,
                                   self.min_p, self.repeat_penalty, self.repeat_last_n, self.seed)
        self.vocab_size = vocab_size
        _lib.sampler_accept(self._c, self._history)
        self._history = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def ptr(self):
        """The rq4_sampler* (created with the vocab_size given)."""
        return self._c

    def accept(self, ids):
        """Appends ids to the penalty's history (only the last repeat_last_n matter)."""
        if self.repeat_penalty == 1.0 or self.repeat_last_n == 0:
            return  # no penalty, no history
        ids = [int(i) for i in ids[len(ids) - self.repeat_last_n:]]
        if self._c is None:
            self._history = (self._history + ids)[len(self._history) + len(ids) - self.repeat_last_n:]
        else:
            _lib.sampler_accept(self._c, ids)

    def __call__(self, logits) -> int:
        x = np.array(logits, dtype=np.float32).reshape(-1)  # a copy: C uses it as scratch
        if self._c is None:
            self._create(x.size)
        elif x.size != self.vocab_size:
            raise ValueError(f"logits of {x.size} values for a sampler of {self.vocab_size}")
        return _lib.sample(self._c, x)
