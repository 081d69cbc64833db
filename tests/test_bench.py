"""pyrunq4.bench's CPU line: the model name and the SIMD flags the kernels depend on."""

from pyrunq4 import bench


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
