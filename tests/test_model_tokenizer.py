"""Model's text <-> ids: the C tokenizer (the binary's) when it implements the
file's tokenizer, the tokenizers library otherwise; both give the same ids and
text, and the lean path never loads the library's copy."""
import conftest
from pyrunq4 import Model

TEXTS = ["Hello, world!", "  two  spaces\tand a tab\n", "Caf\u00e9 cr\u00e8me \U0001F600 \u2014 ok",
         "digits 1234567 and 3.14", "<|im_start|>user\nhi<|im_end|>", "", "a" * 300]


def check_same_as_library(m):
    lib_tok = m.tokenizer          # the tokenizers library's, loaded on demand
    assert lib_tok is not None
    for text in TEXTS:
        for special in (False, True):
            lib_tok.encode_special_tokens = not special
            want = lib_tok.encode(text, add_special_tokens=False).ids
            assert m.tokenize(text, add_bos=False, special=special) == want, (text, special)
        ids = m.tokenize(text, add_bos=False, special=True)
        for skip in (False, True):
            assert m.detokenize(ids, skip_special=skip) == \
                lib_tok.decode(ids, skip_special_tokens=skip), (text, skip)
        text = m._text_stream()
        assert "".join(text.step(t) for t in ids) == m.detokenize(ids)


def test_c_tokenizer_is_used_and_agrees(tiny_tied):
    with Model(tiny_tied) as m:
        assert m._ctok is not None
        m.generate("Hello", max_new_tokens=4)
        m.chat([{"role": "user", "content": "Hi"}], max_new_tokens=4)
        assert m._hf_tokenizer is None   # never loaded on the lean path
        check_same_as_library(m)


def test_library_fallback(model_dir, monkeypatch):
    """A tokenizer the C side does not implement (WordLevel) goes through the
    tokenizers library, with the same behaviour."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    _, special, vocab = conftest.make_tokenizer_json()
    words = {f"w{i}": i for i in range(vocab)}
    for name, i in special.items():
        words[name] = i
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(special))
    monkeypatch.setattr(conftest, "make_tokenizer_json", lambda: (tok.to_str(), special, vocab))
    path = conftest.write_random_model(model_dir / "wordlevel.rq4", dim=64, hidden_dim=96,
                                       n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16,
                                       tied=True, rope=False)
    with Model(path) as m:
        assert m._ctok is None and m._hf_tokenizer is not None
        assert m.tokenize("w5 w7 w9", add_bos=False) == [5, 7, 9]
        assert m.detokenize([5, 7]) == "w5 w7"
        text = m.generate("w5 w7", max_new_tokens=6)
        assert isinstance(text, str) and m.last_stats["new_tokens"] >= 1
