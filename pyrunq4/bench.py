"""Benchmark: prompt and decode speed, time to first token, peak memory, roofline.

    pyrunq4-bench (python -m pyrunq4.bench) MODEL.rq4 [--threads T] [--vs-binary ./runq4]
        [--vs-llamacpp MODEL.gguf]

"ours" is the engine through Model.feed with argmax; with --vs-binary the
whole Python door (Model.generate, several ids per C call, and Model.stream,
one id per call: sampling, the text of each token, stop handling) runs next
to the runq4 binary on the same prompt, all three counting decode speed as
the binary does (generated tokens / time of the decode loop), with a ratio
line for each.

Each run is a fresh worker process (so peak resident memory is the engine's
own, read from the kernel when the worker exits); with --vs-llamacpp the runs
of both engines alternate, ours first, so drifting machine load hits both
alike. Figures are medians over --runs runs; ratios are ours / llama.cpp.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from . import __version__

PROMPT_FILES = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0")


def prompt_text():
    for path in PROMPT_FILES:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    return " ".join(f"The number {i} follows {i - 1} and precedes {i + 1}." for i in range(1, 400))


def prompt_ids(model_path, n):
    """The first n tokens of a fixed English text, by the model's own tokenizer."""
    from .model import Model

    with Model(model_path, n_ctx=8) as m:
        ids = m.tokenize(prompt_text())
    if len(ids) < n:
        raise SystemExit(f"bench: the prompt text has only {len(ids)} tokens, {n} wanted")
    return ids[:n]


def run_ours(args, ids):
    from .model import Model

    with Model(args.model, n_ctx=len(ids) + args.decode + 1, n_threads=args.threads) as m:
        t0 = time.perf_counter()
        logits = m.feed(ids)
        t1 = time.perf_counter()
        tok = int(np.argmax(logits))
        logits = m.feed([tok])
        t2 = time.perf_counter()
        for _ in range(args.decode - 1):
            logits = m.feed([int(np.argmax(logits))])
        t3 = time.perf_counter()
        kernel = m.kernel
        huge = huge_page_share(args.model)
    return {"prompt_s": t1 - t0, "ttft_s": t2 - t0, "decode_s": t3 - t1, "kernel": kernel, "huge": huge}


def huge_page_share(path):
    """The share of this process's mapping of `path` that the kernel maps in
    2 MB pages (FilePmdMapped in /proc/self/smaps), or None where that cannot
    be read. The page size moves decoding's speed (docs/PERFORMANCE.md)."""
    target = os.path.realpath(path)
    size = pmd = 0
    ours = False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()
                if "-" in head[0] and len(head) >= 5:  # a mapping's first line
                    ours = len(head) >= 6 and head[5] == target
                elif ours and head[0] == "Size:":
                    size += int(head[1])
                elif ours and head[0] == "FilePmdMapped:":
                    pmd += int(head[1])
    except OSError:
        return None
    return pmd / size if size else None


def run_llamacpp(args, ids):
    from llama_cpp import Llama

    try:
        llm = Llama(model_path=args.vs_llamacpp, n_ctx=len(ids) + args.decode + 1,
                    n_batch=len(ids), n_threads=args.threads, n_threads_batch=args.threads,
                    verbose=False)
    except ValueError as e:  # llama-cpp-python's word for a file llama.cpp cannot load
        raise SystemExit(f"bench: llama.cpp: {e}")
    n_vocab = llm.n_vocab()

    def greedy():  # the last token's logits, read in place as ours are
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))))

    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    llm.eval([greedy()])
    t2 = time.perf_counter()
    for _ in range(args.decode - 1):
        llm.eval([greedy()])
    t3 = time.perf_counter()
    return {"prompt_s": t1 - t0, "ttft_s": t2 - t0, "decode_s": t3 - t1, "kernel": "llama.cpp"}


def run_generate(args, ids, streaming=False):
    from .model import Model

    with Model(args.model, n_ctx=len(ids) + args.decode + 1, n_threads=args.threads) as m:
        if streaming:
            for _ in m.stream(ids, max_new_tokens=args.decode):
                pass
        else:
            m.generate(ids, max_new_tokens=args.decode)
        s = m.last_stats
        kernel = m.kernel
    return {"prompt_s": s["prompt_seconds"], "ttft_s": s["prompt_seconds"],
            "decode_s": s["decode_seconds"], "new_tokens": s["new_tokens"],
            "decode_tps": s["new_tokens"] / s["decode_seconds"], "kernel": kernel}


def run_stream(args, ids):
    return run_generate(args, ids, streaming=True)


WORKERS = {"ours": run_ours, "generate": run_generate, "stream": run_stream, "llamacpp": run_llamacpp}


def run_worker(args):
    ids = json.loads(sys.stdin.read())
    print(json.dumps(WORKERS[args.worker](args, ids)))


def binary_prompt(model_path, ids):
    """The text the binary is given for ids (it adds BOS itself), checked to
    tokenize back to exactly ids."""
    from .model import Model

    with Model(model_path, n_ctx=8) as m:
        text = m.detokenize(ids[1:] if ids[0] == m.config.bos_id else ids)
        if m.tokenize(text) != list(ids):
            raise SystemExit("bench: the prompt does not round-trip through the tokenizer")
    return text


def spawn_binary(args, ids, text):
    """One run of the runq4 binary: its own figures from its last stderr line."""
    cmd = [args.vs_binary, args.model, "-T", str(args.threads), "-n", str(args.decode),
           "-c", str(len(ids) + args.decode + 1), "-i", text]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)
    m = re.search(r"prompt (\d+) tokens, ([\d.]+) tok/s; generated (\d+) tokens, ([\d.]+) tok/s"
                  r".*kernel (\S+),", err)
    if os.waitstatus_to_exitcode(status) != 0 or not m:
        raise SystemExit(f"bench: {args.vs_binary} failed: {err.strip()[-300:]}")
    n_prompt, prompt_tps, n_gen, gen_tps = int(m[1]), float(m[2]), int(m[3]), float(m[4])
    prompt_s = n_prompt / prompt_tps
    return {"prompt_s": prompt_s, "ttft_s": prompt_s, "decode_s": n_gen / gen_tps,
            "new_tokens": n_gen, "decode_tps": gen_tps, "kernel": m[5],
            "peak_rss_mb": usage.ru_maxrss / 1024}


def spawn(args, engine, ids):
    """One run in a fresh process; returns its figures and its peak RSS."""
    cmd = [sys.executable, "-m", "pyrunq4.bench", args.model, "--worker", engine,
           "--threads", str(args.threads), "--decode", str(args.decode)]
    if args.vs_llamacpp:
        cmd += ["--vs-llamacpp", args.vs_llamacpp]
    # the worker imports this very pyrunq4, installed or a checkout, whatever the cwd
    parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [parent, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    proc.stdin.write(json.dumps(ids).encode())
    proc.stdin.close()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: the {engine} worker failed (exit {proc.returncode})")
    result = json.loads(out)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def weight_bytes_per_token(path):
    """Bytes of weights a decode step streams: every tensor once (the tied
    embedding as the classifier), blobs not, the embedding row lookup ignored."""
    from .export.reader import read_table

    header, table = read_table(path)
    skip_embedding = not header["tied_embeddings"]
    return sum(e["size"] for e in table if e["type"] != "blob"
               and not (skip_embedding and e["name"] == "tok_embeddings"))


def measure_bandwidth(threads, mb=512, repeats=5):
    """Read bandwidth in bytes/s: `threads` threads summing disjoint slices of
    a buffer far larger than the caches (numpy releases the GIL while summing)."""
    buf = np.ones(mb * (1 << 20) // 8, dtype=np.int64)
    parts = np.array_split(buf, threads)
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, buf.nbytes / (time.perf_counter() - t0))
    return best


# the instruction-set flags that decide which kernels run (x86 and ARM names in /proc/cpuinfo)
SIMD_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "asimd", "asimddp", "i8mm", "sve")


def cpu_description():
    """The CPU's model name and its SIMD flags, from /proc/cpuinfo ("unknown CPU" elsewhere)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware", "CPU part") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    simd = [f for f in SIMD_FLAGS if f in flags]
    return f"{model or 'unknown CPU'}, {os.cpu_count()} CPUs, flags: {' '.join(simd) or 'none of ' + ' '.join(SIMD_FLAGS)}"


def summarize(runs, n_prompt, n_decode):
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    return {
        "prompt_tps": n_prompt / med("prompt_s"),
        # the binary's own definition where the run gives it, else n - 1 steps after the first
        "decode_tps": med("decode_tps") if "decode_tps" in runs[0] else (n_decode - 1) / statistics.median(
            r["decode_s"] - (r["ttft_s"] - r["prompt_s"]) for r in runs),
        "ttft_ms": 1000 * med("ttft_s"),
        "peak_rss_mb": med("peak_rss_mb"),
        "kernel": runs[0]["kernel"],
        "huge": runs[0].get("huge"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="pyrunq4-bench", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("model", help="the .rq4 model")
    ap.add_argument("--threads", type=int, default=1, help="threads for both engines")
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    ap.add_argument("--decode", type=int, default=128, help="tokens to decode")
    ap.add_argument("--runs", type=int, default=5, help="runs per engine (medians are reported)")
    ap.add_argument("--vs-llamacpp", metavar="MODEL.gguf", help="also run llama.cpp (llama-cpp-python) on this GGUF")
    ap.add_argument("--vs-binary", metavar="RUNQ4",
                    help="also run Model.generate and this runq4 binary (make runq4: ./runq4)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.prompt < 1 or args.decode < 2 or args.runs < 1:
        ap.error("--threads, --prompt and --runs must be >= 1, --decode >= 2")
    if args.worker:
        return run_worker(args)
    for path in [args.model] + [p for p in (args.vs_llamacpp, args.vs_binary) if p]:
        if not os.path.isfile(path):
            ap.error(f"no such file: {path}")
    if args.vs_llamacpp:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            ap.error("--vs-llamacpp needs llama-cpp-python (pip install 'pyrunq4[llamacpp]')")

    from .errors import Runq4Error

    try:
        ids = prompt_ids(args.model, args.prompt)
    except Runq4Error as e:  # the file is not a model this engine runs
        ap.error(str(e))
    engines = (["ours"] + (["generate", "stream", "runq4"] if args.vs_binary else [])
               + (["llamacpp"] if args.vs_llamacpp else []))
    text = binary_prompt(args.model, ids) if args.vs_binary else None
    runs = {e: [] for e in engines}
    for i in range(args.runs):
        for e in engines:
            runs[e].append(spawn_binary(args, ids, text) if e == "runq4" else spawn(args, e, ids))
            r = runs[e][-1]
            tps = r.get("decode_tps") or (args.decode - 1) / r["decode_s"]
            print(f"run {i + 1}/{args.runs} {e}: decode {tps:.1f} tok/s", file=sys.stderr)
    if args.vs_binary:
        counts = {e: runs[e][0]["new_tokens"] for e in ("generate", "stream", "runq4")}
        if len(set(counts.values())) != 1:
            print(f"bench: warning: generated token counts differ {counts}", file=sys.stderr)
    stats = {e: summarize(runs[e], args.prompt, args.decode) for e in engines}

    print(f"cpu: {cpu_description()}")
    print(f"model {args.model}, threads {args.threads}, prompt {args.prompt} tokens, "
          f"decode {args.decode} tokens, median of {args.runs} runs")
    print(f"{'':24}{'prompt tok/s':>14}{'decode tok/s':>14}{'TTFT ms':>10}{'peak RSS MB':>13}  kernel")
    for e in engines:
        s = stats[e]
        print(f"{e:24}{s['prompt_tps']:14.1f}{s['decode_tps']:14.1f}{s['ttft_ms']:10.1f}"
              f"{s['peak_rss_mb']:13.1f}  {s['kernel']}")
    if args.vs_binary:
        b = stats["runq4"]
        for e in ("generate", "stream"):
            g = stats[e]
            print(f"{'ratio ' + e + '/runq4':24}{g['prompt_tps'] / b['prompt_tps']:14.2f}"
                  f"{g['decode_tps'] / b['decode_tps']:14.2f}{g['ttft_ms'] / b['ttft_ms']:10.2f}"
                  f"{g['peak_rss_mb'] / b['peak_rss_mb']:13.2f}")
    if args.vs_llamacpp:
        o, l = stats["ours"], stats["llamacpp"]
        print(f"{'ratio ours/llama.cpp':24}{o['prompt_tps'] / l['prompt_tps']:14.2f}"
              f"{o['decode_tps'] / l['decode_tps']:14.2f}{o['ttft_ms'] / l['ttft_ms']:10.2f}"
              f"{o['peak_rss_mb'] / l['peak_rss_mb']:13.2f}")
    bw = measure_bandwidth(args.threads)
    per_token = weight_bytes_per_token(args.model)
    roof = bw / per_token
    print(f"roofline: {per_token / 1e6:.1f} MB of weights per token, read bandwidth {bw / 1e9:.1f} GB/s "
          f"({args.threads} threads) -> {roof:.0f} tok/s; ours reaches {stats['ours']['decode_tps'] / roof:.0%}")
    huge = stats["ours"]["huge"]
    if huge is not None:
        print(f"weights mapped in 2 MB pages: {huge:.0%} (the rest in 4 KiB pages)")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        sys.exit(0)
