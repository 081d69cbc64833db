"""Evaluation: pyrunq4-eval (python -m pyrunq4.eval) perplexity MODEL.rq4 --text FILE [--window 512]
                                    [--compare OTHER.rq4 ...]  (one table, same ids)

The text is tokenized once (with BOS, as generate does) and cut into
non-overlapping windows of `window` tokens; each window is evaluated from an
empty cache and every token after its first is scored (the first token of a
window is context only). The last line printed is exactly
    perplexity: <value> tokens: <count>
perplexity(model, ids, window) is the reusable part (several models can be
scored on the same ids, e.g. for a comparison table).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from ._cli import HelpFormatter, Parser, UsageError, add_version, positive_int, read_text_file, run_main
from .progress import progress_bar

PROG = "pyrunq4-eval"


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) per row of float32 logits (n, vocab), in float64."""
    x = logits.astype(np.float64)
    mx = x.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(x - mx).sum(axis=1))
    return x[np.arange(len(targets)), targets] - lse


def negative_log_likelihoods(model, ids, window=512, progress=False) -> np.ndarray:
    """-log p(token | window prefix) of every scored token, in order.
    progress: a bar per window on stderr (a terminal only)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if window > model.config.n_ctx:
        raise ValueError(f"window {window} exceeds the context {model.config.n_ctx}")
    out = []
    starts = range(0, len(ids), window)
    with progress_bar(total=len(starts), desc="perplexity", unit="window", quiet=not progress) as bar:
        for start in starts:
            chunk = ids[start:start + window]
            if len(chunk) < 2:
                break
            logits = model.logits(chunk)
            out.append(-_log_softmax_at(logits[:-1], chunk[1:]))
            bar.update(1)
    return np.concatenate(out) if out else np.zeros(0)


def perplexity(model, ids, window=512, progress=False):
    """(perplexity, number of scored tokens) of ids under model."""
    nll = negative_log_likelihoods(model, ids, window, progress)
    if nll.size == 0:
        raise ValueError("no token to score: the text needs at least 2 tokens")
    return float(math.exp(nll.mean())), int(nll.size)


def build_parser():
    p = Parser(prog=PROG, description="Evaluate .rq4 models.",
                formatter_class=HelpFormatter)
    add_version(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    pp = sub.add_parser("perplexity", help="perplexity of a text file",
                        formatter_class=HelpFormatter)
    pp.error = p.error  # one-line errors in the subcommand too
    pp.add_argument("model", metavar="MODEL.rq4", help="the model file")
    pp.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file to score")
    pp.add_argument("--window", type=positive_int, default=512,
                    help="tokens per window (each from an empty cache)")
    pp.add_argument("--threads", type=positive_int, default=None,
                    help="worker threads (default: the CPUs this process may use)")
    pp.add_argument("--kv", choices=("f32", "f16"), default="f32", help="KV cache element type")
    pp.add_argument("--float-activations", action="store_true",
                    help="reference mode: dequantized weights, float activations (slow); "
                         "isolates the weight quantization from the int8 activations")
    pp.add_argument("--compare", nargs="+", default=None, metavar="OTHER.rq4",
                    help="more models scored on the same token ids (tokenized by MODEL); "
                         "prints one table: file, size, perplexity, seconds")
    return p


def _open(path, args):
    """The model with the command line's choices; the window is the context
    (the library refuses one beyond the model's max_seq_len)."""
    from .model import Model

    return Model(path, n_ctx=args.window, n_threads=args.threads, kv_type=args.kv,
                 float_activations=args.float_activations)


def _cmd_compare(args, text):
    """One table for MODEL and every --compare file on the same ids."""
    import os
    import time

    paths = [args.model] + list(args.compare)
    with _open(paths[0], args) as m:
        ids = m.tokenize(text, add_bos=True)
        vocab = m.config.vocab_size
    width = max(len(os.path.basename(x)) for x in paths)
    print(f"{'model':{width}s}  {'MB':>7s}  {'perplexity':>10s}  {'tokens':>6s}  {'seconds':>7s}")
    for path in paths:
        t0 = time.time()
        with _open(path, args) as m:
            if m.config.vocab_size != vocab:
                raise UsageError(f"{path}: vocabulary {m.config.vocab_size} differs from {vocab}")
            ppl, n = perplexity(m, ids, args.window, progress=True)
        print(f"{os.path.basename(path):{width}s}  {os.path.getsize(path) / 1e6:7.1f}  {ppl:10.4f}  "
              f"{n:6d}  {time.time() - t0:7.1f}", flush=True)
    return 0


def _cmd_perplexity(args):
    if args.window < 2:
        raise UsageError(f"--window must be >= 2, got {args.window}")
    text = read_text_file(args.text)
    if args.compare:
        return _cmd_compare(args, text)
    with _open(args.model, args) as m:
        ids = m.tokenize(text, add_bos=True)
        ppl, n = perplexity(m, ids, args.window, progress=True)
    print(f"perplexity: {ppl:.4f} tokens: {n}")
    return 0


def _run(args):
    if args.command == "perplexity":
        return _cmd_perplexity(args)
    raise UsageError(f"unknown command {args.command!r}")


def main(argv=None):
    """Entry point; returns the exit status."""
    return run_main(PROG, build_parser(), _run, argv, known_errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
