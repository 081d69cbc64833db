"""Saved state: Model.save_state / load_state (src/state.c) and the binary's
--prompt-cache.

- a saved cache loaded into a fresh model gives the same logits, bit for bit,
  as the model that saved it (f32 and f16 caches), and generation reuses it;
- a file of another model, n_ctx or kv_type, a truncated, corrupt or garbage
  file, and a missing one are refused with a Runq4Error, leaving the model as
  it was and usable;
- saving is atomic: a failed save leaves no file behind;
- `runq4 --prompt-cache FILE` gives the same bytes as a run without it, on the
  run that writes the file and on those that reuse it, in generate and chat
  modes.
"""
import os

import numpy as np
import pytest

from pyrunq4 import (FormatError, Model, Runq4Error, Runq4IOError, StateMismatchError,
                     VersionError)
from test_binary import binary, run  # noqa: F401  (the binary fixture: make runq4)

PROMPT = [1, 5, 9, 42, 7, 100, 3, 64, 12, 200, 17, 18, 19, 20, 21, 22, 23]  # > 16: two key blocks
NEXT = [33, 44]


def _saved(path, tmp_path, kv_type="f32", n_ctx=64, prompt=PROMPT):
    """Feeds prompt into a fresh model, saves it; returns the file and the
    logits of NEXT fed after the prompt."""
    f = tmp_path / f"state-{kv_type}-{n_ctx}.bin"
    with Model(path, n_ctx=n_ctx, n_threads=1, kv_type=kv_type) as m:
        m.feed(prompt)
        m.save_state(f)
        return f, m.feed(NEXT, all_logits=True)


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_round_trip_same_logits(tiny_tied, tmp_path, kv_type):
    f, want = _saved(tiny_tied, tmp_path, kv_type)
    with Model(tiny_tied, n_ctx=64, n_threads=1, kv_type=kv_type) as m:
        m.feed([5, 6, 7])            # replaced by the load
        m.load_state(f)
        assert m.position == len(PROMPT)
        assert m.tokens == tuple(PROMPT)
        got = m.feed(NEXT, all_logits=True)
    np.testing.assert_array_equal(got, want)


def test_only_filled_positions_written(tiny_tied, tmp_path):
    small, _ = _saved(tiny_tied, tmp_path, n_ctx=64, prompt=PROMPT[:2])
    big, _ = _saved(tiny_tied, tmp_path, n_ctx=128, prompt=PROMPT[:2])
    assert os.path.getsize(small) == os.path.getsize(big)


def test_empty_state(tiny_tied, tmp_path):
    f = tmp_path / "empty.bin"
    with Model(tiny_tied, n_ctx=64, n_threads=1) as m:
        m.save_state(f)
        m.feed(PROMPT)
        m.load_state(f)
        assert m.position == 0 and m.tokens == ()


def test_generation_reuses_loaded_prefix(tiny_tied, tmp_path):
    f = tmp_path / "prefix.bin"
    with Model(tiny_tied, n_ctx=64, n_threads=1) as m:
        want = m.generate(PROMPT + NEXT, max_new_tokens=12)
        m.reset()
        m.feed(PROMPT)
        m.save_state(f)
    with Model(tiny_tied, n_ctx=64, n_threads=1) as m:
        m.load_state(f)
        got = m.generate(PROMPT + NEXT, max_new_tokens=12)
        assert m.last_stats["prompt_fed"] == len(NEXT)
    assert got == want


def _check_refused(path, f, exc, **open_kw):
    """Loading f raises exc and leaves the model's cache and logits as they were."""
    kw = dict(n_ctx=64, n_threads=1, kv_type="f32")
    kw.update(open_kw)
    with Model(path, **kw) as m:
        m.feed(PROMPT[:5])
        with pytest.raises(exc) as e:
            m.load_state(f)
        assert isinstance(e.value, Runq4Error)
        msg = str(e.value)
        assert msg and "\n" not in msg
        assert m.position == 5 and m.tokens == tuple(PROMPT[:5])
        got = m.feed(NEXT, all_logits=True)
    with Model(path, **kw) as ref:
        want = ref.feed(PROMPT[:5] + NEXT, all_logits=True)[5:]
    np.testing.assert_array_equal(got, want)
    return msg


def test_foreign_model_refused(tiny_tied, tiny_untied, tmp_path):
    f, _ = _saved(tiny_untied, tmp_path)
    assert "another model" in _check_refused(tiny_tied, f, StateMismatchError)


def test_other_settings_refused(tiny_tied, tmp_path):
    f, _ = _saved(tiny_tied, tmp_path, n_ctx=64)
    assert "n_ctx = 64" in _check_refused(tiny_tied, f, StateMismatchError, n_ctx=128)
    assert "kv_type" in _check_refused(tiny_tied, f, StateMismatchError, kv_type="f16")


@pytest.mark.parametrize("dim", [64, 256])  # the weights hashed whole, and in windows (> 256 KiB)
def test_other_weights_same_shape_refused(tmp_path, dim):
    """Two files of one shape (the same header and table) with other weights:
    the state of one does not load into the other."""
    from conftest import write_random_model
    shape = dict(dim=dim, hidden_dim=2 * dim, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=dim // 4,
                 tied=True, rope=True)
    a = str(write_random_model(tmp_path / "a.rq4", seed=1, **shape))
    b = str(write_random_model(tmp_path / "b.rq4", seed=2, **shape))
    assert os.path.getsize(a) == os.path.getsize(b)
    assert (os.path.getsize(a) > 256 << 10) == (dim == 256)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read(256) == fb.read(256)  # the same header
    f, _ = _saved(a, tmp_path)
    _check_refused(b, f, StateMismatchError)
    with Model(a, n_ctx=64, n_threads=1, kv_type="f32") as m:
        m.load_state(f)
        assert m.tokens == tuple(PROMPT)


def test_bad_files_refused(tiny_tied, tmp_path):
    f, _ = _saved(tiny_tied, tmp_path)
    data = f.read_bytes()
    bad = tmp_path / "bad.bin"
    for content, exc, words in [
        (data[:-1], FormatError, "truncated"),
        (data[:40], FormatError, "truncated"),
        (data + b"\0", FormatError, "too long"),
        (b"", FormatError, "truncated"),
        (os.urandom(len(data)), FormatError, "magic"),
        (data[:-3] + bytes([data[-3] ^ 1]) + data[-2:], FormatError, "checksum"),
        (data[:8] + b"\x63" + data[9:], VersionError, "version"),
    ]:
        bad.write_bytes(content)
        assert words in _check_refused(tiny_tied, bad, exc)
    _check_refused(tiny_tied, tmp_path / "missing.bin", Runq4IOError)
    _check_refused(tiny_tied, tmp_path, Runq4IOError)   # a directory


def test_save_is_atomic(tiny_tied, tmp_path):
    with Model(tiny_tied, n_ctx=64, n_threads=1) as m:
        m.feed(PROMPT)
        with pytest.raises(Runq4IOError):
            m.save_state(tmp_path / "no such dir" / "state.bin")
        f = tmp_path / "state.bin"
        f.write_bytes(b"old")
        m.save_state(f)
        m.load_state(f)
        assert m.tokens == tuple(PROMPT)
    assert os.listdir(tmp_path) == ["state.bin"]   # no temporary file left


# ---------------------------------------------------------------------------
# the binary


def _gen(binary, model, *args):  # noqa: F811
    r = run(binary, model, "-n", 16, "-c", 96, "-T", 1, "-t", 0, *args)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.slow
def test_prompt_cache_same_output(binary, tiny_tied, tmp_path):  # noqa: F811
    cache = tmp_path / "prompt.cache"
    base = "The quick brown fox jumps over the lazy dog and"
    for prompt in [base, base, base + " then some", "Another text"]:
        want = _gen(binary, tiny_tied, "-i", prompt).stdout
        r = _gen(binary, tiny_tied, "-i", prompt, "--prompt-cache", cache)
        assert r.stdout == want
        assert b"prompt cache" in r.stderr and b"not used" not in r.stderr
    r = _gen(binary, tiny_tied, "-i", base, "--prompt-cache", cache)
    assert b"reused 0 of" not in r.stderr        # this prompt's own cache
    # another context: reported, not used, rewritten, the output unchanged
    r = run(binary, tiny_tied, "-n", 16, "-c", 128, "-T", 1, "-t", 0, "-i", base, "--prompt-cache", cache)
    assert r.returncode == 0 and b"not used" in r.stderr and b"n_ctx" in r.stderr
    r2 = run(binary, tiny_tied, "-n", 16, "-c", 128, "-T", 1, "-t", 0, "-i", base)
    assert r.stdout == r2.stdout


@pytest.mark.slow
def test_prompt_cache_chat(binary, tiny_tied, tmp_path):  # noqa: F811
    cache = tmp_path / "chat.cache"
    args = ["--chat", "-y", "You are a helpful assistant. Answer briefly.", "-i", "Hi there"]
    want = _gen(binary, tiny_tied, *args).stdout
    for _ in range(2):
        assert _gen(binary, tiny_tied, *args, "--prompt-cache", cache).stdout == want
    other = args[:-1] + ["What now?"]
    assert (_gen(binary, tiny_tied, *other, "--prompt-cache", cache).stdout
            == _gen(binary, tiny_tied, *other).stdout)


def test_prompt_cache_bad_values(binary, tiny_tied, tmp_path):  # noqa: F811
    r = run(binary, tiny_tied, "-i", "x", "--prompt-cache", "")
    assert r.returncode == 1 and r.stdout == b"" and r.stderr.count(b"\n") == 1
    r = run(binary, tiny_tied, "-i", "x", "-n", 2, "--prompt-cache", tmp_path / "no dir" / "f")
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().splitlines()[-1].startswith("runq4: error: cannot write")
