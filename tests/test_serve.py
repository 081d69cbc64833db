"""python -m pyrunq4.serve end to end: the real `openai` client (streaming and
not) and raw HTTP against a server started on 127.0.0.1 with a free port.

The server's replies must equal what Model.chat / Model.generate give for the
same arguments; bad requests get 400s in OpenAI's error shape; a client that
disconnects stops its generation; a full queue answers 429. Skipped when the
serve extra (starlette, uvicorn) or the openai client is not installed.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import pyrunq4  # noqa: E402  (after the skips: the conftest chose which pyrunq4)
from conftest import write_random_model  # noqa: E402
from pyrunq4 import Model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
START_TIMEOUT_S = 60
HELLO = [{"role": "user", "content": "Hello there, how are you today?"}]


class Server:
    """python -m pyrunq4.serve PATH --port 0 ARGS in a subprocess; .url is its
    base URL once it listens. A context manager: stops it on exit."""

    def __init__(self, path, *args, tmp_path):
        self.log = tmp_path / f"serve-{time.monotonic_ns()}.log"
        env = dict(os.environ,
                   PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(pyrunq4.__file__))))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyrunq4.serve", str(path), "--port", "0",
                 "--threads", "1", *map(str, args)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            text = self.log.read_text(errors="replace")
            if "serving" in text and "http://" in text:
                self.url = text.split("http://", 1)[1].split()[0].removesuffix("/v1")
                self.url = "http://" + self.url
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not start: {text[-2000:]}")
            time.sleep(0.05)

    def client(self, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text(errors="replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def http(url, body=None, method=None, raw=None, timeout=60):
    """(status, parsed JSON body) of one request; body is sent as JSON, raw as bytes."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(server):
    return http(server.url + "/health")[1]


@pytest.fixture(scope="module")
def tiny_server(tiny_tied, tmp_path_factory):
    with Server(tiny_tied, "--name", "tiny", tmp_path=tmp_path_factory.mktemp("serve")) as s:
        yield s


@pytest.fixture(scope="module")
def tiny(tiny_tied):
    with Model(tiny_tied, n_threads=1) as m:
        yield m


# ---- the openai client --------------------------------------------------------------------

def test_models_and_health(tiny_server):
    client = tiny_server.client()
    assert [m.id for m in client.models.list().data] == ["tiny"]
    h = health(tiny_server)
    assert h["status"] == "ok" and h["model"] == "tiny" and h["running"] == 0


def test_chat_equals_model_chat(tiny_server, tiny):
    r = tiny_server.client().chat.completions.create(model="tiny", messages=HELLO, temperature=0,
                                                     max_tokens=20)
    want = tiny.chat(HELLO, max_new_tokens=20)
    assert r.choices[0].message.content == want
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == {"eos": "stop", "length": "length"}[
        tiny.last_stats["stop_reason"]]
    assert r.usage.prompt_tokens == len(tiny.chat_tokens(HELLO))
    assert r.usage.completion_tokens == tiny.last_stats["new_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == "tiny" and r.object == "chat.completion" and r.id.startswith("chatcmpl-")


def test_chat_stream_equals_model_chat(tiny_server, tiny):
    messages = [{"role": "system", "content": "Be brief."}] + HELLO
    chunks = list(tiny_server.client().chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == tiny.chat(messages, max_new_tokens=24)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[:-1] == [None] * (len(finishes) - 1) and finishes[-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        tiny.last_stats["new_tokens"]


def test_completions_equal_model_generate(tiny_server, tiny):
    client = tiny_server.client()
    r = client.completions.create(model="tiny", prompt="The quick brown fox", temperature=0,
                                  max_tokens=12)
    assert r.choices[0].text == tiny.generate("The quick brown fox", max_new_tokens=12)
    assert r.usage.prompt_tokens == len(tiny.tokenize("The quick brown fox"))
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="The quick brown fox", temperature=0, max_tokens=12, stream=True))
    assert streamed == r.choices[0].text
    # the default max_tokens is OpenAI's 16
    r = client.completions.create(model="tiny", prompt="Once upon", temperature=0)
    assert r.choices[0].text == tiny.generate("Once upon", max_new_tokens=16)
    assert r.usage.completion_tokens == tiny.last_stats["new_tokens"] <= 16


def test_seed_and_sampling_equal_model(tiny_server, tiny):
    client = tiny_server.client()
    kw = dict(model="tiny", messages=HELLO, temperature=0.9, top_p=0.8, seed=1234, max_tokens=20)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b == tiny.chat(HELLO, max_new_tokens=20, temperature=0.9, top_p=0.8, seed=1234)
    extra = dict(min_p=0.05, repetition_penalty=1.3, repeat_last_n=16)
    c = client.chat.completions.create(**kw, extra_body=extra).choices[0].message.content
    assert c == tiny.chat(HELLO, max_new_tokens=20, temperature=0.9, top_p=0.8, seed=1234, min_p=0.05,
                          repeat_penalty=1.3, repeat_last_n=16)
    for bad in (dict(min_p=1.5), dict(repetition_penalty=0), dict(repetition_penalty="x"),
                dict(repeat_last_n=-1)):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(**kw, extra_body=bad)


def test_stop_strings(tiny_server, tiny):
    full = tiny.generate("Hello, world!", max_new_tokens=30)
    assert len(full) > 6
    stop = full[3:6]
    r = tiny_server.client().completions.create(model="tiny", prompt="Hello, world!",
                                                temperature=0, max_tokens=30, stop=[stop, "\x00"])
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_prompt_reuse_across_turns(tiny_server, tiny):
    """The second turn reuses the first turn's cached tokens."""
    client = tiny_server.client()
    turn1 = [{"role": "system", "content": "Be brief."}] + HELLO
    r1 = client.chat.completions.create(model="tiny", messages=turn1, temperature=0, max_tokens=8)
    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content},
                     {"role": "user", "content": "And then?"}]
    r2 = client.chat.completions.create(model="tiny", messages=turn2, temperature=0, max_tokens=8)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens - 1
    assert r2.choices[0].message.content == tiny.chat(turn2, max_new_tokens=8)


def test_response_format_json_schema(tiny_server):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "n": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["name", "n"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}
    client = tiny_server.client()
    for seed in range(5):
        r = client.chat.completions.create(model="tiny", messages=HELLO, temperature=1.0,
                                           seed=seed, max_tokens=80, response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    chunks = client.chat.completions.create(model="tiny", messages=HELLO, temperature=0,
                                            max_tokens=80, response_format=fmt, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), schema)
    status, reply = http(tiny_server.url + CHAT, {"messages": HELLO, "response_format": {
        "type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "nonsense"}}}})
    assert status == 400 and reply["error"]["param"] == "response_format", reply


# ---- bad requests -------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
BAD = [
    (CHAT, b"{\"messages\": ", 400, None),                       # malformed JSON
    (CHAT, b"\xff\xfe", 400, None),                                # not UTF-8
    (CHAT, b"[1, 2]", 400, None),                                  # not an object
    (CHAT, {"model": "tiny"}, 400, "messages"),
    (CHAT, {"messages": "hi"}, 400, "messages"),
    (CHAT, {"messages": []}, 400, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    (CHAT, {"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, 400, "tool_calls"),
    (CHAT, {"messages": HELLO, "temperature": "hot"}, 400, "temperature"),
    (CHAT, {"messages": HELLO, "temperature": 7}, 400, "temperature"),
    (CHAT, {"messages": HELLO, "top_p": 0}, 400, "top_p"),
    (CHAT, {"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    (CHAT, {"messages": HELLO, "max_tokens": 2.5}, 400, "max_tokens"),
    (CHAT, {"messages": HELLO, "max_tokens": True}, 400, "max_tokens"),
    (CHAT, {"messages": HELLO, "seed": "x"}, 400, "seed"),
    (CHAT, {"messages": HELLO, "stream": "yes"}, 400, "stream"),
    (CHAT, {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    (CHAT, {"messages": HELLO, "stop": [""]}, 400, "stop"),
    (CHAT, {"messages": HELLO, "stop": 3}, 400, "stop"),
    (CHAT, {"messages": HELLO, "n": 2}, 400, "n"),
    (CHAT, {"messages": HELLO, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    (CHAT, {"messages": HELLO, "tools": []}, 400, "tools"),
    (CHAT, {"messages": HELLO, "bogus": 1}, 400, "bogus"),
    (CHAT, {"messages": HELLO, "response_format": {"type": "yaml"}}, 400, "response_format.type"),
    (CHAT, {"messages": HELLO, "stream_options": {"include_usage": 1}}, 400, "include_usage"),
    (CHAT, {"messages": HELLO, "stop": "x", "response_format": {"type": "json_object"}}, 400,
     "stop"),
    (CHAT, {"messages": HELLO, "max_tokens": 100000}, 400, "messages"),       # context overflow
    (CHAT, {"messages": [{"role": "user", "content": "x " * 300}]}, 400, "messages"),
    ("/v1/completions", {"prompt": "x " * 300, "max_tokens": 1}, 400, "prompt"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 99999]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "messages": HELLO}, 400, "messages"),
]


@pytest.mark.parametrize("path,body,status,param", BAD, ids=lambda v: None)
def test_bad_request(tiny_server, path, body, status, param):
    raw = body if isinstance(body, bytes) else None
    got, reply = http(tiny_server.url + path, None if raw else body, method="POST", raw=raw)
    assert got == status, reply
    err = reply["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    overflow = isinstance(body, dict) and (body.get("max_tokens") == 100000
                                           or "x x x" in json.dumps(body))
    assert (err["code"] == "context_length_exceeded") == overflow, err


def test_bad_request_through_openai_client(tiny_server):
    with pytest.raises(openai.BadRequestError) as e:
        tiny_server.client().chat.completions.create(model="tiny", messages=HELLO, max_tokens=10**6)
    assert e.value.status_code == 400 and "context length" in str(e.value)


def test_unknown_routes_and_methods(tiny_server):
    assert http(tiny_server.url + "/v1/nothing")[0] == 404
    status, reply = http(tiny_server.url + CHAT)                     # GET on a POST route
    assert status == 405 and reply["error"]["message"]
    assert health(tiny_server)["status"] == "ok"                     # still serving


# ---- disconnects and the queue --------------------------------------------------------------

@pytest.fixture(scope="module")
def long_model(model_dir):
    """A model whose greedy continuation of "hello" runs the whole 4096-token
    context without an end token (checked), so a request can be long."""
    path = write_random_model(model_dir / "long.rq4", dim=256, hidden_dim=512, n_layers=4,
                              n_heads=8, n_kv_heads=4, head_dim=32, tied=True, rope=False,
                              max_seq_len=4096, seed=3)
    with Model(path, n_threads=1) as m:
        m.generate("hello", max_new_tokens=64)
        assert m.last_stats["stop_reason"] == "length"
    return path


def open_stream(server, max_tokens=4000):
    """A raw streaming completion of "hello"; returns the socket once the
    first chunk arrived."""
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "hello", "max_tokens": max_tokens, "temperature": 0,
                       "stream": True}).encode()
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    got = b""
    while b"data: {" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200")
    return s


def wait_idle(server, timeout=10):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = health(server)
        if h["running"] == 0 and h["queued"] == 0:
            return time.monotonic() - t0
        time.sleep(0.01)
    pytest.fail(f"the server is still busy {timeout} s after the clients left: {h}")


def test_disconnect_stops_generation(long_model, tmp_path):
    with Server(long_model, tmp_path=tmp_path) as server:
        s = open_stream(server)
        s.close()
        wait_idle(server)
        # the model is free: a short request is answered while the abandoned
        # 4000-token one would still be running
        t0 = time.monotonic()
        status, reply = http(server.url + "/v1/completions",
                             {"prompt": "hello", "max_tokens": 1, "temperature": 0})
        assert status == 200 and reply["usage"]["completion_tokens"] == 1
        # the cache kept what the abandoned stream had fed: "hello" is reused
        assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] >= 1
        assert time.monotonic() - t0 < 30


def send_raw(server, path, body):
    """A request written on a raw socket, its reply not read: the socket."""
    host, port = server.url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return s


def wait_health(server, timeout=20, **want):
    deadline = time.monotonic() + timeout
    while True:
        h = health(server)
        if all(h[k] == v for k, v in want.items()):
            return h
        assert time.monotonic() < deadline, f"health never reached {want}: {h}"
        time.sleep(0.01)


def test_queue_full_and_disconnect_while_queued(long_model, tmp_path):
    with Server(long_model, "--queue", "1", tmp_path=tmp_path) as server:
        running = open_stream(server)
        queued = send_raw(server, "/v1/completions", {"prompt": "hi", "max_tokens": 5})
        wait_health(server, running=1, queued=1)
        t0 = time.monotonic()
        status, reply = http(server.url + CHAT, {"messages": HELLO, "max_tokens": 5})
        assert status == 429 and reply["error"]["code"] == "queue_full"
        assert time.monotonic() - t0 < 5  # refused at once, not after the queue drained
        with pytest.raises(openai.RateLimitError):
            server.client().chat.completions.create(model="x", messages=HELLO, max_tokens=5)
        # a waiting client that leaves gives its place back while the model is busy
        queued.close()
        wait_health(server, running=1, queued=0)
        waiting = threading.Thread(target=lambda: http(
            server.url + "/v1/completions", {"prompt": "hi", "max_tokens": 5}, timeout=120))
        waiting.daemon = True
        waiting.start()
        wait_health(server, running=1, queued=1)
        running.close()
        waiting.join(60)      # served once the running stream was dropped
        assert not waiting.is_alive()
        wait_idle(server)
        assert http(server.url + "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200
        log = server.stop()
    assert "Traceback" not in log, log


def test_cli_errors(tiny_tied, tmp_path):
    env = dict(os.environ,
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(pyrunq4.__file__))))
    for args, what in ((["/nonexistent.rq4"], "no such file"),
                       ([tiny_tied, "--port", "70000"], "--port"),
                       ([tiny_tied, "--queue", "-1"], "--queue")):
        r = subprocess.run([sys.executable, "-m", "pyrunq4.serve", *args], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and what in r.stderr and "Traceback" not in r.stderr, r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "pyrunq4.serve", tiny_tied, "--port", str(port)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


# ---- SmolLM2 ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    try:
        from pyrunq4.data import smollm2_gguf
        gguf = smollm2_gguf()
    except Exception as e:
        pytest.skip(f"the SmolLM2 GGUF is not available: {e}")
    out = tmp_path_factory.mktemp("serve_smollm2") / "smollm2.rq4"
    r = subprocess.run([sys.executable, "-m", "pyrunq4.export", gguf, str(out), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.smollm2
def test_smollm2_chat_turns_and_json(smollm2, tmp_path):
    history = [{"role": "system", "content": "You are a helpful assistant. " + " ".join(
        f"Fact {i}: the number {i} comes after {i - 1}." for i in range(1, 25))}]
    with Server(smollm2, "--ctx", "1024", tmp_path=tmp_path) as server:
        client = server.client()
        q1 = history + [{"role": "user", "content": "What is 2+2?"}]
        t0 = time.perf_counter()
        stream = client.chat.completions.create(model="smollm2", messages=q1, temperature=0,
                                                max_tokens=32, stream=True)
        pieces, ttft1 = [], None
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                ttft1 = ttft1 or time.perf_counter() - t0
                pieces.append(c.choices[0].delta.content)
        a1 = "".join(pieces)
        assert "4" in a1
        q2 = q1 + [{"role": "assistant", "content": a1},
                   {"role": "user", "content": "What is the capital of France?"}]
        t0 = time.perf_counter()
        stream = client.chat.completions.create(model="smollm2", messages=q2, temperature=0,
                                                max_tokens=32, stream=True,
                                                stream_options={"include_usage": True})
        pieces, ttft2, usage = [], None, None
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                ttft2 = ttft2 or time.perf_counter() - t0
                pieces.append(c.choices[0].delta.content)
            usage = c.usage or usage
        assert "Paris" in "".join(pieces)
        assert ttft2 < ttft1
        assert usage.prompt_tokens > 300
        assert usage.prompt_tokens_details.cached_tokens > 300
        print(f"TTFT turn 1 {ttft1 * 1e3:.0f} ms, turn 2 {ttft2 * 1e3:.0f} ms "
              f"({usage.prompt_tokens_details.cached_tokens} of {usage.prompt_tokens} cached)")

        schema = {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 40},
            "country": {"type": "string", "maxLength": 40},
            "population": {"type": "integer", "minimum": 0, "maximum": 10**8}},
            "required": ["city", "country", "population"], "additionalProperties": False}
        r = client.chat.completions.create(
            model="smollm2", temperature=0, max_tokens=80,
            messages=[{"role": "user", "content": "Describe Paris as JSON."}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "city", "schema": schema, "strict": True}})
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
        r = client.chat.completions.create(
            model="smollm2", temperature=0, max_tokens=80, response_format={"type": "json_object"},
            messages=[{"role": "user", "content": 'Reply with a JSON object with the keys "name" '
                                                  'and "age" for a cat named Tom aged 3.'}])
        assert json.loads(r.choices[0].message.content) == {"name": "Tom", "age": 3}
