"""pyrunq4: int4 inference for Llama-family models (.rq4 files), a C engine
bound with cffi.

    from pyrunq4 import Model
    with Model("model.rq4") as m:
        print(m.generate("Once upon a time", max_new_tokens=32))

Model is loaded lazily, so pyrunq4.errors and pyrunq4.reference (pure numpy)
work without the compiled extension.
"""

from .errors import *  # noqa: F401,F403  (every error derives from Runq4Error)
from .errors import __all__ as _ERRORS

_LAZY = {
    "Model": "model", "Config": "model", "Sampler": "sampling",
    "FORMAT_VERSION": "_lib", "kernel_name": "_lib",
}

__all__ = sorted(list(_LAZY) + _ERRORS + ["__version__"])


def _version():
    """The installed distribution's version (setup.py reads RQ4_VERSION from
    src/runq4.h), or, in a checkout that is not installed, rq4_version()."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pyrunq4")
    except PackageNotFoundError:
        from ._runq4 import ffi, lib
        return ffi.string(lib.rq4_version()).decode("ascii")


def __getattr__(name):
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyrunq4' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
