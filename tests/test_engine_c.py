"""The engine's C test (tests/c/test_engine.c) through `make test-c`: batched
prompts bit-identical to token-by-token decoding, any thread count, f32/f16
KV cache, float mode, rewind, argument and context errors."""

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # builds and runs C programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None,
                    reason="needs make and a C compiler")
def test_engine_c(tmp_path):
    model = tmp_path / "tiny.rq4"
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "c", "make_test_model.py"), str(model)],
                   cwd=ROOT, check=True, timeout=300)
    proc = subprocess.run(["make", "--no-print-directory", "test-c", f"MODEL={model}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "OK: engine tests passed" in out
