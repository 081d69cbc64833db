"""The only module that touches the compiled extension (`lib` and `ffi`).

Everything above this layer (model.py, generate.py, ...) works with Python
objects: an opaque `Handle`, numpy arrays, str and int. Errors from C come
back as an rq4_status plus a one-line message and are raised here as a
`Runq4Error` subclass chosen by the status code (the codes are read from
`lib`, never retyped).

GIL: pyrunq4._runq4 is built in cffi's API (out-of-line) mode, and cffi
releases the GIL around every call into C unless a function is declared
otherwise (the generated pyrunq4/_runq4.c wraps each call in
Py_BEGIN_ALLOW_THREADS / Py_END_ALLOW_THREADS), so a long rq4_forward does not
block other Python threads, and two Models really compute in parallel. One
model is still not safe from two threads at once: model.py serialises calls on
one Model with a lock.
"""

from __future__ import annotations

import os

import numpy as np

from ._runq4 import ffi, lib

# ---- constants, from C -------------------------------------------------------

FORMAT_VERSION = lib.RQ4_FORMAT_VERSION
DEFAULT_CTX = lib.RQ4_DEFAULT_CTX
HEADER_SIZE = lib.RQ4_HEADER_SIZE
ENTRY_SIZE = lib.RQ4_ENTRY_SIZE
NAME_MAX = lib.RQ4_NAME_MAX
ALIGN = lib.RQ4_ALIGN
MAX_EOS = lib.RQ4_MAX_EOS
MIN_GROUP = lib.RQ4_MIN_GROUP
MAX_THREADS = lib.RQ4_MAX_THREADS

KV_TYPES = {"f32": lib.RQ4_KV_F32, "f16": lib.RQ4_KV_F16}
ROPE_NONE = lib.RQ4_ROPE_NONE
ROPE_LLAMA3 = lib.RQ4_ROPE_LLAMA3
TYPE_F32 = lib.RQ4_TYPE_F32
TYPE_Q4S = lib.RQ4_TYPE_Q4S
TYPE_Q4A = lib.RQ4_TYPE_Q4A
TYPE_Q8 = lib.RQ4_TYPE_Q8
TYPE_BLOB = lib.RQ4_TYPE_BLOB


# ---- exceptions (defined in errors.py, which loads nothing; re-exported here) --

from .errors import (ArgumentError, BnbError, ClosedError, ContextFullError,  # noqa: E402,F401
                     DataError, ExportError, FormatError, MemoryLimitError, OutOfMemoryError,
                     Runq4Error, Runq4IOError, ThreadError, TokenizerError, UnsupportedError,
                     UsageError, VersionError)

_ERRORS = {
    lib.RQ4_ERR_IO: Runq4IOError,
    lib.RQ4_ERR_FORMAT: FormatError,
    lib.RQ4_ERR_VERSION: VersionError,
    lib.RQ4_ERR_UNSUPPORTED: UnsupportedError,
    lib.RQ4_ERR_NOMEM: OutOfMemoryError,
    lib.RQ4_ERR_ARG: ArgumentError,
    lib.RQ4_ERR_CONTEXT_FULL: ContextFullError,
    lib.RQ4_ERR_MEMORY_LIMIT: MemoryLimitError,
    lib.RQ4_ERR_THREAD: ThreadError,
}


def strerror(code: int) -> str:
    """The static description of a status code."""
    return ffi.string(lib.rq4_strerror(code)).decode("utf-8", "replace")


def error_for(code: int, message: str = "") -> Runq4Error:
    """The exception object for a status code."""
    cls = _ERRORS.get(code, Runq4Error)
    return cls(message or strerror(code), code)


def _check(status, err):
    if status != lib.RQ4_OK:
        msg = ffi.string(err.message).decode("utf-8", "replace")
        code = err.code if err.code != lib.RQ4_OK else status
        raise error_for(int(code), msg)


# ---- the handle ---------------------------------------------------------------

class Handle:
    """Owns one rq4_model*. The pointer is wrapped once with
    ffi.gc(ptr, lib.rq4_close), so a handle that is dropped without close()
    is still freed; close() frees it now (ffi.release runs the destructor
    immediately) and is idempotent."""

    __slots__ = ("_ptr",)

    def __init__(self, ptr):
        self._ptr = ptr

    @property
    def ptr(self):
        if self._ptr is None:
            raise ClosedError("the model is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self):
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            ffi.release(ptr)  # calls rq4_close exactly once


def default_options() -> dict:
    opts = ffi.new("rq4_options *")
    lib.rq4_default_options(opts)
    return {name: getattr(opts, name) for name, _ in ffi.typeof("rq4_options").fields}


def open_model(path, n_ctx=0, n_threads=0, kv_type=None, float_activations=False,
               max_memory=0) -> Handle:
    """rq4_open with the given options (already validated by the caller;
    0 for n_ctx, n_threads, max_memory: the C default)."""
    opts = ffi.new("rq4_options *")
    lib.rq4_default_options(opts)
    opts.n_ctx = n_ctx
    opts.n_threads = n_threads
    opts.kv_type = lib.RQ4_KV_F32 if kv_type is None else kv_type
    opts.float_activations = 1 if float_activations else 0
    opts.max_memory = max_memory
    out = ffi.new("rq4_model **")
    err = ffi.new("rq4_error *")
    status = lib.rq4_open(os.fsencode(path), opts, out, err)
    if status != lib.RQ4_OK:
        if out[0] != ffi.NULL:  # the API says NULL on failure; be safe anyway
            lib.rq4_close(out[0])
        msg = ffi.string(err.message).decode("utf-8", "replace") or strerror(status)
        shown = os.fsdecode(path)
        if shown not in msg:  # name the file in the one-line message
            msg = f"{shown}: {msg}"
        raise error_for(int(status), msg)
    if out[0] == ffi.NULL:
        raise Runq4Error("rq4_open returned no model", status)
    return Handle(ffi.gc(out[0], lib.rq4_close))


def config(h: Handle) -> dict:
    """rq4_config as a dict of Python ints/floats (eos_ids: the first n_eos)."""
    c = lib.rq4_get_config(h.ptr)
    d = {}
    for name, field in ffi.typeof("rq4_config").fields:
        v = getattr(c, name)
        if field.type.kind == "array":
            v = tuple(v)
        d[name] = v
    d["eos_ids"] = tuple(d["eos_ids"][: d["n_eos"]])
    return d


def forward(h: Handle, tokens: np.ndarray, logits, all_logits: bool):
    """rq4_forward on a C-contiguous int32 array; `logits` is None or a
    C-contiguous float32 array C writes into in place (zero copy: cffi passes
    a pointer to the numpy buffer, valid for the duration of the call)."""
    assert tokens.dtype == np.int32 and tokens.flags.c_contiguous
    err = ffi.new("rq4_error *")
    tok = ffi.from_buffer("int32_t[]", tokens)
    if logits is None:
        out = ffi.NULL
    else:
        assert logits.dtype == np.float32 and logits.flags.c_contiguous
        out = ffi.from_buffer("float[]", logits, require_writable=True)
    status = lib.rq4_forward(h.ptr, tok, len(tokens), out, 1 if all_logits else 0, err)
    _check(status, err)


def position(h: Handle) -> int:
    return int(lib.rq4_position(h.ptr))


def rewind(h: Handle, pos: int):
    err = ffi.new("rq4_error *")
    _check(lib.rq4_rewind(h.ptr, pos, err), err)


def blob(h: Handle, name: str):
    """A copy of the named blob as bytes, or None when the file has none."""
    size = ffi.new("uint64_t *")
    p = lib.rq4_blob(h.ptr, name.encode("utf-8"), size)
    if p == ffi.NULL:
        return None
    return bytes(ffi.buffer(p, size[0]))


def memory_needed(h: Handle, n_ctx: int, kv_type: int) -> int:
    return int(lib.rq4_memory_needed(h.ptr, n_ctx, kv_type))


def kernel_name() -> str:
    return ffi.string(lib.rq4_kernel_name()).decode("ascii", "replace")


def public_functions():
    """Names of the functions declared in the cdef (for the API test)."""
    return [name for name in dir(lib) if name.startswith("rq4_")]
