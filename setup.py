"""Build of pyrunq4: the package, the exporter (pyrunq4.export, from export/)
and the cffi extension pyrunq4._runq4 (compiled from src/ by pyrunq4/_build.py).

    pip install .                      # portable build (SIMD picked at run time)
    RUNQ4_NATIVE=1 pip install .       # adds -march=native
    python setup.py build_ext --inplace   # development build next to the sources
"""

from setuptools import setup

setup(
    packages=["pyrunq4", "pyrunq4.export"],
    package_dir={"pyrunq4.export": "export"},
    cffi_modules=["pyrunq4/_build.py:ffibuilder"],
    zip_safe=False,
)
