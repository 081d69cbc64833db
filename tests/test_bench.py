"""pyrunq4.bench's CPU line: the model name and the SIMD flags the kernels depend on."""

import os
import subprocess
import sys

import pytest

from pyrunq4 import bench
from test_binary import ROOT, binary  # noqa: F401  (binary is a fixture)


def test_cpu_description_names_model_and_flags(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 fma f16c\n\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 fma f16c\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        fake if path == "/proc/cpuinfo" else path, *a, **k))
    line = bench.cpu_description()
    assert line.startswith("Test CPU 9000, ")
    assert line.endswith("flags: avx2 fma f16c")


def test_cpu_description_without_cpuinfo(monkeypatch):
    def missing(*a, **k):
        raise OSError("no such file")
    monkeypatch.setattr("builtins.open", missing)
    assert bench.cpu_description().startswith("unknown CPU, ")


@pytest.mark.slow
def test_vs_binary_prints_generate_stream_and_runq4(binary, tiny_tied):  # noqa: F811
    """--vs-binary: Model.generate, Model.stream and the binary, each on its
    own line, and their ratios."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "pyrunq4.bench", tiny_tied, "--vs-binary", binary, "--runs", "1",
                        "--prompt", "8", "--decode", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {line.split("  ")[0].strip(): line for line in r.stdout.splitlines()}
    for name in ("ours", "generate", "stream", "runq4", "ratio generate/runq4", "ratio stream/runq4"):
        assert name in rows, r.stdout
    assert "token counts differ" not in r.stderr


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux /proc only")
def test_huge_page_share_of_a_mapped_file(tmp_path):
    """The roofline's note on page sizes: a share for a file this process
    maps, counted from smaps; None for one it does not map."""
    import mmap

    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert sum(m[1::4096]) == len(m) // 4096  # every page read, so mapped
        share = bench.huge_page_share(str(path))
        assert share is not None and 0.0 <= share <= 1.0
        assert bench.huge_page_share(str(tmp_path / "weights.bin.other")) is None
    assert bench.huge_page_share(str(path)) is None  # unmapped again


def test_huge_page_share_without_proc(monkeypatch):
    def missing(*a, **k):
        raise OSError("no such file")
    monkeypatch.setattr("builtins.open", missing)
    assert bench.huge_page_share("model.rq4") is None


def test_a_file_that_is_not_a_model_is_one_line(tmp_path):
    """Bad input: no traceback, the engine's own reason, exit status 2."""
    junk = tmp_path / "junk.rq4"
    junk.write_bytes(b"\x00not a model\x00" * 1000)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "pyrunq4.bench", str(junk), "--runs", "1"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"pyrunq4-bench: error: {junk}: not an .rq4 file (bad magic)"
