"""The interleaved int4 layout (--layout r4, types Q4S_R4 / Q4A_R4 of docs/FORMAT.md):
the packed bytes against the format's rule, written from scratch here; pack/unpack
round trips with padding rows; the engine's outputs identical to the row-major
file's (kernels.h: the same contract); the loader refusing a bad entry."""

import numpy as np
import pytest

from fixtures import make_hf_llama, make_rq4
from pyrunq4 import Model
from pyrunq4.export import quant
from pyrunq4.export.format import TYPE_IDS, quantized_layout
from pyrunq4.export.reader import read_rq4


def _reference_bytes(qt):
    """The r4 entry bytes by FORMAT.md's words, value by value (slow, independent)."""
    rows, cols = qt.q.shape
    ng = qt.ngroups
    prows = -(-rows // 4) * 4
    _, s_off, m_off, size = quantized_layout(TYPE_IDS[qt.type + "_r4"], rows, cols, qt.group_size)
    buf = bytearray(size)
    for r in range(rows):
        u = qt.q[r].astype(np.int64) & 0x0F
        for i in range(0, cols, 2):
            byte = int(u[i]) | int(u[i + 1]) << 4
            block, j = divmod(i // 2, 16)
            k, c = divmod(j, 4)
            buf[(r // 4) * (cols // 2) * 4 + block * 64 + (4 * k + r % 4) * 4 + c] = byte
        for g in range(ng):
            at = ((r // 4) * ng + g) * 4 + r % 4
            buf[s_off + 2 * at:s_off + 2 * at + 2] = qt.d[r, g].astype("<f2").tobytes()
            if m_off is not None:
                buf[m_off + 2 * at:m_off + 2 * at + 2] = qt.m[r, g].astype("<f2").tobytes()
    assert len(buf) == size and prows * cols // 2 <= s_off
    return bytes(buf)


@pytest.mark.parametrize("qtype", ["q4s", "q4a"])
@pytest.mark.parametrize("rows,cols,gs", [(1, 32, 32), (4, 64, 32), (5, 96, 64), (11, 160, 128), (8, 576, 128)])
def test_pack_matches_the_format_and_round_trips(qtype, rows, cols, gs):
    rng = np.random.default_rng(rows * cols + gs)
    qt = quant.quantize_rtn(rng.standard_normal((rows, cols)).astype(np.float32), gs, qtype)
    row_major = quant.pack(qt)
    qt.layout = "r4"
    packed = quant.pack(qt)
    assert packed == _reference_bytes(qt)
    if rows % 4 == 0:
        assert len(packed) == len(row_major)
    back = quant.unpack(qtype + "_r4", rows, cols, gs, packed)
    assert back.layout == "r4" and back.type == qtype
    assert np.array_equal(back.q, qt.q) and np.array_equal(back.d, qt.d)
    assert (back.m is None) == (qtype == "q4s") and (back.m is None or np.array_equal(back.m, qt.m))
    assert np.array_equal(quant.dequantize(back), quant.dequantize(qt))


def test_q8_has_no_r4_layout():
    qt = quant.quantize_rtn(np.ones((4, 32), np.float32), 32, "q8")
    qt.layout = "r4"
    with pytest.raises(ValueError, match="int4 types only"):
        quant.pack(qt)


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory):
    """The same tiny model exported row-major and interleaved; vocab 301 rows: the
    classifier's last group of rows is padded."""
    d = tmp_path_factory.mktemp("r4")
    hf = d / "hf"
    make_hf_llama(hf, vocab_size=301, tie_word_embeddings=False)
    rows = make_rq4(d / "rows.rq4", hf, group_size=64)
    r4 = make_rq4(d / "r4.rq4", hf, group_size=64, extra_args=["--layout", "r4"])
    return rows, r4


def test_export_writes_the_layout_losslessly(two_layouts):
    rows, r4 = two_layouts
    (_, a), (_, b) = read_rq4(rows), read_rq4(r4)
    n = 0
    for name, t in a.items():
        if isinstance(t, quant.QuantizedTensor):
            u = b[name]
            assert u.layout == ("r4" if t.type in ("q4s", "q4a") else "rows"), name
            assert np.array_equal(t.q, u.q) and np.array_equal(t.d, u.d), name
            n += u.layout == "r4"
    assert n > 0 and b["output"].q.shape[0] == 301


@pytest.mark.parametrize("kernel", ["", "scalar"])
def test_engine_outputs_identical_between_layouts(two_layouts, kernel, monkeypatch):
    if kernel:
        monkeypatch.setenv("RUNQ4_KERNEL", kernel)
    ids = [3, 17, 250, 9, 44, 120, 7, 300, 65, 2, 11, 13, 200, 5, 8, 99, 31, 1]
    outs = []
    for path in two_layouts:
        with Model(path, n_ctx=64, n_threads=2) as m:
            prompt = m.logits(ids)
            m.reset()
            decode = np.stack([m.feed([i]) for i in ids])
            outs.append((prompt, decode))
    assert outs[0][0].shape == (len(ids), 301)
    assert np.array_equal(outs[0][0], outs[1][0])  # prompt kernels
    assert np.array_equal(outs[0][1], outs[1][1])  # decode kernels


def test_loader_refuses_a_short_r4_entry(two_layouts, tmp_path):
    from pyrunq4.errors import FormatError
    from pyrunq4.export.format import ENTRY_STRUCT, HEADER_SIZE
    data = bytearray(open(two_layouts[1], "rb").read())
    n = int.from_bytes(data[116:120], "little")
    for i in range(n):
        at = HEADER_SIZE + i * ENTRY_STRUCT.size
        name, t, gs, rows, cols, off, size = ENTRY_STRUCT.unpack_from(data, at)
        if name.rstrip(b"\0") == b"output":
            # the size a row-major Q4S of 301 rows would take: not the padded layout's
            ENTRY_STRUCT.pack_into(data, at, name, t, gs, rows, cols, off, quantized_layout(
                TYPE_IDS["q4s"], rows, cols, gs)[3] if t == TYPE_IDS["q4s_r4"] else size - 64)
    bad = tmp_path / "bad.rq4"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="entry output: Q4[SA]_R4 301x64"):
        Model(str(bad))
