"""cffi build script (API, out-of-line mode): builds the extension pyrunq4._runq4.

The cdef is the text of src/runq4.h between the "---- cdef begin ----" and
"---- cdef end ----" markers, read here at build time and never retyped, so
the Python binding cannot drift from the C header. The extension compiles
the library: every .c under src/, recursively, the same list the Makefile's
librunq4 uses (the runq4 binary's own sources live in cli/).

Flags: -O3 -std=c11 -pthread -fno-wrapv -fno-trapping-math (Python's CFLAGS add -fwrapv).
Setting RUNQ4_NATIVE=1 in the environment adds -march=native. That is
optional: the SIMD kernels carry per-function target attributes and are
selected at run time (rq4_kernel_name() says which), so the portable
default build is already fast on AVX2 and NEON machines;
-march=native only lets the compiler use the host's instructions in the
remaining (scalar) code too, and makes the build unportable.

Used by setup.py (cffi_modules=["pyrunq4/_build.py:ffibuilder"]); for a
development build in place: python setup.py build_ext --inplace.
"""

import glob
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")
HEADER = os.path.join(SRC, "runq4.h")

CDEF_BEGIN = "/* ---- cdef begin ---- */"
CDEF_END = "/* ---- cdef end ---- */"


def read_cdef(header_path=HEADER):
    """The public declarations of runq4.h, between the cdef markers."""
    with open(header_path, encoding="utf-8") as f:
        text = f.read()
    begin = text.find(CDEF_BEGIN)
    end = text.find(CDEF_END)
    if begin < 0 or end < 0 or end < begin:
        raise RuntimeError(f"{header_path}: cdef markers not found")
    return text[begin + len(CDEF_BEGIN):end]


def library_sources():
    """Every .c under src/, recursively, as paths relative to the current
    directory (the project root when pip or setup.py runs this). Everything
    the cdef declares (the engine, the kernels, the C tokenizer) must be
    linked in, or importing the extension fails on an undefined symbol."""
    srcs = sorted(glob.glob(os.path.join(SRC, "**", "*.c"), recursive=True))
    if not srcs:
        raise RuntimeError(f"no C sources in {SRC}")
    return [os.path.relpath(s) for s in srcs]


def extra_compile_args():
    # -fno-wrapv: Python's own CFLAGS (sysconfig) carry -fwrapv, which makes
    # the int index arithmetic of the kernels and the engine wrap, so GCC keeps
    # sign extensions in the inner loops. -fno-trapping-math: as the Makefile's
    # flags, so the conditional float loops vectorize.
    args = ["-O3", "-std=c11", "-pthread", "-fno-wrapv", "-fno-trapping-math"]
    if os.environ.get("RUNQ4_NATIVE", "") == "1":
        args.append("-march=native")
    return args


ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "pyrunq4._runq4",
    '#include "runq4.h"\n',
    sources=library_sources(),
    include_dirs=[os.path.relpath(SRC)],
    extra_compile_args=extra_compile_args(),
    extra_link_args=["-pthread", "-lm"],
)

if __name__ == "__main__":
    # python pyrunq4/_build.py : compile next to the sources (from the root)
    os.chdir(ROOT)
    ffibuilder.compile(verbose="-v" in sys.argv)
