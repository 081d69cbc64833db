"""Shared fixtures: tiny .rq4 models written with the exporter's writer.

Session-scoped, built once in a temporary directory (about a second):
  tiny_tied    GQA (4 heads / 2 kv heads), head_dim 32 != dim/n_heads = 16,
               llama3 RoPE with original_max_pos 16 (so positions up to 64
               exercise the scaled frequencies), tied embeddings, q4s at group
               32 and a q4a FFN with a shorter last group (cols 96, group 64).
  tiny_untied  untied classifier (q4s), GQA 3/1, q8 embeddings, no RoPE scaling.
  chain        a model built to emit a fixed byte sequence greedily ("é😀"
               and then the end-of-turn token), for the UTF-8 streaming test.
All three carry a small byte-level BPE tokenizer (every non-ASCII character
spans several tokens) and a ChatML chat template.
"""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _select_pyrunq4():
    """Which pyrunq4 the tests import.

    The checkout's pyrunq4/ when it holds a built extension (a development
    build: python setup.py build_ext --inplace, or pip install -e .); if that
    extension is older than src/ or _build.py it is rebuilt first, so the tests
    never run a stale engine. Without an in-tree build, an installed pyrunq4
    (pip install '.[test]') is tested; with neither, the extension is built
    in place."""
    pkg = os.path.join(ROOT, "pyrunq4")
    exts = glob.glob(os.path.join(pkg, "_runq4*.so")) + glob.glob(os.path.join(pkg, "_runq4*.pyd"))
    others = [p for p in sys.path if os.path.abspath(p or ".") != ROOT]
    if not exts:
        saved = sys.path[:]
        sys.path[:] = others
        try:
            spec = importlib.util.find_spec("pyrunq4")
        finally:
            sys.path[:] = saved
        if spec is not None and spec.origin and not spec.origin.startswith(pkg + os.sep):
            sys.path[:] = others + [ROOT]  # the installed copy first
            return
    sources = (glob.glob(os.path.join(ROOT, "src", "**", "*.[ch]"), recursive=True)
               + [os.path.join(pkg, "_build.py")])
    if not exts or min(map(os.path.getmtime, exts)) < max(map(os.path.getmtime, sources)):
        r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode != 0:  # the import of pyrunq4._runq4 will fail and say so
            sys.stderr.write("conftest: building pyrunq4._runq4 failed:\n" + r.stderr[-3000:])
    sys.path[:] = [ROOT] + others


_select_pyrunq4()
if HERE not in sys.path:
    sys.path.insert(0, HERE)

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

SPECIALS = ["<|begin_of_text|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("o", "n"), ("e", "r"), ("Ġ", "a")]


def _bytes_to_unicode():
    """GPT-2's byte -> printable character map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def make_tokenizer_json():
    """A byte-level BPE: id = byte value for the 256 byte tokens, then a few
    merges, then the special tokens. Returns (json text, {special: id}, size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    return tok.to_str(), ids, tok.get_vocab_size(with_added_tokens=True)


def _export():
    from pyrunq4.export import quant, writer
    return writer, quant


def _rng_matrix(rng, rows, cols, scale):
    return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)


def write_random_model(path, *, dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim,
                       tied, rope, emb_type="q4s", group_size=32, ffn_type="q4s", ffn_group=32,
                       max_seq_len=128, seed=0, ffn_rotation=False):
    """ffn_rotation: header ffn_rotation 1 with its two entries (the w2 matrices
    are random either way, so no rotation needs folding into them)."""
    writer, quant = _export()
    tok_json, special, vocab = make_tokenizer_json()
    rng = np.random.default_rng(seed)
    header = dict(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads,
                  n_kv_heads=n_kv_heads, head_dim=head_dim, vocab_size=vocab,
                  max_seq_len=max_seq_len, tied_embeddings=1 if tied else 0,
                  bos_id=special["<|begin_of_text|>"], eos_ids=[special["<|im_end|>"]],
                  norm_eps=1e-5, rope_theta=10000.0, group_size=group_size)
    if rope:
        header.update(rope_scaling=1, rope_original_max_pos=16, rope_factor=4.0,
                      rope_low_freq_factor=1.0, rope_high_freq_factor=4.0)
    qd, kvd = n_heads * head_dim, n_kv_heads * head_dim
    n_entries = 4 + 9 * n_layers + 3 + 2 * ffn_rotation
    if ffn_rotation:
        from pyrunq4.export import format as fmt
        from pyrunq4.export.rotate import ffn_rotation as rotation_entries
        header["ffn_rotation"] = fmt.FFN_ROTATION_HADAMARD
    with writer.Rq4Writer(path, header, n_entries) as w:
        if ffn_rotation:
            for name, value in zip(fmt.FFN_ROTATION_ENTRIES, rotation_entries(hidden_dim, seed)):
                w.add_f32(name, value)
        w.add_quantized("tok_embeddings",
                        quant.quantize_rtn(_rng_matrix(rng, vocab, dim, 1.0), group_size, emb_type))
        for i in range(n_layers):
            p = f"layers.{i}."
            w.add_f32(p + "attention_norm", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
            for name, rows, cols in (("wq", qd, dim), ("wk", kvd, dim), ("wv", kvd, dim),
                                     ("wo", dim, qd)):
                w.add_quantized(p + name, quant.quantize_rtn(
                    _rng_matrix(rng, rows, cols, cols ** -0.5), group_size, "q4s"))
            w.add_f32(p + "ffn_norm", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
            for name, rows, cols in (("w1", hidden_dim, dim), ("w3", hidden_dim, dim),
                                     ("w2", dim, hidden_dim)):
                m = _rng_matrix(rng, rows, cols, cols ** -0.5)
                if ffn_type == "q4t":  # rtn with the table fitted to the matrix
                    from pyrunq4.export.quantizers import quantize_q4t
                    w.add_quantized(p + name, quantize_q4t(m, ffn_group, "rtn"))
                else:
                    w.add_quantized(p + name, quant.quantize_rtn(m, ffn_group, ffn_type))
        w.add_f32("norm", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
        if not tied:
            w.add_quantized("output", quant.quantize_rtn(
                _rng_matrix(rng, vocab, dim, dim ** -0.5), group_size, "q4s"))
        w.add_blob("tokenizer.json", tok_json.encode("utf-8"))
        w.add_blob("chat_template", CHATML.encode("utf-8"))
    return path


def write_chain_model(path, chain, seed=0):
    """A model whose greedy continuation of token chain[0] is chain[1:] and
    then the end-of-turn token: the blocks add nothing (wo and w2 are zero),
    so the logits depend on the current token only, and the classifier row of
    the successor of token t is t's embedding (random +-1 vectors: q4s stores
    them exactly, and distinct ones are nearly orthogonal)."""
    writer, quant = _export()
    tok_json, special, vocab = make_tokenizer_json()
    dim, hidden = 128, 64
    rng = np.random.default_rng(seed)
    emb = rng.choice(np.array([-1.0, 1.0], np.float32), size=(vocab, dim))
    out = rng.choice(np.array([-1.0, 1.0], np.float32), size=(vocab, dim))
    eot = special["<|im_end|>"]
    succ = list(chain[1:]) + [eot]
    for t, nxt in zip(chain, succ):
        out[nxt] = emb[t]
    header = dict(dim=dim, hidden_dim=hidden, n_layers=1, n_heads=4, n_kv_heads=4, head_dim=32,
                  vocab_size=vocab, max_seq_len=64, tied_embeddings=0,
                  bos_id=special["<|begin_of_text|>"], eos_ids=[eot], norm_eps=1e-5,
                  rope_theta=10000.0, group_size=32)
    ones = np.ones(dim, np.float32)
    with writer.Rq4Writer(path, header, 16) as w:
        w.add_quantized("tok_embeddings", quant.quantize_rtn(emb, 32))
        w.add_f32("layers.0.attention_norm", ones)
        for name, rows, cols in (("wq", 128, dim), ("wk", 128, dim), ("wv", 128, dim),
                                 ("wo", dim, 128)):
            m = np.zeros((rows, cols), np.float32) if name == "wo" else _rng_matrix(rng, rows, cols, 0.1)
            w.add_quantized("layers.0." + name, quant.quantize_rtn(m, 32))
        w.add_f32("layers.0.ffn_norm", ones)
        for name, rows, cols in (("w1", hidden, dim), ("w3", hidden, dim), ("w2", dim, hidden)):
            m = np.zeros((rows, cols), np.float32) if name == "w2" else _rng_matrix(rng, rows, cols, 0.1)
            w.add_quantized("layers.0." + name, quant.quantize_rtn(m, 32))
        w.add_f32("norm", ones)
        w.add_quantized("output", quant.quantize_rtn(out, 32))
        w.add_blob("tokenizer.json", tok_json.encode("utf-8"))
        w.add_blob("chat_template", CHATML.encode("utf-8"))
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_tied(model_dir):
    return str(write_random_model(model_dir / "tiny_tied.rq4", dim=64, hidden_dim=96, n_layers=2,
                                  n_heads=4, n_kv_heads=2, head_dim=32, tied=True, rope=True,
                                  ffn_type="q4a", ffn_group=64, seed=1))


@pytest.fixture(scope="session")
def tiny_untied(model_dir):
    return str(write_random_model(model_dir / "tiny_untied.rq4", dim=96, hidden_dim=128,
                                  n_layers=2, n_heads=3, n_kv_heads=1, head_dim=32, tied=False,
                                  rope=False, emb_type="q8", seed=2))


@pytest.fixture(scope="session", params=["tiny_tied", "tiny_untied"])
def tiny_model(request):
    return request.getfixturevalue(request.param)


CHAIN_TEXT = "é😀"


@pytest.fixture(scope="session")
def chain_model(model_dir):
    # prompt "a", then the UTF-8 bytes of CHAIN_TEXT, one byte token each
    chain = [ord("a")] + list(CHAIN_TEXT.encode("utf-8"))
    return str(write_chain_model(model_dir / "chain.rq4", chain))


@pytest.fixture(scope="session")
def not_rq4(model_dir):
    p = model_dir / "not_a_model.rq4"
    p.write_bytes(json.dumps({"hello": "world"}).encode() * 20)
    return str(p)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """A tiny Hugging Face Llama directory (fixtures.make_hf_llama defaults: bf16, GQA 4/2,
    head_dim 32 != 64/4, llama3 RoPE with original_max_pos 16, tied): an HfModel."""
    from fixtures import make_hf_llama
    return make_hf_llama(tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="session")
def tiny_hf_rq4(tiny_hf, tmp_path_factory):
    """tiny_hf exported by `python -m pyrunq4.export --group-size 64`: the .rq4 path."""
    from fixtures import make_rq4
    return make_rq4(tmp_path_factory.mktemp("hf_rq4") / "tiny_hf.rq4", tiny_hf.path)
