"""The tokenizer rebuilt from a GGUF's tokenizer.ggml.* metadata encodes exactly like independent references.

References:
- llama-bpe: the Llama 3 tokenizer.json itself (pyrunq4.data.llama3_tokenizer_json()): we write its
  vocabulary into a GGUF the way llama.cpp's converter does, rebuild from the GGUF, and compare with
  the original file. This is the strongest check: the original is the ground truth.
- smollm (SmolLM2's GGUF): llama.cpp itself (llama-cpp-python, vocab only) when installed, and
  transformers' GGUF tokenizer conversion when installed (it knows no "smollm" pre-tokenizer, so it
  lacks the individual-digit split; texts where that matters are compared with llama.cpp only).
"""
import json
import os
import re

import pytest

from pyrunq4.export.sources.gguf import read_metadata
from pyrunq4.export.sources.gguf_tokenizer import TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED, TokenizerError, \
    build_tokenizer, to_tokenizers

gguf = pytest.importorskip("gguf")

TEXTS = [
    "The capital of France is",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # rec\n\n\nprint(fib(10))\n",
    "for (int i = 0; i < 1024; ++i) { x[i] = 0x7f & y[i]; }\r\n",
    "x  123 and   4.5e-7, 1,000,000 $3.14 2024-11-23 98.6%",
    "naïve café, Ünïcödé, Ærøskøbing — “quotes” «guillemets» ß",
    "日本語のテキスト。中文，繁體字 한국어 ภาษาไทย العربية",
    "emoji 🤖🎉👍🏽 👩‍👩‍👧 done 🇫🇷",
    "   leading and trailing   ",
    "\n\n\n\t\ttabs\n \n  \n",
    "I'm sure you'll SEE they'RE we'd",
    "a\u00a0b\u2003c\u200bd",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
]


def license_text():
    parts = []
    for p in ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"):
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                parts.append(f.read())
    return "\n".join(parts)


@pytest.fixture(scope="module")
def smollm2_meta():
    from pyrunq4.data import smollm2_gguf
    return read_metadata(gguf.GGUFReader(smollm2_gguf()))


@pytest.fixture(scope="module")
def smollm2_tok(smollm2_meta):
    return to_tokenizers(build_tokenizer(smollm2_meta))


def test_smollm2_metadata(smollm2_meta):
    gt = build_tokenizer(smollm2_meta)
    assert gt.pre == "smollm" and gt.vocab_size == 49152
    assert gt.bos_id == -1          # add_bos_token is false: SmolLM2 prepends nothing
    assert gt.eos_ids == [2]        # <|im_end|>
    assert "<|im_start|>" in gt.chat_template
    tok = to_tokenizers(gt)
    assert tok.get_vocab_size() == 49152
    # control tokens stay whole and keep their ids
    assert tok.encode("<|endoftext|><|im_start|><|im_end|>").ids == [0, 1, 2]


def test_smollm2_digits_split_individually(smollm2_tok):
    # the "smollm" pre-tokenizer splits every digit first (llama.cpp: "\p{N}" before the GPT-2 regex),
    # so the space run before a number stays one token
    enc = smollm2_tok.encode("x  123")
    assert enc.tokens == ["x", "ĠĠ", "1", "2", "3"]


def test_smollm2_roundtrip_decode(smollm2_tok):
    for s in TEXTS + [license_text()[:5000]]:
        assert smollm2_tok.decode(smollm2_tok.encode(s).ids, skip_special_tokens=False) == s


def test_smollm2_matches_llama_cpp(smollm2_tok):
    llama_cpp = pytest.importorskip("llama_cpp")
    from pyrunq4.data import smollm2_gguf
    llm = llama_cpp.Llama(model_path=smollm2_gguf(), vocab_only=True, verbose=False)
    for s in TEXTS + [license_text()]:
        ref = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
        assert smollm2_tok.encode(s).ids == ref, s[:60]


def _transformers_tokenizer(meta):
    pytest.importorskip("transformers")
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, \
            convert_gguf_tokenizer
    except ImportError:
        pytest.skip("this transformers has no GGUF tokenizer conversion")
    td = {name: meta["tokenizer." + key] for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
          if "tokenizer." + key in meta}
    tok, _ = convert_gguf_tokenizer(meta["general.architecture"], td)
    return tok


def test_smollm2_matches_transformers(smollm2_meta, smollm2_tok):
    ref = _transformers_tokenizer(smollm2_meta)
    # transformers has no "smollm" pre-tokenizer: it splits with the GPT-2 regex alone, so it differs
    # from the model's own tokenizer (and llama.cpp) only where a whitespace run meets a digit
    space_digit = re.compile(r"\s\s\d")
    n = 0
    for s in TEXTS + license_text().split("\n\n"):
        if space_digit.search(s):
            continue
        assert smollm2_tok.encode(s).ids == ref.encode(s, add_special_tokens=False).ids, s[:60]
        n += 1
    assert n > 50


# ---- llama-bpe: GGUF written from the Llama 3 tokenizer.json, rebuilt, compared with the original ----

def write_vocab_gguf(path, tokenizer_json, pre, add_bos=True, bos=None, eos=None, template=None):
    """A vocab-only GGUF holding the tokenizer of a tokenizer.json, as llama.cpp's converter writes it
    (tokens by id, merges, token types: added special tokens CONTROL, other added USER_DEFINED)."""
    with open(tokenizer_json, encoding="utf-8") as f:
        j = json.load(f)
    vocab = dict(j["model"]["vocab"])
    types = {}
    for a in j["added_tokens"]:
        vocab[a["content"]] = a["id"]
        types[a["id"]] = TOKEN_CONTROL if a["special"] else TOKEN_USER_DEFINED
    n = max(vocab.values()) + 1
    tokens = [None] * n
    for t, i in vocab.items():
        tokens[i] = t
    assert all(t is not None for t in tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([types.get(i, TOKEN_NORMAL) for i in range(n)])
    w.add_token_merges(merges)
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    w.add_add_bos_token(add_bos)
    if template:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def llama3_pair(tmp_path_factory):
    from tokenizers import Tokenizer
    from pyrunq4.data import llama3_tokenizer_json
    src = llama3_tokenizer_json()
    path = str(tmp_path_factory.mktemp("l3") / "llama3-vocab.gguf")
    write_vocab_gguf(path, src, "llama-bpe", add_bos=True, bos=128000, eos=128009, template="{{ x }}")
    gt = build_tokenizer(read_metadata(gguf.GGUFReader(path)))
    return gt, to_tokenizers(gt), Tokenizer.from_file(src)


@pytest.mark.slow
def test_llama3_rebuilt_equals_original(llama3_pair):
    gt, mine, orig = llama3_pair
    assert gt.bos_id == 128000 and gt.eos_ids == [128009] and gt.chat_template == "{{ x }}"
    assert mine.get_vocab_size() == orig.get_vocab_size() == 128256
    for s in TEXTS + [license_text()]:
        a = mine.encode(s, add_special_tokens=False).ids
        b = orig.encode(s, add_special_tokens=False).ids
        assert a == b, s[:60]
        assert mine.decode(a, skip_special_tokens=False) == orig.decode(b, skip_special_tokens=False)


@pytest.mark.slow
def test_llama3_matches_transformers(llama3_pair, tmp_path):
    gt, mine, orig = llama3_pair
    # transformers' own GGUF conversion of the same metadata (llama-bpe is a name it knows)
    meta = {"general.architecture": "llama", "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe"}
    j = json.loads(gt.json)
    tokens = [None] * gt.vocab_size
    for t, i in j["model"]["vocab"].items():
        tokens[i] = t
    types = [TOKEN_NORMAL] * gt.vocab_size
    for a in j["added_tokens"]:
        types[a["id"]] = TOKEN_CONTROL if a["special"] else TOKEN_USER_DEFINED
    meta.update({"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": j["model"]["merges"],
                 "tokenizer.ggml.token_type": types})
    ref = _transformers_tokenizer(meta)
    for s in TEXTS + [license_text()]:
        assert mine.encode(s, add_special_tokens=False).ids == ref.encode(s, add_special_tokens=False).ids, s[:60]


# ---- refusals ----

def _tiny_meta(**over):
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
            "tokenizer.ggml.tokens": ["a", "b", "ab", "<s>"], "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.token_type": [1, 1, 1, 3], "tokenizer.ggml.bos_token_id": 3,
            "tokenizer.ggml.eos_token_id": 3, "tokenizer.ggml.add_bos_token": True}
    meta.update(over)
    return {k: v for k, v in meta.items() if v is not None}


def test_tiny_tokenizer():
    gt = build_tokenizer(_tiny_meta())
    tok = to_tokenizers(gt)
    assert gt.bos_id == 3 and gt.eos_ids == [3]
    assert tok.encode("ab<s>a").ids == [2, 3, 0]


def test_refuses_unknown_pre():
    with pytest.raises(TokenizerError, match="'qwen2'.*not supported"):
        build_tokenizer(_tiny_meta(**{"tokenizer.ggml.pre": "qwen2"}))


def test_refuses_sentencepiece():
    with pytest.raises(TokenizerError, match="'llama' is not supported"):
        build_tokenizer(_tiny_meta(**{"tokenizer.ggml.model": "llama"}))


def test_refuses_missing_tokenizer():
    with pytest.raises(TokenizerError, match="no tokenizer"):
        build_tokenizer({"general.architecture": "llama"})
    with pytest.raises(TokenizerError, match="token_type"):
        build_tokenizer(_tiny_meta(**{"tokenizer.ggml.token_type": [1]}))
