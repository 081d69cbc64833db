"""Rq4Writer: streams tensors and blobs into an .rq4 file (docs/FORMAT.md).

    with Rq4Writer("model.rq4", header, max_entries=len(names)) as w:
        w.add_quantized("tok_embeddings", quantize_rtn(emb, 128))
        w.add_f32("norm", norm_weight)
        w.add_blob("tokenizer.json", tok_bytes)

Layout: the 256-byte header, then room for `max_entries` table entries, then
each entry's bytes at the next multiple of 64, written as they come (the model
is never held in memory). On a clean exit the table and the header (with the
final file_size and n_entries) are written over the reserved space, the file
is fsync'ed and renamed over `path` (os.replace, same directory, so the rename
is atomic). On any exception the temporary file is removed and `path` is left
untouched: a reader never sees a partial file.

The writer only ever replaces a regular file: a `path` that is a symbolic
link, a device node, a FIFO, a socket or a directory is refused (checked when
the writer starts and again just before the rename), as is a file in
`protect` (the export's own inputs, by device and inode, so hard links count).
`verify(tmp_path)`, if given, runs on the finished temporary file before the
rename; if it raises, nothing is replaced.
"""

import contextlib
import os
import stat
import tempfile

import numpy as np

from ..errors import ExportError
from .format import (ALIGN, ENTRY_STRUCT, HEADER_SIZE, MAX_ENTRIES, TYPE_BLOB, TYPE_F32, TYPE_IDS,
                     align, complete_header, encode_name, pack_header, validate_model_header)
from .quant import _row_chunks, pack_parts

_ZEROS = bytes(ALIGN)


class OutputPathError(ExportError, ValueError):
    """The output path is not something the writer may replace."""


def file_identity(path):
    """(st_dev, st_ino) of path, following symbolic links; None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output_path(path, protect=()):
    """Raises OutputPathError unless path is absent or a regular file (not a
    symbolic link) outside `protect`, a set of file_identity() values."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputPathError(f"{path}: {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputPathError(f"{path}: is a symbolic link; not replaced (give the path of a regular file)")
    if stat.S_ISDIR(st.st_mode):
        raise OutputPathError(f"{path}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise OutputPathError(f"{path}: is not a regular file (a device, FIFO or socket); not replaced")
    if (st.st_dev, st.st_ino) in set(protect):
        raise OutputPathError(f"{path}: is one of the export's input files; not replaced")


class Rq4Writer:
    def __init__(self, path, header, max_entries, protect=(), verify=None):
        """header: the model fields of FORMAT.md (dim, hidden_dim, ..., eos_ids as a list,
        group_size); magic, version, sizes, n_entries and table_offset are filled in.
        protect: file identities never to replace; verify(tmp_path): a check of the
        finished file before the rename."""
        self.protect = set(protect)
        self.verify = verify
        check_output_path(path, self.protect)
        self.header = complete_header(header)
        validate_model_header(self.header)
        if not 1 <= max_entries <= MAX_ENTRIES:
            raise ValueError(f"max_entries = {max_entries}: must be in 1..{MAX_ENTRIES}")
        self.path = os.fspath(path)
        self.max_entries = max_entries
        self.entries = []          # (name bytes, type, group_size, rows, cols, offset, size)
        self._names = set()
        self._pos = 0
        self._file = None
        self._tmp = None
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, self._tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(self.path) + ".",
                                         suffix=".tmp")
        try:
            self._file = os.fdopen(fd, "wb")
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a new file normally gets 0666 & ~umask
            # header + reserved table, zero until close()
            self._write_at(0, bytes(HEADER_SIZE + max_entries * ENTRY_STRUCT.size))
        except BaseException:
            self.abort()
            raise

    # ---- context manager ----
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # ---- entries ----
    def add_f32(self, name, arr):
        """A float32 tensor; a 1-D array (a norm weight) is stored as 1 x n."""
        a = np.asarray(arr)
        if a.ndim == 1:
            a = a.reshape(1, -1)
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"{name}: F32 entries are non-empty 1-D or 2-D arrays, got shape {a.shape}")
        rows, cols = a.shape
        with self._entry(name, TYPE_F32, 0, rows, cols, rows * cols * 4) as off:
            for r0, r1 in _row_chunks(rows, cols):
                c = np.ascontiguousarray(a[r0:r1], "<f4")
                if not np.isfinite(c).all():
                    raise ValueError(f"{name}: non-finite value (NaN or Inf)")
                self._write_at(off + r0 * cols * 4, c)

    def add_quantized(self, name, qt):
        """A QuantizedTensor (quant.py), packed as FORMAT.md says."""
        size, parts = pack_parts(qt)  # validates qt
        rows, cols = qt.q.shape
        with self._entry(name, TYPE_IDS[qt.file_type], qt.group_size, rows, cols, size) as off:
            for rel, a in parts:
                self._write_at(off + rel, a)

    def add_blob(self, name, data):
        """Raw bytes (a tokenizer JSON, a chat template, ...)."""
        data = bytes(data)
        with self._entry(name, TYPE_BLOB, 0, 1, 0, len(data)) as off:
            self._write_at(off, data)

    # ---- finishing ----
    def close(self):
        """Writes table and header, fsyncs, renames over path. Idempotent."""
        if self._file is None:
            return
        try:
            if not self.entries:
                raise ValueError("an .rq4 file needs at least one entry")
            file_size = self._pos
            table = b"".join(ENTRY_STRUCT.pack(*e) for e in self.entries)
            self._write_at(HEADER_SIZE, table)
            self._write_at(0, pack_header(self.header, file_size, len(self.entries)))
            self._file.truncate(file_size)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            if self.verify is not None:
                self.verify(self._tmp)
            check_output_path(self.path, self.protect)  # again: it may have changed meanwhile
            os.replace(self._tmp, self.path)
            self._tmp = None
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except BaseException:
            self.abort()
            raise

    def abort(self):
        """Closes and removes the temporary file; `path` is not touched. Idempotent."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None

    # ---- internals ----
    @contextlib.contextmanager
    def _entry(self, name, type_id, group_size, rows, cols, size):
        """Checks the name, yields the entry's 64-aligned offset for the caller to
        write `size` bytes at, then records the table entry. Any error aborts."""
        if self._file is None:
            raise ValueError("the writer is closed")
        try:
            nb = encode_name(name)
            if name in self._names:
                raise ValueError(f"duplicate entry name {name!r}")
            if len(self.entries) >= self.max_entries:
                raise ValueError(f"more than max_entries = {self.max_entries} entries")
            off = align(self._pos)
            yield off
            if self._pos != off + size:
                raise AssertionError(f"{name}: wrote up to {self._pos}, expected {off + size}")
        except BaseException:
            self.abort()
            raise
        self.entries.append((nb, type_id, group_size, rows, cols, off, size))
        self._names.add(name)

    def _write_at(self, off, data):
        """Writes data at off (zero-filling any gap) and advances the end position."""
        f = self._file
        if off > self._pos:
            f.seek(self._pos)
            f.write(bytes(off - self._pos))
        else:
            f.seek(off)
        mv = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
        f.write(mv)
        self._pos = max(self._pos, off + len(mv))


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
