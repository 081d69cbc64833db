"""Hostile model files: the loader refuses every one with an error
code and a one-line message, or (when the damage is harmless, e.g. a changed
bos_id) opens it and runs a forward pass; nothing crashes, hangs or leaks.

The corpus (tests/badfiles.py, ~4500 files made from a 15 KB one-layer model)
goes through pyrunq4 (the C API via cffi: a Runq4Error subclass carrying the
C status code) and, every file or a sample, through the runq4 binary (one
line on stderr, exit status 1, or a clean run). The files live in a memfd
(/proc/self/fd/N), not on disk: a few thousand writes to a loaded disk took
half a minute.
"""

import os
import stat
import subprocess

import pytest

import badfiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Model = pytest.importorskip("pyrunq4.model").Model
_lib = pytest.importorskip("pyrunq4._lib")
Runq4Error = _lib.Runq4Error


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return str(badfiles.make_micro_model(tmp_path_factory.mktemp("rel") / "micro.rq4"))


@pytest.fixture(scope="module")
def corpus(micro):
    data = open(micro, "rb").read()
    files = list(badfiles.bad_files(data))
    assert len({n for n, _ in files}) == len(files)
    assert all(b != data for _, b in files)
    return files


class MemFile:
    """One reusable in-memory file; .path opens it by name (also in a child
    process that inherits the fd)."""

    def __init__(self):
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("rq4bad", 0)  # no MFD_CLOEXEC: children inherit it
            self.path = "/proc/self/fd/%d" % self.fd
        else:  # pragma: no cover - non-Linux
            import tempfile
            self.fd, self.path = tempfile.mkstemp(suffix=".rq4")

    def set(self, data):
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def close(self):
        os.close(self.fd)


def try_model(path):
    """'refused: <Error>' or 'ran' (opened, and a forward pass worked)."""
    try:
        m = Model(path, n_ctx=16, n_threads=1)
    except Runq4Error as e:
        assert e.message and "\n" not in e.message, e.message
        return "refused: " + type(e).__name__
    with m:
        V = m.config.vocab_size
        m.logits([0, min(1, V - 1)])
        m.logits([V - 1])
        return "ran"


def test_corpus_through_pyrunq4(corpus):
    mem = MemFile()
    outcomes = {}
    try:
        for name, data in corpus:
            mem.set(data)
            outcomes[name] = try_model(mem.path)
    finally:
        mem.close()
    refused = [n for n, o in outcomes.items() if o.startswith("refused")]
    ran = [n for n, o in outcomes.items() if o == "ran"]
    print("\n%d bad files: %d refused, %d opened and ran a forward pass" % (len(corpus), len(refused), len(ran)))
    assert len(corpus) > 4000
    # whatever changes the bytes the loader reads (sizes, offsets, shapes,
    # names, the magic, the version) is refused; only harmless edits open
    for n in outcomes:
        if n.startswith("trunc") or n in ("empty", "being_written", "being_written_zero_tail", "padded") \
                or n.startswith(("gguf", "safetensors", "json", "zeros", "magic_only", "header_only")):
            assert outcomes[n].startswith("refused"), n
    for field in ("version", "header_size", "file_size", "dim", "hidden_dim", "n_layers", "n_heads",
                  "head_dim", "vocab_size", "n_entries", "table_offset"):
        for n, o in outcomes.items():
            if n.startswith("header.%s=" % field):
                assert o.startswith("refused"), (n, o)
    assert outcomes["header.magic"] == "refused: FormatError"
    assert outcomes["header.version=0"] == "refused: VersionError"
    assert outcomes["gguf"] == "refused: FormatError"


def test_untied_model_corpus_through_pyrunq4(tmp_path):
    """The same corpus from an untied model (an "output" entry, q8 embeddings, GQA)."""
    data = open(badfiles.make_micro_untied(tmp_path / "untied.rq4"), "rb").read()
    mem = MemFile()
    counts = {}
    try:
        for name, blob in badfiles.bad_files(data, flips=200):
            mem.set(blob)
            o = try_model(mem.path).split(":")[0]
            counts[o] = counts.get(o, 0) + 1
            if name.startswith(("trunc", "header.version", "header.dim", "header.n_entries")):
                assert o == "refused", name
    finally:
        mem.close()
    print("\nuntied: %d bad files: %s" % (sum(counts.values()), counts))
    assert sum(counts.values()) > 4000


def test_messages_name_the_problem(micro, tmp_path):
    data = open(micro, "rb").read()
    cases = dict(badfiles.bad_files(data, flips=0))
    half = len(data) * 32 // 64  # one of the truncation points
    want = {
        "empty": "empty", "trunc100": "shorter than the 256-byte header", "trunc%d" % half: "truncated",
        "being_written": "truncated", "gguf": "GGUF", "header.magic": "bad magic",
        "header.version=4294967295": "version", "header.dim=0": "dim", "header.n_entries=4294967295": "n_entries",
        "header.norm_eps=nan": "norm_eps", "header.rope_factor=-inf": "rope_factor",
        "entry2(layers.0.wq).size=18446744073709551615": "layers.0.wq",
        "entry2(layers.0.wq).offset=1": "multiple of 64", "entry0(tok_embeddings).name=unterminated": "NUL",
        "entry0(tok_embeddings).name=duplicate": "two entries",
        "entry2(layers.0.wq).rows=4294967295": "layers.0.wq",
        "trunc%d+size" % half: "not inside the data area",
    }
    p = tmp_path / "m.rq4"
    for name, needle in want.items():
        p.write_bytes(cases[name])
        with pytest.raises(Runq4Error) as e:
            Model(str(p), n_ctx=16, n_threads=1)
        assert needle in str(e.value), (name, str(e.value))
        assert e.value.code is not None  # the C status code came through


def run_binary(binary, path, pass_fds=()):
    return subprocess.run([binary, path, "-i", "hi", "-n", "2", "-c", "16", "-T", "1"], capture_output=True,
                          timeout=60, pass_fds=pass_fds,
                          env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=99",
                                   UBSAN_OPTIONS="halt_on_error=1:exitcode=98"))


def check_binary_result(name, r):
    assert r.returncode in (0, 1), (name, r.returncode, r.stderr[-2000:])
    if r.returncode == 1:
        lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("runq4: error: "), (name, r.stderr)
        assert r.stdout == b""


def binary_sample(corpus, every):
    """Every file that is not a plain truncation, and every `every`-th truncation."""
    trunc = [c for c in corpus if c[0].startswith("trunc")]
    return [c for c in corpus if not c[0].startswith("trunc")] + trunc[::every]


@pytest.fixture(scope="module")
def binary():
    if subprocess.run(["make", "-s", "runq4"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("make runq4 failed (no C compiler?)")
    return os.path.join(ROOT, "runq4")


def test_corpus_through_the_binary(binary, corpus):
    mem = MemFile()
    counts = {0: 0, 1: 0}
    sample = binary_sample(corpus, 8)
    try:
        for name, data in sample:
            mem.set(data)
            r = run_binary(binary, mem.path, pass_fds=(mem.fd,))
            check_binary_result(name, r)
            counts[r.returncode] += 1
    finally:
        mem.close()
    print("\nbinary: %d bad files, %d refused (exit 1), %d ran (exit 0)" % (len(sample), counts[1], counts[0]))
    assert len(sample) > 1500


def test_not_regular_files(binary, tmp_path):
    """A directory, a FIFO (used to hang in open()), a character device, a
    path that is not there: IO errors from the C API and the binary."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(tmp_path), str(fifo), "/dev/null", "/dev/zero", str(tmp_path / "missing.rq4")):
        if not os.path.exists(path):
            pass
        elif not (stat.S_ISDIR(os.stat(path).st_mode) or stat.S_ISFIFO(os.stat(path).st_mode)
                  or stat.S_ISCHR(os.stat(path).st_mode)):
            continue
        # the C API directly (Model checks exists/isdir in Python first)
        with pytest.raises(Runq4Error) as e:
            _lib.open_model(path, n_ctx=16, n_threads=1, kv_type=0, float_activations=False, max_memory=0)
        assert e.value.code in (1, 2), (path, e.value)
        with pytest.raises(Runq4Error):
            Model(path)
        r = run_binary(binary, path)
        check_binary_result(path, r)
        assert r.returncode == 1


def test_file_changes_size_while_open(micro, tmp_path):
    """A model opened before its file is replaced keeps its mapping (the
    writer's os.replace swaps the inode); truncating a file in place while it
    is mapped is the one thing not survivable (SIGBUS, as for every mmap-based
    loader): docs/RELIABILITY.md."""
    p = tmp_path / "m.rq4"
    p.write_bytes(open(micro, "rb").read())
    with Model(str(p), n_ctx=16, n_threads=1) as m:
        want = m.logits([1, 2])
        tmp = tmp_path / "other"
        tmp.write_bytes(b"garbage")
        os.replace(tmp, p)
        m.reset()
        assert (m.logits([1, 2]) == want).all()


def test_many_opens_do_not_leak_fds(micro):
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    if before is None:
        pytest.skip("no /proc")
    bad = micro + ".bad"
    with open(bad, "wb") as f:
        f.write(open(micro, "rb").read()[:3000])
    for _ in range(200):
        with pytest.raises(Runq4Error):
            Model(bad)
        Model(micro, n_ctx=16, n_threads=1).close()
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_chat_template_not_utf8_is_a_format_error(micro, tmp_path):
    """Found by the corpus: a damaged chat_template blob raised UnicodeDecodeError from Model()."""
    from conftest import CHATML
    data = open(micro, "rb").read()
    i = data.index(CHATML.encode())
    p = tmp_path / "m.rq4"
    p.write_bytes(data[:i] + b"\xff\xfe" + data[i + 2:])
    with pytest.raises(_lib.FormatError, match="chat_template"):
        Model(str(p), n_ctx=16, n_threads=1)
