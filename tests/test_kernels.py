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
@pytest.mark.slow
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


# every kernel set name kernels_select() knows; RUNQ4_KERNEL falls back to the
# best set for a name this CPU lacks, so the loop below meets each available set
KERNEL_NAMES = ["scalar", "avx2", "avxvnni", "avx512vnni", "neon", "neon_dotprod"]


def test_model_logits_identical_across_kernel_sets(tiny_model, monkeypatch):
    """End to end: the engine's logits (a 70-token prompt in one batch, then
    token by token) are the same bytes whichever kernel set runs them."""
    pyrunq4 = pytest.importorskip("pyrunq4")
    import numpy as np
    ids = [(i * 37 + 11) % 200 + 5 for i in range(70)]
    results = {}
    for name in KERNEL_NAMES:
        monkeypatch.setenv("RUNQ4_KERNEL", name)
        with pyrunq4.Model(tiny_model, n_threads=2) as m:
            if m.kernel in results:
                continue
            batched = np.array(m.logits(ids), copy=True)
            m.reset()
            stepped = np.stack([np.array(m.feed([t]), copy=True).reshape(-1) for t in ids[:8]])
            results[m.kernel] = (batched, stepped)
    assert "scalar" in results, results.keys()
    ref_batched, ref_stepped = results["scalar"]
    for name, (batched, stepped) in results.items():
        assert batched.tobytes() == ref_batched.tobytes(), name
        assert stepped.tobytes() == ref_stepped.tobytes(), name
