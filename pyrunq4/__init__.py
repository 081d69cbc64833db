"""pyrunq4: int4 inference for Llama-family models (.rq4 files), a C engine
bound with cffi.

    from pyrunq4 import Model
    with Model("model.rq4") as m:
        print(m.generate("Once upon a time", max_new_tokens=32))

Model and the exceptions are loaded lazily, so pyrunq4.reference (pure numpy)
and pyrunq4.export work without the compiled extension.
"""

__version__ = "0.1.0"

_LAZY = {
    "Model": "model", "Config": "model", "Sampler": "sampling",
    "Runq4Error": "_lib", "Runq4IOError": "_lib", "FormatError": "_lib",
    "VersionError": "_lib", "UnsupportedError": "_lib", "OutOfMemoryError": "_lib",
    "ArgumentError": "_lib", "ContextFullError": "_lib", "MemoryLimitError": "_lib",
    "ThreadError": "_lib", "ClosedError": "_lib", "FORMAT_VERSION": "_lib",
    "kernel_name": "_lib",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyrunq4' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
