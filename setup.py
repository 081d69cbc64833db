"""Build of pyrunq4: the package (with its exporter, pyrunq4.export), the cffi
extension pyrunq4._runq4 (compiled from src/ by pyrunq4/_build.py) and the
standalone runq4 binary (cli/*.c plus the same library sources), shipped as
pyrunq4/bin/runq4 and started by the `runq4` console script.

    pip install .                      # portable build (SIMD picked at run time)
    RUNQ4_NATIVE=1 pip install .       # adds -march=native
    python setup.py build_ext --inplace   # development build next to the sources

The version is RQ4_VERSION in src/runq4.h, the one place it is written.
The extension uses only the stable ABI (cffi builds it with py_limited_api),
so setup.cfg tags the wheel cp39-abi3: it installs on every CPython >= 3.9.
setup.cfg also keeps pip's build tree in build-py/, apart from the
Makefile's build/.
"""

import glob
import importlib.util
import os
import re

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
BINARY = os.path.join("pyrunq4", "bin", "runq4")


def read_version():
    """RQ4_VERSION from src/runq4.h."""
    with open(os.path.join(ROOT, "src", "runq4.h"), encoding="utf-8") as f:
        m = re.search(r'^#define RQ4_VERSION "([^"]+)"', f.read(), re.M)
    if m is None:
        raise RuntimeError("src/runq4.h has no #define RQ4_VERSION \"X.Y.Z\"")
    return m.group(1)


def load_build_script():
    """pyrunq4/_build.py loaded by path (importing the package would need the
    extension that is being built)."""
    spec = importlib.util.spec_from_file_location("_runq4_build", os.path.join(ROOT, "pyrunq4", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildExtAndBinary(build_ext):
    """build_ext, then the runq4 binary from cli/*.c and the library sources,
    into the build tree (and next to the sources for in-place and editable
    builds)."""

    def run(self):
        super().run()
        b = load_build_script()
        cli = sorted(os.path.relpath(p) for p in glob.glob(os.path.join(ROOT, "cli", "*.c")))
        if not cli:
            raise RuntimeError("no C sources in cli/ (the runq4 binary)")
        objects = self.compiler.compile(cli + b.library_sources(),
                                        output_dir=os.path.join(self.build_temp, "runq4-bin"),
                                        include_dirs=[os.path.relpath(b.SRC)],
                                        extra_postargs=b.extra_compile_args())
        out = os.path.join(self.build_lib, BINARY)
        self.mkpath(os.path.dirname(out))
        self.compiler.link_executable(objects, os.path.basename(out), output_dir=os.path.dirname(out),
                                      extra_postargs=["-pthread", "-lm"])
        if self.inplace or getattr(self, "editable_mode", False):
            self.mkpath(os.path.dirname(BINARY))
            self.copy_file(out, BINARY)


setup(
    version=read_version(),
    packages=["pyrunq4", "pyrunq4.export", "pyrunq4.export.sources"],
    cffi_modules=["pyrunq4/_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtAndBinary},
    zip_safe=False,
)
