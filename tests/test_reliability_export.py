"""The exporter under failure: a full disk (simulated at any byte,
and a real 32 KB tmpfs when we may mount one), an interrupt mid-write, weights
whose fp16 scales would overflow, damaged inputs (a safetensors file cut short
as by an unfinished copy, a garbage header, JSON files of the wrong shape, a
tokenizer.json that is not one). Each is one line on stderr and exit status 1
(130 for the interrupt), and leaves no output and no temporary file; an
existing output file is untouched. Missing files, unsupported architectures,
shape mismatches, NaN/Inf weights and unwritable paths are in
tests/test_export_hf.py.
"""

import errno
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from fixtures import make_hf_llama

from pyrunq4.export import writer as writer_mod
from pyrunq4.export.__main__ import main


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return make_hf_llama(tmp_path_factory.mktemp("hf") / "tiny", dtype="fp32").path


def _run(argv, capsys):
    rc = main([str(a) for a in argv] + ["--quiet"])
    return rc, capsys.readouterr().err


def _refused(out_dir, capsys, argv, match, rc_want=1):
    before = sorted(os.listdir(out_dir))
    rc, err = _run(argv, capsys)
    assert rc == rc_want, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and match in lines[0], err
    assert sorted(os.listdir(out_dir)) == before  # no output, no temporary file
    return lines[0]


class FullFile:
    """A file object whose writes fail with ENOSPC once `limit` bytes went in
    (limit None: the final flush fails instead)."""

    def __init__(self, f, limit):
        self.f, self.limit, self.written = f, limit, 0

    def write(self, data):
        n = len(memoryview(data).cast("B"))
        if self.limit is not None and self.written + n > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += n
        return self.f.write(data)

    def flush(self):
        if self.limit is None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.flush()

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("limit", [0, 300, 5000, 40000, None], ids=["first", "header", "early", "late", "flush"])
def test_disk_full_mid_write(hf, tmp_path, capsys, monkeypatch, limit):
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.rq4").write_bytes(b"previous")
    real_fdopen = os.fdopen
    monkeypatch.setattr(writer_mod.os, "fdopen", lambda fd, mode: FullFile(real_fdopen(fd, mode), limit))
    line = _refused(out, capsys, [hf, out / "m.rq4"], "No space left on device")
    assert (out / "m.rq4").read_bytes() == b"previous", line
    _refused(out, capsys, [hf, out / "new.rq4"], "No space left on device")
    assert not (out / "new.rq4").exists()


def test_disk_full_real_tmpfs(hf, tmp_path, capsys):
    """A real full filesystem: a 32 KB tmpfs (root only; skipped elsewhere)."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(small)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.decode(errors="replace").strip())
    try:
        _refused(small, capsys, [hf, small / "m.rq4"], "No space left on device")
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_interrupt_mid_write(hf, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.rq4").write_bytes(b"previous")
    real = writer_mod.Rq4Writer.add_quantized
    calls = []

    def interrupted(self, name, qt):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, name, qt)

    monkeypatch.setattr(writer_mod.Rq4Writer, "add_quantized", interrupted)
    _refused(out, capsys, [hf, out / "m.rq4"], "interrupted", rc_want=130)
    assert (out / "m.rq4").read_bytes() == b"previous"


@pytest.mark.parametrize("method", ["auto", "mse"])   # auto: gptq for these float checkpoints
def test_scale_overflow_and_tiny_weights(tmp_path, capsys, method):
    huge = make_hf_llama(tmp_path / "huge", dtype="fp32",
                         extra_tensors={"model.layers.1.mlp.up_proj.weight": np.full((96, 64), 1e6, np.float32)})
    out = tmp_path / "out"
    out.mkdir()
    _refused(out, capsys, [huge.path, out / "m.rq4", "--method", method], "overflows fp16")
    # tiny weights underflow to zero scales: a valid (if useless) file, not an error
    tiny = make_hf_llama(tmp_path / "tiny", dtype="fp32",
                         extra_tensors={"model.layers.1.mlp.up_proj.weight": np.full((96, 64), 1e-30, np.float32)})
    rc, err = _run([tiny.path, out / "t.rq4", "--method", method], capsys)
    assert rc == 0, err
    from pyrunq4 import Model
    with Model(str(out / "t.rq4"), n_ctx=8, n_threads=1) as m:
        assert np.isfinite(m.logits([1, 2])).all()


def _damaged(hf, tmp_path, name, content):
    d = tmp_path / ("src_" + name.replace(".", "_"))
    shutil.copytree(hf, d)
    p = d / name
    data = p.read_bytes() if p.exists() else b""
    p.write_bytes(content(data) if callable(content) else content)
    return d


DAMAGED = [
    ("model.safetensors", lambda b: b[:len(b) // 2], "data offsets do not match"),      # copy not finished
    ("model.safetensors", lambda b: b[:4], "not a safetensors file"),
    ("model.safetensors", b"\xff" * 8 + b"garbage", "not a safetensors file"),
    ("model.safetensors", b"", "not a safetensors file"),
    ("config.json", b"[1, 2]", "not a JSON object"),
    ("config.json", b'{"architectures": ', "cannot read JSON"),
    ("config.json", b"\xff\xfe", "cannot read JSON"),
    ("tokenizer_config.json", b'"x"', "not a JSON object"),
    ("tokenizer.json", b"{}", "not a tokenizers file"),
    ("tokenizer.json", b"[]", "not a tokenizers file"),
    ("tokenizer.json", b"\xff{", "invalid JSON"),
]


@pytest.mark.parametrize("name,content,match", DAMAGED, ids=["%s-%d" % (d[0], i) for i, d in enumerate(DAMAGED)])
def test_damaged_inputs(hf, tmp_path, capsys, name, content, match):
    src = _damaged(hf, tmp_path, name, content)
    out = tmp_path / "out"
    out.mkdir()
    _refused(out, capsys, [src, out / "m.rq4"], match)


def test_config_fields_of_the_wrong_type(hf, tmp_path, capsys):
    cfg = json.loads((hf / "config.json").read_text() if hasattr(hf, "read_text") else
                     open(os.path.join(hf, "config.json")).read())
    out = tmp_path / "out"
    out.mkdir()
    for key, value in (("num_hidden_layers", "two"), ("hidden_size", -64), ("num_attention_heads", 0),
                       ("vocab_size", 1.5), ("rms_norm_eps", "x"), ("max_position_embeddings", None)):
        bad = dict(cfg, **{key: value})
        src = _damaged(hf, tmp_path / key, "config.json", json.dumps(bad).encode())
        before = sorted(os.listdir(out))
        rc, err = _run([src, out / "m.rq4"], capsys)
        assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (key, err)
        assert sorted(os.listdir(out)) == before
