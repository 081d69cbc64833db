"""An OpenAI-compatible HTTP server for one .rq4 model.

    python -m pyrunq4.serve MODEL.rq4 [--host 127.0.0.1] [--port 8080]

Endpoints: POST /v1/chat/completions (the model's own chat template),
POST /v1/completions, GET /v1/models, GET /health. Requests are served one at
a time, in arrival order, by one model thread; at most --queue requests wait
behind the running one, and more are refused at once with 429 (never left
hanging). A client that goes away stops its generation before the next token.
The KV cache is kept between requests: a request whose tokens start like the
cached ones (the same system prompt, the earlier turns of a conversation)
only evaluates the rest (usage.prompt_tokens_details.cached_tokens says how
many were reused). Bad requests get a 400 in OpenAI's error shape:
{"error": {"message", "type", "param", "code"}}.

Needs the serve extra: pip install 'pyrunq4[serve]' (Starlette and uvicorn);
response_format also needs the json extra (llguidance).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import math
import os
import socket
import sys
import threading
import time
import uuid

import numpy as np

from ._cli import HelpFormatter, Parser, UsageError, positive_int, run_main

PROG = "python -m pyrunq4.serve"

MAX_BODY_BYTES = 8 << 20   # a request body larger than this is refused (413)
MAX_STOP = 4               # stop strings per request, as OpenAI allows
DEFAULT_QUEUE = 8          # requests that may wait behind the running one
COMPLETION_MAX_TOKENS = 16  # /v1/completions' max_tokens default, as OpenAI's
SHUTDOWN_GRACE_S = 3       # open streams get this long to end on shutdown
MAX_REPETITION_PENALTY = float(np.finfo(np.float32).max)  # the C sampler's parameters are floats


class ApiError(Exception):
    """An error answered to the client as {"error": {...}} with an HTTP status."""

    def __init__(self, status, message, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = \
            status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# ---- request validation ---------------------------------------------------------------

_MISSING = object()


def _type_name(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


def _bad(param, message, code="invalid_value"):
    return ApiError(400, message, param=param, code=code)


def _check_fields(body: dict, allowed):
    for key in body:
        if key not in allowed:
            raise _bad(key, f"Unrecognized request argument supplied: {key}",
                       code="unknown_parameter")


def _get_number(body, name, lo, hi, default, lo_open=False):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(name, f"'{name}' must be a number, got {_type_name(v)}", "invalid_type")
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        low = f"greater than {lo}" if lo_open else f"at least {lo}"
        raise _bad(name, f"'{name}' must be {low} and at most {hi}, got {v}")
    return float(v)


def _get_int(body, name, lo, hi, default):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"'{name}' must be an integer, got {_type_name(v)}", "invalid_type")
    if not lo <= v <= hi:
        raise _bad(name, f"'{name}' must be in [{lo}, {hi}], got {v}")
    return v


def _get_bool(body, name, default):
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(name, f"'{name}' must be a boolean, got {_type_name(v)}", "invalid_type")
    return v


def _require_default(body, name, ok_values, why):
    """A parameter accepted only at its no-op values (OpenAI clients send some
    of them by default)."""
    v = body.get(name)
    if v is not None and (type(v) is not type(ok_values[0]) or v not in ok_values):
        raise _bad(name, f"'{name}' = {v!r} is not supported: {why}", "unsupported_value")


def _get_stop(body) -> list:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", "'stop' must be a string or an array of strings", "invalid_type")
    if len(stops) > MAX_STOP:
        raise _bad("stop", f"'stop' may hold at most {MAX_STOP} strings, got {len(stops)}")
    if not all(stops):
        raise _bad("stop", "'stop' strings must not be empty")
    return stops


@dataclasses.dataclass
class Job:
    """One validated request."""

    kind: str                 # "chat" or "completion"
    messages: list = None     # chat: [{"role", "content"}] with string contents
    prompt: object = None     # completion: a str or a list of token ids
    max_tokens: int = None    # None: as many as the context leaves
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repeat_last_n: int = None  # _common sets it (the C default when absent)
    seed: int = None
    stop: list = dataclasses.field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    schema: object = None     # response_format: a JSON schema (dict, or True: any JSON), None


_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
           "repeat_last_n", "seed", "stop", "stream",
           "stream_options", "n", "user", "presence_penalty", "frequency_penalty", "logprobs"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "response_format"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "best_of", "suffix"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _common(body: dict, job: Job, max_tokens_default):
    if "model" in body and not isinstance(body["model"], str):
        raise _bad("model", "'model' must be a string", "invalid_type")
    if "user" in body and not isinstance(body["user"], (str, type(None))):
        raise _bad("user", "'user' must be a string", "invalid_type")
    job.max_tokens = _get_int(body, "max_tokens", 1, 2**31 - 1, max_tokens_default)
    job.temperature = _get_number(body, "temperature", 0.0, 2.0, 1.0)
    job.top_p = _get_number(body, "top_p", 0.0, 1.0, 1.0, lo_open=True)
    job.top_k = _get_int(body, "top_k", 0, 2**31 - 1, 0)
    # vLLM's and llama.cpp's server's extensions (the same rules as the C sampler's)
    job.min_p = _get_number(body, "min_p", 0.0, 1.0, 0.0)
    job.repetition_penalty = _get_number(body, "repetition_penalty", 0.0, MAX_REPETITION_PENALTY, 1.0,
                                         lo_open=True)
    from ._lib import DEFAULT_REPEAT_LAST_N, MAX_REPEAT_LAST_N

    job.repeat_last_n = _get_int(body, "repeat_last_n", 0, MAX_REPEAT_LAST_N, DEFAULT_REPEAT_LAST_N)
    seed = _get_int(body, "seed", -2**63, 2**64 - 1, None)
    job.seed = None if seed is None else seed % 2**64
    job.stop = _get_stop(body)
    job.stream = _get_bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad("stream_options", "'stream_options' must be an object", "invalid_type")
        _check_fields(opts, {"include_usage"})
        job.include_usage = _get_bool(opts, "include_usage", False)
    _require_default(body, "n", (1,), "one choice per request")
    for name in ("presence_penalty", "frequency_penalty"):
        v = _get_number(body, name, -2.0, 2.0, 0.0)
        if v != 0.0:
            raise _bad(name, f"'{name}' is not supported (only 0)", "unsupported_value")


def _text_content(content, where):
    """A message's content: a string, or an array of {"type": "text", "text"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str) and set(part) <= {"type", "text"}):
                raise _bad(where, f"{where}: only text content parts are supported", "invalid_type")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(where, f"{where}: content must be a string or an array of text parts, "
                      f"got {_type_name(content)}", "invalid_type")


def _response_format(v):
    if v is None:
        return None
    if not isinstance(v, dict) or not isinstance(v.get("type"), str):
        raise _bad("response_format", "'response_format' must be an object with a 'type'",
                   "invalid_type")
    kind = v["type"]
    if kind == "text":
        _check_fields(v, {"type"})
        return None
    if kind == "json_object":
        _check_fields(v, {"type"})
        return {"type": "object"}
    if kind == "json_schema":
        _check_fields(v, {"type", "json_schema"})
        js = v.get("json_schema")
        if not isinstance(js, dict):
            raise _bad("response_format.json_schema", "'json_schema' must be an object",
                       "invalid_type")
        _check_fields(js, {"name", "schema", "strict", "description"})
        schema = js.get("schema", {})
        if not isinstance(schema, (dict, bool)):
            raise _bad("response_format.json_schema.schema", "'schema' must be an object",
                       "invalid_type")
        return schema if schema is not True else True
    raise _bad("response_format.type", f"'response_format.type' must be 'text', 'json_object' "
                                       f"or 'json_schema', got {kind!r}")


def _new_job(body, kind, fields, max_tokens_default) -> Job:
    """A Job of `kind` with the fields every request shares, from a body checked
    to be an object holding only `fields`."""
    if not isinstance(body, dict):
        raise _bad(None, "the request body must be a JSON object", "invalid_type")
    _check_fields(body, fields)
    job = Job(kind)
    _common(body, job, max_tokens_default)
    return job


def parse_chat(body) -> Job:
    job = _new_job(body, "chat", CHAT_FIELDS, None)
    mct = _get_int(body, "max_completion_tokens", 1, 2**31 - 1, None)
    if mct is not None:
        job.max_tokens = mct if job.max_tokens is None else min(mct, job.max_tokens)
    _require_default(body, "logprobs", (False,), "no log probabilities")
    msgs = body.get("messages", _MISSING)
    if msgs is _MISSING:
        raise _bad("messages", "Missing required parameter: 'messages'", "missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "'messages' must be a non-empty array", "invalid_type")
    job.messages = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(where, f"{where} must be an object", "invalid_type")
        _check_fields(m, {"role", "content", "name"})
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role", f"{where}.role must be one of {sorted(ROLES)}, got {role!r}")
        if "content" not in m:
            raise _bad(f"{where}.content", f"{where} has no content", "missing_required_parameter")
        job.messages.append({"role": ROLES[role],
                             "content": _text_content(m["content"], f"{where}.content")})
    job.schema = _response_format(body.get("response_format"))
    if job.schema is not None and job.stop:
        raise _bad("stop", "'stop' does not apply with a JSON response_format (the document's "
                           "end is the schema's)", "unsupported_value")
    return job


def parse_completion(body) -> Job:
    job = _new_job(body, "completion", COMPLETION_FIELDS, COMPLETION_MAX_TOKENS)
    _require_default(body, "echo", (False,), "the prompt is not echoed")
    _require_default(body, "best_of", (1,), "one choice per request")
    _require_default(body, "suffix", ("",), "no insertion")
    _require_default(body, "logprobs", (0,), "no log probabilities")
    p = body.get("prompt", _MISSING)
    if p is _MISSING:
        raise _bad("prompt", "Missing required parameter: 'prompt'", "missing_required_parameter")
    # a string, an array of token ids, or an array holding one of those
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, list):
        if not p or not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            raise _bad("prompt", "'prompt' must be a string or a non-empty array of token ids "
                                 "(one prompt per request)", "invalid_type")
    elif not isinstance(p, str):
        raise _bad("prompt", f"'prompt' must be a string, got {_type_name(p)}", "invalid_type")
    job.prompt = p
    return job


# ---- the model thread ------------------------------------------------------------------

class Run:
    """One admitted request: the events its model-thread work sends back
    (("start", prompt_tokens), ("text", str), ("end", finish_reason, stats),
    ("error", ApiError)), the flag that stops it, and its place in the line:
    a request dropped while still waiting gives its place back at once
    (`release`, called on the event loop), not when the model reaches it."""

    def __init__(self, release):
        self.events = asyncio.Queue()
        self.cancel = threading.Event()
        self._release = release
        self._lock = threading.Lock()
        self._state = "queued"    # -> "running" (the model thread took it) or "dropped"

    def begin(self) -> bool:
        """Model thread: whether to run it (False: dropped or stopped meanwhile)."""
        with self._lock:
            if self._state == "dropped":
                return False
            self._state = "running"
        return not self.cancel.is_set()

    def stop(self):
        """Event loop: stops the generation, or drops the request if it waits."""
        self.cancel.set()
        with self._lock:
            dropped = self._state == "queued"
            if dropped:
                self._state = "dropped"
        if dropped:
            self._release()

    def finished(self):
        """Event loop, once the model thread is done with it."""
        if self._state != "dropped":
            self._release()


class Engine:
    """One Model, one thread that runs it, and the bounded line of requests."""

    def __init__(self, model, name, queue_size=DEFAULT_QUEUE):
        self.model = model
        self.name = name
        self.queue_size = queue_size
        self.created = int(time.time())
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pyrunq4-model")
        self._admitted = 0        # running + waiting; read and written on the event loop only
        self._runs = set()
        self._closing = threading.Event()

    @property
    def busy(self) -> dict:
        running = min(self._admitted, 1)
        return {"running": running, "queued": self._admitted - running}

    def submit(self, job: Job) -> Run:
        if self._closing.is_set():
            raise ApiError(503, "the server is shutting down", type="server_error",
                           code="shutting_down")
        if self._admitted >= 1 + self.queue_size:
            raise ApiError(429, f"the server is busy: {self.queue_size} requests are already "
                                f"waiting; retry later", type="server_busy", code="queue_full")
        loop = asyncio.get_running_loop()

        def release():
            self._admitted -= 1
            self._runs.discard(run)

        run = Run(release)

        def push(event):
            try:
                loop.call_soon_threadsafe(run.events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                run.cancel.set()

        self._admitted += 1
        self._runs.add(run)
        fut = loop.run_in_executor(self._pool, self._work, job, run, push)
        fut.add_done_callback(lambda _: run.finished())
        return run

    def close(self):
        """Stops every generation (running and waiting) and the model thread."""
        self._closing.set()
        for run in list(self._runs):
            run.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _work(self, job: Job, run: Run, push):
        """Runs in the model thread: tokenizes, checks the context, generates."""
        if not run.begin() or self._closing.is_set():
            return
        try:
            ids, it = self._start(job)
        except ApiError as e:
            push(("error", e))
            return
        except Exception as e:
            push(("error", _api_error(e)))
            return
        push(("start", len(ids)))
        try:
            while True:
                if run.cancel.is_set() or self._closing.is_set():
                    it.close()
                    return
                try:
                    piece = next(it)
                except StopIteration:
                    break
                push(("text", piece))
            stats = dict(self.model.last_stats or {})
            finish = {"eos": "stop", "stop": "stop"}.get(stats.get("stop_reason"), "length")
            push(("end", finish, stats))
        except Exception as e:  # an engine failure part-way: the client hears of it
            push(("error", _api_error(e)))

    def _start(self, job: Job):
        from .errors import ArgumentError, ContextFullError

        m = self.model
        n_ctx = m.config.n_ctx
        if job.kind == "chat":
            import jinja2
            if m.chat_template is None:
                raise _bad("messages", "this model file has no chat template: use "
                                       "/v1/completions")
            try:
                ids = m.chat_tokens(job.messages)
            except jinja2.TemplateError as e:
                raise _bad("messages", f"the model's chat template refused the messages: {e}")
            what, param = "messages", "messages"
        else:
            ids = m.tokenize(job.prompt) if isinstance(job.prompt, str) else list(job.prompt)
            what, param = "prompt", "prompt"
            if not ids:
                raise _bad("prompt", "the prompt is empty (and the model has no BOS token)")
            vocab = m.config.vocab_size
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise _bad("prompt", f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
        n, mt = len(ids), job.max_tokens
        room = n_ctx - n
        if mt is None and room < 1:
            raise ApiError(400, f"This model's maximum context length is {n_ctx} tokens. However, "
                                f"your {what} use {n} tokens, leaving no room for a reply. Please "
                                f"reduce the length of the {what}.",
                           param=param, code="context_length_exceeded")
        if mt is not None and mt > room:
            raise ApiError(400, f"This model's maximum context length is {n_ctx} tokens. However, "
                                f"you requested {n + mt} tokens ({n} in the {what}, {mt} in the "
                                f"completion). Please reduce the length of the {what} or "
                                f"completion.", param=param, code="context_length_exceeded")
        max_new = room if job.max_tokens is None else job.max_tokens
        try:
            it = m.stream(ids, max_new, job.temperature, job.top_p, job.top_k, job.seed,
                          job.stop or None, json_schema=job.schema, min_p=job.min_p,
                          repeat_penalty=job.repetition_penalty, repeat_last_n=job.repeat_last_n)
        except (ArgumentError, ContextFullError) as e:
            raise _bad(None if job.schema is None else "response_format", str(e))
        return ids, it


def _api_error(e: Exception) -> ApiError:
    from .errors import ArgumentError, ContextFullError

    if isinstance(e, (ArgumentError, ContextFullError)):
        return _bad(None, str(e))
    print(f"{PROG}: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return ApiError(500, f"the engine failed: {e}", type="server_error", code="engine_error")


# ---- HTTP ----------------------------------------------------------------------------

def _usage(prompt_tokens, stats) -> dict:
    new = stats.get("new_tokens", 0)
    fed = stats.get("prompt_fed", prompt_tokens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": new,
            "total_tokens": prompt_tokens + new,
            "prompt_tokens_details": {"cached_tokens": prompt_tokens - fed}}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _read_json(request):
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes",
                       code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes",
                           code="body_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"We could not parse the JSON body of your request: {e}",
                       code="invalid_json") from None


async def _watch_disconnect(request, run: Run):
    """Stops `run` when the client goes away (before the response starts)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            run.stop()
            run.events.put_nowait(("gone",))
            return


def build_app(engine: Engine):
    """The Starlette application serving `engine`."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error_response(e: ApiError):
        headers = {"Retry-After": "1"} if e.status in (429, 503) else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    async def respond(request, kind):
        body = await _read_json(request)
        job = parse_chat(body) if kind == "chat" else parse_completion(body)
        if job.schema is not None:
            from .structured import available
            if not available():
                raise ApiError(400, "response_format needs llguidance on the server: "
                                    "pip install 'pyrunq4[json]'", param="response_format",
                               code="unsupported_value")
        run = engine.submit(job)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        watcher = asyncio.ensure_future(_watch_disconnect(request, run))
        handed_over = False
        try:
            event = await run.events.get()
            if event[0] == "gone":
                return JSONResponse({}, status_code=499)
            if event[0] == "error":
                return error_response(event[1])
            prompt_tokens = event[1]
            if job.stream:
                watcher.cancel()
                handed_over = True
                return StreamingResponse(stream(run, job, kind, rid, created, prompt_tokens),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache",
                                                  "X-Accel-Buffering": "no"})
            pieces = []
            while True:
                event = await run.events.get()
                if event[0] == "text":
                    pieces.append(event[1])
                elif event[0] == "end":
                    break
                elif event[0] == "gone":
                    return JSONResponse({}, status_code=499)
                else:
                    return error_response(event[1])
            text, finish, stats = "".join(pieces), event[1], event[2]
            if kind == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": text},
                          "logprobs": None, "finish_reason": finish}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                obj = "text_completion"
            return JSONResponse({"id": rid, "object": obj, "created": created,
                                 "model": engine.name, "choices": [choice],
                                 "usage": _usage(prompt_tokens, stats)})
        finally:
            watcher.cancel()
            if not handed_over:
                run.stop()

    async def stream(run, job, kind, rid, created, prompt_tokens):
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(delta=None, finish=None, text=None):
            if kind == "chat":
                choice = {"index": 0, "delta": delta or {}, "logprobs": None,
                          "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None,
                          "finish_reason": finish}
            return {"id": rid, "object": obj, "created": created, "model": engine.name,
                    "choices": [choice]}

        # a text chunk is this fixed JSON around the piece: rendered once
        hole = "\x00piece\x00"
        head, tail = _sse(chunk({"content": hole}, text=hole)).split(json.dumps(hole))
        try:
            if kind == "chat":
                yield _sse(chunk({"role": "assistant", "content": ""}))
            pending = None
            while True:
                event, pending = pending or await run.events.get(), None
                if event[0] == "text":
                    # the pieces that arrived meanwhile go out in the same write
                    out = [head, json.dumps(event[1], ensure_ascii=False), tail]
                    while pending is None and not run.events.empty():
                        event = run.events.get_nowait()
                        if event[0] == "text":
                            out += [head, json.dumps(event[1], ensure_ascii=False), tail]
                        else:
                            pending = event
                    yield "".join(out)
                elif event[0] == "end":
                    yield _sse(chunk(finish=event[1]))
                    if job.include_usage:
                        last = chunk()
                        last["choices"] = []
                        last["usage"] = _usage(prompt_tokens, event[2])
                        yield _sse(last)
                    break
                elif event[0] == "error":
                    yield _sse(event[1].body())
                    break
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnected and Starlette cancelled us
            run.stop()

    async def chat_completions(request):
        return await respond(request, "chat")

    async def completions(request):
        return await respond(request, "completion")

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": engine.name, "object": "model", "created": engine.created,
             "owned_by": "pyrunq4"}]})

    async def health(request):
        return JSONResponse({"status": "ok", "model": engine.name, **engine.busy})

    async def api_error(request, exc):
        return error_response(exc)

    async def http_error(request, exc):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse({"error": {"message": f"{request.method} {request.url.path}: "
                                                  f"{exc.detail}", "type": kind, "param": None,
                                       "code": None}}, status_code=exc.status_code)

    async def internal_error(request, exc):
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return JSONResponse({"error": {"message": "internal server error", "type": "server_error",
                                       "param": None, "code": None}}, status_code=500)

    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    return Starlette(routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ], exception_handlers={ApiError: api_error, HTTPException: http_error,
                           Exception: internal_error}, lifespan=lifespan)


# ---- command line ------------------------------------------------------------------------

def build_parser():
    from ._lib import DEFAULT_KV_TYPE, KV_TYPES

    p = Parser(prog=PROG, formatter_class=HelpFormatter,
               description="Serve an .rq4 model over an OpenAI-compatible HTTP API.")
    p.add_argument("model", metavar="MODEL.rq4", help="the model file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free one)")
    p.add_argument("--name", default=None,
                   help="the model's id in the API (default: the file name without .rq4)")
    p.add_argument("--ctx", type=positive_int, default=None,
                   help="context length (default: 4096, or the model's maximum if smaller)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="worker threads (default: the CPUs this process may use)")
    p.add_argument("--kv-type", choices=sorted(KV_TYPES), default=DEFAULT_KV_TYPE,
                   help="KV cache element type")
    p.add_argument("--queue", type=int, default=DEFAULT_QUEUE,
                   help="requests that may wait behind the running one; more get 429")
    p.add_argument("--log-level", default="warning",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (info: one line per request)")
    return p


def _run(args):
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise UsageError(f"the server needs the serve extra ({e.name} is missing): "
                         f"pip install 'pyrunq4[serve]'") from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {args.port}")
    if args.queue < 0:
        raise UsageError(f"--queue must be >= 0, got {args.queue}")
    from .model import Model

    model = Model(args.model, n_ctx=args.ctx, n_threads=args.threads, kv_type=args.kv_type)
    name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    engine = Engine(model, name, args.queue)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(128)  # clients connecting before uvicorn's loop runs wait in the backlog
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"{PROG}: serving {name} (context {model.config.n_ctx}) on http://{shown}:{port}/v1",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(build_app(engine), log_level=args.log_level,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        engine.close()
        model.close()
        sock.close()
    return 0


def main(argv=None):
    return run_main(PROG, build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
