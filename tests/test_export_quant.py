"""pyrunq4/export/quant.py, writer.py, reader.py: quantization, packing, the file round trip."""

import os

import numpy as np
import pytest

from fixtures import make_tokenizer

from pyrunq4.export import format as fmt
from pyrunq4.export import quant, reader, writer

TOKENIZER_JSON = make_tokenizer().to_str().encode()   # 300 tokens (the C loader parses it)
HEADER = dict(dim=64, hidden_dim=96, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=300,
              max_seq_len=64, tied_embeddings=1, bos_id=1, eos_ids=[2], norm_eps=1e-5, rope_theta=10000.0,
              group_size=64)


def test_seed_worked_example():
    # The seed: [0.1, 0.5, 1.2, 2.8, -0.3] -> scale 2.8/7 = 0.4, levels [0, 1, 3, 7, -1].
    # The scale is stored as fp16: 0.4 -> 0.39990234375, and the levels are computed with
    # that stored scale: 0.1/0.3999=0.25->0, 0.5/..=1.25->1, 1.2/..=3.0007->3,
    # 2.8/..=7.0017->7 (not clipped: needs >= 7.5), -0.3/..=-0.75->-1. Same integers.
    w = np.zeros((1, 32), np.float32)  # a row is a multiple of 32; the zeros do not change max|w|
    w[0, :5] = [0.1, 0.5, 1.2, 2.8, -0.3]
    qt = quant.quantize_rtn(w, 32)
    assert qt.type == "q4s" and qt.d.dtype == np.float16
    assert float(qt.d[0, 0]) == pytest.approx(0.39990234375, abs=0)
    assert qt.q[0, :5].tolist() == [0, 1, 3, 7, -1]
    assert not qt.q[0, 5:].any()


def test_nibble_order():
    q = np.zeros((2, 32), np.int8)
    q[0, :4] = [1, -2, 7, -8]
    q[1, :2] = [-1, 3]
    qt = quant.q4s_from_levels(q, np.ones((2, 1), np.float16), 32)
    b = quant.pack(qt)
    # byte j = (value 2j & 0x0F) | (value 2j+1 << 4)
    assert b[0] == 0xE1 and b[1] == 0x87 and b[16] == 0x3F
    # scales at align64(2*16 = 32) = 64
    assert len(b) == 64 + 2 * 2 and b[64:68] == np.ones(2, "<f2").tobytes()
    back = quant.unpack("q4s", 2, 32, 32, b)
    assert np.array_equal(back.q, q)


@pytest.mark.parametrize("qtype,bound", [("q4s", 0.14), ("q4a", 0.12), ("q8", 0.008)])
def test_round_trip_error(qtype, bound):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((96, 576)).astype(np.float32)
    qt = quant.quantize_rtn(w, 128, qtype)
    assert qt.d.shape == (96, 5)  # 576 at 128: 128, 128, 128, 128, 64
    dq = quant.dequantize(qt)
    err = quant.rms_rel_error(w, qt)
    assert err < bound
    assert err == pytest.approx(np.sqrt(np.mean((w - dq) ** 2) / np.mean(w ** 2)), rel=1e-5)
    # each value is within half a step of its group's scale (plus fp16 rounding of d and m)
    step = np.repeat(qt.d.astype(np.float32), 128, axis=1)[:, :576]
    assert (np.abs(w - dq) <= 0.5 * step * 1.002 + 1e-6).all()


def test_short_last_group_uses_its_own_max():
    w = np.zeros((1, 576), np.float32)
    w[0, :512] = 100.0
    w[0, 512:] = np.linspace(-1, 1, 64)  # the short last group: 64 values
    qt = quant.quantize_rtn(w, 128)
    assert qt.d.shape == (1, 5)
    assert float(qt.d[0, 4]) == pytest.approx(1 / 7, rel=1e-3)
    assert qt.q[0, 512] == -7 and qt.q[0, 575] == 7


def test_all_zero_group_and_tiny_values():
    w = np.zeros((3, 64), np.float32)
    w[1, :32] = 1e-9          # max|w|/7 underflows fp16 -> scale 0 -> levels 0
    w[2, 32:] = 3.5
    for qtype in ("q4s", "q4a", "q8"):
        qt = quant.quantize_rtn(w, 32, qtype)
        assert np.isfinite(qt.d.astype(np.float32)).all()
        assert (qt.d[0] == 0).all() and (qt.d[1, 0] == 0) and (qt.q[:2] == 0).all()
        assert np.abs(quant.dequantize(qt)[:2]).max() == 0
        assert np.abs(quant.dequantize(qt) - w).max() < 3.5 * 1e-3   # fp16 rounding of d
    with np.errstate(divide="raise", invalid="raise"):   # no division by zero anywhere
        quant.quantize_rtn(w, 32)


def test_refusals():
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.quantize_rtn(np.ones((2, 48), np.float32), 32)
    with pytest.raises(ValueError, match="group size"):
        quant.quantize_rtn(np.ones((2, 64), np.float32), 48)
    w = np.ones((2, 64), np.float32)
    w[1, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        quant.quantize_rtn(w, 32)
    with pytest.raises(ValueError, match="overflows fp16"):
        quant.quantize_rtn(np.full((1, 32), 1e6, np.float32), 32)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        quant.q4s_from_levels(np.full((1, 32), 8), np.ones((1, 1), np.float16), 32)
    with pytest.raises(ValueError, match="fp16"):
        quant.q8_from_levels(np.zeros((1, 32), np.int8), np.full((1, 1), 0.1), 32)


def test_exact_import_constructors():
    rng = np.random.default_rng(2)
    u = rng.integers(0, 16, (4, 64))
    d = rng.standard_normal((4, 2)).astype(np.float16)
    m = rng.standard_normal((4, 2)).astype(np.float16)
    qt = quant.q4s_from_levels(u - 8, d.view(np.uint16), 32)   # Q4_0: q = u - 8, raw half bits
    assert qt.q.dtype == np.int8 and np.array_equal(qt.d, d)
    qa = quant.q4a_from_levels(u, d, m, 32)
    assert np.allclose(quant.dequantize(qa), np.repeat(d.astype(np.float32), 32, 1) * u
                       + np.repeat(m.astype(np.float32), 32, 1))
    q8 = quant.q8_from_levels(rng.integers(-128, 128, (4, 64)), d.astype(np.float32), 32)
    assert np.array_equal(quant.unpack("q8", 4, 64, 32, quant.pack(q8)).q, q8.q)
    b = quant.pack(qa)
    _, scales_off, mins_off, size = fmt.quantized_layout(fmt.TYPE_Q4A, 4, 64, 32)
    assert (scales_off, mins_off, size) == (128, 192, 208) and len(b) == size
    assert b[mins_off:] == m.astype("<f2").tobytes()


def test_large_matrix_is_fast_and_chunked():
    # 8M values: more than one row chunk (CHUNK_VALUES), so the chunked path is the one checked
    w = np.random.default_rng(3).standard_normal((4096, 2048)).astype(np.float32)
    qt = quant.quantize_rtn(w, 128)
    assert quant.rms_rel_error(w, qt) < 0.13


def _write_small(path, **over):
    rng = np.random.default_rng(4)
    h = dict(HEADER, **over)
    mats = {"tok_embeddings": (300, 64), "layers.0.wq": (64, 64), "layers.0.wk": (32, 64),
            "layers.0.wv": (32, 64), "layers.0.wo": (64, 64), "layers.0.w1": (96, 64),
            "layers.0.w2": (64, 96), "layers.0.w3": (96, 64)}
    written = {}
    with writer.Rq4Writer(path, h, max_entries=16) as wr:
        for i, (name, shape) in enumerate(mats.items()):
            qtype = ("q4s", "q4a", "q8")[i % 3]
            qt = quant.quantize_rtn(rng.standard_normal(shape).astype(np.float32), 64, qtype)
            wr.add_quantized(name, qt)
            written[name] = qt
        for name in ("layers.0.attention_norm", "layers.0.ffn_norm", "norm"):
            v = rng.standard_normal(64).astype(np.float32)
            wr.add_f32(name, v)
            written[name] = v.reshape(1, 64)
        wr.add_blob("tokenizer.json", TOKENIZER_JSON)
        written["tokenizer.json"] = TOKENIZER_JSON
    return written


def test_file_round_trip(tmp_path):
    path = tmp_path / "m.rq4"
    written = _write_small(path)
    assert sorted(os.listdir(tmp_path)) == ["m.rq4"]
    h, entries = reader.read_rq4(path)
    assert h["file_size"] == path.stat().st_size and h["n_entries"] == len(written)
    assert h["eos_ids"] == (2,) and h["bos_id"] == 1 and h["group_size"] == 64
    for name, v in written.items():
        got = entries[name]
        if isinstance(v, bytes):
            assert got == v
        elif isinstance(v, np.ndarray):
            assert got.dtype == np.float32 and np.array_equal(got, v)
        else:
            assert got.type == v.type and np.array_equal(got.q, v.q) and np.array_equal(got.d, v.d)
            assert (got.m is None) == (v.m is None) and (v.m is None or np.array_equal(got.m, v.m))
    _, table = reader.read_table(path)
    assert all(e["offset"] % 64 == 0 for e in table)
    assert table[0]["offset"] >= 256 + 16 * 96


def _corrupt(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


@pytest.mark.parametrize("off,data,msg", [
    (0, b"XUNQ", "bad magic"),
    (8, (3).to_bytes(4, "little"), "version 3"),
    (24, (65).to_bytes(4, "little"), "dim"),
    (116, (0).to_bytes(4, "little"), "n_entries"),
    (256 + 80, (1).to_bytes(8, "little"), "multiple of 64"),   # first entry's offset
    (256 + 88, (3).to_bytes(8, "little"), "size 3"),            # first entry's size
])
def test_reader_refuses_corrupt_files(tmp_path, off, data, msg):
    path = tmp_path / "m.rq4"
    _write_small(path)
    model = _c_model()
    if model is not None:     # the C loader opens the intact file...
        model(str(path)).close()
    _corrupt(path, off, data)
    with pytest.raises(ValueError, match=msg):
        reader.read_rq4(path)
    if model is not None:     # ...and refuses the corrupt one, as read_rq4 does
        with pytest.raises(Exception):
            model(str(path))


def _c_model():
    try:
        from pyrunq4 import Model
        return Model
    except Exception:
        return None


def test_reader_refuses_truncated_file_and_missing_tensor(tmp_path):
    path = tmp_path / "m.rq4"
    _write_small(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1)
    with pytest.raises(ValueError, match="truncated"):
        reader.read_rq4(path)
    path2 = tmp_path / "n.rq4"
    with writer.Rq4Writer(path2, HEADER, 1) as wr:
        wr.add_f32("norm", np.ones(64, np.float32))
    with pytest.raises(ValueError, match="missing tensor 'tok_embeddings'"):
        reader.read_rq4(path2)
    h, e = reader.read_rq4(path2, check_model=False)
    assert list(e) == ["norm"]


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "m.rq4"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with writer.Rq4Writer(path, HEADER, 4) as wr:
            wr.add_f32("norm", np.ones(64, np.float32))
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["m.rq4"] and path.read_bytes() == b"old"
    # an error inside an add (NaN) also removes the temporary file
    with pytest.raises(ValueError, match="non-finite"):
        with writer.Rq4Writer(tmp_path / "x.rq4", HEADER, 4) as wr:
            wr.add_f32("norm", np.array([1.0, np.nan] * 32, np.float32))
    assert sorted(os.listdir(tmp_path)) == ["m.rq4"]


def test_writer_refusals(tmp_path):
    with pytest.raises(ValueError, match="n_kv_heads"):
        writer.Rq4Writer(tmp_path / "a.rq4", dict(HEADER, n_kv_heads=3), 4)
    with pytest.raises(ValueError, match="eos"):
        writer.Rq4Writer(tmp_path / "a.rq4", dict(HEADER, eos_ids=[300]), 4)
    with pytest.raises(ValueError, match="duplicate"):
        with writer.Rq4Writer(tmp_path / "a.rq4", HEADER, 4) as wr:
            wr.add_blob("b", b"1")
            wr.add_blob("b", b"2")
    with pytest.raises(ValueError, match="max_entries"):
        with writer.Rq4Writer(tmp_path / "a.rq4", HEADER, 1) as wr:
            wr.add_blob("a", b"1")
            wr.add_blob("b", b"2")
    with pytest.raises(ValueError, match="name"):
        with writer.Rq4Writer(tmp_path / "a.rq4", HEADER, 1) as wr:
            wr.add_blob("x" * 64, b"1")
    with pytest.raises(OSError):
        writer.Rq4Writer(tmp_path / "no" / "such" / "dir.rq4", HEADER, 1)
    assert os.listdir(tmp_path) == []


def test_writer_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _write_small(tmp_path / "m.rq4")
    finally:
        os.umask(old)
    assert (tmp_path / "m.rq4").stat().st_mode & 0o777 == 0o644
