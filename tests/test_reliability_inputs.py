"""Hostile runtime inputs, everywhere they can come in: the C API
(through cffi, bypassing the Python checks), the Python API, the Python CLI
and the runq4 binary. Each is a clear error (ArgumentError / ContextFullError
/ one line and exit 1), never a crash, a traceback or a silent wrong answer.
The cases already in tests/test_package.py and tests/test_binary.py (BAD)
are not repeated here.

Policies (documented in docs/RELIABILITY.md):
- context full: a prompt that does not fit is an error before anything is
  computed (ContextFullError, RQ4_ERR_CONTEXT_FULL, "do not fit"); generation
  that reaches the end of the context stops cleanly (stop_reason "context");
- an empty text prompt is BOS alone; an empty list of ids is an error;
- invalid UTF-8 (bytes on argv or stdin, lone surrogates in a str) is an
  error naming the position, never replaced silently.
"""

import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import pyrunq4
from pyrunq4 import ArgumentError, ContextFullError, Model
from pyrunq4 import generate as pgen
from pyrunq4._lib import ffi, lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pyrunq4.__file__)))
NAN, INF = float("nan"), float("inf")


# ---- the C API directly --------------------------------------------------------------------

@pytest.fixture
def handle(tiny_tied):
    out = ffi.new("rq4_model **")
    err = ffi.new("rq4_error *")
    opts = ffi.new("rq4_options *")
    lib.rq4_default_options(opts)
    opts.n_ctx = 8
    assert lib.rq4_open(tiny_tied.encode(), opts, out, err) == lib.RQ4_OK
    yield out[0]
    lib.rq4_close(out[0])


def _msg(err):
    return ffi.string(err.message).decode()


def test_c_open_bad_options(tiny_tied):
    err = ffi.new("rq4_error *")
    out = ffi.new("rq4_model **")
    for field, value, needle in (("n_ctx", -1, "n_ctx"), ("n_ctx", 129, "max_seq_len"),
                                 ("n_ctx", 2**31 - 1, "max_seq_len"), ("n_threads", -1, "n_threads"),
                                 ("n_threads", 257, "n_threads"), ("n_threads", 2**31 - 1, "n_threads"),
                                 ("kv_type", 2, "kv_type"), ("kv_type", -1, "kv_type")):
        opts = ffi.new("rq4_options *")
        lib.rq4_default_options(opts)
        setattr(opts, field, value)
        out[0] = ffi.cast("rq4_model *", 1)  # must come back NULL
        s = lib.rq4_open(tiny_tied.encode(), opts, out, err)
        assert s == lib.RQ4_ERR_ARG and err.code == s and out[0] == ffi.NULL, (field, value)
        assert needle in _msg(err)
    assert lib.rq4_open(ffi.NULL, ffi.NULL, out, err) == lib.RQ4_ERR_ARG
    assert lib.rq4_open(tiny_tied.encode(), ffi.NULL, ffi.NULL, err) == lib.RQ4_ERR_ARG
    assert lib.rq4_open(b"", ffi.NULL, out, err) == lib.RQ4_ERR_IO
    # err may be NULL
    assert lib.rq4_open(b"/nonexistent/x.rq4", ffi.NULL, out, ffi.NULL) == lib.RQ4_ERR_IO


def test_c_forward_and_rewind_bad_arguments(handle):
    err = ffi.new("rq4_error *")
    V = lib.rq4_get_config(handle).vocab_size
    logits = ffi.new("float[]", 16 * V)
    for toks, n, code, needle in (([1], 0, lib.RQ4_ERR_ARG, "at least one"),
                                  ([1], -5, lib.RQ4_ERR_ARG, "at least one"),
                                  ([V], 1, lib.RQ4_ERR_ARG, "outside the vocabulary"),
                                  ([-1], 1, lib.RQ4_ERR_ARG, "outside the vocabulary"),
                                  ([1, 2, -2**31], 3, lib.RQ4_ERR_ARG, "index 2"),
                                  ([1] * 9, 9, lib.RQ4_ERR_CONTEXT_FULL, "do not fit"),
                                  ([1], 2**31 - 1, lib.RQ4_ERR_CONTEXT_FULL, "do not fit")):
        t = ffi.new("int32_t[]", toks)
        assert lib.rq4_forward(handle, t, n, logits, 1, err) == code, (toks, n)
        assert err.code == code and needle in _msg(err), _msg(err)
        assert lib.rq4_position(handle) == 0  # nothing was computed
    t = ffi.new("int32_t[]", [1, 2, 3])
    assert lib.rq4_forward(ffi.NULL, t, 1, logits, 0, err) == lib.RQ4_ERR_ARG
    assert lib.rq4_forward(handle, ffi.NULL, 1, logits, 0, err) == lib.RQ4_ERR_ARG
    assert lib.rq4_forward(handle, t, 3, ffi.NULL, 0, err) == lib.RQ4_OK  # logits NULL: fill the cache only
    for pos in (-1, 4, 2**31 - 1):
        assert lib.rq4_rewind(handle, pos, err) == lib.RQ4_ERR_ARG and "rewind" in _msg(err)
    assert lib.rq4_rewind(ffi.NULL, 0, err) == lib.RQ4_ERR_ARG
    assert lib.rq4_position(handle) == 3
    # fill to the end exactly, then one more is refused
    assert lib.rq4_forward(handle, ffi.new("int32_t[]", [1] * 5), 5, logits, 0, err) == lib.RQ4_OK
    assert lib.rq4_forward(handle, t, 1, logits, 0, err) == lib.RQ4_ERR_CONTEXT_FULL
    assert lib.rq4_position(handle) == 8
    # NULL handles elsewhere
    size = ffi.new("uint64_t *")
    assert lib.rq4_blob(ffi.NULL, b"tokenizer.json", size) == ffi.NULL and size[0] == 0
    assert lib.rq4_blob(handle, ffi.NULL, size) == ffi.NULL
    assert lib.rq4_blob(handle, b"no such blob", size) == ffi.NULL
    assert lib.rq4_blob(handle, b"norm", size) == ffi.NULL  # a tensor, not a blob
    assert lib.rq4_get_config(ffi.NULL) == ffi.NULL and lib.rq4_position(ffi.NULL) == 0
    assert lib.rq4_memory_needed(ffi.NULL, 8, 0) == 0
    lib.rq4_close(ffi.NULL)
    assert ffi.string(lib.rq4_strerror(12345)) == b"unknown error"


def test_c_tokenizer_bad_arguments(handle):
    err = ffi.new("rq4_error *")
    tok = ffi.new("rq4_tokenizer **")
    assert lib.rq4_tokenizer_from_model(handle, tok, err) == lib.RQ4_OK
    t = tok[0]
    try:
        ids = ffi.new("int32_t[]", 64)
        n = ffi.new("int32_t *")
        for text in (b"\xff", b"ab\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"ok\x00\xfe"):
            assert lib.rq4_tokenizer_encode(t, text, len(text), 0, ids, 64, n, err) == lib.RQ4_ERR_ARG, text
            assert "UTF-8" in _msg(err)
        text = b"hello world, hello"
        assert lib.rq4_tokenizer_encode(t, text, len(text), 0, ids, 2, n, err) == lib.RQ4_ERR_ARG
        assert n[0] > 2  # the count needed comes back
        assert lib.rq4_tokenizer_encode(t, text, 0, 0, ids, 0, n, err) == lib.RQ4_OK and n[0] == 0
        length = ffi.new("uint32_t *")
        for bad in (-1, lib.rq4_tokenizer_size(t), 2**31 - 1, -2**31):
            assert lib.rq4_tokenizer_piece(t, bad, length) == ffi.NULL
            assert lib.rq4_tokenizer_is_special(t, bad) == 0
        assert lib.rq4_tokenizer_find(t, b"\xff\xff\xff", 3) == -1
        assert lib.rq4_tokenizer_new(b"", 0, tok, err) != lib.RQ4_OK and tok[0] == ffi.NULL
    finally:
        lib.rq4_tokenizer_free(t)
    lib.rq4_tokenizer_free(ffi.NULL)


# ---- the Python API --------------------------------------------------------------------------

SAMPLING_BAD = [
    dict(temperature=NAN), dict(temperature=-0.1), dict(temperature=INF), dict(temperature=-INF),
    dict(temperature="1"), dict(temperature=None), dict(top_p=0), dict(top_p=1.0001), dict(top_p=NAN),
    dict(top_p=-1), dict(top_p=INF), dict(top_p="0.5"), dict(top_k=-1), dict(top_k=1.5), dict(top_k=True),
    dict(top_k=None), dict(seed=-1), dict(seed=1.5), dict(seed="7"), dict(max_new_tokens=-1),
    dict(max_new_tokens=2**31), dict(max_new_tokens=1.0), dict(stop=""), dict(stop=[None]), dict(stop=5),
]


@pytest.mark.parametrize("kwargs", SAMPLING_BAD, ids=[repr(k) for k in SAMPLING_BAD])
def test_bad_sampling_arguments(tiny_tied, kwargs):
    with Model(tiny_tied, n_ctx=32, n_threads=1) as m:
        for call in (lambda: m.generate("the cat", **kwargs), lambda: m.stream("the cat", **kwargs),
                     lambda: m.chat([{"role": "user", "content": "hi"}], **kwargs)):
            with pytest.raises(ArgumentError):
                call()
        assert m.position == 0  # refused before anything ran


OPEN_BAD = [dict(n_ctx=0), dict(n_ctx=-1), dict(n_ctx=2**31), dict(n_ctx=129), dict(n_ctx=NAN),
            dict(n_threads=0), dict(n_threads=-1), dict(n_threads=10**6), dict(n_threads=257),
            dict(n_threads=2.0), dict(n_threads=True), dict(kv_type="F16"), dict(kv_type=None),
            dict(max_memory=0), dict(max_memory=2**64), dict(float_activations="yes")]


@pytest.mark.parametrize("kwargs", OPEN_BAD, ids=[repr(k) for k in OPEN_BAD])
def test_bad_open_arguments(tiny_tied, kwargs):
    if kwargs == dict(float_activations="yes"):  # truthy values are accepted as a flag
        Model(tiny_tied, n_ctx=8, n_threads=1, **kwargs).close()
        return
    with pytest.raises(ArgumentError):
        Model(tiny_tied, **kwargs)


def test_invalid_unicode_text(tiny_tied):
    """Lone surrogates: what undecodable argv/stdin bytes become in Python."""
    with Model(tiny_tied, n_ctx=32, n_threads=1) as m:
        for call in (lambda: m.tokenize("a\udcffb"), lambda: m.generate("\ud800", max_new_tokens=2),
                     lambda: m.stream("ok \udfff", max_new_tokens=2),
                     lambda: m.chat([{"role": "user", "content": "x\udcfe"}], max_new_tokens=2)):
            with pytest.raises(ArgumentError, match="not valid Unicode"):
                call()
        assert m.generate("é😀 ok", max_new_tokens=2) is not None  # real non-ASCII is fine


def test_empty_prompts(tiny_tied):
    with Model(tiny_tied, n_ctx=32, n_threads=1) as m:
        assert m.tokenize("") == [m.config.bos_id]
        assert isinstance(m.generate("", max_new_tokens=3), str)  # BOS alone
        for bad in ([], np.array([], np.int32)):
            with pytest.raises(ArgumentError, match="empty"):
                m.generate(bad, max_new_tokens=3)
            with pytest.raises(ArgumentError, match="empty"):
                m.logits(bad)
        assert m.generate("x", max_new_tokens=0) == ""


def test_context_full_policy(tiny_tied):
    with Model(tiny_tied, n_ctx=16, n_threads=1) as m:
        with pytest.raises(ContextFullError):
            m.generate(list(range(17)), max_new_tokens=1)   # the prompt does not fit
        assert m.position == 0
        m.feed(list(range(10)))
        with pytest.raises(ContextFullError):
            m.feed(list(range(7)))                          # 10 + 7 > 16: nothing is computed
        assert m.position == 10
        m.feed(list(range(6)))
        assert m.position == 16
        with pytest.raises(ContextFullError):
            m.feed([1])
        out = m.generate(list(range(12)), max_new_tokens=100)  # stops at the end of the context
        assert m.last_stats["stop_reason"] in ("context", "eos")
        assert m.last_stats["new_tokens"] <= 16 - 12 + 1
        assert isinstance(out, str)
        m.reset()
        assert m.logits([1, 2]).shape == (2, m.config.vocab_size)  # usable again


def test_token_ids_of_every_integer_type(tiny_tied):
    with Model(tiny_tied, n_ctx=16, n_threads=1) as m:
        V = m.config.vocab_size
        want = m.logits([1, 2])
        for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64):
            np.testing.assert_array_equal(m.logits(np.array([1, 2], dt)), want)
        for bad in (np.array([V], np.uint64), np.array([2**63], np.uint64), np.array([-1], np.int8),
                    np.array([1.0]), np.array([1], np.float16), np.array(["1"]), [1, None], [1, "2"],
                    [2**31], [-2**31 - 1], np.array([[1]])):
            with pytest.raises(ArgumentError):
                m.logits(bad)
        assert m.detokenize([]) == ""
        for bad in ([V], [-1], [2**70]):
            with pytest.raises(ArgumentError):
                m.detokenize(bad)


# ---- the Python CLI --------------------------------------------------------------------------

CLI_BAD = [["--threads", "0"], ["--threads", "100000"], ["--ctx", "0"], ["--ctx", "-4"], ["-t", "nan"],
           ["-t", "inf"], ["-t", "-0.5"], ["--top-p", "1.5"], ["--top-p", "nan"], ["--top-p", "0"],
           ["--top-k", "-1"], ["--top-k", "1.5"], ["--seed", "-1"], ["-n", "99999999999"], ["-n", "x"]]


@pytest.mark.parametrize("args", CLI_BAD, ids=[" ".join(a) for a in CLI_BAD])
def test_cli_bad_values(tiny_tied, args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = pgen.main([tiny_tied, "-p", "hi", "-n", "2", *args])
        except SystemExit as e:  # argparse's own errors
            rc = e.code
    assert rc in (1, 2), (args, rc)
    lines = err.getvalue().strip().splitlines()
    assert lines and "error" in lines[-1] and "Traceback" not in err.getvalue(), err.getvalue()


def _cli(*args, stdin=None):
    env = dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pyrunq4.generate", *args], capture_output=True, input=stdin,
                          env=env, timeout=120, cwd=PKG_PARENT)


def test_cli_invalid_utf8_argv_and_stdin(tiny_tied):
    for r in (_cli(tiny_tied, "-p", b"hi \xff\xfe", "-n", "2"),
              _cli(tiny_tied, "--chat", "-n", "2", stdin=b"hello \xc3(\n")):
        assert r.returncode == 1, r
        err = r.stderr.decode("utf-8", "replace")
        assert len(err.strip().splitlines()) == 1 and "not valid Unicode" in err and "Traceback" not in err, err
    r = _cli(tiny_tied, "-p", "", "-n", "2")  # the empty prompt is BOS alone
    assert r.returncode == 0, r.stderr


# ---- the runq4 binary (what tests/test_binary.py BAD does not have) ---------------------------

@pytest.fixture(scope="module")
def binary():
    if subprocess.run(["make", "-s", "runq4"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("make runq4 failed (no C compiler?)")
    return os.path.join(ROOT, "runq4")


BIN_BAD = [["-t", "-nan"], ["-t", "-inf"], ["-t", "0x1p999999"], ["-p", "nan"], ["-p", "inf"],
           ["-T", "257"], ["-T", "-1"], ["-T", "99999999999"], ["-c", "99999999999"], ["-s", "1e3"],
           ["-n", "-99999999999"], ["-M", "99999999999999999999999"]]


@pytest.mark.parametrize("args", BIN_BAD, ids=[" ".join(a) for a in BIN_BAD])
def test_binary_bad_values(binary, tiny_tied, args):
    r = subprocess.run([binary, tiny_tied, "-i", "hi", "-n", "2", *args], capture_output=True, timeout=60)
    assert r.returncode == 1, (args, r.returncode, r.stderr)
    lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runq4: error: "), r.stderr
    assert r.stdout == b""


def test_binary_invalid_utf8_stdin_and_empty_prompt(binary, tiny_tied):
    r = subprocess.run([binary, tiny_tied, "-m", "chat", "-n", "2"], input=b"hello \xff\n", capture_output=True,
                       timeout=60)
    assert r.returncode == 1
    lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1 and "UTF-8" in lines[0], r.stderr
    r = subprocess.run([binary, tiny_tied, "-i", "", "-n", "2"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr  # BOS alone
    r = subprocess.run([binary, tiny_tied, "-m", "chat", "-n", "2"], input=b"", capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr  # no message at all: nothing to do
