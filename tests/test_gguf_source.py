"""GGUF as an export source (pyrunq4/export/sources/gguf.py) on small GGUF files written here with gguf.GGUFWriter
the way llama.cpp's converter writes them (q/k rows permuted, Hugging Face names mapped, metadata keys).

- exact imports: Q4_0 -> q4s, Q4_1 -> q4a, Q8_0 -> q8 (g32) dequantize to exactly gguf.quants.dequantize;
- every other type (F32, F16, BF16, Q5_0, Q4_K, Q6_K) arrives as gguf's float values, requantized;
- the q/k unpermutation inverts llama.cpp's LlamaModel.permute (written below as llama.cpp has it);
- hyper-parameters, llama3 rope (from the rope_freqs tensor), tokenizer, chat template from metadata;
- clear refusals of other architectures, extra tensors, partial rotary embeddings.
"""
import json
from types import SimpleNamespace

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from pyrunq4.export.sources.gguf import GGUFSource, unpermute_rows  # noqa: E402
from pyrunq4.export.quant import QuantizedTensor, dequantize  # noqa: E402
from pyrunq4.errors import ExportError  # noqa: E402

DIM, HIDDEN, N_HEADS, N_KV, HEAD_DIM, N_LAYERS = 256, 512, 4, 2, 64, 1
CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"

GGUF_NAMES = {"attention_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
              "ffn_norm": "ffn_norm", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}


def llama_cpp_permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py LlamaModel.permute, as llama.cpp writes wq (n_head, n_head) and wk (n_head, n_kv)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def byte_tokens():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tiny_vocab():
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + byte_tokens() + ["Ġt", "he", "Ġthe"]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    return tokens, types, ["Ġ t", "h e", "Ġt he"]


def hf_weights(vocab, seed=0, untied=True):
    rng = np.random.default_rng(seed)

    def lin(r, c):
        return (rng.standard_normal((r, c)) / np.sqrt(c)).astype(np.float32)
    w = {"tok_embeddings": rng.standard_normal((vocab, DIM)).astype(np.float32) * 0.5,
         "norm": (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)}
    if untied:
        w["output"] = lin(vocab, DIM)
    for i in range(N_LAYERS):
        p = f"layers.{i}."
        w.update({p + "attention_norm": (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32),
                  p + "ffn_norm": (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32),
                  p + "wq": lin(N_HEADS * HEAD_DIM, DIM), p + "wk": lin(N_KV * HEAD_DIM, DIM),
                  p + "wv": lin(N_KV * HEAD_DIM, DIM), p + "wo": lin(DIM, N_HEADS * HEAD_DIM),
                  p + "w1": lin(HIDDEN, DIM), p + "w2": lin(DIM, HIDDEN), p + "w3": lin(HIDDEN, DIM)})
    return w


def random_kquant(rows, cols, qtype, seed):
    """Valid random K-quant (and IQ4_NL) blocks (random levels/sub-scales, small finite fp16 super-scales)."""
    rng = np.random.default_rng(seed)
    bsize, tsize = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // bsize, tsize), dtype=np.uint8)
    if qtype == T.Q4_K:
        raw[:, :, 0:2] = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
        raw[:, :, 2:4] = np.frombuffer(np.float16(0.001).tobytes(), np.uint8)
    elif qtype == T.Q6_K:
        raw[:, :, -2:] = np.frombuffer(np.float16(0.0005).tobytes(), np.uint8)
    elif qtype == T.IQ4_NL:
        raw[:, :, 0:2] = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
    return raw.reshape(rows, -1)


def gguf_name(ours):
    if ours == "tok_embeddings":
        return "token_embd.weight"
    if ours == "output":
        return "output.weight"
    if ours == "norm":
        return "output_norm.weight"
    _, i, n = ours.split(".")
    return f"blk.{i}.{GGUF_NAMES[n]}.weight"


def write_gguf(path, weights, types, arch="llama", pre="smollm", rope_freqs=None, theta=10000.0, extra=None,
               meta_over=None, skip=()):
    """A GGUF with `weights` (FORMAT.md names, Hugging Face row order) stored as types[name] (default F32);
    wq/wk permuted as llama.cpp does. Returns {FORMAT.md name: the float32 values gguf dequantizes
    (Hugging Face row order)}."""
    tokens, ttypes, merges = tiny_vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(N_LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(HIDDEN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count((meta_over or {}).get("rope_dims", HEAD_DIM))
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    expect = {}
    for ours, arr in weights.items():
        if ours in skip:
            continue
        a = arr
        if ours.endswith(".wq"):
            a = llama_cpp_permute(a, N_HEADS, N_HEADS)
        elif ours.endswith(".wk"):
            a = llama_cpp_permute(a, N_HEADS, N_KV)
        qt = types.get(ours, T.F32)
        if qt == T.F32:
            raw = np.ascontiguousarray(a, np.float32)
            w.add_tensor(gguf_name(ours), raw)
            deq = raw
        elif qt == T.F16:
            raw = a.astype(np.float16)
            w.add_tensor(gguf_name(ours), raw)
            deq = raw.astype(np.float32)
        else:
            raw = random_kquant(*a.shape, qt, seed=len(ours)) if qt in (T.Q4_K, T.Q6_K, T.IQ4_NL) else gguf.quants.quantize(a, qt)
            w.add_tensor(gguf_name(ours), raw, raw_dtype=qt)
            deq = gguf.quants.dequantize(raw, qt).reshape(a.shape)
        if ours.endswith(".wq"):
            deq = deq[unpermute_rows(N_HEADS * HEAD_DIM, N_HEADS)]
        elif ours.endswith(".wk"):
            deq = deq[unpermute_rows(N_KV * HEAD_DIM, N_KV)]
        expect[ours] = np.asarray(deq, np.float32)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expect


MIXED = {"layers.0.wq": T.Q4_0, "layers.0.wk": T.Q4_1, "layers.0.wv": T.Q8_0, "layers.0.wo": T.F16,
         "layers.0.w1": T.Q4_K, "layers.0.w2": T.Q6_K, "layers.0.w3": T.BF16, "tok_embeddings": T.Q5_0,
         "output": T.Q8_0}


@pytest.fixture
def mixed(tmp_path):
    vocab = len(tiny_vocab()[0])
    path = tmp_path / "mixed.gguf"
    expect = write_gguf(path, hf_weights(vocab), MIXED)
    return str(path), expect


def test_permutation_inverse():
    for n_head, n_kv in ((4, 4), (4, 2), (9, 3), (32, 8)):
        for heads in (n_head, n_kv):
            rows = heads * 64
            x = np.arange(rows * 3).reshape(rows, 3)
            y = llama_cpp_permute(x, n_head, None if heads == n_head else heads)
            assert np.array_equal(y[unpermute_rows(rows, heads)], x)


def test_float_gguf_gives_the_hf_weights_back(tmp_path):
    """An all-F32 GGUF: every weight comes back exactly as the Hugging Face tensor (names, row order)."""
    vocab = len(tiny_vocab()[0])
    w = hf_weights(vocab)
    write_gguf(tmp_path / "f32.gguf", w, {})
    src = GGUFSource(str(tmp_path / "f32.gguf"))
    fw = src.float_weights()
    assert set(fw) == set(w)
    for k in w:
        assert np.array_equal(fw[k], w[k]), k
    assert src.header["tied_embeddings"] == 0 and src.exact == []


def test_header_and_blobs(mixed):
    path, _ = mixed
    src = GGUFSource(path)
    h = src.header
    assert (h["dim"], h["hidden_dim"], h["n_layers"], h["n_heads"], h["n_kv_heads"], h["head_dim"]) == \
        (DIM, HIDDEN, N_LAYERS, N_HEADS, N_KV, HEAD_DIM)
    assert h["vocab_size"] == len(tiny_vocab()[0]) and h["max_seq_len"] == 256
    assert h["norm_eps"] == pytest.approx(1e-5) and h["rope_theta"] == 10000.0 and h["rope_scaling"] == 0
    assert h["bos_id"] == -1 and h["eos_ids"] == [2] and h["tied_embeddings"] == 0
    assert src.blobs["chat_template"].decode() == CHATML
    tok = json.loads(src.blobs["tokenizer.json"])
    assert tok["model"]["vocab"]["Ġthe"] == len(tiny_vocab()[0]) - 1
    cfg = json.loads(src.blobs["config.json"])
    assert cfg["num_key_value_heads"] == N_KV and cfg["source"] == "gguf"


def test_exact_and_requantized_values(mixed):
    path, expect = mixed
    src = GGUFSource(path)
    assert sorted(src.exact) == ["layers.0.wk", "layers.0.wq", "layers.0.wv", "output"]
    got = dict(src.tensors())
    want_types = {"layers.0.wq": "q4s", "layers.0.wk": "q4a", "layers.0.wv": "q8", "output": "q8"}
    for name, t in got.items():
        if name in want_types:
            assert isinstance(t, QuantizedTensor) and t.type == want_types[name] and t.group_size == 32
            v = dequantize(t)
        else:
            assert isinstance(t, np.ndarray) and t.dtype == np.float32
            v = t
        assert np.array_equal(v.reshape(expect[name].shape), expect[name]), name
    # all 16 Q4_0 levels used and stored as u - 8
    assert got["layers.0.wq"].q.min() == -8 and got["layers.0.wq"].q.max() == 7
    assert "requantized: tok_embeddings, layers.0.wo, layers.0.w1, layers.0.w2, layers.0.w3" in src.note
    # random access (gptq/awq) gives float values, exact tensors included
    assert np.array_equal(src.read("layers.0.wk"), expect["layers.0.wk"])


def test_requantize_option(mixed):
    path, expect = mixed
    src = GGUFSource(path, SimpleNamespace(requantize=True))
    assert src.exact == []
    for name, t in src.tensors():
        assert isinstance(t, np.ndarray) and np.array_equal(t.reshape(expect[name].shape), expect[name])


def test_export_cli(mixed, tmp_path, capsys):
    from pyrunq4.export.__main__ import main
    from pyrunq4.export.quant import quantize_rtn
    from pyrunq4.export.reader import read_rq4
    path, expect = mixed
    out = tmp_path / "m.rq4"
    assert main([path, str(out), "--group-size", "64", "--method", "rtn", "--weight-type", "q4s"]) == 0
    err = capsys.readouterr().err
    assert "Q4_0/Q4_1/Q8_0 imported exactly" in err
    header, entries = read_rq4(str(out))
    assert header["group_size"] == 64
    for name, want in expect.items():
        e = entries[name]
        if name in ("layers.0.wq", "layers.0.wk", "layers.0.wv", "output"):
            assert e.group_size == 32 and np.array_equal(dequantize(e), want)
        elif want.ndim == 2:
            ref = quantize_rtn(want, 64)
            assert e.type == "q4s" and np.array_equal(e.q, ref.q) and np.array_equal(e.d, ref.d), name
        else:
            assert np.array_equal(np.asarray(e).reshape(-1), want)
    assert entries["tokenizer.json"] and entries["chat_template"].decode() == CHATML
    # the default method (data-free search) leaves the exact imports exact
    assert main([path, str(out), "--group-size", "64", "-q"]) == 0
    _, entries = read_rq4(str(out))
    for name in ("layers.0.wq", "layers.0.wk", "layers.0.wv", "output"):
        assert entries[name].group_size == 32 and np.array_equal(dequantize(entries[name]), expect[name])
    # --embedding-bits 8 and --requantize: everything from float, embeddings q8
    assert main([path, str(out), "--group-size", "64", "--embedding-bits", "8", "--requantize", "-q"]) == 0
    header, entries = read_rq4(str(out))
    assert entries["tok_embeddings"].type == "q8" and entries["output"].type == "q8"
    assert entries["layers.0.wk"].type == "q4s" and entries["layers.0.wk"].group_size == 64


def llama3_factors(theta, head_dim, factor, low, high, orig):
    """llama.cpp conversion/llama.py generate_extra_tensors: the rope_freqs tensor of llama3 scaling."""
    import math
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / (theta ** (i / head_dim))
        wavelen = 2 * math.pi / freq
        if wavelen < orig / high:
            out.append(1.0)
        elif wavelen > orig / low:
            out.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


@pytest.mark.parametrize("factor,low,high,orig", [(32.0, 1.0, 4.0, 8192), (8.0, 1.0, 4.0, 8192)])
def test_llama3_rope_from_rope_freqs(tmp_path, factor, low, high, orig):
    vocab = len(tiny_vocab()[0])
    theta = 500000.0
    f = llama3_factors(theta, HEAD_DIM, factor, low, high, orig)
    write_gguf(tmp_path / "l3.gguf", hf_weights(vocab, untied=False), {}, rope_freqs=f, theta=theta)
    src = GGUFSource(str(tmp_path / "l3.gguf"))
    h = src.header
    assert h["rope_scaling"] == 1 and h["tied_embeddings"] == 1
    assert (h["rope_factor"], h["rope_low_freq_factor"], h["rope_high_freq_factor"], h["rope_original_max_pos"]) \
        == (factor, low, high, orig)
    # the header's rule gives llama.cpp's frequencies (base frequency / factor)
    from pyrunq4.export.format import complete_header
    from pyrunq4.reference import rope_inv_freq
    base = 1.0 / theta ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    np.testing.assert_allclose(rope_inv_freq(complete_header(dict(h, group_size=32))), base / f, rtol=1e-5)


def test_refusals(tmp_path):
    vocab = len(tiny_vocab()[0])
    w = hf_weights(vocab)

    def refused(match, **kw):
        p = tmp_path / "bad.gguf"
        write_gguf(p, w, {}, **kw)
        with pytest.raises(ExportError, match=match):
            GGUFSource(str(p))
    refused("architecture 'qwen2' is not supported", arch="qwen2")
    refused("tensor blk.0.attn_q.bias is not supported",
            extra={"blk.0.attn_q.bias": np.zeros(N_HEADS * HEAD_DIM, np.float32)})
    refused("missing tensor blk.0.ffn_up.weight", skip=("layers.0.w3",))
    refused("partial rotary", meta_over={"rope_dims": 32})
    refused("tokenizer.ggml.pre 'qwen2' is not supported", pre="qwen2")
    refused("not the llama3 rule", rope_freqs=np.linspace(1, 3, HEAD_DIM // 2).astype(np.float32))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ExportError, match="not a readable GGUF"):
        GGUFSource(str(tmp_path / "junk.gguf"))
