"""Concurrency. The C engine releases the GIL in every call, so
these threads really overlap in C.

- several Models (each with its own worker pool) in several threads give
  exactly what they give one after the other, sampling included;
- one Model shared by many threads: logits, generate, stream (stepped one
  token at a time, interleaved with the others), chat, feed and rewind, all
  at once: every result equals the sequential one (model.py serialises the
  C calls with a lock and each stream resyncs its cache);
- close() while streams are live, from the same or another thread, and while
  other threads are computing: the next step raises ClosedError (a
  Runq4Error), nothing crashes, and close() waits for a running call.
"""

import random
import threading
import time

import numpy as np
import pytest

from pyrunq4 import ClosedError, Model, Runq4Error

PROMPTS = ["the cat", "in the hills", "a dog on a", "on", "hello there"]
CHAT = [{"role": "user", "content": "where is the cat?"}]


def run_threads(fns):
    errors, results = [], [None] * len(fns)

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def workload(m, k):
    """A mixed sequence of calls whose results do not depend on what other
    threads do with the same model."""
    out = []
    p = PROMPTS[k % len(PROMPTS)]
    out.append(m.generate(p, max_new_tokens=12))
    out.append(m.generate(p, max_new_tokens=8, temperature=0.8, top_p=0.9, top_k=20, seed=k))
    out.append(m.logits(m.tokenize(p)).tobytes())
    s = m.stream(PROMPTS[(k + 1) % len(PROMPTS)], max_new_tokens=10)
    pieces = []
    for piece in s:
        pieces.append(piece)
        time.sleep(0)  # let another thread in between tokens
    out.append("".join(pieces))
    out.append(m.chat(CHAT, max_new_tokens=6))
    return out


def test_many_models_in_many_threads_equal_sequential(tiny_tied, tiny_untied):
    paths = [tiny_tied, tiny_untied, tiny_tied, tiny_untied]

    def job(i):
        with Model(paths[i], n_ctx=64, n_threads=2) as m:
            return workload(m, i)

    want = [job(i) for i in range(len(paths))]
    for _ in range(2):
        assert run_threads([lambda i=i: job(i) for i in range(len(paths))]) == want


def test_one_model_hammered_by_many_threads(tiny_untied):
    with Model(tiny_untied, n_ctx=64, n_threads=2) as m:
        want = [workload(m, k) for k in range(12)]
        for _ in range(3):
            assert run_threads([lambda k=k: workload(m, k) for k in range(12)]) == want


def test_feed_and_rewind_interleaved_with_generation(tiny_untied):
    """feed() continues whatever is in the cache, so a feeding thread takes
    the model's lock around its own snapshot; its logits must equal a fresh
    model's for the same token sequence, while other threads generate."""
    with Model(tiny_untied, n_ctx=64, n_threads=1) as m, Model(tiny_untied, n_ctx=64, n_threads=1) as check:
        records = []
        rnd = random.Random(3)

        def feeder():
            for _ in range(30):
                with m._lock:  # the model's own (re-entrant) lock: snapshot + feed are one step
                    if m.position > 48:
                        m.rewind(rnd.randrange(0, m.position))
                    before = list(m.tokens)
                    ids = [rnd.randrange(0, 200) for _ in range(rnd.randrange(1, 4))]
                    records.append((before + ids, m.feed(ids).copy()))
                time.sleep(0)

        def generator(k):
            return [m.generate(PROMPTS[k], max_new_tokens=6) for _ in range(6)]

        want = [generator(k) for k in range(3)]
        got = run_threads([feeder, lambda: generator(0), lambda: generator(1), lambda: generator(2)])
        assert got[1:] == want
        for seq, logits in records:
            np.testing.assert_array_equal(check.logits(seq)[-1], logits)


def test_close_with_a_live_stream_same_thread(tiny_tied):
    m = Model(tiny_tied, n_ctx=64, n_threads=2)
    s = m.stream("the cat", max_new_tokens=40)
    next(s)
    m.close()
    with pytest.raises(ClosedError):
        for _ in s:  # the next step needs the model
            pass
    with pytest.raises(ClosedError):
        m.stream("x")
    s2 = Model(tiny_tied, n_ctx=64, n_threads=1).stream("the cat", max_new_tokens=5)
    assert isinstance("".join(s2), str)  # a stream keeps its model alive


def test_close_from_another_thread_while_streaming(tiny_tied):
    for trial in range(5):
        m = Model(tiny_tied, n_ctx=128, n_threads=2)
        started = threading.Event()
        outcome = []

        def consumer():
            try:
                for piece in m.stream("the cat", max_new_tokens=120):
                    started.set()
                    time.sleep(0.001)
                outcome.append("finished")
            except ClosedError:
                outcome.append("closed")
            finally:
                started.set()

        t = threading.Thread(target=consumer)
        t.start()
        started.wait(60)
        time.sleep(0.002 * trial)
        m.close()
        t.join(60)
        assert not t.is_alive() and outcome and outcome[0] in ("closed", "finished"), outcome


def test_close_while_other_threads_compute(tiny_untied):
    for trial in range(3):
        m = Model(tiny_untied, n_ctx=64, n_threads=2)
        outcomes = []
        go = threading.Barrier(5)

        def user(k):
            go.wait()
            try:
                for _ in range(50):
                    m.logits(m.tokenize(PROMPTS[k % len(PROMPTS)]))
                    m.generate(PROMPTS[k], max_new_tokens=3)
                outcomes.append("done")
            except ClosedError:
                outcomes.append("closed")

        def closer():
            go.wait()
            time.sleep(0.01 * (trial + 1))
            m.close()

        run_threads([lambda k=k: user(k) for k in range(4)] + [closer])
        assert m.closed and len(outcomes) == 4 and set(outcomes) <= {"done", "closed"}
        with pytest.raises(Runq4Error):
            m.logits([1])
