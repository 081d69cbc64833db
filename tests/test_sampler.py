"""The C sampler (src/sampler.c, through pyrunq4.Sampler) against an
independent numpy reference of the rule in runq4.h: the same kept set, and
seeded draws whose frequencies match the reference probabilities. Then the C
decode loop (rq4_decode) against the token-by-token semantics: the same text
and the same cache whatever the ids per call."""

import numpy as np
import pytest

import pyrunq4.model
from pyrunq4 import ArgumentError, Model, Sampler

DRAWS = 20000


def reference_probs(logits, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0,
                    history=(), repeat_last_n=64):
    """The distribution of the next id (float64, one value per logit)."""
    x = np.asarray(logits, dtype=np.float32).copy()
    window = list(history)[-repeat_last_n:] if repeat_last_n else []
    for i in set(window):
        x[i] = x[i] / np.float32(repeat_penalty) if x[i] > 0 else x[i] * np.float32(repeat_penalty)
    n = x.size
    p = np.zeros(n)
    if temperature == 0.0 or top_k == 1:
        p[int(np.argmax(x))] = 1.0
        return p
    z = (x.astype(np.float64) - x.max()) / np.float32(temperature)
    idx = np.argsort(-z, kind="stable")  # most likely first, ties in index order
    if 0 < top_k < n:
        idx = idx[:top_k]
    q = np.exp(z[idx] - z[idx[0]])
    q /= q.sum()
    keep = len(idx)
    if min_p > 0:
        keep = int(np.sum(q >= np.float32(min_p) * q[0]))
    if top_p < 1.0:
        keep = min(keep, int(np.searchsorted(np.cumsum(q), np.float32(top_p))) + 1)
    p[idx[:keep]] = q[:keep] / q[:keep].sum()
    return p


def check_draws(logits, history=(), **params):
    """DRAWS seeded draws against the reference: nothing outside its support,
    each frequency within 5 standard deviations (+ 0.002) of its probability."""
    want = reference_probs(logits, history=history, **params)
    s = Sampler(seed=2024, vocab_size=len(logits), **params)
    s.accept(list(history))
    got = np.bincount([s(logits) for _ in range(DRAWS)], minlength=len(logits)) / DRAWS
    assert set(np.nonzero(got)[0]) <= set(np.nonzero(want)[0]), params
    tol = 5 * np.sqrt(want * (1 - want) / DRAWS) + 0.002
    assert np.all(np.abs(got - want) <= tol), (params, np.max(np.abs(got - want)))
    return want


def random_logits(seed, n=48, ties=False):
    x = np.random.default_rng(seed).normal(0, 2.0, n).astype(np.float32)
    return np.round(x, 1) if ties else x  # rounding makes ties, at the top-k border too


CASES = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=8),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, min_p=0.1),
    dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.05),
    dict(temperature=1.0, repeat_penalty=1.8, repeat_last_n=16),
    dict(temperature=0.8, top_k=12, repeat_penalty=0.6, repeat_last_n=4),
]


@pytest.mark.parametrize("params", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
@pytest.mark.parametrize("ties", [False, True])
def test_draws_match_reference(params, ties):
    logits = random_logits(7, ties=ties)
    history = list(np.random.default_rng(3).integers(0, len(logits), 40))
    p = reference_probs(logits, history=history, **params)
    # the cuts must not sit on a float rounding edge (else float32 and float64 may keep different sets)
    if params.get("top_p", 1.0) < 1.0:
        cum = np.cumsum(np.sort(p[p > 0])[::-1])
        assert np.all(np.abs(cum - params["top_p"]) > 1e-4)
    check_draws(logits, history=history, **params)


def test_cuts_keep_the_reference_sets():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert np.count_nonzero(check_draws(logits, temperature=1.0, min_p=0.35)) == 2   # 0.15 < 0.35 * 0.5
    assert np.count_nonzero(check_draws(logits, temperature=1.0, top_p=0.79)) == 2
    assert np.count_nonzero(check_draws(logits, temperature=1.0, top_p=0.81, min_p=0.2)) == 3
    assert np.count_nonzero(check_draws(logits, temperature=1.0, top_k=3, min_p=0.5)) == 2


def test_penalty_greedy_and_window():
    logits = np.array([1.0, 3.0, 2.5, -1.0, 0.5], np.float32)
    assert Sampler()(logits) == 1
    s = Sampler(repeat_penalty=1.5, vocab_size=5)
    s.accept([1, 1, 4])
    assert s(logits) == 2  # 3.0 / 1.5 < 2.5
    # only the last repeat_last_n ids count
    s = Sampler(repeat_penalty=1.5, repeat_last_n=2, vocab_size=5)
    s.accept([1, 4, 3])
    assert s(logits) == 1
    # a negative logit is multiplied: less likely still
    neg = np.array([-1.0, -1.5, -3.0], np.float32)
    s = Sampler(repeat_penalty=2.0, vocab_size=3)
    s.accept([0])
    assert s(neg) == 1 and reference_probs(neg, repeat_penalty=2.0, history=[0])[1] == 1.0


def test_seeds():
    logits = random_logits(1)
    a, b, c = (Sampler(temperature=1.0, seed=seed) for seed in (5, 5, 6))
    ra, rb, rc = ([s(logits) for _ in range(50)] for s in (a, b, c))
    assert ra == rb and ra != rc


@pytest.mark.parametrize("bad", [dict(min_p=-0.1), dict(min_p=1.1), dict(min_p=float("nan")),
                                 dict(repeat_penalty=0), dict(repeat_penalty=float("inf")),
                                 dict(repeat_last_n=-1), dict(repeat_last_n=2**40),
                                 dict(min_p="0.1"), dict(temperature=1e39)])
def test_bad_parameters(bad):
    with pytest.raises(ArgumentError):
        Sampler(**bad, vocab_size=8)


# ---- the decode loop -------------------------------------------------------------------


def test_chunks_give_the_same_text_and_cache(tiny_untied, monkeypatch):
    """stream (one id per rq4_decode call) and generate (several): the same
    text, stats and cache, greedy and seeded, with and without a stop string."""
    with Model(tiny_untied, n_threads=1) as m:
        prompt = m.tokenize("the cat sat", add_bos=True)
        full = m.generate(prompt, max_new_tokens=30)
        stop = full[5:8] if len(full) > 8 else None
        for kw in (dict(), dict(temperature=0.9, seed=4, repeat_penalty=1.3, min_p=0.05),
                   dict(stop=stop), dict(max_new_tokens=7)):
            kw = {"max_new_tokens": 30, **kw}
            results = []
            for chunk in (1, 3, 16):
                monkeypatch.setattr(pyrunq4.model, "STREAM_CHUNK", chunk)
                m.reset()
                text = "".join(m.stream(prompt, **kw))
                results.append((text, m.tokens, {k: v for k, v in m.last_stats.items() if "seconds" not in k}))
            assert results[0] == results[1] == results[2], kw
            text, tokens, stats = results[0]
            # a token-by-token loop feeds every id but the last (the end token is never fed)
            fed = stats["new_tokens"] - (stats["stop_reason"] != "eos")
            assert len(tokens) == len(prompt) + fed, (kw, stats)
            assert m.generate(prompt, **kw) == text and m.tokens == tokens


def test_closed_stream_leaves_only_what_was_shown(tiny_untied, monkeypatch):
    monkeypatch.setattr(pyrunq4.model, "STREAM_CHUNK", 16)
    with Model(tiny_untied, n_threads=1) as m:
        prompt = m.tokenize("hello there", add_bos=True)
        it = m.stream(prompt, max_new_tokens=40)
        first = next(it)
        assert first
        it.close()
        shown = m.last_stats["new_tokens"]
        assert len(m.tokens) == len(prompt) + shown - 1  # the last shown id is not fed yet
        assert "".join(m.stream(prompt, max_new_tokens=40)).startswith(first)


def test_context_full_stops_cleanly(tiny_untied):
    with Model(tiny_untied, n_ctx=12, n_threads=1) as m:
        prompt = m.tokenize("a b c", add_bos=True)
        for gen in (m.generate, lambda *a, **k: "".join(m.stream(*a, **k))):
            gen(prompt, max_new_tokens=None)
            s = m.last_stats
            if s["stop_reason"] == "context":
                assert len(prompt) + s["new_tokens"] == 13 and len(m.tokens) == 12
            else:
                assert s["stop_reason"] == "eos"
