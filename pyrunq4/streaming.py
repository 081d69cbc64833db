"""The pieces of a generation loop that are not the model: turning token
ids into text as it becomes complete, cutting the text at stop strings, and
timing the prompt and decode phases."""

from __future__ import annotations

import time
from contextlib import contextmanager

__all__ = ["TokenText", "StopStrings", "new_stats", "timed"]


class TokenText:
    """Token ids -> text, one id at a time: the bytes of a UTF-8 character
    split across tokens are held until the character is complete
    (tokenizers' DecodeStream)."""

    def __init__(self, tokenizer):
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=False)

    def step(self, token: int) -> str:
        """The text that token completes ("" while a character is partial)."""
        return self._stream.step(self._tokenizer, token) or ""


class StopStrings:
    """Cuts streamed text before the first of `stops`. push() returns what
    can be shown now: a tail that could be the start of a stop string is
    held back until the next piece decides it."""

    def __init__(self, stops):
        self.stops = list(stops)
        self.stopped = False
        self._text = ""
        self._emitted = 0
        self._hold = max((len(s) for s in self.stops), default=1) - 1

    def push(self, piece: str) -> str:
        start = max(0, len(self._text) - self._hold)
        self._text += piece
        text = self._text
        cut = min((i for i in (text.find(s, start) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out = text[self._emitted:cut] if cut > self._emitted else ""
            self._emitted = len(text)
            self.stopped = True
            return out
        safe = len(text)
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if s.startswith(text[-k:]):
                    safe = min(safe, len(text) - k)
                    break
        out = text[self._emitted:safe] if safe > self._emitted else ""
        self._emitted = max(self._emitted, safe)
        return out

    def flush(self) -> str:
        """What was held back, once no more text comes."""
        out = self._text[self._emitted:]
        self._emitted = len(self._text)
        return out


def new_stats(prompt_tokens: int) -> dict:
    """The statistics of one generation (Model.last_stats)."""
    return {"prompt_tokens": prompt_tokens, "prompt_fed": 0, "prompt_seconds": 0.0,
            "new_tokens": 0, "decode_seconds": 0.0, "stop_reason": "length"}


@contextmanager
def timed(stats: dict, key: str):
    """Adds the seconds the block takes to stats[key] (also when it raises)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        stats[key] += time.perf_counter() - t
