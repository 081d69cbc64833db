"""Structured output: decoding constrained token by token to a JSON schema.

    from pyrunq4.structured import json_stream
    text = "".join(json_stream(model, ids, {"type": "object", ...}))

The grammar engine is llguidance (the optional extra `pip install
'pyrunq4[json]'`): before each token it computes the set of tokens that keep
the output a prefix of some document valid against the schema, the logits of
every other token are set to -inf, and the sampled token is fed back to it. So
the output parses and validates unless generation stops early (max_new_tokens
or a full context, reported as stop_reason "length" / "context").

Whitespace between JSON tokens is limited to WHITESPACE: an unlimited run of
blanks is a valid prefix forever, and a small model can fall into it.
"""

from __future__ import annotations

import json
import time
import weakref
from typing import Iterator

import numpy as np

from . import _lib
from .errors import ArgumentError, ContextFullError
from .sampling import Sampler

__all__ = ["available", "check_schema", "JsonConstraint", "json_stream"]

# at most this many blanks between two JSON tokens (see the module docstring)
WHITESPACE = r"(?:[ ]|\n[ ]{0,20})?"

_tokenizers = weakref.WeakKeyDictionary()   # Model -> llguidance.LLTokenizer


def available() -> bool:
    """Whether the grammar engine (llguidance) is installed."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise ArgumentError("structured output needs llguidance: pip install 'pyrunq4[json]'") \
            from None
    return llguidance


def _grammar(schema) -> str:
    """The llguidance grammar of a JSON schema (dict, or True for any JSON value)."""
    llg = _llguidance()
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise ArgumentError(f"the JSON schema must be an object, got {type(schema).__name__}")
    try:
        return llg.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), overrides={"whitespace_pattern": WHITESPACE})
    except (ValueError, TypeError) as e:
        raise ArgumentError(f"bad JSON schema: {e}") from None


def check_schema(schema) -> None:
    """Raises ArgumentError with llguidance's reason if `schema` cannot be
    compiled (an unsupported keyword, a bad $ref, a contradiction)."""
    llg = _llguidance()
    err = llg.LLMatcher.validate_grammar(_grammar(schema))
    if err:
        raise ArgumentError(f"bad JSON schema: {err}")


def _tokenizer(model):
    """llguidance's view of the model's tokenizer, built once per Model (it
    scans the whole vocabulary, about a second for 49k tokens)."""
    tok = _tokenizers.get(model)
    if tok is None:
        llg = _llguidance()
        cfg = model.config
        tok = llg.LLTokenizer(model.tokenizer_json, n_vocab=cfg.vocab_size,
                              eos_token=list(cfg.eos_ids))
        _tokenizers[model] = tok
    return tok


class JsonConstraint:
    """The tokens allowed next by a JSON schema, for one generation.

    mask(logits) sets the logits of forbidden tokens to -inf in place;
    accept(token) advances the grammar; done is True once the document is
    complete (only an end token may follow)."""

    def __init__(self, model, schema):
        llg = _llguidance()
        self._m = llg.LLMatcher(_tokenizer(model), _grammar(schema))
        if self._m.is_error():
            raise ArgumentError(f"bad JSON schema: {self._m.get_error()}")
        self._vocab = model.config.vocab_size
        self._bits = np.zeros((self._vocab + 31) // 32, dtype=np.uint32)

    def mask(self, logits: np.ndarray) -> None:
        self._m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        allowed = np.unpackbits(self._bits.view(np.uint8), count=self._vocab, bitorder="little")
        logits[allowed == 0] = -np.inf

    def accept(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise ArgumentError(f"the grammar refused token {token}: {self._m.get_error()}")

    @property
    def done(self) -> bool:
        return self._m.is_stopped()


def json_stream(model, ids, schema, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0,
                seed=None, min_p=0.0, repeat_penalty=1.0, repeat_last_n=None) -> Iterator[str]:
    """Yields the text of a JSON document valid against `schema`, generated
    after the prompt ids (a list of token ids; the cache is reused up to the
    longest common prefix, as in Model.stream). model.last_stats gets the
    same keys as Model.stream's, stop_reason "stop" when the document is
    complete. The schema is compiled and the arguments are checked before the
    first next(). The loop stays in Python, a token at a time: the mask
    comes from llguidance before each draw (the C sampler's)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ArgumentError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    try:
        sampler = Sampler(temperature, top_p, top_k, seed, min_p, repeat_penalty,
                          _lib.DEFAULT_REPEAT_LAST_N if repeat_last_n is None else repeat_last_n,
                          vocab_size=model.config.vocab_size)
    except ValueError as e:
        raise ArgumentError(str(e)) from None
    ids = [int(t) for t in ids]
    n_ctx, vocab = model.config.n_ctx, model.config.vocab_size
    if not ids:
        raise ArgumentError("the prompt is empty")
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ArgumentError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
    constraint = JsonConstraint(model, schema)
    if len(ids) > n_ctx:
        raise ContextFullError(f"the prompt's {len(ids)} tokens do not fit in the context of {n_ctx}")
    return _run(model, ids, constraint, sampler, max_new_tokens)


def _run(model, seq, constraint, sampler, max_new_tokens):
    eos = set(model.config.eos_ids)
    n_ctx = model.config.n_ctx
    stats = {"prompt_tokens": len(seq), "prompt_fed": 0, "prompt_seconds": 0.0,
             "new_tokens": 0, "decode_seconds": 0.0, "stop_reason": "length"}
    model.last_stats = stats
    if max_new_tokens == 0:
        return
    text = model._text_stream()
    sampler.accept(seq)
    t0 = time.perf_counter()
    cached = model.tokens
    keep = 0
    while keep < min(len(cached), len(seq) - 1) and cached[keep] == seq[keep]:
        keep += 1
    model.rewind(keep)
    logits = model.feed(seq[keep:])
    stats["prompt_fed"] = len(seq) - keep
    t1 = time.perf_counter()
    stats["prompt_seconds"] = t1 - t0
    try:
        while True:
            constraint.mask(logits)
            token = sampler(logits)
            if token in eos:
                stats["stop_reason"] = "stop"
                break
            constraint.accept(token)
            sampler.accept([token])
            seq.append(token)
            stats["new_tokens"] += 1
            piece = text.step(token)
            if piece:
                yield piece
            if constraint.done:
                stats["stop_reason"] = "stop"
                break
            if stats["new_tokens"] >= max_new_tokens:
                break
            if len(seq) > n_ctx:
                stats["stop_reason"] = "context"
                break
            logits = model.feed([token])
    finally:
        stats["decode_seconds"] = time.perf_counter() - t1
