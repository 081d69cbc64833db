"""pyrunq4/export/quantizers.py: mse and gptq against rtn on synthetic data (fast)."""

import os

import numpy as np
import pytest

from pyrunq4 import reference as R
from pyrunq4.export.reader import weights_from_rq4

from pyrunq4.export import methods
from pyrunq4.export import quantizers as Q
from pyrunq4.export.quant import dequantize, pack, quantize_rtn, unpack


def _group_err(w, qt, imp=None):
    """Squared error per group (rows, ngroups), optionally column-weighted."""
    r = (w.astype(np.float64) - dequantize(qt)) ** 2
    if imp is not None:
        r = r * imp[None, :]
    gs = qt.group_size
    return np.stack([r[:, c0:c0 + gs].sum(axis=1) for c0 in range(0, w.shape[1], gs)], axis=1)


def _check_format(qt, shape, gs, weight_type="q4s"):
    rows, cols = shape
    assert qt.type == weight_type and qt.group_size == gs
    lo, hi, dtype = (-8, 7, np.int8) if weight_type == "q4s" else (0, 15, np.uint8)
    assert qt.q.shape == shape and qt.q.dtype == dtype
    assert qt.q.min() >= lo and qt.q.max() <= hi
    for a in (qt.d,) if weight_type == "q4s" else (qt.d, qt.m):
        assert a.dtype == np.float16 and a.shape == (rows, -(-cols // gs))
        assert np.isfinite(a).all()
    if weight_type == "q4s":
        assert qt.m is None
    qt.validate()


@pytest.mark.parametrize("gs,cols", [(32, 96), (64, 160), (128, 576)])
def test_mse_never_worse_than_rtn_per_group(gs, cols):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((40, cols)) * rng.uniform(0.01, 2, (40, 1))).astype(np.float32)
    w[3, :gs] = 0.0                                        # an all-zero group
    w[5, 7] = 25.0                                         # an outlier
    w[6, :] = np.abs(w[6, :])                              # one-signed rows
    qr, qm = quantize_rtn(w, gs), Q.quantize_mse(w, gs)
    _check_format(qm, w.shape, gs)
    er, em = _group_err(w, qr), _group_err(w, qm)
    assert np.all(em <= er * (1 + 1e-6) + 1e-12)
    assert em.sum() < 0.9 * er.sum()                       # and clearly better overall
    assert np.all(qm.q[3, :gs] == 0)


def test_mse_weighted_by_importance():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 128)).astype(np.float32)
    imp = rng.uniform(0, 10, 128).astype(np.float32) ** 2
    qi, qu = Q.quantize_mse(w, 32, imp=imp), Q.quantize_mse(w, 32)
    assert _group_err(w, qi, imp).sum() <= _group_err(w, qu, imp).sum() + 1e-9
    assert _group_err(w, qi, imp).sum() <= _group_err(w, quantize_rtn(w, 32), imp).sum()


def test_mse_uses_minus_eight():
    w = np.array([[1.0, -0.5, 0.25, 0.125] * 8], np.float32)
    qt = Q.quantize_mse(w, 32)
    assert qt.q.min() == -8 or qt.q.max() == 7
    assert _group_err(w, qt).sum() <= _group_err(w, quantize_rtn(w, 32)).sum()


def _skewed_weights(rng, rows, cols):
    """Rows of mixed scale, a zero row, a constant row, an outlier, one-signed and shifted rows."""
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 2, (rows, 1))).astype(np.float32)
    w[3] = 0.0
    w[4] = 0.75
    w[5, 7] = 25.0
    w[6, :] = np.abs(w[6, :])
    w[7, :] += 3.0
    return w


@pytest.mark.parametrize("gs,cols", [(32, 96), (64, 160), (128, 576)])
def test_q4a_mse_never_worse_than_rtn_per_group(gs, cols):
    rng = np.random.default_rng(6)
    w = _skewed_weights(rng, 40, cols)
    qr, qm = quantize_rtn(w, gs, "q4a"), Q.quantize_mse(w, gs, weight_type="q4a")
    _check_format(qm, w.shape, gs, "q4a")
    er, em = _group_err(w, qr), _group_err(w, qm)
    assert np.all(em <= er * (1 + 1e-6) + 1e-12)
    assert em.sum() < 0.9 * er.sum()
    assert np.all(dequantize(qm)[3] == 0) and np.all(dequantize(qm)[4] == np.float16(0.75))
    # the asymmetric grid beats the symmetric one on the same data, searched the same way
    assert em.sum() < 0.9 * _group_err(w, Q.quantize_mse(w, gs)).sum()


def test_q4a_mse_weighted_by_importance():
    rng = np.random.default_rng(7)
    w = _skewed_weights(rng, 32, 128)
    imp = rng.uniform(0, 10, 128).astype(np.float32) ** 2
    imp[:5] = 0.0                                          # dead columns weigh nothing
    qi = Q.quantize_mse(w, 32, imp=imp, weight_type="q4a")
    qu = Q.quantize_mse(w, 32, weight_type="q4a")
    _check_format(qi, w.shape, 32, "q4a")
    assert _group_err(w, qi, imp).sum() <= _group_err(w, qu, imp).sum() + 1e-9
    assert np.all(_group_err(w, qi, imp) <= _group_err(w, quantize_rtn(w, 32, "q4a"), imp) * (1 + 1e-6) + 1e-12)


def test_weight_type_refused():
    w = np.ones((4, 32), np.float32)
    with pytest.raises(ValueError, match="weight type"):
        Q.quantize(w, "mse", 32, weight_type="q8")


def _correlated_inputs(rng, n, cols):
    """X (n, cols) with strongly correlated channels and a few large ones, like LLM activations."""
    base = rng.standard_normal((n, cols // 4))
    mix = rng.standard_normal((cols // 4, cols))
    x = base @ mix + 0.3 * rng.standard_normal((n, cols))
    x[:, rng.choice(cols, 4, replace=False)] *= 8.0
    return x


def _gptq_problem(seed, rows, cols, n, scale=1.0):
    """Weights (rows, cols), correlated inputs X (n, cols) and their Hessian, drawn in that order."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    x = _correlated_inputs(rng, n, cols)
    acc = Q.hessian_accumulator(cols)
    acc.add(x)
    return w, x, acc.hessian()


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("gs", [32, 64])
def test_gptq_reduces_output_error(gs, act_order):
    rng = np.random.default_rng(2)
    rows, cols = 48, 160                                    # last group shorter at gs=64
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = _correlated_inputs(rng, 512, cols)
    acc = Q.hessian_accumulator(cols)
    acc.add(x[:256])
    acc.add(x[256:])
    qg = Q.quantize_gptq(w, acc.hessian(), gs, act_order=act_order)
    _check_format(qg, w.shape, gs)

    def out_err(qt):
        return float(np.sum((x @ w.T - x @ dequantize(qt).T) ** 2))
    e_rtn, e_mse, e_gptq = out_err(quantize_rtn(w, gs)), out_err(Q.quantize_mse(w, gs)), out_err(qg)
    assert e_gptq < 0.8 * e_rtn
    assert e_gptq < e_mse


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("gs", [32, 64])
def test_gptq_q4a_reduces_output_error(gs, act_order):
    w, x, H = _gptq_problem(8, 48, 160, 512)
    w[:8] += 1.5                                           # rows off centre: the min matters
    qa = Q.quantize_gptq(w, H, gs, act_order=act_order, weight_type="q4a")
    _check_format(qa, w.shape, gs, "q4a")

    def out_err(qt):
        return float(np.sum((x @ w.T - x @ dequantize(qt).T) ** 2))
    e_rtn = out_err(quantize_rtn(w, gs, "q4a"))
    e_mse = out_err(Q.quantize_mse(w, gs, weight_type="q4a"))
    e_q4s = out_err(Q.quantize_gptq(w, H, gs, act_order=act_order))
    assert out_err(qa) < 0.8 * e_rtn
    assert out_err(qa) < e_mse
    assert out_err(qa) < e_q4s


def test_gptq_act_order_groups_match_the_format():
    """With act order the columns are visited permuted, yet each group's fp16 scale is
    the one of the file's contiguous group: pack -> unpack -> dequantize gives exactly
    d[row, col // gs] * q[row, col], the value the engine computes."""
    rows, cols, gs = 16, 96, 32
    w, _, H = _gptq_problem(3, rows, cols, 300)
    qt = Q.quantize_gptq(w, H, gs, act_order=True)
    back = unpack("q4s", rows, cols, gs, pack(qt))
    assert np.array_equal(back.q, qt.q) and np.array_equal(back.d.view(np.uint16), qt.d.view(np.uint16))
    engine = back.q.astype(np.float32) * np.repeat(back.d.astype(np.float32), gs, axis=1)
    assert np.array_equal(engine, dequantize(qt))
    # static groups: the scales are those searched on the original weights
    assert np.array_equal(qt.d, Q.search_scales(w, gs, imp=np.diag(H)))
    # q4a likewise: w = d * q + m with the file's contiguous groups' d and m
    qa = Q.quantize_gptq(w, H, gs, act_order=True, weight_type="q4a")
    back = unpack("q4a", rows, cols, gs, pack(qa))
    assert np.array_equal(back.q, qa.q) and np.array_equal(back.m.view(np.uint16), qa.m.view(np.uint16))
    engine = (back.q.astype(np.float32) * np.repeat(back.d.astype(np.float32), gs, axis=1)
              + np.repeat(back.m.astype(np.float32), gs, axis=1))
    assert np.array_equal(engine, dequantize(qa))
    d, m = Q.search_affine(w, gs, imp=np.diag(H))
    assert np.array_equal(qa.d, d) and np.array_equal(qa.m, m)


def test_gptq_dead_columns_and_zero_rows():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    w[2] = 0.0
    x = rng.standard_normal((100, 64))
    x[:, 5] = 0.0                                           # a dead input channel
    acc = Q.hessian_accumulator(64)
    acc.add(x)
    qt = Q.quantize_gptq(w, acc.hessian(), 32)
    _check_format(qt, w.shape, 32)
    assert np.all(qt.q[2] == 0) and np.all(qt.q[:, 5] == 0)


def _textbook_gptq(w, H, gs, act_order, damp=0.01):
    """GPTQ as the paper writes it, in float64: U = the upper Cholesky factor of
    the dampened H^-1, every column's error applied to all later columns at once;
    static group scales with act order, else searched when a group starts."""
    cols = w.shape[1]
    diag = np.diag(H).astype(np.float64)
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(cols)
    Hp = H.astype(np.float64)[np.ix_(perm, perm)]
    Hp[np.diag_indices(cols)] += damp * np.mean(np.diag(Hp))
    U = np.linalg.cholesky(np.linalg.inv(Hp)).T
    d = Q.search_scales(w, gs, imp=diag).astype(np.float64) if act_order else np.zeros((w.shape[0], -(-cols // gs)))
    W = w.astype(np.float64)[:, perm]
    q = np.zeros(w.shape)
    for i in range(cols):
        j = perm[i]
        g = j // gs
        if not act_order and j % gs == 0:
            cur = W[:, i:min(i + gs, cols)].astype(np.float32)
            d[:, g] = Q.search_scales(cur, gs, imp=diag[i:i + cur.shape[1]])[:, 0]
        safe = np.where(d[:, g] == 0, 1, d[:, g])
        q[:, j] = np.clip(np.rint(W[:, i] / safe), -8, 7)
        err = (W[:, i] - q[:, j] * d[:, g]) / U[i, i]
        W[:, i:] -= np.outer(err, U[i, i:])
    return q


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_matches_the_textbook_algorithm(act_order):
    """The blocked, left-looking, float32 GPTQ (several blocks, sub-blocks and a
    shorter last one) against the paper's column loop in float64: the same levels
    but for float rounding, the same output error."""
    gs = 32
    w, x, H = _gptq_problem(9, 40, 416, 900)
    qt = Q.quantize_gptq(w, H, gs, act_order=act_order)
    ref = _textbook_gptq(w, H, gs, act_order)
    assert np.mean(qt.q == ref) > 0.99

    def out_err(wq):
        return float(np.sum((x @ w.T - x @ wq.T) ** 2))
    d = np.repeat(qt.d.astype(np.float64), gs, axis=1)[:, :w.shape[1]]
    assert out_err(dequantize(qt)) == pytest.approx(out_err(ref * d), rel=0.02)


def test_gptq_cholesky_factor():
    """gptq.cholesky_upper (panels of 256 columns, the last one shorter): V upper,
    V V^T = the permuted, dampened H; a matrix no dampening helps is refused."""
    from pyrunq4.export import gptq
    rng = np.random.default_rng(10)
    n = 600
    x = _correlated_inputs(rng, 400, n)                    # rank-deficient: the dampening matters
    H = (x.T @ x / 400).astype(np.float32)
    order = rng.permutation(n)
    V = gptq.cholesky_upper(H, 0.01, order).astype(np.float64)
    assert np.all(np.tril(V, -1) == 0)
    Ho = H.astype(np.float64)[np.ix_(order, order)]
    Ho[np.diag_indices(n)] += 0.01 * np.mean(np.diag(Ho))
    assert np.abs(V @ V.T - Ho).max() < 1e-5 * np.abs(Ho).max()
    with pytest.raises(np.linalg.LinAlgError):
        gptq.cholesky_upper(-np.eye(n, dtype=np.float32))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores to compare against one")
@pytest.mark.parametrize("act_order,weight_type", [(True, "q4s"), (False, "q4a")])
def test_gptq_same_levels_on_one_core_and_on_all(act_order, weight_type):
    """The row chunks and the products' rounding do not depend on the core count:
    GPTQ on one core and on all of them gives the same bytes."""
    w, _, H = _gptq_problem(5, 3000, 1024, 2048, 0.02)     # several chunks; flips seen at this size
    cores = os.sched_getaffinity(0)
    out = []
    try:
        for use in ({min(cores)}, cores):
            os.sched_setaffinity(0, use)
            qt = Q.quantize_gptq(w, H, 128, act_order=act_order, weight_type=weight_type)
            out.append(qt.q.tobytes() + qt.d.tobytes() + (b"" if qt.m is None else qt.m.tobytes()))
    finally:
        os.sched_setaffinity(0, cores)
    assert out[0] == out[1]


def test_calibration_sequences():
    ids = np.arange(10000)
    seqs = Q.calibration_sequences(ids, seq_len=512, n_tokens=2048, bos_id=7)
    assert len(seqs) == 4 and all(len(s) == 512 and s[0] == 7 for s in seqs)
    assert seqs[-1][-1] == 9999
    short = Q.calibration_sequences(np.arange(100), seq_len=512, n_tokens=2048)
    assert len(short) == 1 and len(short[0]) == 100
    assert len(methods.default_calibration_text()) > 100000


def test_quantize_model_small(tmp_path):
    """A tiny random 2-layer model through every method; shapes and types as the writer needs."""
    rng = np.random.default_rng(5)
    cfg = dict(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
               vocab_size=50, tied_embeddings=1, norm_eps=1e-5, rope_theta=10000.0, rope_scaling=0)
    W = {"tok_embeddings": rng.standard_normal((50, 64)).astype(np.float32), "norm": np.ones(64, np.float32)}
    shapes = {"wq": (64, 64), "wk": (32, 64), "wv": (32, 64), "wo": (64, 64),
              "w1": (96, 64), "w2": (64, 96), "w3": (96, 64)}
    for i in range(2):
        for k, s in shapes.items():
            W[f"layers.{i}.{k}"] = (rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32)
        W[f"layers.{i}.attention_norm"] = np.ones(64, np.float32)
        W[f"layers.{i}.ffn_norm"] = np.ones(64, np.float32)
    calib = [rng.integers(0, 50, 24) for _ in range(3)]
    runs = [(m, "q4s") for m in Q.METHODS + Q.EXPERIMENTAL] + [(m, "q4a") for m in Q.METHODS]
    for method, weight_type in runs:
        got = dict(Q.quantize_model(W.get, cfg, method, 32, calib, progress=None, weight_type=weight_type))
        assert set(got) == set(W)
        for name, v in got.items():
            if name.endswith("norm"):
                assert v.dtype == np.float32 and v.shape == (64,)
            else:
                _check_format(v, W[name].shape, 32, weight_type)
    with pytest.raises(ValueError, match="weight type"):
        dict(Q.quantize_model(W.get, cfg, "awq", 32, calib, progress=None, weight_type="q4a"))


def test_exporter_methods_end_to_end(tmp_path):
    """python -m pyrunq4.export --method mse|gptq on a tiny checkpoint: the files load,
    every matrix is q4s, and gptq's logits are closer to the float model's than rtn's."""
    from fixtures import SENTENCES, make_hf_llama, make_rq4
    from pyrunq4 import reference as R

    hf = make_hf_llama(tmp_path / "hf", dtype="fp32")
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(SENTENCES * 20))
    names = {"model.embed_tokens.weight": "tok_embeddings", "model.norm.weight": "norm"}
    for i in range(hf.config["num_hidden_layers"]):
        for a, b in (("self_attn.q_proj", "wq"), ("self_attn.k_proj", "wk"), ("self_attn.v_proj", "wv"),
                     ("self_attn.o_proj", "wo"), ("mlp.gate_proj", "w1"), ("mlp.down_proj", "w2"),
                     ("mlp.up_proj", "w3"), ("input_layernorm", "attention_norm"),
                     ("post_attention_layernorm", "ffn_norm")):
            names[f"model.layers.{i}.{a}.weight"] = f"layers.{i}.{b}"
    wf = {names[k]: v for k, v in hf.weights.items()}
    errs = {}
    for method in ("rtn", "mse", "gptq"):
        path = make_rq4(tmp_path / f"{method}.rq4", hf.path, group_size=32,
                        extra_args=("--method", method, "--calib", str(calib), "--calib-tokens", "256",
                                    "--calib-seq-len", "64"))
        w, cfg = weights_from_rq4(path)
        assert set(wf) <= set(w)
        if method == "rtn":  # score a sentence of the calibration text
            from tokenizers import Tokenizer
            from pyrunq4.export.reader import read_rq4
            tok = Tokenizer.from_str(bytes(read_rq4(path)[1]["tokenizer.json"]).decode())
            ids = tok.encode(" ".join(SENTENCES[:4]), add_special_tokens=False).ids
        ref = R.forward(wf, cfg, ids)
        errs[method] = float(np.mean((R.forward(w, cfg, ids) - ref) ** 2))
    assert errs["gptq"] < errs["rtn"], errs
    assert errs["mse"] < errs["rtn"], errs


def test_default_method_follows_the_source(tmp_path):
    """--method auto: gptq where every weight is quantized from float values (a plain
    Hugging Face checkpoint, a GGUF with --requantize), mse where the source's tensors are
    imported as they are (a GGUF, a bitsandbytes checkpoint) or nothing is quantized."""
    import argparse
    import json
    from fixtures import make_hf_llama

    hf = make_hf_llama(tmp_path / "hf", dtype="fp32")
    bnb = tmp_path / "bnb"
    bnb.mkdir()
    (bnb / "config.json").write_text(json.dumps(dict(hf.config, quantization_config={"load_in_4bit": True})))

    def resolve(source, **kw):
        return methods.resolve_method(argparse.Namespace(source=str(source), **dict({"method": "auto"}, **kw)))
    assert resolve(hf.path) == methods.CALIBRATED_DEFAULT == "gptq"
    assert resolve(hf.path, float=True) == methods.DATA_FREE_DEFAULT == "mse"
    assert resolve(bnb) == "mse"
    assert resolve(tmp_path / "m.gguf") == "mse"
    assert resolve(tmp_path / "m.GGUF", requantize=True) == "gptq"
    assert resolve(tmp_path / "absent") == "mse"        # the source's own error comes when it is opened
    for m in methods.METHODS:
        assert resolve(hf.path, method=m) == resolve(tmp_path / "m.gguf", method=m) == m


def test_default_export_of_a_float_checkpoint_is_gptq_with_act_order(tmp_path):
    """The exporter without --method writes, for a float checkpoint, the same file as
    --method gptq --act-order (and not the mse file)."""
    from fixtures import SENTENCES, make_hf_llama, make_rq4

    hf = make_hf_llama(tmp_path / "hf", dtype="fp32")
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(SENTENCES * 20))
    calib = ("--calib", str(text), "--calib-tokens", "256", "--calib-seq-len", "64")
    default = make_rq4(tmp_path / "default.rq4", hf.path, group_size=32, extra_args=("--method", "auto") + calib)
    gptq_ao = make_rq4(tmp_path / "gptq.rq4", hf.path, group_size=32,
                       extra_args=("--method", "gptq", "--act-order") + calib)
    plain = make_rq4(tmp_path / "plain.rq4", hf.path, group_size=32,
                     extra_args=("--method", "gptq", "--no-act-order") + calib)
    mse = make_rq4(tmp_path / "mse.rq4", hf.path, group_size=32)
    data = {p: open(p, "rb").read() for p in (default, gptq_ao, plain, mse)}
    assert data[default] == data[gptq_ao]
    assert data[default] != data[plain] and data[default] != data[mse]


def test_exporter_weight_type_q4a_end_to_end(tmp_path):
    """--weight-type q4a for every method: every matrix of the file is q4a, the engine
    loads and runs it, its logits agree with the numpy forward of the file's weights,
    and each method is closer to the float model than RTN with q4s."""
    from fixtures import SENTENCES, make_hf_llama, make_rq4
    from pyrunq4 import Model
    from pyrunq4 import reference as R
    from pyrunq4.export.reader import read_rq4

    hf = make_hf_llama(tmp_path / "hf", dtype="fp32")
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(SENTENCES * 20))
    args = ("--calib", str(calib), "--calib-tokens", "256", "--calib-seq-len", "64")
    ref_path = make_rq4(tmp_path / "float.rq4", hf.path, group_size=32, extra_args=("--float",))
    wf, cfg = weights_from_rq4(ref_path)
    with Model(ref_path) as m:
        ids = m.tokenize(" ".join(SENTENCES[:4]))[:96]
    ref = R.forward(wf, cfg, ids)
    errs = {}
    for method, weight_type in (("rtn", "q4s"), ("rtn", "q4a"), ("mse", "q4a"), ("gptq", "q4a")):
        path = make_rq4(tmp_path / f"{method}-{weight_type}.rq4", hf.path, group_size=32,
                        extra_args=("--method", method, "--weight-type", weight_type, *args))
        _, entries = read_rq4(path)
        types = {e.type for e in entries.values() if hasattr(e, "type")}
        assert types == {weight_type}, (method, types)
        w, _ = weights_from_rq4(path)
        mine = R.forward(w, cfg, ids)
        with Model(path) as m:
            engine = m.logits(ids)
        # the engine's int8 activations against the float forward of the same weights
        assert np.mean((engine - mine) ** 2) < 0.05 * np.mean((mine - mine.mean()) ** 2), method
        errs[method, weight_type] = float(np.mean((mine - ref) ** 2))
    base = errs["rtn", "q4s"]
    assert all(e < base for k, e in errs.items() if k != ("rtn", "q4s")), errs


@pytest.mark.parametrize("method", ["mse", "gptq"])
def test_exporter_embedding_group_size(tmp_path, method):
    """--embedding-group-size: the embedding's groups differ from the matrices'; the engine
    runs the file; a group size the format refuses is one line and exit 1."""
    from fixtures import SENTENCES, make_hf_llama, make_rq4
    from pyrunq4 import Model
    from pyrunq4.export.__main__ import main
    from pyrunq4.export.reader import read_rq4

    hf = make_hf_llama(tmp_path / "hf", dtype="fp32")
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(SENTENCES * 20))
    path = make_rq4(tmp_path / "m.rq4", hf.path, group_size=64,
                    extra_args=("--method", method, "--weight-type", "q4a", "--embedding-group-size", "32",
                                "--calib", str(calib), "--calib-tokens", "256", "--calib-seq-len", "64"))
    header, entries = read_rq4(path)
    assert header["group_size"] == 64 and entries["tok_embeddings"].group_size == 32
    assert {e.group_size for n, e in entries.items() if n.startswith("layers.") and hasattr(e, "q")} == {64}
    w, cfg = weights_from_rq4(path)
    with Model(path) as m:
        ids = m.tokenize(SENTENCES[0])[:32]
        got = m.logits(ids)
    want = R.forward(w, cfg, ids)
    assert np.mean((got - want) ** 2) < 0.05 * np.mean((want - want.mean()) ** 2)
    assert main([hf.path, str(tmp_path / "bad.rq4"), "--embedding-group-size", "48", "-q"]) == 1
    assert not (tmp_path / "bad.rq4").exists()


@pytest.mark.parametrize("method", ["mse", "gptq"])
def test_exporter_embedding_type(tmp_path, capsys, method):
    """--embedding-type q4t beside q4a layers: the embedding is q4t, every layer matrix
    q4a, the engine runs the file, the same command gives the same bytes, and with
    --max-size the file fits and its embedding is q4t too; r4 (no q4t layout) and
    --embedding-bits 8 are one line and exit 1, with no file written."""
    from fixtures import SENTENCES, make_hf_llama
    from pyrunq4 import Model
    from pyrunq4.export.__main__ import main
    from pyrunq4.export.reader import read_rq4

    hf = make_hf_llama(tmp_path / "hf", dtype="fp32")
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(SENTENCES * 20))
    args = [hf.path, "--method", method, "--weight-type", "q4a", "--embedding-type", "q4t",
            "--group-size", "64", "--calib", str(calib), "--calib-tokens", "256", "--calib-seq-len", "64", "-q"]
    paths = [tmp_path / "a.rq4", tmp_path / "b.rq4"]
    for path in paths:
        assert main([args[0], str(path), *args[1:]]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    header, entries = read_rq4(paths[0])
    assert entries["tok_embeddings"].type == "q4t"
    assert {e.type for n, e in entries.items() if n.startswith("layers.") and hasattr(e, "q")} == {"q4a"}
    w, cfg = weights_from_rq4(paths[0])
    with Model(str(paths[0])) as m:
        ids = m.tokenize(SENTENCES[0])[:32]
        got = m.logits(ids)
    want = R.forward(w, cfg, ids)
    assert np.mean((got - want) ** 2) < 0.05 * np.mean((want - want.mean()) ** 2)

    budget = os.path.getsize(paths[0]) + 4096
    mixed = tmp_path / "mix.rq4"
    assert main([args[0], str(mixed), *args[1:], "--max-size", f"{budget}B"]) == 0
    assert os.path.getsize(mixed) <= budget
    assert read_rq4(mixed)[1]["tok_embeddings"].type == "q4t"
    # the embedding's group size fixed, the layers' planned around it
    assert main([args[0], str(mixed), *args[1:], "--max-size", f"{budget}B", "--embedding-group-size", "32"]) == 0
    assert os.path.getsize(mixed) <= budget
    emb = read_rq4(mixed)[1]["tok_embeddings"]
    assert (emb.type, emb.group_size) == ("q4t", 32)

    capsys.readouterr()
    for bad in (["--layout", "r4"], ["--embedding-bits", "8"]):
        out = tmp_path / "bad.rq4"
        assert main([args[0], str(out), *args[1:], *bad]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("r4" in err or "embedding" in err), err
        assert not out.exists()
