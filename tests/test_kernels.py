"""Every SIMD kernel set against the scalar reference, bit for bit.

Runs the C test tests/c/test_kernels.c through the Makefile: natively
(`make test-kernels`: every set this CPU supports) and, when an aarch64 cross
compiler and qemu-user are installed (Debian: gcc-aarch64-linux-gnu,
qemu-user), for aarch64 under qemu (`make cross-aarch64-test-kernels`: the
dotprod and plain NEON sets on `-cpu max`, plain NEON alone on a core without
dotprod).
"""

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_make(target, timeout):
    proc = subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def check_report(out):
    """Parses the test's report: {set name: (comparisons, mismatches)}; asserts none mismatched."""
    results = {}
    for name, comparisons, mismatches in re.findall(
            r"^(\S+)\s+\d+ shapes, (\d+) comparisons, (\d+) mismatches$", out, re.M):
        results[name] = (int(comparisons), int(mismatches))
    for name, (comparisons, mismatches) in results.items():
        assert comparisons > 0, name
        assert mismatches == 0, f"{name}: {mismatches} mismatches\n{out[-3000:]}"
    return results


def available_sets(out):
    """The sets each run listed, one list per run."""
    return [line.split(":", 1)[1].split("(")[0].split()
            for line in out.splitlines() if line.startswith("kernel sets available:")]


@pytest.mark.skipif(shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None,
                    reason="needs make and a C compiler")
def test_kernel_sets_bit_identical_to_scalar():
    rc, out = run_make("test-kernels", timeout=900)
    assert rc == 0, out[-3000:]
    assert "OK: all kernel sets bit-identical to scalar" in out
    (sets,) = available_sets(out)
    assert sets[-1] == "scalar"
    results = check_report(out)
    # every SIMD set the CPU offers was compared
    assert set(results) == set(sets) - {"scalar"}
    if os.uname().machine in ("x86_64", "AMD64"):
        assert "avx2" in sets or "avx2" not in open("/proc/cpuinfo").read()


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("aarch64-linux-gnu-gcc") is None
                    or shutil.which("qemu-aarch64") is None,
                    reason="needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu qemu-user)")
def test_kernel_sets_bit_identical_on_aarch64_under_qemu():
    rc, out = run_make("cross-aarch64-test-kernels", timeout=1800)
    assert rc == 0, out[-3000:]
    runs = available_sets(out)
    assert len(runs) == 2, out[-3000:]
    assert runs[0] == ["neon_dotprod", "neon", "scalar"]  # -cpu max
    assert runs[1] == ["neon", "scalar"]                  # -cpu cortex-a53: no dotprod
    assert out.count("OK: all kernel sets bit-identical to scalar") == 2
    for run in out.split("kernel sets available:")[1:]:
        check_report(run)
