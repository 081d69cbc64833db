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
MIN_FORMAT_VERSION = lib.RQ4_MIN_FORMAT_VERSION
DEFAULT_CTX = lib.RQ4_DEFAULT_CTX
HEADER_SIZE = lib.RQ4_HEADER_SIZE
ENTRY_SIZE = lib.RQ4_ENTRY_SIZE
NAME_MAX = lib.RQ4_NAME_MAX
ALIGN = lib.RQ4_ALIGN
MAX_EOS = lib.RQ4_MAX_EOS
MIN_GROUP = lib.RQ4_MIN_GROUP
MAX_GROUP = lib.RQ4_MAX_GROUP
MAX_ENTRIES = lib.RQ4_MAX_ENTRIES
MAX_DIM = lib.RQ4_MAX_DIM
MAX_HIDDEN_DIM = lib.RQ4_MAX_HIDDEN_DIM
MAX_LAYERS = lib.RQ4_MAX_LAYERS
MAX_HEADS = lib.RQ4_MAX_HEADS
MAX_HEAD_DIM = lib.RQ4_MAX_HEAD_DIM
MAX_VOCAB = lib.RQ4_MAX_VOCAB
MAX_SEQ_LEN = lib.RQ4_MAX_SEQ_LEN
MAX_THREADS = lib.RQ4_MAX_THREADS

DEFAULT_REPEAT_LAST_N = lib.RQ4_DEFAULT_REPEAT_LAST_N
MAX_REPEAT_LAST_N = lib.RQ4_MAX_REPEAT_LAST_N
STOP_COUNT = lib.RQ4_STOP_COUNT
STOP_EOS = lib.RQ4_STOP_EOS
STOP_CONTEXT = lib.RQ4_STOP_CONTEXT

KV_TYPES = {"f32": lib.RQ4_KV_F32, "f16": lib.RQ4_KV_F16}
ROPE_NONE = lib.RQ4_ROPE_NONE
ROPE_LLAMA3 = lib.RQ4_ROPE_LLAMA3
TYPE_F32 = lib.RQ4_TYPE_F32
TYPE_Q4S = lib.RQ4_TYPE_Q4S
TYPE_Q4A = lib.RQ4_TYPE_Q4A
TYPE_Q8 = lib.RQ4_TYPE_Q8
TYPE_BLOB = lib.RQ4_TYPE_BLOB
TYPE_Q4S_R4 = lib.RQ4_TYPE_Q4S_R4
TYPE_Q4A_R4 = lib.RQ4_TYPE_Q4A_R4
TYPE_Q4T = lib.RQ4_TYPE_Q4T
Q4T_LEVELS = lib.RQ4_Q4T_LEVELS
FFN_ROTATION_NONE = lib.RQ4_FFN_ROTATION_NONE
FFN_ROTATION_HADAMARD = lib.RQ4_FFN_ROTATION_HADAMARD
MAX_ROTATION_FACTOR = lib.RQ4_MAX_ROTATION_FACTOR
INTERLEAVE = lib.RQ4_INTERLEAVE


# ---- exceptions (defined in errors.py, which loads nothing; re-exported here) --

from .errors import (ArgumentError, BnbError, ClosedError, ContextFullError,  # noqa: E402,F401
                     DataError, ExportError, FormatError, MemoryLimitError, OutOfMemoryError,
                     Runq4Error, Runq4IOError, StateMismatchError, ThreadError, TokenizerError,
                     UnsupportedError, UsageError, VersionError)

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
    lib.RQ4_ERR_MISMATCH: StateMismatchError,
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


# the KV cache type rq4_default_options picks, by its name in KV_TYPES
DEFAULT_KV_TYPE = next(name for name, v in KV_TYPES.items() if v == default_options()["kv_type"])


def open_model(path, n_ctx=0, n_threads=0, kv_type=None, float_activations=False,
               max_memory=0) -> Handle:
    """rq4_open with the given options (already validated by the caller;
    0 for n_ctx, n_threads, max_memory: the C default)."""
    opts = ffi.new("rq4_options *")
    lib.rq4_default_options(opts)
    opts.n_ctx = n_ctx
    opts.n_threads = n_threads
    if kv_type is not None:
        opts.kv_type = kv_type
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
    # what the model allocates (KV cache, buffers; the weights are mapped), for the GC
    cfg = lib.rq4_get_config(out[0])
    held = lib.rq4_memory_needed(out[0], cfg.n_ctx, cfg.kv_type)
    return Handle(ffi.gc(out[0], lib.rq4_close, size=held))


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


def save_state(h: Handle, path, tokens: list):
    """Writes the cache and its ids (len(tokens) == position) to path."""
    err = ffi.new("rq4_error *")
    ids = ffi.new("int32_t[]", tokens) if tokens else ffi.NULL
    _check(lib.rq4_save_state(h.ptr, os.fsencode(path), ids, len(tokens), err), err)


def load_state(h: Handle, path, cap: int) -> list:
    """Reads a saved state into the cache; returns its ids."""
    err = ffi.new("rq4_error *")
    ids = ffi.new("int32_t[]", max(cap, 1))
    n = ffi.new("int32_t *")
    _check(lib.rq4_load_state(h.ptr, os.fsencode(path), ids, cap, n, err), err)
    return list(ffi.unpack(ids, n[0]))


def blob(h: Handle, name: str):
    """A copy of the named blob as bytes, or None when the file has none."""
    size = ffi.new("uint64_t *")
    p = lib.rq4_blob(h.ptr, name.encode("utf-8"), size)
    if p == ffi.NULL:
        return None
    return bytes(ffi.buffer(p, size[0]))


# ---- sampling and decoding ---------------------------------------------------

def sampler_new(vocab_size: int, temperature: float, top_p: float, top_k: int, min_p: float,
                repeat_penalty: float, repeat_last_n: int, seed: int):
    """An owned rq4_sampler* (freed by the GC); a parameter C refuses (a
    temperature beyond float's range, say) raises ArgumentError."""
    p = ffi.new("rq4_sampling *")
    lib.rq4_default_sampling(p)
    p.temperature, p.top_p, p.top_k, p.min_p = temperature, top_p, top_k, min_p
    p.repeat_penalty, p.repeat_last_n, p.seed = repeat_penalty, repeat_last_n, seed
    out = ffi.new("rq4_sampler **")
    err = ffi.new("rq4_error *")
    _check(lib.rq4_sampler_new(vocab_size, p, out, err), err)
    return ffi.gc(out[0], lib.rq4_sampler_free, size=lib.rq4_sampler_memory(out[0]))


def sampler_accept(s, ids):
    """Appends ids (a sequence of ints) to the sampler's penalty history."""
    if len(ids):
        lib.rq4_sampler_accept(s, ffi.new("int32_t[]", list(ids)), len(ids))


def sample(s, logits: np.ndarray) -> int:
    """rq4_sample on a C-contiguous float32 array (used as scratch)."""
    assert logits.dtype == np.float32 and logits.flags.c_contiguous
    return int(lib.rq4_sample(s, ffi.from_buffer("float[]", logits, require_writable=True)))


class Decoder:
    """rq4_decode calls of one generation: the logits buffer (vocab floats,
    allocated once here) and the output arrays are reused by every call."""

    __slots__ = ("_h", "_s", "logits", "_buf", "_ids", "_cap", "_out", "_err")

    def __init__(self, h: Handle, sampler, vocab_size: int, cap: int):
        self._h, self._s, self._cap = h, sampler, cap
        self.logits = np.empty(vocab_size, dtype=np.float32)
        self._buf = ffi.from_buffer("float[]", self.logits, require_writable=True)
        self._ids = ffi.new("int32_t[]", cap)
        self._out = ffi.new("int32_t[2]")  # n_ids, stop
        self._err = ffi.new("rq4_error *")

    def step(self, pending: int, max_ids: int):
        """(the ids drawn, the rq4_stop); pending: an id to feed first, or -1
        when self.logits holds the last cached token's."""
        out = self._out
        status = lib.rq4_decode(self._h.ptr, self._s, self._buf, pending, min(max_ids, self._cap),
                                self._ids, out, out + 1, self._err)
        _check(status, self._err)
        return ffi.unpack(self._ids, out[0]), out[1]


# ---- the C tokenizer ---------------------------------------------------------

def tokenizer_from_model(h: Handle):
    """The model's tokenizer.json blob parsed by the C tokenizer (an owned
    rq4_tokenizer*, freed by the GC), or None when the file has no blob.
    Raises UnsupportedError for a tokenizer the C side does not implement and
    FormatError for a damaged one."""
    if blob_size(h, "tokenizer.json") is None:
        return None
    out = ffi.new("rq4_tokenizer **")
    err = ffi.new("rq4_error *")
    _check(lib.rq4_tokenizer_from_model(h.ptr, out, err), err)
    return ffi.gc(out[0], lib.rq4_tokenizer_free, size=lib.rq4_tokenizer_memory(out[0]))


def tokenizer_encode(t, text: str, special: bool) -> list:
    """rq4_tokenizer_encode of a str (valid Unicode, checked by the caller)."""
    data = text.encode("utf-8")
    cap = len(data) + 1  # at most one id per byte
    ids = ffi.new("int32_t[]", cap)
    n = ffi.new("int32_t *")
    err = ffi.new("rq4_error *")
    _check(lib.rq4_tokenizer_encode(t, data, len(data), 1 if special else 0, ids, cap, n, err),
           err)
    return ffi.unpack(ids, n[0])


def tokenizer_piece(t, token: int) -> bytes:
    """The bytes a token decodes to (b"" for an id the tokenizer does not know)."""
    n = ffi.new("uint32_t *")
    p = lib.rq4_tokenizer_piece(t, token, n)
    return b"" if p == ffi.NULL else ffi.unpack(p, n[0])


def tokenizer_is_special(t, token: int) -> bool:
    return bool(lib.rq4_tokenizer_is_special(t, token))


def tokenizer_size(t) -> int:
    """The number of ids the tokenizer knows."""
    return int(lib.rq4_tokenizer_size(t))


def release_blob(h: Handle, name: str):
    """rq4_release_blob: the named blob's pages leave the resident set until read again."""
    lib.rq4_release_blob(h.ptr, name.encode("utf-8"))


def blob_size(h: Handle, name: str):
    """The size of the named blob, or None when the file has none."""
    size = ffi.new("uint64_t *")
    p = lib.rq4_blob(h.ptr, name.encode("utf-8"), size)
    return None if p == ffi.NULL else int(size[0])


def memory_needed(h: Handle, n_ctx: int, kv_type: int) -> int:
    return int(lib.rq4_memory_needed(h.ptr, n_ctx, kv_type))


def kernel_name() -> str:
    return ffi.string(lib.rq4_kernel_name()).decode("ascii", "replace")


def public_functions():
    """Names of the functions declared in the cdef (for the API test)."""
    return [name for name in dir(lib) if name.startswith("rq4_")]
