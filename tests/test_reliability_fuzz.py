"""libFuzzer on the loader and the C tokenizer (tests/fuzz/).

- every input in tests/fuzz/regressions/ (crashes the fuzzers found, kept
  after the fix) is replayed: through pyrunq4 always (the loader input with
  its file_size patched as fuzz_loader does, opened and run if it opens), and
  through the sanitized fuzz binaries when clang's libFuzzer is available;
- a short bounded fuzz run of each harness (RQ4_FUZZ_SECONDS, default 30 s
  each; 0 skips it), only when clang with libFuzzer (Debian: clang and
  libclang-rt-dev) is installed. The execution counts are printed
  (pytest -s) and must be non-zero; any crash fails the test and leaves its
  input in build-fuzz/ (crash-*): minimise it, add it to
  tests/fuzz/regressions/, fix the bug.
"""

import glob
import os
import re
import struct
import subprocess
import sys

import pytest

from toolchain import builds
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "build-fuzz")
REG = os.path.join(ROOT, "tests", "fuzz", "regressions")
SECONDS = int(os.environ.get("RQ4_FUZZ_SECONDS", "30"))


def _have_libfuzzer(tmp):
    return builds(os.environ.get("FUZZ_CC", "clang"), ["-fsanitize=fuzzer,address,undefined"],
                  "#include <stdint.h>\n#include <stddef.h>\n"
                  "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n",
                  tmp, run=False)


@pytest.fixture(scope="module")
def fuzzers(tmp_path_factory):
    if not _have_libfuzzer(str(tmp_path_factory.mktemp("lf"))):
        pytest.skip("clang with libFuzzer is not installed (Debian: clang libclang-rt-dev)")
    r = subprocess.run(["make", "--no-print-directory", "fuzz-build", "PYTHON=" + sys.executable], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return os.path.join(FUZZ, "fuzz_loader"), os.path.join(FUZZ, "fuzz_tokenizer")


def regressions(kind):
    return sorted(glob.glob(os.path.join(REG, kind, "*")))


def test_loader_regressions_through_pyrunq4(tmp_path):
    Model = pytest.importorskip("pyrunq4.model").Model
    from pyrunq4 import Runq4Error
    files = regressions("loader")
    assert files, "tests/fuzz/regressions/loader/ is empty"
    for f in files:
        data = bytearray(open(f, "rb").read())
        if len(data) >= 24:  # as fuzz_loader does
            struct.pack_into("<Q", data, 16, len(data))
        p = tmp_path / "m.rq4"
        p.write_bytes(bytes(data))
        for kv in ("f32", "f16"):
            try:
                m = Model(str(p), n_ctx=8, n_threads=1, kv_type=kv)
            except Runq4Error:
                continue
            with m:
                m.logits([0, m.config.vocab_size - 1])


@pytest.mark.slow
def test_regressions_under_sanitizers(fuzzers):
    env = dict(os.environ, RQ4_FUZZ_TOKENIZER=os.path.join(FUZZ, "tokenizer.json"))
    for exe, kind in zip(fuzzers, ("loader", "tokenizer")):
        files = regressions(kind)
        if not files:
            continue
        r = subprocess.run([exe, *files], cwd=FUZZ, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]


def _run(exe, corpus, seeds, seconds, env):
    os.makedirs(corpus, exist_ok=True)
    args = [exe, "-max_total_time=%d" % seconds, "-print_final_stats=1", "-timeout=20", "-rss_limit_mb=2048",
            corpus, seeds]
    r = subprocess.run(["nice", *args], cwd=FUZZ, capture_output=True, text=True, timeout=seconds + 300, env=env)
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", r.stderr)
    assert r.returncode == 0, r.stderr[-4000:]
    return int(execs.group(1)) if execs else 0


@pytest.mark.slow
@pytest.mark.skipif(SECONDS <= 0, reason="RQ4_FUZZ_SECONDS=0")
def test_short_fuzz_run(fuzzers):
    env = dict(os.environ, RQ4_FUZZ_TOKENIZER=os.path.join(FUZZ, "tokenizer.json"))
    loader, tokenizer = fuzzers
    n_loader = _run(loader, os.path.join(FUZZ, "corpus_loader"), os.path.join(FUZZ, "seeds_loader"), SECONDS, env)
    n_tok = _run(tokenizer, os.path.join(FUZZ, "corpus_tokenizer"), os.path.join(FUZZ, "seeds_tokenizer"),
                 SECONDS, env)
    print("\nfuzz: loader %d executions, tokenizer %d executions in %d s each" % (n_loader, n_tok, SECONDS))
    assert n_loader > 0 and n_tok > 0
