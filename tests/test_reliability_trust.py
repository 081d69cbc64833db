"""Trust boundaries (what a model file, a tokenizer.json or a command line may
make the program do), one test group per class of failure:

- third-party exceptions never escape the package's error type (a tokenizer
  that panics in Rust, numpy object arrays, numpy float32 temperatures);
- numbers nobody checked: NaN/Inf float32 norm weights, tiny temperatures,
  memory estimates for huge contexts, the -M guard and what it counts;
- lost output is an error (stdout on /dev/full or closed), a closed stdin is
  not the model file, NUL bytes, FIFOs, symlink loops, odd seeds;
- the exporter: an export that succeeds loads, tokenizes and runs; it says
  whether the runq4 binary can tokenize the file; it never replaces what it
  did not create (device nodes, FIFOs, symlinks, its own input) and cleans up
  on every catchable signal; malformed inputs are one line, exit 1.
"""

import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import pyrunq4
from pyrunq4 import ArgumentError, FormatError, Model, Runq4Error
from pyrunq4._lib import ffi, lib

from fixtures import make_hf_llama
from pyrunq4.export import c_tokenizer, reader
from pyrunq4.export.__main__ import main as export_main
from pyrunq4.export.sources import bnb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pyrunq4.__file__)))
ENV = dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))



@pytest.fixture(scope="module")
def binary():
    if subprocess.run(["make", "-s", "runq4"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("make runq4 failed (no C compiler?)")
    return os.path.join(ROOT, "runq4")


def one_line(stderr, prefix=None):
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    if prefix:
        assert lines[0].startswith(prefix), text
    return lines[0]


def py(module, *args, stdin=None, timeout=120, **kw):
    if "stdout" not in kw:
        kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], input=stdin, env=ENV, timeout=timeout,
                          cwd=PKG_PARENT, **kw)


# ---- third-party exceptions --------------------------------------------------------------------

def _model_with_tokenizer(tmp_path, tok_obj, name="t.rq4"):
    from test_reliability_template import _write_model
    from conftest import make_tokenizer_json
    _, special, vocab = make_tokenizer_json()
    return _write_model(tmp_path / name, json.dumps(tok_obj), None, special["<|begin_of_text|>"],
                        [special["<|im_end|>"]], vocab)


def test_panicking_tokenizer_is_a_runq4_error(tmp_path):
    from conftest import make_tokenizer_json
    tok = json.loads(make_tokenizer_json()[0])
    tok["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 10}
    path = _model_with_tokenizer(tmp_path, tok)
    r = py("pyrunq4.generate", path, "-p", "hello there world", "-n", "2")
    assert r.returncode == 0 or one_line(r.stderr), r.stderr  # either it works or it says so in one line
    assert b"panicked" not in r.stderr
    try:
        with Model(path, n_ctx=32, n_threads=1) as m:
            ids = m.tokenize("hello there world, a long enough text")
            assert len(ids) > 4  # the tokenizer's truncation is not the engine's business
            m.generate("hello there", max_new_tokens=1)
    except BaseException as e:  # noqa: B902 (PanicException is a BaseException)
        assert isinstance(e, Runq4Error), type(e).__mro__


def test_object_arrays_and_odd_id_inputs(tiny_tied):
    with Model(tiny_tied, n_ctx=16, n_threads=1) as m:
        np.testing.assert_array_equal(m.feed(np.array([1, 2], dtype=object)), m.logits([1, 2])[-1])
        m.reset()
        for bad in (np.array([1, "x"], dtype=object), np.array([1.5, 2], dtype=object), np.array([None], dtype=object),
                    np.array([True, 1], dtype=object), np.array([2**40], dtype=object), [[1, 2], [3]]):
            with pytest.raises(ArgumentError):
                m.feed(bad)
            with pytest.raises(ArgumentError):
                m.generate(bad, max_new_tokens=1)


def test_numpy_number_arguments(tiny_tied):
    with Model(tiny_tied, n_ctx=32, n_threads=1) as m:
        a = m.generate("the cat", max_new_tokens=4, temperature=np.float32(0.7), top_p=np.float64(0.9),
                       top_k=np.int64(5), seed=np.uint32(3))
        b = m.generate("the cat", max_new_tokens=4, temperature=0.7, top_p=0.9, top_k=5, seed=3)
        assert a == b
        with pytest.raises(ArgumentError):
            m.generate("the cat", max_new_tokens=1, temperature=np.float32("nan"))


# ---- numbers -----------------------------------------------------------------------------------

def _poke_norm(src, dst, value, name="norm"):
    _, entries = reader.read_table(src)
    e = next(e for e in entries if e["name"] == name)
    data = bytearray(open(src, "rb").read())
    data[e["offset"] + 4:e["offset"] + 8] = np.array([value], "<f4").tobytes()
    open(dst, "wb").write(bytes(data))
    return str(dst)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["norm", "layers.0.attention_norm", "layers.1.ffn_norm"])
def test_non_finite_norm_weights_refused(tiny_tied, tmp_path, binary, value, name):
    path = _poke_norm(tiny_tied, tmp_path / "bad.rq4", value, name)
    with pytest.raises(FormatError, match="not finite|NaN|Inf"):
        Model(path, n_ctx=8, n_threads=1)
    r = subprocess.run([binary, path, "-i", "hi", "-n", "2"], capture_output=True, timeout=60)
    assert r.returncode == 1 and r.stdout == b""
    one_line(r.stderr, "runq4: error:")


def test_tiny_temperature_python():
    from pyrunq4.sampling import Sampler
    logits = np.array([1.0, 3.0, 2.0, 3.0 - 1e-3, -1.0], np.float32)
    for t in (2e-38, 1e-300, 5e-324, 1e-45):
        s = Sampler(temperature=t, seed=1)
        assert [s(logits) for _ in range(20)] == [1] * 20, t
    s = Sampler(temperature=np.float32(1e-30), top_p=0.5, top_k=3, seed=1)
    assert s(logits) == 1
    # logits that overflowed (a model with huge weights): the +inf ones share the draw, NaN is never drawn
    odd = np.array([np.nan, np.inf, 1.0, np.inf, -np.inf, np.nan], np.float32)
    for t in (1e-30, 0.7, 1e30):
        for top_p in (1.0, 0.5):
            s = Sampler(temperature=t, top_p=top_p, seed=2)
            assert {s(odd) for _ in range(40)} <= {1, 3}, (t, top_p)
    assert Sampler(temperature=0.7, seed=1)(np.array([np.nan, -np.inf], np.float32)) in (0, 1)


def test_overflowing_logits_binary(binary, tiny_tied, tmp_path):
    """A finite but huge norm weight (1e38) overflows the logits to inf:
    greedy and sampled runs still work, one token at a time."""
    path = _poke_norm(tiny_tied, tmp_path / "huge.rq4", 1e38)
    for args in ((), ("-t", "0.8", "-s", "3"), ("-t", "1e-30", "-p", "0.5")):
        r = subprocess.run([binary, path, "-i", "the cat", "-n", "6", *args], capture_output=True, timeout=60)
        assert r.returncode == 0, (args, r.stderr)


def test_tiny_temperature_binary(binary, tiny_tied):
    greedy = subprocess.run([binary, tiny_tied, "-i", "the cat", "-n", "12", "-t", "0"], capture_output=True,
                            timeout=60)
    assert greedy.returncode == 0
    for t in ("2e-38", "1e-45", "1e-30"):
        for extra in ((), ("-p", "0.9")):
            r = subprocess.run([binary, tiny_tied, "-i", "the cat", "-n", "12", "-t", t, "-s", "5", *extra],
                               capture_output=True, timeout=60)
            assert r.returncode == 0 and r.stdout == greedy.stdout, (t, extra, r.stdout, greedy.stdout)


def test_memory_needed_never_wraps(tiny_tied):
    with Model(tiny_tied, n_ctx=8, n_threads=1) as m:
        small = m.memory_needed(1000)
        big = m.memory_needed(2**31 - 1)
        assert small < m.memory_needed(2**20) < big < 2**63
        per_token = (m.memory_needed(2001) - m.memory_needed(1001)) / 1000
        assert per_token > 0 and abs(big - small - per_token * (2**31 - 1 - 1000)) <= 2**31 * 64
    h = ffi.new("rq4_model **")
    err = ffi.new("rq4_error *")
    assert lib.rq4_open(tiny_tied.encode(), ffi.NULL, h, err) == lib.RQ4_OK
    try:
        for kv in (0, 1):
            assert lib.rq4_memory_needed(h[0], 2**31 - 1, kv) < 2**63
    finally:
        lib.rq4_close(h[0])


def test_max_memory_counts_the_binarys_buffers(binary, tiny_tied):
    """-M is the limit on everything the run allocates, so the binary adds its
    own buffers (the tokenizer, logits, sampler) to the engine's figure."""
    with Model(tiny_tied, n_ctx=64, n_threads=1) as m:
        engine = os.path.getsize(tiny_tied) + m.memory_needed(64, "f32")
    mib = -(-engine // 2**20)  # the engine alone fits in this many MiB
    r = subprocess.run([binary, tiny_tied, "-i", "hi", "-n", "2", "-c", "64", "-T", "1", "-M", str(mib)],
                       capture_output=True, timeout=60)
    # the tiny model is far below 1 MiB: tokenizer and buffers fit too; the refusal
    # message, when the limit is below what is needed, counts them
    assert r.returncode == 0, r.stderr
    r = subprocess.run([binary, tiny_tied, "-i", "hi", "-n", "2", "-c", "64", "-M", "1", "-T", "1"],
                       capture_output=True, timeout=60)
    if r.returncode == 1:
        line = one_line(r.stderr, "runq4: error:")
        assert "tokenizer" in line, line


# ---- lost output, odd streams and arguments -------------------------------------------------------

def test_binary_write_errors(binary, tiny_tied):
    with open("/dev/full", "wb") as full:
        r = subprocess.run([binary, tiny_tied, "-i", "hi", "-n", "4"], stdout=full, stderr=subprocess.PIPE,
                           timeout=60)
    assert r.returncode == 1
    assert "stdout" in one_line(r.stderr, "runq4: error:") or "output" in r.stderr.decode()
    r = subprocess.run([binary, tiny_tied, "-i", "hi", "-n", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=60, preexec_fn=lambda: os.close(1))
    assert r.returncode == 1
    one_line(r.stderr, "runq4: error:")
    with open("/dev/full", "wb") as full:  # -h too
        assert subprocess.run([binary, "-h"], stdout=full, stderr=subprocess.PIPE, timeout=60).returncode == 1
    # a reader that goes away is still a quiet end
    p = subprocess.Popen([binary, tiny_tied, "-i", "hi", "-n", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(1)
    p.stdout.close()
    assert p.wait(timeout=60) == 0 and b"error" not in p.stderr.read()


def test_python_cli_write_errors(tiny_tied):
    with open("/dev/full", "wb") as full:
        r = py("pyrunq4.generate", tiny_tied, "-p", "hi", "-n", "4", stdout=full, stderr=subprocess.PIPE)
    assert r.returncode == 1
    assert "output" in one_line(r.stderr)
    r = py("pyrunq4.generate", tiny_tied, "-p", "hi", "-n", "4", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
           preexec_fn=lambda: os.close(1))
    assert r.returncode == 1
    one_line(r.stderr)


def test_closed_stdin_in_chat_mode(binary, tiny_tied):
    r = subprocess.run([binary, tiny_tied, "-m", "chat", "-n", "2", "-v"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, preexec_fn=lambda: os.close(0))
    assert r.returncode == 0, r.stderr
    assert b"prompt ids" not in r.stderr and r.stdout == b""  # no turn: the model file was not read as text
    r = py("pyrunq4.generate", tiny_tied, "--chat", "-n", "2", stdin=None, stdout=subprocess.PIPE,
           stderr=subprocess.PIPE, preexec_fn=lambda: os.close(0))
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert r.stdout == b""


def test_nul_in_a_chat_line(binary, tiny_tied):
    def ids(line):
        r = subprocess.run([binary, tiny_tied, "-m", "chat", "-n", "1", "-v"], input=line, capture_output=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return [x for x in r.stderr.decode().splitlines() if x.startswith("runq4: prompt ids")][0]
    assert ids(b"ab\x00cd\n") != ids(b"ab\n")  # the text after the NUL is not lost
    with Model(tiny_tied, n_ctx=64, n_threads=1) as m:
        want = m.chat_tokens([{"role": "user", "content": "ab\x00cd"}])
    assert ids(b"ab\x00cd\n").split(":", 2)[2].split() == [str(i) for i in want]


def test_eval_text_fifo_refused(tiny_tied, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = py("pyrunq4.eval", "perplexity", tiny_tied, "--text", fifo, timeout=60)
    assert r.returncode == 1
    assert "regular file" in one_line(r.stderr)


@pytest.mark.parametrize("seed", ["\t-1", "\n5", " 1", "+1", "-0", "\v2", "1\t", ""])
def test_binary_seed_whitespace_refused(binary, tiny_tied, seed):
    r = subprocess.run([binary, tiny_tied, "-i", "hi", "-n", "1", "-s", seed], capture_output=True, timeout=60)
    assert r.returncode == 1
    one_line(r.stderr, "runq4: error:")


def test_symlink_loops_named(binary, tiny_tied, tmp_path):
    a, b = tmp_path / "a.rq4", tmp_path / "b.rq4"
    os.symlink(b, a)
    os.symlink(a, b)
    with pytest.raises(Runq4Error, match="symbolic link"):
        Model(str(a))
    r = subprocess.run([binary, str(a), "-i", "hi"], capture_output=True, timeout=60)
    assert r.returncode == 1 and "symbolic link" in one_line(r.stderr)
    r = py("pyrunq4.eval", "perplexity", tiny_tied, "--text", a)
    assert r.returncode == 1 and "symbolic link" in one_line(r.stderr)
    for src in (a, tmp_path / "loop.gguf"):
        if src != a:
            os.symlink(src, src)
        r = py("pyrunq4.export", src, tmp_path / "out.rq4")
        assert r.returncode == 1 and "symbolic link" in one_line(r.stderr)


# ---- the exporter: what it writes -----------------------------------------------------------------

@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return make_hf_llama(tmp_path_factory.mktemp("hf") / "tiny", dtype="fp32").path


def _export(argv, capsys):
    try:
        rc = export_main([str(a) for a in argv] + ["--quiet"])
    except BaseException as e:  # noqa: B902
        pytest.fail(f"the exporter raised {type(e).__name__}: {e}")
    return rc, capsys.readouterr().err


def _variant(hf, tmp_path, name, edit):
    d = tmp_path / ("src_" + name.replace("/", "_"))
    shutil.copytree(hf, d)
    edit(d)
    return d


def _edit_json(fname, fn):
    def edit(d):
        p = d / fname
        obj = json.loads(p.read_text()) if p.exists() else {}
        obj = fn(obj)
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return edit


def test_export_verifies_what_it_writes(hf, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # a tokenizer.json whose model section is empty: refused at export, not at Model()
    src = _variant(hf, tmp_path, "emptymodel", _edit_json("tokenizer.json", lambda t: dict(t, model={})))
    rc, err = _export([src, out / "m.rq4"], capsys)
    assert rc == 1 and os.listdir(out) == [], err
    one_line(err)
    # a tokenizer that panics in Rust: the export either works (and loads) or is refused in one line
    src = _variant(hf, tmp_path, "panic", _edit_json("tokenizer.json", lambda t: dict(
        t, truncation={"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 10})))
    rc, err = _export([src, out / "p.rq4"], capsys)
    if rc == 0:
        with Model(str(out / "p.rq4"), n_ctx=16, n_threads=1) as m:
            assert len(m.tokenize("one two three four five six")) > 4
    else:
        one_line(err)
    # a chat template that does not render
    src = _variant(hf, tmp_path, "badtemplate", _edit_json("tokenizer_config.json",
                                                           lambda c: dict(c, chat_template="{{ 'x' * 4000000000 }}")))
    rc, err = _export([src, out / "t.rq4"], capsys)
    assert rc == 1 and "chat template" in one_line(err)
    assert not (out / "t.rq4").exists()


def test_export_tells_whether_the_binary_can_tokenize(hf, tmp_path, capsys):
    c_tok = c_tokenizer
    out = tmp_path / "out"
    out.mkdir()

    def empty_affixes(t):
        t["model"]["continuing_subword_prefix"] = ""
        t["model"]["end_of_word_suffix"] = ""
        return t
    src = _variant(hf, tmp_path, "affixes", _edit_json("tokenizer.json", empty_affixes))
    tok_text = (src / "tokenizer.json").read_text()
    assert c_tok.c_tokenizer_problem(tok_text) is None  # "" means none
    t = ffi.new("rq4_tokenizer **")
    err = ffi.new("rq4_error *")
    data = tok_text.encode()
    assert lib.rq4_tokenizer_new(data, len(data), t, err) == lib.RQ4_OK, ffi.string(err.message)
    lib.rq4_tokenizer_free(t[0])
    rc = export_main([str(src), str(out / "a.rq4")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "runq4" not in err or "cannot" not in err
    # a normalizer: the binary cannot; the export says so and still works for pyrunq4
    src = _variant(hf, tmp_path, "normalizer", _edit_json("tokenizer.json", lambda t: dict(
        t, normalizer={"type": "Lowercase"})))
    rc = export_main([str(src), str(out / "b.rq4")])
    err = capsys.readouterr().err
    assert rc == 0
    assert "runq4" in err and "normalizer" in err, err
    Model(str(out / "b.rq4"), n_ctx=8, n_threads=1).close()


# ---- the exporter: its output path --------------------------------------------------------------

def test_export_refuses_non_regular_outputs(hf, tmp_path, capsys):
    fifo = tmp_path / "fifo.rq4"
    os.mkfifo(fifo)
    target = tmp_path / "precious.bin"
    target.write_bytes(b"keep me")
    link = tmp_path / "link.rq4"
    os.symlink(target, link)
    dangling = tmp_path / "dangling.rq4"
    os.symlink(tmp_path / "nowhere", dangling)
    outs = [fifo, link, dangling]
    if os.geteuid() == 0:  # a character device node of our own (same numbers as /dev/null)
        dev = tmp_path / "dev.rq4"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        outs.append(dev)
    for out in outs:
        before = os.lstat(out)
        rc, err = _export([hf, out], capsys)
        assert rc == 1, (out, err)
        one_line(err)
        after = os.lstat(out)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), out
    assert target.read_bytes() == b"keep me"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_export_refuses_its_own_input(hf, tmp_path, capsys):
    src = _variant(hf, tmp_path, "self", lambda d: None)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        before = (src / name).read_bytes()
        rc, err = _export([src, src / name], capsys)
        assert rc == 1 and "input" in one_line(err), err
        assert (src / name).read_bytes() == before
    hard = tmp_path / "hardlink.rq4"
    os.link(src / "model.safetensors", hard)
    rc, err = _export([src, hard], capsys)
    assert rc == 1 and "input" in one_line(err)


def test_export_refuses_its_own_gguf_input(tmp_path, capsys):
    pytest.importorskip("gguf")
    from test_gguf_source import hf_weights, tiny_vocab, write_gguf
    p = tmp_path / "m.gguf"
    write_gguf(p, hf_weights(len(tiny_vocab()[0])), {})
    before = p.read_bytes()
    rc, err = _export([p, p], capsys)
    assert rc == 1 and "input" in one_line(err)
    assert p.read_bytes() == before


SLOW_EXPORT = r"""
import sys, time
sys.path[:0] = [{tests!r}]
from pyrunq4.export import writer as w
orig = w.Rq4Writer.add_quantized
def slow(self, name, qt):
    orig(self, name, qt)
    open({flag!r}, "w").close()
    time.sleep(30)
w.Rq4Writer.add_quantized = slow
from pyrunq4.export.__main__ import main
sys.exit(main([{src!r}, {out!r}, "--quiet"]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_export_signals_clean_up(hf, tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.rq4").write_bytes(b"the old file")
    flag = tmp_path / "flag"
    code = SLOW_EXPORT.format(tests=os.path.dirname(os.path.abspath(__file__)), flag=str(flag), src=str(hf),
                              out=str(out / "m.rq4"))
    p = subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=PKG_PARENT, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not flag.exists():
        assert p.poll() is None and time.monotonic() - t0 < 120, p.stderr.read()
        time.sleep(0.05)
    assert any(n.endswith(".tmp") for n in os.listdir(out))
    p.send_signal(sig)
    rc = p.wait(timeout=60)
    err = p.stderr.read()
    assert rc == 128 + sig, (rc, err)
    one_line(err)
    assert os.listdir(out) == ["m.rq4"] and (out / "m.rq4").read_bytes() == b"the old file"


# ---- the exporter: malformed inputs --------------------------------------------------------------

CONFIG_KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps",
               "rope_theta", "rope_scaling", "tie_word_embeddings", "bos_token_id", "eos_token_id"]
CONFIG_VALUES = [None, "x", [1], {"a": 1}, -1, 0, 2**64, 1e308, float("nan")]


def _safetensors_variant(edit):
    def apply(d):
        p = d / "model.safetensors"
        data = p.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        new = edit(header)
        raw = new if isinstance(new, bytes) else json.dumps(new).encode()
        p.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    return apply


def _first_tensor(h):
    return next(k for k in h if k != "__metadata__")


def _st(fn):
    def edit(h):
        fn(h, h[_first_tensor(h)])
        return h
    return edit


SAFETENSORS_CASES = {
    "no data_offsets": _st(lambda h, t: t.pop("data_offsets")),
    "offsets reversed": _st(lambda h, t: t.__setitem__("data_offsets", t["data_offsets"][::-1])),
    "offsets strings": _st(lambda h, t: t.__setitem__("data_offsets", ["0", "4"])),
    "offsets null": _st(lambda h, t: t.__setitem__("data_offsets", None)),
    "no dtype": _st(lambda h, t: t.pop("dtype")),
    "dtype unknown": _st(lambda h, t: t.__setitem__("dtype", "Q9")),
    "dtype list": _st(lambda h, t: t.__setitem__("dtype", ["F32"])),
    "no shape": _st(lambda h, t: t.pop("shape")),
    "negative shape": _st(lambda h, t: t.__setitem__("shape", [-1, 64])),
    "shape strings": _st(lambda h, t: t.__setitem__("shape", ["a"])),
    "huge shape": _st(lambda h, t: t.__setitem__("shape", [2**62, 2**62])),
    "tensor not an object": _st(lambda h, t: h.__setitem__(_first_tensor(h), [1, 2])),
    "metadata not an object": lambda h: dict(h, __metadata__=[1]),
    "deeply nested": lambda h: ("{\"a\":" * 100000 + "1" + "}" * 100000).encode(),
    "deeply nested list": lambda h: dict(h, __metadata__={"x": json.loads("[" * 500 + "]" * 500)}),
    "header not utf-8": lambda h: b"\xff\xfe" + json.dumps(h).encode(),
    "header a list": lambda h: [h],
}

TOKENIZER_CASES = {
    "model empty": lambda t: dict(t, model={}),
    "model null": lambda t: dict(t, model=None),
    "vocab a list": lambda t: dict(t, model=dict(t["model"], vocab=[1, 2])),
    "merges junk": lambda t: dict(t, model=dict(t["model"], merges=[[1, 2, 3]])),
    "added tokens junk": lambda t: dict(t, added_tokens=[{"id": "x"}]),
    "pre_tokenizer unknown": lambda t: dict(t, pre_tokenizer={"type": "Nope"}),
    "truncation junk": lambda t: dict(t, truncation={"max_length": -1}),
    "padding junk": lambda t: dict(t, padding={"strategy": 5}),
    "decoder junk": lambda t: dict(t, decoder={"type": "Nope"}),
}

TEMPLATE_CASES = {
    "template number": lambda c: dict(c, chat_template=123),
    "template list of junk": lambda c: dict(c, chat_template=[1, 2]),
    "template syntax": lambda c: dict(c, chat_template="{% for x in messages %}"),
    "template loops": lambda c: dict(c, chat_template="{% for a in range(100000) %}{% for b in range(100000) %}"
                                                      "{% endfor %}{% endfor %}"),
    "bos_token junk": lambda c: dict(c, bos_token={"content": 5}),
}


def _malformed_cases():
    cases = []
    for key in CONFIG_KEYS:
        for value in CONFIG_VALUES:
            cases.append((f"config {key}={value!r}",
                          _edit_json("config.json", lambda c, k=key, v=value: dict(c, **{k: v}))))
    # found by tools/hostile_probe.py: a value that does not fit its header field
    cases.append(("config rope_scaling huge original_max_position_embeddings",
                  _edit_json("config.json", lambda c: dict(c, rope_scaling={
                      "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 2**63}))))
    for name, fn in SAFETENSORS_CASES.items():
        cases.append((f"safetensors {name}", _safetensors_variant(fn)))
    for name, fn in TOKENIZER_CASES.items():
        cases.append((f"tokenizer {name}", _edit_json("tokenizer.json", fn)))
    for name, fn in TEMPLATE_CASES.items():
        cases.append((f"tokenizer_config {name}", _edit_json("tokenizer_config.json", fn)))
    return cases


MALFORMED = _malformed_cases()
# a chat template that cannot render, or is not text, is refused (not exported with exit 0)
MUST_REFUSE = {"tokenizer_config template syntax", "tokenizer_config template loops", "tokenizer_config template number",
               "bad template", "u32 chat template", "tokenizer model empty"}


def _refused_or_works(name, src, tmp_path, capsys):
    """Export src: refused in one line with nothing written, or (an edit not in
    MUST_REFUSE) a file that loads and generates."""
    out = tmp_path / "out"
    out.mkdir()
    rc, err = _export([src, out / "m.rq4"], capsys)
    if rc == 0 and name not in MUST_REFUSE:  # a harmless edit: what was written must work
        with Model(str(out / "m.rq4"), n_ctx=8, n_threads=1) as m:
            m.generate("hi", max_new_tokens=1)
        return
    assert rc == 1, err
    one_line(err)
    assert os.listdir(out) == []


@pytest.mark.parametrize("name,edit", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_hf_inputs(hf, tmp_path, capsys, name, edit):
    src = _variant(hf, tmp_path, "v", edit)
    _refused_or_works(name, src, tmp_path, capsys)


GGUF_CASES = {
    "u32 chat template": ("add_chat_template", lambda w, v: w.add_uint32("tokenizer.chat_template", 7)),
    "array rope.freq_base": ("add_rope_freq_base", lambda w, v: w.add_array("llama.rope.freq_base", [1.0, 2.0])),
    "string rms eps": ("add_layer_norm_rms_eps", lambda w, v: w.add_string("llama.attention.layer_norm_rms_epsilon",
                                                                           "x")),
    "string block count": ("add_block_count", lambda w, v: w.add_string("llama.block_count", "two")),
    "float context": ("add_context_length", lambda w, v: w.add_float32("llama.context_length", -1.0)),
    "int tokens": ("add_token_list", lambda w, v: w.add_array("tokenizer.ggml.tokens", list(range(len(v))))),
    "int merges": ("add_token_merges", lambda w, v: w.add_array("tokenizer.ggml.merges", [1, 2])),
    "string bos": ("add_bos_token_id", lambda w, v: w.add_string("tokenizer.ggml.bos_token_id", "1")),
    "huge bos": ("add_bos_token_id", lambda w, v: w.add_uint32("tokenizer.ggml.bos_token_id", 2**32 - 1)),
    "zero heads": ("add_head_count", lambda w, v: w.add_uint32("llama.attention.head_count", 0)),
    "string token types": ("add_token_types", lambda w, v: w.add_array("tokenizer.ggml.token_type", ["a"] * len(v))),
    "bad template": ("add_chat_template", lambda w, v: w.add_string("tokenizer.chat_template", "{{ 'x' * 5000000000 }}")),
}


@pytest.mark.parametrize("name", sorted(GGUF_CASES))
def test_malformed_gguf_metadata(tmp_path, capsys, monkeypatch, name):
    gguf = pytest.importorskip("gguf")
    from test_gguf_source import hf_weights, tiny_vocab, write_gguf
    method, repl = GGUF_CASES[name]
    monkeypatch.setattr(gguf.GGUFWriter, method, lambda self, v, *a: repl(self, v))
    p = tmp_path / "m.gguf"
    write_gguf(p, hf_weights(len(tiny_vocab()[0])), {})
    monkeypatch.undo()
    _refused_or_works(name, p, tmp_path, capsys)


BNB_STATES = {
    "zero nested blocksize": dict(nested_blocksize=0),
    "zero blocksize": dict(blocksize=0),
    "string blocksize": dict(blocksize="x"),
    "negative shape": dict(shape=[-64, 64]),
    "shape too big": dict(shape=[640, 64]),
    "shape junk": dict(shape="64x64"),
    "dtype junk": dict(dtype="float7"),
    "quant_type junk": dict(quant_type="nf5"),
    "nested_offset junk": dict(nested_offset="x"),
}


@pytest.mark.parametrize("name", sorted(BNB_STATES))
def test_malformed_bnb_state(tmp_path, name):
    from safetensors.numpy import load_file
    from test_bnb import _rand, write_bnb_checkpoint
    q = "model.layers.0.self_attn.q_proj.weight"
    write_bnb_checkpoint(tmp_path, {q: _rand((64, 64), 8)}, "nf4", True)
    stored = load_file(str(tmp_path / "model.safetensors"))
    key = q + ".quant_state.bitsandbytes__nf4"
    state = json.loads(bytes(stored[key]))
    state.update(BNB_STATES[name])
    stored[key] = np.frombuffer(json.dumps(state).encode(), np.uint8).copy()
    with pytest.raises(bnb.BnbError) as e:
        bnb.dequantize_named(stored.__getitem__, list(stored))
    assert "\n" not in str(e.value)
