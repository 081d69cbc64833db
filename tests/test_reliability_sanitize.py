"""Sanitizers and valgrind.

- `make sanitize`: test_engine, test_kernels -q and the runq4 binary built
  with AddressSanitizer + UndefinedBehaviorSanitizer (every UB check fatal,
  leak detection on) in build-san/, then run, including short generations
  (greedy, sampled, f16 KV, 2 threads, chat from stdin) on a one-layer model;
- the hostile-file corpus (tests/badfiles.py, a sample of ~1000 files)
  through build-san/runq4: exit 0 or 1 with one line, never a sanitizer
  report;
- `make valgrind`: memcheck on the binary (generation and chat) and on the
  engine test: no errors, no definite or indirect leaks. Skipped without
  valgrind.
"""

import os
import shutil
import subprocess
import sys

import pytest

import badfiles
from toolchain import builds
from test_reliability_files import MemFile, binary_sample, check_binary_result, run_binary

pytestmark = pytest.mark.slow  # builds and runs C programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAN = os.path.join(ROOT, "build-san")


def _sanitizers_work(tmp):
    return builds(os.environ.get("CC", "cc"), ["-fsanitize=address,undefined"],
                  "int main(void) { return 0; }\n", tmp, run=True)


def make(target, timeout=1800):
    r = subprocess.run(["make", "--no-print-directory", target, "PYTHON=" + sys.executable], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def sanitize(tmp_path_factory):
    if not _sanitizers_work(str(tmp_path_factory.mktemp("san"))):
        pytest.skip("the C compiler cannot build with -fsanitize=address,undefined")
    rc, out = make("sanitize")
    return rc, out


def test_make_sanitize(sanitize):
    rc, out = sanitize
    assert rc == 0, out[-4000:]
    assert "OK: sanitize (ASan + UBSan) passed" in out
    assert "OK: engine tests passed" in out and "OK: all kernel sets bit-identical" in out
    assert "runtime error" not in out and "AddressSanitizer" not in out


def test_bad_files_under_sanitizers(sanitize, tmp_path):
    rc, out = sanitize
    assert rc == 0, out[-2000:]
    data = open(badfiles.make_micro_model(tmp_path / "micro.rq4"), "rb").read()
    sample = binary_sample(list(badfiles.bad_files(data, flips=200)), 16)[::2]
    mem = MemFile()
    try:
        for name, blob in sample:
            mem.set(blob)
            r = run_binary(os.path.join(SAN, "runq4"), mem.path, pass_fds=(mem.fd,))
            check_binary_result(name, r)
            assert b"Sanitizer" not in r.stderr and b"runtime error" not in r.stderr, (name, r.stderr[-3000:])
    finally:
        mem.close()
    print("\nsanitized binary: %d bad files, no report" % len(sample))
    assert len(sample) > 500


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_make_valgrind():
    rc, out = make("valgrind")
    assert rc == 0, out[-4000:]
    assert "OK: valgrind memcheck passed" in out
