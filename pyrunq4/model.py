"""The Python API: Model (open, logits, feed, generate, stream, chat).

    with Model("smollm2.rq4", n_threads=4) as m:
        print(m.generate("Once upon a time", max_new_tokens=32))
        reply = m.chat([{"role": "user", "content": "Hi!"}])

Arguments are validated here, before anything reaches C; C errors arrive as
Runq4Error subclasses from pyrunq4._lib (the only module touching the
extension).

Threads: one lock serialises every call on one Model, so a Model shared by
several threads is safe; generate() holds it for the whole generation.
stream()/chat_stream() take it per step (not while the caller handles a
yielded piece) and remember which tokens they left in the cache: if another
call changed the cache in between, the stream brings it back (reusing the
longest common prefix) before continuing, so its result does not change.
Two Models are independent and compute in parallel (C runs without the GIL).

Logits: every call returns a new float32 numpy array that Python allocates
and C fills in place through ffi.from_buffer (no copy). The pointer handed to
C lives only for the duration of that call; the array is then the caller's,
and the Model never writes to it again.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Iterator, Sequence

import numpy as np

from . import _lib
from .chat_template import ChatTemplate, chat_ids
from .checks import INT32_MAX, UINT64_MAX, check_int, check_max_new_tokens, check_threads
from .errors import (ArgumentError, ClosedError, ContextFullError, FormatError, Runq4Error,
                     Runq4IOError)
from .progress import progress_bar
from .sampling import Sampler
from .streaming import PieceText, StopStrings, TokenText, new_stats, timed

__all__ = ["Config", "Model"]

PROMPT_CHUNK = 256  # tokens per step of a prompt fed under a progress bar
# ids per rq4_decode call: stream() shows each token as it comes (one per
# call, as the binary); generate() and chat(), which show nothing before the
# end, take several per call
STREAM_CHUNK = 1
GENERATE_CHUNK = 16


@dataclasses.dataclass(frozen=True)
class Config:
    """rq4_config: the file's hyper-parameters plus the open-time choices
    (n_ctx, n_threads, kv_type). eos_ids holds the first n_eos ids."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int
    tied_embeddings: int
    bos_id: int
    n_eos: int
    eos_ids: tuple
    rope_scaling: int
    rope_original_max_pos: int
    norm_eps: float
    rope_theta: float
    rope_factor: float
    rope_low_freq_factor: float
    rope_high_freq_factor: float
    group_size: int
    ffn_rotation: int
    n_ctx: int
    n_threads: int
    kv_type: int


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    m = min(len(a), len(b))
    if m == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:m], dtype=np.int64) != np.asarray(b[:m], dtype=np.int64))[0]
    return int(diff[0]) if diff.size else m


def _tokenizer_call(what, fn, *args, **kwargs):
    """Calls the tokenizers library; a failure of the file's tokenizer, even a
    Rust panic (PanicException, a BaseException), is a FormatError."""
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as e:  # noqa: B902 (PanicException)
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise FormatError(f"the model's tokenizer failed to {what}: {msg}") from None


class Model:
    """An .rq4 model opened with the C engine.

    Model(path, n_ctx=None, n_threads=None, kv_type="f16", max_memory=None,
          float_activations=False)

    n_ctx: KV cache length (None: 4096, or the model's max_seq_len if smaller).
    n_threads: worker threads, 1 to RQ4_MAX_THREADS (None: the C default, the
        CPUs this process may use, at most RQ4_MAX_THREADS).
    kv_type: "f16" or "f32" KV cache (the default: the library's, f16).
    max_memory: bytes; opening fails with MemoryLimitError, before allocating,
        if weights + KV cache + buffers would exceed it (None: no limit).
    float_activations: reference mode (weights dequantized, activations kept
        float; slow, for tests) instead of int8 activations.
    """

    def __init__(self, path, n_ctx=None, n_threads=None, kv_type=_lib.DEFAULT_KV_TYPE, max_memory=None,
                 float_activations=False):
        self._h = None
        self._lock = threading.RLock()
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise ArgumentError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        path = os.fsdecode(os.fspath(path))
        n_ctx = check_int("n_ctx", n_ctx, 1, INT32_MAX, allow_none=True)
        n_threads = check_threads(n_threads)
        max_memory = check_int("max_memory", max_memory, 1, UINT64_MAX, allow_none=True)
        if kv_type not in _lib.KV_TYPES:
            raise ArgumentError(f"kv_type must be one of {sorted(_lib.KV_TYPES)}, got {kv_type!r}")
        try:
            os.stat(path)
        except FileNotFoundError:
            raise Runq4IOError(f"{path}: no such file", _lib.lib.RQ4_ERR_IO) from None
        except OSError as e:  # a loop of symbolic links, no permission to search a folder...
            raise Runq4IOError(f"{path}: {e.strerror or 'cannot open'}", _lib.lib.RQ4_ERR_IO) from None
        if os.path.isdir(path):
            raise Runq4IOError(f"{path}: is a directory", _lib.lib.RQ4_ERR_IO)
        self.path = path
        self._h = _lib.open_model(path, n_ctx=n_ctx or 0,
                                  n_threads=n_threads or 0,
                                  kv_type=_lib.KV_TYPES[kv_type],
                                  float_activations=bool(float_activations),
                                  max_memory=max_memory or 0)
        self.config = Config(**_lib.config(self._h))
        self.float_activations = bool(float_activations)

        # Text <-> ids: the C tokenizer (the binary's; a few MB for Llama 3's
        # 128k tokens), or, for a tokenizer it does not implement, the
        # tokenizers library (about ten times the memory), loaded here so a
        # damaged blob fails at open either way.
        self._ctok = None
        self._hf_tokenizer = None
        try:
            self._ctok = _lib.tokenizer_from_model(self._h)
            _lib.release_blob(self._h, "tokenizer.json")  # the tokenizer holds its own copy
        except Runq4Error:
            self._load_hf_tokenizer()
        tmpl = _lib.blob(self._h, "chat_template")
        try:
            self.chat_template = tmpl.decode("utf-8") if tmpl is not None else None
        except UnicodeDecodeError as e:
            self.close()
            raise FormatError(f"{path}: the chat_template blob is not UTF-8: {e}") from None
        self._template = None
        self._vocab_cache = None
        self._tokens = []      # the ids in the KV cache, in order (== position)
        self._epoch = 0        # bumped by every change to the cache
        self.last_stats = None  # timings of the last generate/stream/chat

    # ---- lifetime --------------------------------------------------------------

    def close(self):
        """Frees the model now (idempotent). Using it afterwards raises ClosedError."""
        with self._lock:
            if self._h is not None:
                self._h.close()
            self._tokens = []
            self._ctok = self._hf_tokenizer = None

    @property
    def closed(self) -> bool:
        return self._h is None or self._h.closed

    def __enter__(self):
        self._handle()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"position={len(self._tokens)}"
        return f"<pyrunq4.Model {self.path!r} {state}>"

    def _handle(self):
        if self._h is None or self._h.closed:
            raise ClosedError("the model is closed")
        return self._h

    # ---- properties --------------------------------------------------------------

    @property
    def kernel(self) -> str:
        """The matmul kernel in use ("scalar", "avx2", ...)."""
        self._handle()
        return _lib.kernel_name()

    @property
    def position(self) -> int:
        """Number of tokens in the KV cache."""
        with self._lock:
            return _lib.position(self._handle())

    @property
    def tokens(self) -> tuple:
        """The ids in the KV cache."""
        with self._lock:
            self._handle()
            return tuple(self._tokens)

    def memory_needed(self, n_ctx=None, kv_type=None) -> int:
        """Bytes rq4_open needs besides the mapped file for this context."""
        with self._lock:
            h = self._handle()
            n_ctx = check_int("n_ctx", self.config.n_ctx if n_ctx is None else n_ctx,
                               1, INT32_MAX)
            kv = self.config.kv_type if kv_type is None else _lib.KV_TYPES.get(kv_type)
            if kv is None:
                raise ArgumentError(f"kv_type must be one of {sorted(_lib.KV_TYPES)}")
            return _lib.memory_needed(h, n_ctx, kv)

    # ---- tokens ------------------------------------------------------------------

    def _load_hf_tokenizer(self):
        """The tokenizers library's Tokenizer of the blob (None without one)."""
        if self._hf_tokenizer is None:
            text = self.tokenizer_json
            if text is not None:
                from tokenizers import Tokenizer
                try:
                    tok = _tokenizer_call("load", Tokenizer.from_str, text)
                    # lengths are the engine's business: a file's truncation or
                    # padding settings would cut or pad every prompt (or panic)
                    tok.no_truncation()
                    tok.no_padding()
                    _tokenizer_call("encode", tok.encode, "Hi <|x|> 1", add_special_tokens=False)
                except FormatError as e:
                    self.close()
                    raise FormatError(f"{self.path}: bad tokenizer.json blob: {e}") from None
                self._hf_tokenizer = tok
        return self._hf_tokenizer

    @property
    def tokenizer_json(self):
        """The file's tokenizer.json blob as text (None without one)."""
        with self._lock:
            tok = _lib.blob(self._handle(), "tokenizer.json")
        if tok is None:
            return None
        try:
            return tok.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{self.path}: bad tokenizer.json blob: {e}") from None

    @property
    def tokenizer(self):
        """The tokenizers library's Tokenizer of the file (loaded on first use
        when the C tokenizer does the model's own work), or None."""
        with self._lock:
            self._handle()
            return self._load_hf_tokenizer()

    def _tok(self):
        """Raises unless the model can tokenize."""
        self._handle()
        if self._ctok is None and self._hf_tokenizer is None:
            raise Runq4Error(f"{self.path}: the file has no tokenizer.json blob")

    def _text_stream(self):
        """A fresh TokenText-like object: step(token) -> the text it completes."""
        if self._ctok is not None:
            ctok = self._ctok
            return PieceText(lambda token: _lib.tokenizer_piece(ctok, token))
        return TokenText(self._hf_tokenizer)

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list:
        """Ids of `text`. add_bos: prepend config.bos_id (if the model has one).
        special: parse special-token text such as "<|eot_id|>" as the special
        token (True) or as plain text (False)."""
        if not isinstance(text, str):
            raise ArgumentError(f"text must be a str, got {type(text).__name__}")
        try:  # lone surrogates (undecodable bytes from argv/stdin): tokenizers raised TypeError
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ArgumentError(f"text is not valid Unicode: {e.reason} at index {e.start} "
                                f"(invalid UTF-8 in the input?)") from None
        with self._lock:
            self._tok()
            if self._ctok is not None:
                ids = _lib.tokenizer_encode(self._ctok, text, special)
            else:
                tok = self._hf_tokenizer
                saved = tok.encode_special_tokens
                try:
                    tok.encode_special_tokens = not special
                    ids = _tokenizer_call("encode", tok.encode, text, add_special_tokens=False).ids
                finally:
                    tok.encode_special_tokens = saved
        if add_bos and self.config.bos_id >= 0:
            ids = [self.config.bos_id] + ids
        return ids

    def detokenize(self, ids, skip_special: bool = False) -> str:
        """The text of a sequence of ids."""
        arr = self._ids(ids, allow_empty=True).tolist()
        with self._lock:
            self._tok()
            if self._ctok is None:
                return _tokenizer_call("decode", self._hf_tokenizer.decode, arr, skip_special_tokens=skip_special)
            ctok = self._ctok
            if skip_special:
                arr = [t for t in arr if not _lib.tokenizer_is_special(ctok, t)]
            return b"".join(_lib.tokenizer_piece(ctok, t) for t in arr).decode("utf-8", "replace")

    def _ids(self, token_ids, allow_empty=False) -> np.ndarray:
        """token_ids as a C-contiguous int32 array, checked against the vocab."""
        if isinstance(token_ids, (str, bytes)):
            raise ArgumentError("token_ids must be a sequence of ints, not text (use tokenize())")
        if isinstance(token_ids, (int, np.integer)) and not isinstance(token_ids, bool):
            token_ids = [token_ids]
        try:
            arr = np.asarray(token_ids)
        except (ValueError, TypeError, OverflowError) as e:
            raise ArgumentError(f"token_ids must be a sequence of ints: {e}") from None
        if arr.ndim != 1:
            raise ArgumentError(f"token_ids must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            if allow_empty:
                return arr.astype(np.int32)
            raise ArgumentError("token_ids is empty")
        if arr.dtype == object:  # Python ints (of any size) or junk
            items = arr.tolist()
            if not all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
                       for x in items):
                raise ArgumentError("token_ids must be integers")
            bad = [x for x in items if not -2**31 <= x < 2**31]
            if bad:
                raise ArgumentError(f"token id {bad[0]} is outside the int32 range")
            arr = np.array(items, dtype=np.int64)
        if arr.dtype.kind not in "iu":
            raise ArgumentError(f"token_ids must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        vocab = self.config.vocab_size
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise ArgumentError(f"token id {bad} is outside the vocabulary [0, {vocab})")
        return np.ascontiguousarray(arr, dtype=np.int32)

    # ---- evaluation ----------------------------------------------------------------

    def _forward(self, ids: np.ndarray, all_logits: bool, want_logits: bool = True, out=None):
        """Runs ids from the current position; keeps self._tokens in step.
        out: a (vocab,) float32 array for the last token's logits (else a new one)."""
        h = self._handle()
        n = len(ids)
        if len(self._tokens) + n > self.config.n_ctx:
            raise ContextFullError(
                f"{n} tokens do not fit in the context: {len(self._tokens)} of "
                f"{self.config.n_ctx} positions are used")
        vocab = self.config.vocab_size
        if want_logits and out is None:
            out = np.empty((n, vocab) if all_logits else (vocab,), dtype=np.float32)
        self._epoch += 1
        try:
            _lib.forward(h, ids, out, all_logits)
            self._tokens.extend(ids.tolist())
        finally:
            pos = _lib.position(h)
            if pos != len(self._tokens):  # a failure part-way: trust C's position
                self._tokens = (self._tokens + ids.tolist())[:pos]
        return out

    def logits(self, token_ids) -> np.ndarray:
        """float32 (len, vocab) logits of token_ids evaluated from an empty
        cache (the cache is reset first and holds token_ids afterwards)."""
        with self._lock:
            ids = self._ids(token_ids)
            self._handle()
            if len(ids) > self.config.n_ctx:
                raise ContextFullError(f"{len(ids)} tokens do not fit in the context "
                                       f"of {self.config.n_ctx}")
            self._rewind(0)
            return self._forward(ids, True)

    def feed(self, token_ids, all_logits: bool = False, out=None) -> np.ndarray:
        """Appends token_ids to the cache (continuing from the current
        position) and returns float32 logits: (vocab,) for the last token, or
        (len, vocab) with all_logits. out: a writable C-contiguous float32
        array of exactly that shape to fill and return instead of a new one
        (a buffer reused across calls)."""
        with self._lock:
            ids = self._ids(token_ids)
            if out is not None:
                shape = (len(ids), self.config.vocab_size) if all_logits else (self.config.vocab_size,)
                if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape
                        and out.flags.c_contiguous and out.flags.writeable):
                    raise ArgumentError(f"out must be a writable C-contiguous float32 array of shape {shape}")
            return self._forward(ids, bool(all_logits), out=out)

    def _rewind(self, n):
        _lib.rewind(self._handle(), n)
        del self._tokens[n:]
        self._epoch += 1

    def rewind(self, n: int):
        """Keeps the first n cached tokens and forgets the rest."""
        with self._lock:
            pos = _lib.position(self._handle())
            n = check_int("n", n, 0, pos)
            self._rewind(n)

    def reset(self):
        """Empties the cache."""
        self.rewind(0)

    def save_state(self, path):
        """Writes the KV cache up to the position and its ids to path
        (atomically: path is the old file or the whole new one). The file
        only loads into this model file with the same n_ctx and kv_type."""
        with self._lock:
            _lib.save_state(self._handle(), path, self._tokens)

    def load_state(self, path):
        """Restores a cache save_state wrote: position and tokens come back,
        so stream/generate reuse the common prefix of the next prompt. A
        missing, corrupt or foreign file raises a Runq4Error (StateMismatchError
        for another model or settings) and leaves the cache as it was."""
        with self._lock:
            tokens = _lib.load_state(self._handle(), path, self.config.n_ctx)
            self._tokens = tokens
            self._epoch += 1

    def _sync(self, seq: list, progress: bool = False, out=None) -> np.ndarray:
        """Makes the cache hold exactly seq, reusing the longest common prefix
        with what is cached, and returns the last token's (vocab,) logits.
        progress: feed a long remainder in chunks under a progress bar (a
        terminal only; chunked and whole feeds give the same logits). out: as
        in _forward. Caller holds the lock."""
        self._handle()
        if len(seq) > self.config.n_ctx:
            raise ContextFullError(f"{len(seq)} tokens do not fit in the context "
                                   f"of {self.config.n_ctx}")
        n = _common_prefix(self._tokens, seq)
        n = min(n, len(seq) - 1)  # refeed at least the last token, for its logits
        if n < len(self._tokens):
            self._rewind(n)
        rest = np.asarray(seq[n:], dtype=np.int32)
        if not progress or len(rest) <= PROMPT_CHUNK:
            return self._forward(rest, False, out=out)
        with progress_bar(total=len(rest), desc="prompt", unit="tok") as bar:
            for i in range(0, len(rest), PROMPT_CHUNK):
                logits = self._forward(rest[i:i + PROMPT_CHUNK], False, out=out)
                bar.update(len(rest[i:i + PROMPT_CHUNK]))
        return logits

    # ---- generation ------------------------------------------------------------------

    def _prompt_ids(self, prompt) -> list:
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_bos=True, special=False)
        else:
            ids = self._ids(prompt, allow_empty=True).tolist()
        if not ids:
            raise ArgumentError("the prompt is empty (and the model has no BOS token)")
        return ids

    def stream(self, prompt, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0,
               seed=None, stop=None, progress=False, json_schema=None, *, min_p=0.0,
               repeat_penalty=1.0, repeat_last_n=_lib.DEFAULT_REPEAT_LAST_N) -> Iterator[str]:
        """Yields the new text piece by piece as it is decoded.

        prompt: text (tokenized with BOS, special-token text kept as text) or
        a sequence of token ids. Generation ends at one of config.eos_ids (not
        part of the text), at the first `stop` string (str or list of str; the
        text ends before it), after max_new_tokens tokens (None: no limit), or, cleanly, when
        the context is full (a prompt that does not fit raises
        ContextFullError). The bytes of a UTF-8 character split across tokens
        are held until the character is complete. Arguments are checked when
        stream() is called, not at the first next(). progress: a progress bar
        on stderr (a terminal only) while a long prompt is fed.

        Sampling (pyrunq4.sampling, the binary's C sampler): temperature,
        top_p, top_k, min_p, a repetition penalty over the last repeat_last_n
        ids of the context, seed. The loop runs in C (rq4_decode); Python
        handles the text of each token.

        json_schema: a JSON schema (dict); the text is then a JSON document
        valid against it, constrained token by token (pyrunq4.structured,
        needs llguidance; the mask is applied in Python before each draw); it
        ends when the document is complete."""
        with self._lock:
            self._tok()
            ids = self._prompt_ids(prompt)
            return self._start(ids, max_new_tokens, dict(
                temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, min_p=min_p,
                repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n),
                stop, progress, json_schema, STREAM_CHUNK)

    def generate(self, prompt, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0,
                 seed=None, stop=None, progress=False, json_schema=None, *, min_p=0.0,
                 repeat_penalty=1.0, repeat_last_n=_lib.DEFAULT_REPEAT_LAST_N) -> str:
        """The new text (see stream(); generate is "".join(stream(...)), run
        several tokens per C call)."""
        with self._lock:
            self._tok()
            ids = self._prompt_ids(prompt)
            return "".join(self._start(ids, max_new_tokens, dict(
                temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, min_p=min_p,
                repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n),
                stop, progress, json_schema, GENERATE_CHUNK))

    def _start(self, ids, max_new_tokens, sampling, stop, progress, json_schema, chunk):
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        if json_schema is not None:
            if stop is not None:
                raise ArgumentError("stop strings do not apply with json_schema "
                                    "(the document's end is the grammar's)")
            from .structured import json_stream
            return json_stream(self, ids, json_schema, max_new_tokens, **sampling)
        sampler = Sampler(**sampling, vocab_size=self.config.vocab_size)
        if stop is None:
            stops = []
        elif isinstance(stop, str):
            stops = [stop]
        else:
            try:
                stops = list(stop)
            except TypeError:
                raise ArgumentError(f"stop must be a str or a list of str, got {stop!r}") from None
        if not all(isinstance(s, str) and s for s in stops):
            raise ArgumentError("stop must be a non-empty str or a list of non-empty str")
        if len(ids) > self.config.n_ctx:
            raise ContextFullError(f"the prompt's {len(ids)} tokens do not fit in the "
                                   f"context of {self.config.n_ctx}")
        return self._run(list(ids), max_new_tokens, sampler, stops, progress, chunk)

    def _run(self, seq, max_new_tokens, sampler, stops, progress, chunk) -> Iterator[str]:
        stats = new_stats(len(seq))
        self.last_stats = stats
        if max_new_tokens == 0:
            return
        text = self._text_stream()
        cut = StopStrings(stops)
        sampler.accept(seq)

        with timed(stats, "prompt_seconds"), self._lock:
            before = _common_prefix(self._tokens, seq)
            decoder = _lib.Decoder(self._handle(), sampler.ptr, self.config.vocab_size, chunk)
            self._sync(seq, progress, out=decoder.logits)
            stats["prompt_fed"] = len(seq) - min(before, len(seq) - 1)
            epoch = self._epoch

        pending = -1   # the last drawn id, not fed yet
        unfed = 1      # ids at the end of seq a token-by-token loop leaves unfed
        clock = time.perf_counter
        try:
            while True:
                t = clock()
                want = chunk if max_new_tokens is None else min(chunk, max_new_tokens - stats["new_tokens"])
                with self._lock:
                    if self._epoch != epoch:  # another call used the cache: bring seq back
                        self._sync(seq, out=decoder.logits)
                        pending = -1
                    ids, stop = decoder.step(pending, want)
                    fed = ([pending] if pending >= 0 else []) + ids
                    self._tokens = (self._tokens + fed)[:_lib.position(self._handle())]
                    self._epoch += 1
                    epoch = self._epoch
                for token in ids:
                    seq.append(token)
                    stats["new_tokens"] += 1
                    piece = _tokenizer_call("decode", text.step, token)
                    shown = cut.push(piece) if piece else ""
                    if shown:
                        stats["decode_seconds"] += clock() - t
                        yield shown
                        t = clock()
                    if cut.stopped:
                        stats["stop_reason"] = "stop"
                        stats["decode_seconds"] += clock() - t
                        return
                stats["decode_seconds"] += clock() - t
                if stop == _lib.STOP_EOS:
                    stats["stop_reason"] = "eos"
                    unfed = 0
                    break
                if max_new_tokens is not None and stats["new_tokens"] >= max_new_tokens:
                    break
                if stop == _lib.STOP_CONTEXT:
                    stats["stop_reason"] = "context"
                    break
                pending = ids[-1]
        finally:
            # the cache ends as a token-by-token loop leaves it: every id up
            # to the last handled, that one only after an end token (ids
            # drawn past a stop string or a closed stream are forgotten)
            with self._lock:
                keep = len(seq) - unfed
                if self._epoch == epoch and not self.closed and len(self._tokens) > keep:
                    self._rewind(keep)
        rest = cut.flush()
        if rest:
            yield rest

    # ---- chat --------------------------------------------------------------------------

    def _token_text(self, token_id) -> str:
        if token_id is None or token_id < 0:
            return ""
        if self._ctok is not None:
            return _lib.tokenizer_piece(self._ctok, int(token_id)).decode("utf-8", "replace")
        if self._hf_tokenizer is None:
            return ""
        return self._hf_tokenizer.id_to_token(int(token_id)) or ""

    def apply_chat_template(self, messages, add_generation_prompt=True, **kwargs) -> str:
        """The conversation rendered with the file's Jinja chat template, with
        the variables transformers passes (messages, add_generation_prompt,
        bos_token, eos_token) plus **kwargs."""
        self._check_messages(messages)
        return self._chat_template().render(list(messages), add_generation_prompt,
                                            **self._template_variables(kwargs))

    def _check_messages(self, messages):
        self._handle()
        if self.chat_template is None:
            raise Runq4Error(f"{self.path}: the file has no chat_template blob")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ArgumentError("messages must be a non-empty list of {'role', 'content'} dicts")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                    or not isinstance(m.get("content"), str):
                raise ArgumentError(f"bad message {m!r}: need {{'role': str, 'content': str}}")

    def _chat_template(self) -> ChatTemplate:
        if self._template is None:
            self._template = ChatTemplate(self.chat_template)
        return self._template

    def _template_variables(self, kwargs) -> dict:
        eos = self.config.eos_ids[0] if self.config.eos_ids else -1
        variables = dict(bos_token=self._token_text(self.config.bos_id),
                         eos_token=self._token_text(eos))
        variables.update(kwargs)
        return variables

    def _vocab_facts(self):
        """(the special tokens' texts, the longest token's length), from
        whichever tokenizer the model uses; computed once."""
        if self._vocab_cache is None:
            self._tok()
            if self._ctok is not None:
                ctok = self._ctok
                pieces = [(_lib.tokenizer_piece(ctok, i), _lib.tokenizer_is_special(ctok, i))
                          for i in range(_lib.tokenizer_size(ctok))]
                specials = [p.decode("utf-8", "replace") for p, special in pieces if special]
                longest = max((len(p) for p, _ in pieces), default=1)  # bytes >= characters
            else:
                tok = self._hf_tokenizer
                specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
                longest = max((len(t) for t in tok.get_vocab(with_added_tokens=True)), default=1)
            self._vocab_cache = (specials, max(longest, 1))
        return self._vocab_cache

    def _special_texts(self) -> list:
        return self._vocab_facts()[0]

    def _max_chars(self) -> int:
        """The longest text that can fit in the context: n_ctx tokens of the
        longest vocabulary entry (a token never covers more characters)."""
        return self.config.n_ctx * self._vocab_facts()[1]

    def chat_tokens(self, messages, parse_special=False, **template_kwargs) -> list:
        """The ids of the rendered conversation (no extra BOS). The special
        tokens the template writes (turn headers, end of turn) are special
        tokens; special-token text inside a message's content is plain text,
        so a user cannot forge a turn, unless parse_special=True (what
        transformers does: everything parsed). Special-token text in a role
        or a template variable is an ArgumentError."""
        self._check_messages(messages)
        return chat_ids(self._chat_template(), list(messages),
                        lambda text, special: self.tokenize(text, add_bos=False, special=special),
                        self._special_texts(), add_generation_prompt=True, parse_special=parse_special,
                        max_chars=self._max_chars(), **self._template_variables(template_kwargs))

    def chat_stream(self, messages, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0,
                    seed=None, stop=None, progress=False, json_schema=None, parse_special=False, *,
                    min_p=0.0, repeat_penalty=1.0, repeat_last_n=_lib.DEFAULT_REPEAT_LAST_N) -> Iterator[str]:
        """Streams the assistant's reply to `messages` (a list of {"role",
        "content"} dicts; append the reply and the next user message for the
        next turn). The KV cache is kept across turns: the whole conversation
        is tokenized and only what differs from the cached tokens is fed. The
        reply ends at the end-of-turn token (config.eos_ids). Sampling and
        json_schema: as in stream(). parse_special: see chat_tokens()."""
        return self._chat(messages, max_new_tokens, stop, progress, json_schema, parse_special,
                          dict(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                               min_p=min_p, repeat_penalty=repeat_penalty,
                               repeat_last_n=repeat_last_n), STREAM_CHUNK)

    def chat(self, messages, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0,
             seed=None, stop=None, progress=False, json_schema=None, parse_special=False, *,
             min_p=0.0, repeat_penalty=1.0, repeat_last_n=_lib.DEFAULT_REPEAT_LAST_N) -> str:
        """The assistant's reply to `messages` (see chat_stream())."""
        with self._lock:
            return "".join(self._chat(messages, max_new_tokens, stop, progress, json_schema,
                                      parse_special,
                                      dict(temperature=temperature, top_p=top_p, top_k=top_k,
                                           seed=seed, min_p=min_p, repeat_penalty=repeat_penalty,
                                           repeat_last_n=repeat_last_n), GENERATE_CHUNK))

    def _chat(self, messages, max_new_tokens, stop, progress, json_schema, parse_special, sampling,
              chunk):
        with self._lock:
            ids = self.chat_tokens(messages, parse_special=parse_special)
            return self._start(ids, max_new_tokens, sampling, stop, progress, json_schema, chunk)
