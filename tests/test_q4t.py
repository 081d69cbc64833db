"""Q4T, the table int4 type (docs/FORMAT.md): packing, the loader's checks of
the table, the quantizers that fit a table, and the engine against the numpy
forward of the same file (prompt and decode)."""

import struct

import numpy as np
import pytest

from pyrunq4 import reference as R
from pyrunq4.export import quantizers as Q
from pyrunq4.export.format import HEADER_SIZE, ENTRY_SIZE, TYPE_Q4T, entry_size, table_offset
from pyrunq4.export.quant import dequantize, pack, q4t_from_levels, quantize_rtn, unpack
from pyrunq4.export.reader import read_rq4, weights_from_rq4

NF4_INT8 = np.array([-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127], np.int8)


def test_pack_unpack_roundtrip_and_layout():
    rng = np.random.default_rng(1)
    rows, cols, gs = 5, 160, 64
    q = rng.integers(0, 16, (rows, cols), dtype=np.uint8)
    d = rng.uniform(0.001, 0.1, (rows, 3)).astype(np.float16)
    qt = q4t_from_levels(q, d, NF4_INT8, gs)
    buf = pack(qt)
    assert len(buf) == entry_size(TYPE_Q4T, rows, cols, gs)
    at = table_offset(rows, cols, gs)
    assert at % 64 == 0 and buf[at:] == NF4_INT8.tobytes()
    back = unpack("q4t", rows, cols, gs, buf)
    assert np.array_equal(back.q, q) and np.array_equal(back.d, d) and np.array_equal(back.table, NF4_INT8)
    # w = d * table[q], group by group
    want = NF4_INT8[q].astype(np.float32) * np.repeat(d.astype(np.float32), gs, axis=1)[:, :cols]
    assert np.array_equal(dequantize(back), want)


@pytest.mark.parametrize("table", [NF4_INT8[::-1].copy(), np.r_[NF4_INT8[:15], NF4_INT8[14]].astype(np.int8),
                                   np.arange(16, dtype=np.int16)])
def test_python_refuses_bad_tables(table):
    with pytest.raises(ValueError, match="table"):
        q4t_from_levels(np.zeros((1, 32), np.uint8), np.ones((1, 1), np.float16), table, 32)


def test_rtn_needs_a_table():
    with pytest.raises(ValueError, match="table"):
        quantize_rtn(np.ones((2, 32), np.float32), 32, "q4t")


def test_fit_table_is_valid_and_beats_uniform():
    """A table fitted to Gaussian weights is strictly increasing int8 reaching +-127
    and, per group, its mse error is below q4s mse's on the same data."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    t = Q.fit_table(w, 64)
    assert t.dtype == np.int8 and (np.diff(t.astype(int)) > 0).all() and np.abs(t.astype(int)).max() == 127
    qt = Q.quantize_mse(w, 64, weight_type="q4t")
    qt.validate()
    qs = Q.quantize_mse(w, 64, weight_type="q4s")
    err = lambda x: float(np.mean((dequantize(x) - w) ** 2))  # noqa: E731
    assert err(qt) < err(qs)
    assert err(qt) <= err(Q.quantize_q4t(w, 64, "rtn", table=t)) * (1 + 1e-6)


def test_gptq_q4t_reduces_output_error():
    rng = np.random.default_rng(3)
    rows, cols, gs = 24, 128, 32
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = (rng.standard_normal((512, cols)) * rng.uniform(0.1, 3, cols)).astype(np.float32)
    acc = Q.hessian_accumulator(cols)
    acc.add(x)
    for act_order in (False, True):
        qg = Q.quantize_gptq(w, acc.hessian(), gs, act_order=act_order, weight_type="q4t")
        qg.validate()
        back = unpack("q4t", rows, cols, gs, pack(qg))
        assert np.array_equal(dequantize(back), dequantize(qg))
        out = lambda qt: float(np.mean((x @ (dequantize(qt) - w).T) ** 2))  # noqa: E731
        assert out(qg) < out(Q.quantize_q4t(w, gs, "rtn", table=qg.table))


def _engine_vs_numpy(path, ids):
    from pyrunq4 import Model
    w, cfg = weights_from_rq4(path)
    want = R.forward(w, cfg, ids)
    with Model(path) as m:
        prompt = m.logits(ids)
    with Model(path) as m:  # token by token: the decode path
        one = np.stack([np.array(m.feed([t])) for t in ids])
    for got in (prompt, one):
        assert np.mean((got - want) ** 2) < 0.05 * np.mean((want - want.mean()) ** 2)
    return prompt, one


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from fixtures import make_hf_llama
    return make_hf_llama(tmp_path_factory.mktemp("q4t") / "hf", dtype="fp32")


@pytest.mark.parametrize("method", ["rtn", "mse", "gptq"])
def test_exporter_q4t_end_to_end(tmp_path, hf_model, method):
    """--weight-type q4t: every matrix is q4t with its own table; the engine's prompt
    and decode logits agree with the numpy forward of the file's weights."""
    from fixtures import SENTENCES, make_rq4
    from pyrunq4 import Model
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(SENTENCES * 20))
    path = make_rq4(tmp_path / f"{method}.rq4", hf_model.path, group_size=32,
                    extra_args=("--method", method, "--weight-type", "q4t", "--calib", str(calib),
                                "--calib-tokens", "256", "--calib-seq-len", "64"))
    _, entries = read_rq4(path)
    mats = [e for e in entries.values() if hasattr(e, "type")]
    assert {e.type for e in mats} == {"q4t"}
    assert len({e.table.tobytes() for e in mats}) > 1   # per-tensor tables
    with Model(path) as m:
        ids = m.tokenize(" ".join(SENTENCES[:3]))[:70]
    prompt, one = _engine_vs_numpy(path, ids)
    assert np.abs(prompt - one).max() < 1e-3 * max(1.0, np.abs(prompt).max())


def test_exporter_refuses_q4t_r4(tmp_path, hf_model):
    from pyrunq4.export.__main__ import main
    assert main([hf_model.path, str(tmp_path / "x.rq4"), "--weight-type", "q4t", "--layout", "r4", "-q"]) == 1
    assert not (tmp_path / "x.rq4").exists()


def _with_table(data, entry_name, new):
    """The file bytes with the table of q4t entry `entry_name` replaced by `new`."""
    b = bytearray(data)
    n = struct.unpack_from("<I", b, 116)[0]
    for i in range(n):
        e = HEADER_SIZE + i * ENTRY_SIZE
        if b[e:e + 64].split(b"\0")[0] == entry_name.encode():
            _, _, gs, rows, cols, off, size = struct.unpack_from("<64sIIIIQQ", b, e)
            at = off + table_offset(rows, cols, gs)
            b[at:at + 16] = np.asarray(new, np.int8).tobytes()
            return bytes(b)
    raise KeyError(entry_name)


def test_loader_refuses_bad_tables(tmp_path, hf_model):
    """A table that is not strictly increasing: one line naming the tensor, from the
    C loader and from the Python reader; a truncated q4t entry is refused by size."""
    from fixtures import make_rq4
    from pyrunq4 import FormatError, Model
    path = make_rq4(tmp_path / "ok.rq4", hf_model.path, group_size=32,
                    extra_args=("--method", "rtn", "--weight-type", "q4t"))
    data = open(path, "rb").read()
    bad_tables = [NF4_INT8[::-1], np.r_[NF4_INT8[:8], NF4_INT8[7], NF4_INT8[9:]]]
    for k, t in enumerate(bad_tables):
        bad = tmp_path / f"bad{k}.rq4"
        bad.write_bytes(_with_table(data, "layers.1.w2", t))
        with pytest.raises(FormatError) as e:
            Model(str(bad))
        msg = str(e.value)
        assert "layers.1.w2" in msg and "Q4T table" in msg and "\n" not in msg
        with pytest.raises(ValueError, match="layers.1.w2"):
            read_rq4(bad)
    # the same bytes with a valid table load
    good = tmp_path / "good.rq4"
    good.write_bytes(_with_table(data, "layers.1.w2", np.arange(-8, 8)))
    with Model(str(good)):
        pass


@pytest.mark.parametrize("dq", [True, False])
def test_bnb_nf4_imports_into_q4t(tmp_path, capsys, dq):
    """--weight-type q4t at bnb's block size: every NF4 weight comes in as q4t with the
    same codes, the NF4 code book rounded to int8 once and fp16(absmax / 127) scales,
    so it dequantizes to within those roundings of what bitsandbytes decodes, where
    rows are whole blocks; at another group size the weights are dequantized and
    quantized again."""
    from pyrunq4.export.__main__ import main
    from pyrunq4.export.sources import bnb
    from test_bnb import make_bnb_llama
    from test_export_hf import rq4_name
    folder, expect = make_bnb_llama(tmp_path / "hf", "nf4", dq)
    out = tmp_path / "m.rq4"
    assert main([folder, str(out), "--group-size", "64", "--method", "rtn", "--weight-type", "q4t"]) == 0
    assert "imported into q4t" in capsys.readouterr().err
    _, entries = read_rq4(str(out))
    table = np.rint(bnb.NF4.astype(np.float64) * 127).astype(np.int8)
    n = 0
    for hf_name, w in expect.items():
        e = entries[rq4_name(hf_name)]
        if w.ndim == 1 or "embed_tokens" in hf_name:
            continue
        assert e.type == "q4t", hf_name
        if w.shape[1] % 64:  # bnb's blocks straddle rows: dequantized, a table fitted
            assert not np.array_equal(e.table, table), hf_name
            continue
        n += 1
        assert np.array_equal(e.table, table), hf_name
        got = dequantize(e)
        # bnb's value code * absmax vs round(127 code) * fp16(absmax / 127), then bf16 rounding of bnb's
        assert np.abs(got - w).max() <= 0.02 * np.abs(w).max(), hf_name
        assert np.array_equal(np.sign(got), np.sign(np.where(np.abs(w) > 0, w, 0))), hf_name
    assert n == 12  # all but the two down_proj (96 columns)
    out2 = tmp_path / "m32.rq4"
    assert main([folder, str(out2), "--group-size", "32", "--method", "rtn", "--weight-type", "q4t"]) == 0
    _, entries = read_rq4(str(out2))
    wq = entries["layers.0.wq"]
    assert wq.type == "q4t" and wq.group_size == 32 and not np.array_equal(wq.table, table)


def test_gguf_iq4_nl_imports_exactly(tmp_path):
    """A GGUF IQ4_NL tensor comes in as q4t g32 with IQ4_NL's table: the same values as
    gguf's own dequantization, bit for bit; the engine runs the file."""
    import gguf
    from test_gguf_source import hf_weights, random_kquant, tiny_vocab, write_gguf
    from pyrunq4 import Model
    from pyrunq4.export.sources.gguf import GGUFSource
    T = gguf.GGMLQuantizationType
    path = tmp_path / "iq4.gguf"
    expect = write_gguf(path, hf_weights(len(tiny_vocab()[0])), {"layers.0.w1": T.IQ4_NL, "layers.0.wo": T.IQ4_NL})
    src = GGUFSource(str(path))
    got = dict(src.tensors())
    for name in ("layers.0.w1", "layers.0.wo"):
        t = got[name]
        assert t.type == "q4t" and t.group_size == 32, name
        assert np.array_equal(t.table, np.array(gguf.quants.IQ4_NL.kvalues, np.int8))
        assert np.array_equal(dequantize(t), expect[name]), name
    from pyrunq4.export.__main__ import main
    out = tmp_path / "iq4.rq4"
    assert main([str(path), str(out), "-q"]) == 0
    with Model(str(out)) as m:
        assert np.isfinite(m.logits([1, 2, 3])).all()
