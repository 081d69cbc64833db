"""Peak resident memory of the Python paths next to the runq4 binary's.

    python tools/bench_memory.py MODEL.rq4 [--ctx 2048] [--kv-type f16] [--prompt-tokens 500]

Three fresh processes on the same prompt (the first --prompt-tokens tokens of
a fixed English text) and the same 16 greedy tokens: ./runq4, Model.generate
in `python -c`, and python -m pyrunq4.serve answering one /v1/completions
request. Each reports its peak resident set (ru_maxrss of the child; VmHWM
of the server). Run from the checkout's root after `make runq4`.
"""
import argparse
import json
import os
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NEW_TOKENS = 16


def child_peak_mib(cmd):
    """Runs cmd to completion; its peak resident memory (MiB) from wait4."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if status != 0:
        raise SystemExit(f"bench_memory: {cmd[0]} failed: {err[-500:]}")
    return usage.ru_maxrss / 1024


def server_peak_mib(args, prompt_ids):
    p = subprocess.Popen([sys.executable, "-m", "pyrunq4.serve", args.model, "--port", "0",
                          "--ctx", str(args.ctx), "--kv-type", args.kv_type,
                          "--threads", str(args.threads)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        line = p.stderr.readline().decode()
        url = "http://" + line.split("http://", 1)[1].split()[0]
        body = json.dumps({"prompt": prompt_ids, "max_tokens": NEW_TOKENS,
                           "temperature": 0}).encode()
        req = urllib.request.Request(url + "/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as r:
            usage = json.loads(r.read())["usage"]
        assert usage["completion_tokens"] == NEW_TOKENS, usage
        with open(f"/proc/{p.pid}/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM"))
        return int(hwm.split()[1]) / 1024
    finally:
        p.terminate()
        p.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--kv-type", default="f16", choices=("f32", "f16"))
    ap.add_argument("--prompt-tokens", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from pyrunq4.bench import prompt_ids

    ids = prompt_ids(args.model, args.prompt_tokens)
    # the binary takes text: the text of those ids, checked to tokenize back to them
    from pyrunq4 import Model
    with Model(args.model, n_ctx=8) as m:
        text = m.detokenize(ids[1:] if ids[0] == m.config.bos_id else ids)
        assert m.tokenize(text) == ids, "the prompt does not round-trip through the tokenizer"

    binary = child_peak_mib([os.path.join(ROOT, "runq4"), args.model, "-c", str(args.ctx),
                             "-k", args.kv_type, "-T", str(args.threads), "-n", str(NEW_TOKENS),
                             "-i", text])
    py = child_peak_mib([sys.executable, "-c",
                         "import sys; from pyrunq4 import Model\n"
                         f"m = Model(sys.argv[1], n_ctx={args.ctx}, kv_type='{args.kv_type}', "
                         f"n_threads={args.threads})\n"
                         f"m.generate(sys.argv[2], max_new_tokens={NEW_TOKENS})\n"
                         f"assert m.last_stats['new_tokens'] == {NEW_TOKENS}",
                         args.model, text])
    server = server_peak_mib(args, ids)
    print(f"peak resident memory, ctx {args.ctx} {args.kv_type} KV, {len(ids)}-token prompt + "
          f"{NEW_TOKENS} tokens:")
    print(f"  runq4                 {binary:8.1f} MiB")
    print(f"  Model.generate        {py:8.1f} MiB  (+{py - binary:.1f})")
    print(f"  python -m pyrunq4.serve {server:6.1f} MiB  (+{server - binary:.1f})")


if __name__ == "__main__":
    main()
