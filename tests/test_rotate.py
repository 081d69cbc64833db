"""export/rotate.py: Hadamard matrices, and rotated float models computing the
same logits as the originals (pyrunq4.reference, the numpy forward)."""

import types

import numpy as np
import pytest

from pyrunq4 import reference as R
from pyrunq4.export import rotate
from pyrunq4.export.sources import open_source


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12, 20, 24, 48, 72, 96, 576, 1536, 2048])
def test_hadamard_is_orthonormal_with_equal_magnitudes(n):
    h = rotate.hadamard(n)
    assert h.shape == (n, n)
    assert np.allclose(np.abs(h), 1 / np.sqrt(n))
    assert np.abs(h @ h.T - np.eye(n)).max() < 1e-12


@pytest.mark.parametrize("n", [3, 36, 100])
def test_unknown_orders_fall_back_to_a_random_orthogonal_matrix(n):
    assert rotate.hadamard(n) is None
    q = rotate.random_rotation(n, seed=5)
    assert np.abs(q @ q.T - np.eye(n)).max() < 1e-12
    assert not np.allclose(q, rotate.random_rotation(n, seed=6))


def test_random_signs_depend_on_the_seed():
    a, b = rotate.random_rotation(64, 0), rotate.random_rotation(64, 1)
    assert np.abs(a @ a.T - np.eye(64)).max() < 1e-12
    assert not np.allclose(a, b)


def _random_model(rng, dim, tied, hidden=160, n_layers=2, n_heads=4, n_kv=2, hd=24, vocab=300):
    cfg = dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
               head_dim=hd, vocab_size=vocab, norm_eps=1e-5, rope_theta=10000.0, rope_scaling=0,
               tied_embeddings=int(tied))
    w = {"tok_embeddings": rng.standard_normal((vocab, dim)).astype(np.float32),
         "norm": (0.2 + rng.random(dim) * 2).astype(np.float32)}
    if not tied:
        w["output"] = (rng.standard_normal((vocab, dim)) / np.sqrt(dim)).astype(np.float32)
    shapes = dict(wq=(n_heads * hd, dim), wk=(n_kv * hd, dim), wv=(n_kv * hd, dim), wo=(dim, n_heads * hd),
                  w1=(hidden, dim), w2=(dim, hidden), w3=(hidden, dim))
    for i in range(n_layers):
        for k, s in shapes.items():
            w[f"layers.{i}.{k}"] = (rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32)
        for k in ("attention_norm", "ffn_norm"):
            w[f"layers.{i}.{k}"] = (0.2 + rng.random(dim) * 2).astype(np.float32)
    return w, cfg


@pytest.mark.parametrize("dim,tied,keep", [(96, True, ()), (96, False, ()), (36, True, ()),
                                           (96, True, (5, 70)), (96, False, (0,))])
def test_rotated_float_model_computes_the_same_logits(dim, tied, keep):
    rng = np.random.default_rng(dim + tied)
    weights, cfg = _random_model(rng, dim, tied)
    tokens = rng.integers(0, cfg["vocab_size"], 40)
    rw, rcfg = rotate.rotate_weights(weights, cfg, rotate.rotation(dim, keep, seed=3), keep)
    a, b = R.forward(weights, cfg, tokens), R.forward(rw, rcfg, tokens)
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    assert rcfg["tied_embeddings"] == 0 and "output" in rw
    rest = np.setdiff1d(np.arange(dim), keep)
    for k in ("norm", "layers.0.attention_norm", "layers.1.ffn_norm"):
        assert np.all(rw[k][rest] == 1)
        if keep:  # the kept channels' columns have the scale of their neighbours
            s = np.sqrt(np.mean(weights[k][rest].astype(np.float64) ** 2))
            assert np.allclose(rw[k][list(keep)], weights[k][list(keep)] / s, rtol=1e-6)
    # the weights did change: a rotation that forgets a folded norm breaks the logits
    assert np.abs(rw["layers.0.wq"] - weights["layers.0.wq"]).max() > 0.1
    broken = dict(rw, **{"layers.1.ffn_norm": weights["layers.1.ffn_norm"]})
    assert np.abs(R.forward(broken, rcfg, tokens) - a).max() > 1e-2 * np.abs(a).max()


def test_rotation_spreads_an_outlier_channel():
    """The point of rotating: one huge column of a matrix that reads the stream
    is spread evenly over all columns."""
    rng = np.random.default_rng(0)
    weights, cfg = _random_model(rng, 96, True, n_layers=1)
    weights["layers.0.attention_norm"][7] = 50.0
    rw, _ = rotate.rotate_weights(weights, cfg, rotate.random_rotation(96, seed=1))
    col = lambda w: np.abs(w).max(axis=0)
    before = weights["layers.0.wq"] * weights["layers.0.attention_norm"][None, :]
    assert col(before).max() / np.median(col(before)) > 20
    assert col(rw["layers.0.wq"]).max() / np.median(col(rw["layers.0.wq"])) < 3


def test_outlier_channels_are_those_a_norm_switches_off():
    rng = np.random.default_rng(3)
    norms = [0.5 + rng.random(64) for _ in range(4)]
    assert rotate.outlier_channels(norms).size == 0
    norms[1][9] = 1e-4
    norms[3][40] = -2e-3
    assert list(rotate.outlier_channels(norms)) == [9, 40]
    q = rotate.rotation(64, [9, 40], seed=0)
    assert q[9, 9] == 1 and q[40, 40] == 1 and np.count_nonzero(q[9]) == 1
    assert np.abs(q @ q.T - np.eye(64)).max() < 1e-12


def test_rotated_source_matches_the_float_model(tiny_hf):
    """RotatedSource over a Hugging Face checkpoint (tied, GQA, llama3 RoPE): its
    tensors are the rotated ones and the float logits do not change."""
    options = types.SimpleNamespace(group_size=64, embedding_bits=4, method="rtn", requantize=False)
    with open_source(tiny_hf.path, options) as src:
        names = src.tensor_names()
        weights = {k: src.read(k) for k in names}
        cfg = dict(src.header)
        with rotate.RotatedSource(src, seed=2) as rs:
            assert rs.header["tied_embeddings"] == 0 and cfg["tied_embeddings"] == 1
            assert rs.tensor_names() == names + ["output"]
            rotated = dict(rs.tensors())
    tokens = np.arange(3, 60)
    a = R.forward(weights, cfg, tokens)
    b = R.forward(rotated, dict(cfg, tied_embeddings=0), tokens)
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    q = rotate.rotation(cfg["dim"], rs.keep, seed=2)
    assert np.allclose(rotated["tok_embeddings"], weights["tok_embeddings"] @ q, atol=1e-5)


def test_rotated_export_runs_in_the_engine(tmp_path):
    """python -m pyrunq4.export --rotate: the engine runs the file, and its logits
    are about as close to the float model's as the unrotated export's."""
    from fixtures import SENTENCES, make_hf_llama, make_rq4
    from pyrunq4.model import Model

    hf = make_hf_llama(tmp_path / "hf", dtype="fp32")
    options = types.SimpleNamespace(group_size=32, embedding_bits=8, method="rtn", requantize=False)
    with open_source(hf.path, options) as src:
        wf, cfg = {k: src.read(k) for k in src.tensor_names()}, dict(src.header)
    errs = {}
    for extra in ((), ("--rotate",)):
        path = make_rq4(tmp_path / f"m{len(extra)}.rq4", hf.path, group_size=32, embedding_bits=8,
                        extra_args=extra)
        with Model(path, n_threads=1) as m:
            ids = m.tokenize(" ".join(SENTENCES[:3]))
            got = m.logits(ids)
            assert m.config.tied_embeddings == (0 if extra else 1)
        ref = R.forward(wf, cfg, ids)
        errs[extra] = float(np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref ** 2)))
    assert errs[("--rotate",)] < 0.2 and errs[()] < 0.2, errs
