"""pyrunq4/scoring.py and eval's --reference: chunked float32 scoring, KL divergence."""

import re
import subprocess
import sys

import numpy as np
import pytest

from pyrunq4.model import Model
from pyrunq4.scoring import FloatReference, kl_divergence, log_softmax, score


def test_log_softmax_and_kl_match_float64():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 3000)) * 8).astype(np.float32)
    want = x.astype(np.float64) - np.log(np.exp(x.astype(np.float64)).sum(1, keepdims=True))
    got = log_softmax(x.copy())
    assert np.abs(got - want).max() < 1e-4
    y = (x + rng.standard_normal(x.shape).astype(np.float32)).astype(np.float32)
    ly = y.astype(np.float64) - np.log(np.exp(y.astype(np.float64)).sum(1, keepdims=True))
    kl = (np.exp(want) * (want - ly)).sum(1)
    assert np.allclose(kl_divergence(got, log_softmax(y.copy())), kl, rtol=1e-4, atol=1e-6)
    assert np.all(kl_divergence(got, got) == 0)


@pytest.mark.parametrize("rows", [64, 16, 40])
def test_chunked_scores_equal_whole_windows(tiny_untied, monkeypatch, rows):
    """Windows fed in chunks continuing the cache score what one call per
    window scores: in chunks of 64 (the engine's prompt chunk), and of fewer
    rows, as a large vocabulary gets (chunk_rows)."""
    import pyrunq4.scoring
    with Model(tiny_untied, n_threads=2) as m:
        monkeypatch.setattr(pyrunq4.scoring, "LOGITS_BUDGET", 4 * m.config.vocab_size * rows)
        assert pyrunq4.scoring.chunk_rows(m.config.vocab_size) == rows
        ids = np.random.default_rng(1).integers(3, m.config.vocab_size, 300)
        s = score([m], ids, window=128)[0]
        want = []
        for a in range(0, len(ids), 128):
            w = ids[a:a + 128]
            lg = m.logits(w).astype(np.float64)
            lp = lg - np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)) - lg.max(1, keepdims=True)
            want += [-lp[i, w[i + 1]] for i in range(len(w) - 1)]
    assert s.nll.shape == (len(want),)
    assert np.abs(s.nll - np.asarray(want)).max() < 1e-4


def test_kl_against_the_float_reference(tiny_untied):
    """The engine's float path scored against the numpy forward of the same
    weights: KL ~ 0 and the same top tokens; int8 activations: small, not 0."""
    ref = FloatReference(tiny_untied)
    ids = np.random.default_rng(2).integers(3, ref.config.vocab_size, 100)
    with Model(tiny_untied, n_threads=1, float_activations=True) as mf, Model(tiny_untied, n_threads=1) as mq:
        sf, sq = score([mf, mq], ids, window=64, reference=ref)
    assert sf.kl.shape == sf.nll.shape == (98,)
    assert sf.kl.max() < 1e-5 and sf.same_top.mean() == 1.0
    assert 0 < sq.kl.mean() < 0.05 and sq.summary()["kl_p99"] >= sq.kl.mean()


def test_eval_cli_reference_and_float_export(tiny_hf, tmp_path):
    """export --float writes the float model; eval perplexity --reference prints the
    KL line and, with --compare, KL columns; the float model against itself is 0."""
    from fixtures import SENTENCES, make_rq4
    from pyrunq4.export.reader import read_rq4

    flt = make_rq4(tmp_path / "float.rq4", tiny_hf.path, extra_args=("--float",))
    q = make_rq4(tmp_path / "q.rq4", tiny_hf.path, group_size=32)
    _, entries = read_rq4(flt)
    assert isinstance(entries["layers.0.wq"], np.ndarray) and entries["layers.0.wq"].ndim == 2
    text = tmp_path / "t.txt"
    text.write_text(" ".join(SENTENCES * 6))
    run = lambda *a: subprocess.run([sys.executable, "-m", "pyrunq4.eval", "perplexity", *a, "--text", str(text),
                                     "--window", "64", "--reference", flt], capture_output=True, text=True,
                                    timeout=120)
    r = run(q)
    assert r.returncode == 0, r.stderr
    kl = re.fullmatch(r"kl_mean: ([\d.]+) kl_p99: ([\d.]+) same_top: ([\d.]+)", r.stdout.splitlines()[-2])
    assert kl and 0 < float(kl.group(1)) <= float(kl.group(2)) and 0 < float(kl.group(3)) <= 1
    r = run(flt, "--compare", q)
    assert r.returncode == 0, r.stderr
    rows = [l.split() for l in r.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["float.rq4", "q.rq4"]
    assert float(rows[0][4]) < 1e-4 and float(rows[1][4]) > float(rows[0][4])
    r = run(q, "--compare", str(tmp_path / "missing.rq4"))
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_feed_into_a_buffer(tiny_tied):
    """Model.feed(out=): the same logits, in the caller's array; a wrong one refused."""
    from pyrunq4 import ArgumentError, Model
    with Model(tiny_tied, n_ctx=32, n_threads=1) as m:
        want = m.feed([1, 2, 3], all_logits=True)
        m.reset()
        buf = np.full((3, m.config.vocab_size), np.nan, dtype=np.float32)
        got = m.feed([1, 2, 3], all_logits=True, out=buf)
        assert got is buf
        np.testing.assert_array_equal(got, want)
        for bad in (buf[:2], buf.astype(np.float64), np.asfortranarray(buf), buf[0]):
            with pytest.raises(ArgumentError):
                m.feed([1, 2, 3], all_logits=True, out=bad)
        assert m.position == 3  # the refusals fed nothing
        last = np.empty(m.config.vocab_size, dtype=np.float32)
        assert m.feed([4], out=last) is last
