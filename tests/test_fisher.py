"""pyrunq4/export/fisher.py and the classifier's per-row Fisher refinement (fast)."""

import numpy as np
import pytest

from pyrunq4.export import fisher
from pyrunq4.export import quantizers as Q
from pyrunq4.export.quant import dequantize


def _classifier_problem(seed=3, vocab=96, dim=64, n=600):
    """A classifier w (vocab, dim) whose inputs X (n, dim) each predict a few rows
    strongly (a peaked softmax, as a trained model's), and H of X."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((vocab, dim)).astype(np.float32)
    # each position leans toward one row, so the rows' contexts differ
    lean = rng.integers(0, vocab // 4, n)
    corr = rng.standard_normal((n, dim // 4)) @ rng.standard_normal((dim // 4, dim))   # correlated channels
    X = (0.4 * w[lean] + corr + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    X[:, rng.choice(dim, 3, replace=False)] *= 4.0
    acc = Q.hessian_accumulator(dim)
    acc.add(X)
    return w, X, acc.hessian()


def test_top_predictions_match_the_full_softmax():
    w, X, _ = _classifier_problem()
    idx, p = fisher.top_predictions(X, w, topk=5)
    z = X.astype(np.float64) @ w.T.astype(np.float64)
    full = np.exp(z - z.max(1, keepdims=True))
    full /= full.sum(1, keepdims=True)
    want = np.sort(full, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(np.sort(p, axis=1)[:, ::-1], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(full, idx, 1), p, rtol=1e-4, atol=1e-6)


def test_predicted_rows_by_mass_with_their_positions():
    idx = np.array([[0, 1], [2, 1], [1, 3]])
    p = np.array([[0.5, 0.4], [0.9, 0.05], [0.3, 0.2]], np.float32)
    # mass: row 0 0.5, row 1 0.75, row 2 0.9, row 3 0.2
    chosen, where = fisher.predicted_rows(idx, p, 2)
    assert chosen.tolist() == [2, 1]
    assert where[2][0].tolist() == [1] and np.allclose(where[2][1], [0.9])
    assert where[1][0].tolist() == [0, 1, 2] and np.allclose(where[1][1], [0.4, 0.05, 0.3])


def test_row_hessian_is_the_weighted_sum_plus_the_blend():
    w, X, H = _classifier_problem()
    pos, probs = np.array([3, 7, 7, 20]), np.array([0.5, 0.2, 0.1, 0.9], np.float32)
    F = sum(pr * np.outer(X[t], X[t]).astype(np.float64) for t, pr in zip(pos, probs))
    want = F / np.trace(F) + 0.25 * H / np.trace(H)
    np.testing.assert_allclose(fisher.row_hessian(X, pos, probs, H, blend=0.25), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weight_type", ["q4s", "q4a", "q4t"])
def test_gptq_with_given_params_keeps_them(weight_type):
    """params: the scales (mins, table) are the given ones, only the levels are chosen
    (by GPTQ: the output error is below that of rounding to the same scales)."""
    w, X, H = _classifier_problem()
    base = Q.quantize_mse(w, 32, weight_type=weight_type)
    got = Q.quantize_gptq(w, H, 32, weight_type=weight_type, params=base)
    assert np.array_equal(got.d, base.d)
    for a, b in ((got.m, base.m), (got.table, base.table)):
        assert (a is None and b is None) or np.array_equal(a, b)

    def out_err(qt):
        return float(np.sum((X @ w.T - X @ dequantize(qt).T) ** 2))
    assert out_err(got) < 0.9 * out_err(base)
    with pytest.raises(ValueError, match="params"):
        Q.quantize_gptq(w, H, 64, weight_type=weight_type, params=base)


@pytest.mark.parametrize("weight_type", ["q4a", "q4t"])
def test_refine_predicted_rows_lowers_their_fisher_error(weight_type):
    """The refined rows have a lower Fisher-weighted logit error (what the loss sees)
    than GPTQ on the shared H for the same scales and column order (file order); the
    other rows, and every scale, are unchanged."""
    w, X, H = _classifier_problem()
    qt = Q.quantize_gptq(w, H, 32, act_order=True, weight_type=weight_type)
    n_rows = 12
    got = Q.refine_predicted_rows(w, qt, X, H, n_rows)
    idx, p = fisher.top_predictions(X, w)
    chosen, where = fisher.predicted_rows(idx, p, n_rows)
    assert len(chosen) == n_rows
    others = np.setdiff1d(np.arange(w.shape[0]), chosen)
    assert np.array_equal(got.q[others], qt.q[others])
    assert np.array_equal(got.d, qt.d) and (got.m is None or np.array_equal(got.m, qt.m))
    assert not np.array_equal(got.q[chosen], qt.q[chosen])

    def fisher_err(q4):
        err = X @ (w - dequantize(q4)).T.astype(np.float32)   # (positions, vocab) logit errors
        return sum(float(np.sum(where[v][1] * err[where[v][0], v] ** 2)) for v in chosen)
    shared = Q.quantize_gptq(w, H, 32, weight_type=weight_type, params=qt)
    assert fisher_err(got) < 0.8 * fisher_err(shared)


def test_exporter_fisher_rows(tmp_path, capsys):
    """--fisher-rows N: the same file as without it but for the levels of at most N
    rows of the tied embedding (scales, layers and every other entry identical); the
    engine runs it; a negative N, or a method that is not gptq, is one line and exit 1."""
    from fixtures import SENTENCES, make_hf_llama
    from pyrunq4 import Model
    from pyrunq4.export.__main__ import main
    from pyrunq4.export.reader import read_rq4

    hf = make_hf_llama(tmp_path / "hf", dtype="fp32")
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(SENTENCES * 20))
    args = ["--method", "gptq", "--weight-type", "q4a", "--group-size", "32", "--calib", str(calib),
            "--calib-tokens", "256", "--calib-seq-len", "64", "-q"]
    plain, refined = tmp_path / "plain.rq4", tmp_path / "fisher.rq4"
    assert main([hf.path, str(plain), *args]) == 0
    assert main([hf.path, str(refined), *args, "--fisher-rows", "8"]) == 0
    (_, a), (_, b) = read_rq4(plain), read_rq4(refined)
    assert set(a) == set(b)
    for name in a:
        if name == "tok_embeddings":
            continue
        x, y = a[name], b[name]
        assert (x == y) if isinstance(x, bytes) else \
            np.array_equal(x, y) if isinstance(x, np.ndarray) else np.array_equal(x.q, y.q)
    ea, eb = a["tok_embeddings"], b["tok_embeddings"]
    assert np.array_equal(ea.d, eb.d) and np.array_equal(ea.m, eb.m)
    changed = np.flatnonzero((ea.q != eb.q).any(axis=1))
    assert 1 <= len(changed) <= 8
    with Model(str(refined)) as m:
        assert np.isfinite(m.logits(m.tokenize(SENTENCES[0])[:16])).all()

    capsys.readouterr()
    for bad in (["--fisher-rows", "-1"], ["--fisher-rows", "8", "--method", "mse"]):
        out = tmp_path / "bad.rq4"
        assert main([hf.path, str(out), *args, *bad]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--fisher-rows" in err, err
        assert not out.exists()
