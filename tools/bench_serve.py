"""Serving figures: prompt reuse, streaming overhead, structured-output cost.

    python tools/bench_serve.py MODEL.rq4 [--threads 1] [--runs 3]

1. Time to first token of a second chat turn that shares a ~300-token
   history with the first, against the first turn (each run starts a new
   conversation, so turn 1 finds nothing cached).
2. Decode tokens/s streamed through the server (the openai client, SSE)
   against Model.stream in this process, same prompt and token count.
3. Decode tokens/s with a JSON schema (pyrunq4.structured) against without.
Runs of the compared paths alternate; figures are medians over --runs.
Needs the serve and json extras and the openai client.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

HISTORY = " ".join(f"Fact {i}: the number {i} comes right after the number {i - 1}."
                   for i in range(1, 22))
SCHEMA = {"type": "object", "properties": {
    "animals": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 12},
    "count": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["animals", "count"], "additionalProperties": False}


class Server:
    def __init__(self, model, threads, ctx):
        import openai

        self.log = open(os.devnull, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "pyrunq4.serve", model, "--port", "0",
                                      "--threads", str(threads), "--ctx", str(ctx)],
                                     stderr=subprocess.PIPE, stdout=self.log, cwd=ROOT)
        line = self.proc.stderr.readline().decode()
        if "http://" not in line:
            raise SystemExit(f"bench_serve: the server did not start: {line}")
        url = line.split("http://", 1)[1].split()[0]
        self.client = openai.OpenAI(base_url="http://" + url, api_key="none", max_retries=0)

    def stream(self, messages, max_tokens):
        """(seconds to the first content, seconds from it to the last, content chunks, usage)."""
        t0 = time.perf_counter()
        first = last = None
        n, usage = 0, None
        for c in self.client.chat.completions.create(
                model="m", messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True}):
            if c.choices and c.choices[0].delta.content:
                last = time.perf_counter()
                first = first or last
                n += 1
            usage = c.usage or usage
        return first - t0, last - first, n, usage

    def stream_raw(self, messages, max_tokens):
        """Like stream() with a bare HTTP client (no parsing of the chunks), so
        the figure is the server's: (seconds from the first content chunk to
        the last, completion tokens)."""
        import json
        import urllib.request

        body = json.dumps({"messages": messages, "temperature": 0, "max_tokens": max_tokens,
                           "stream": True, "stream_options": {"include_usage": True}}).encode()
        req = urllib.request.Request(str(self.client.base_url) + "chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        first = last = None
        usage_line = b""
        with urllib.request.urlopen(req) as r:
            for line in r:
                if line.startswith(b'data: {"id"') and b'"content": "' in line \
                        and b'"content": ""' not in line:
                    last = time.perf_counter()
                    first = first or last
                elif b'"usage"' in line:
                    usage_line = line
        return last - first, json.loads(usage_line[6:])["usage"]["completion_tokens"]

    def cpu_seconds(self):
        """CPU time the server process has used (all threads), from /proc."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()


def med(xs):
    return statistics.median(xs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tokens", type=int, default=64, help="tokens decoded per speed run")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from pyrunq4 import Model
    from pyrunq4.structured import json_stream

    ctx = 1024
    server = Server(args.model, args.threads, ctx)
    model = Model(args.model, n_ctx=ctx, n_threads=args.threads)
    try:
        # 1. prompt reuse
        t1, t2, cached = [], [], []
        for run in range(args.runs):
            history = [{"role": "system", "content": f"Session {run}. {HISTORY}"},
                       {"role": "user", "content": "What is 2+2?"}]
            ttft, _, _, u1 = server.stream(history, 16)
            t1.append(ttft)
            reply = server.client.chat.completions.create(
                model="m", messages=history, temperature=0, max_tokens=16)
            history += [{"role": "assistant", "content": reply.choices[0].message.content},
                        {"role": "user", "content": "And 3+3?"}]
            ttft, _, _, u2 = server.stream(history, 16)
            t2.append(ttft)
            cached.append((u2.prompt_tokens_details.cached_tokens, u2.prompt_tokens))
        print(f"prompt reuse: TTFT turn 1 {med(t1) * 1e3:.0f} ms ({u1.prompt_tokens} prompt "
              f"tokens), turn 2 {med(t2) * 1e3:.0f} ms ({cached[-1][0]} of {cached[-1][1]} "
              f"cached): {med(t1) / med(t2):.1f}x faster")

        # 2. streaming overhead
        msgs = [{"role": "user", "content": "Write a long story about a dragon."}]
        ids = model.chat_tokens(msgs)
        srv, raw, ours, srv_cpu, our_cpu = [], [], [], [], []
        for _ in range(args.runs):
            _, dt, _, u = server.stream(msgs, args.tokens)
            srv.append((u.completion_tokens - 1) / dt)
            c0 = server.cpu_seconds()
            dt, n = server.stream_raw(msgs, args.tokens)
            srv_cpu.append((server.cpu_seconds() - c0) / n)
            raw.append((n - 1) / dt)
            model.reset()
            model.feed(ids[:-1])  # as in the server, where the prompt is cached
            tfirst = None
            c0 = time.process_time()
            for _ in model.stream(ids, max_new_tokens=args.tokens):
                tfirst = tfirst or time.perf_counter()
            dt = time.perf_counter() - tfirst
            our_cpu.append((time.process_time() - c0) / model.last_stats["new_tokens"])
            ours.append((model.last_stats["new_tokens"] - 1) / dt)
        print(f"streaming: Model.stream {med(ours):.1f} tok/s; server with a bare HTTP client "
              f"{med(raw):.1f} tok/s ({med(raw) / med(ours) * 100:.1f} %), with the openai "
              f"client {med(srv):.1f} tok/s ({med(srv) / med(ours) * 100:.1f} %); CPU per token: "
              f"server process {med(srv_cpu) * 1e3:.2f} ms, Model.stream "
              f"{med(our_cpu) * 1e3:.2f} ms")

        # 3. structured output
        msgs = [{"role": "user", "content": "List ten animals and how many there are, as JSON."}]
        ids = model.chat_tokens(msgs)
        "".join(json_stream(model, ids, SCHEMA, max_new_tokens=4))  # llguidance's tokenizer
        free, json_ = [], []
        for _ in range(args.runs):
            model.reset()
            model.generate(ids, max_new_tokens=args.tokens)
            s = model.last_stats
            free.append(s["new_tokens"] / s["decode_seconds"])
            model.reset()
            "".join(json_stream(model, ids, SCHEMA, max_new_tokens=args.tokens))
            s = model.last_stats
            json_.append(s["new_tokens"] / s["decode_seconds"])
        print(f"structured: with schema {med(json_):.1f} tok/s, without {med(free):.1f} tok/s "
              f"({med(json_) / med(free) * 100:.1f} %)")
    finally:
        server.close()
        model.close()


if __name__ == "__main__":
    main()
