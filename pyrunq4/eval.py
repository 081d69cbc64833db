"""Evaluation: pyrunq4-eval (python -m pyrunq4.eval) perplexity MODEL.rq4 --text FILE [--window 512]
                                    [--compare OTHER.rq4 ...]  (one table, same ids)
                                    [--reference FLOAT.rq4]    (KL divergence per token)
         pyrunq4-eval tasks MODEL.rq4 --tasks hellaswag,arc_easy [--include DIR]
                                    (task accuracy through lm-evaluation-harness: pyrunq4.harness)

The text is tokenized once (with BOS, as generate does) and cut into
non-overlapping windows of `window` tokens; each window is evaluated from an
empty cache and every token after its first is scored (the first token of a
window is context only). The last line printed is exactly
    perplexity: <value> tokens: <count>
perplexity(model, ids, window) is the reusable part (several models can be
scored on the same ids, e.g. for a comparison table). With --reference, the
KL divergence of each scored token's next-token distribution from the
reference's (its weights run by the numpy float forward, pyrunq4.reference;
`python -m pyrunq4.export SOURCE float.rq4 --float` makes the float model)
is printed too: its mean and 99th percentile, and how often the top tokens agree.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from ._cli import HelpFormatter, Parser, UsageError, add_version, positive_int, read_text_file, run_main
from .progress import progress_bar

PROG = "pyrunq4-eval"


def negative_log_likelihoods(model, ids, window=512, progress=False) -> np.ndarray:
    """-log p(token | window prefix) of every scored token, in order
    (pyrunq4.scoring: the window fed in chunks, float32 log-softmax).
    progress: a bar on stderr (a terminal only)."""
    from .scoring import score

    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    with progress_bar(total=len(ids), desc="perplexity", unit="token", quiet=not progress) as bar:
        return score([model], ids, window, progress=lambda done, total: bar.update(done - bar.n))[0].nll


def perplexity(model, ids, window=512, progress=False):
    """(perplexity, number of scored tokens) of ids under model."""
    nll = negative_log_likelihoods(model, ids, window, progress)
    if nll.size == 0:
        raise ValueError("no token to score: the text needs at least 2 tokens")
    return float(math.exp(nll.mean())), int(nll.size)


def build_parser():
    from ._lib import DEFAULT_KV_TYPE, KV_TYPES

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
    pp.add_argument("--kv", choices=sorted(KV_TYPES), default=DEFAULT_KV_TYPE,
                    help="KV cache element type")
    pp.add_argument("--float-activations", action="store_true",
                    help="reference mode: dequantized weights, float activations (slow); "
                         "isolates the weight quantization from the int8 activations")
    pp.add_argument("--compare", nargs="+", default=None, metavar="OTHER.rq4",
                    help="more models scored on the same token ids (tokenized by MODEL); "
                         "prints one table: file, size, perplexity, seconds")
    pp.add_argument("--reference", metavar="FLOAT.rq4",
                    help="also the KL divergence from this model's next-token distributions "
                         "(numpy float forward of its weights; export --float makes one)")
    tp = sub.add_parser("tasks", help="task accuracy through lm-evaluation-harness (needs lm-eval)",
                        formatter_class=HelpFormatter)
    tp.error = p.error
    tp.add_argument("model", metavar="MODEL.rq4", help="the model file")
    tp.add_argument("--tasks", required=True,
                    help="comma-separated lm_eval task names (hellaswag, arc_easy, ...: their "
                         "datasets download from the Hugging Face hub; or tasks of --include)")
    tp.add_argument("--include", metavar="DIR",
                    help="a folder of task YAML files (e.g. datasets read from local JSON files)")
    tp.add_argument("--num-fewshot", type=int, default=None, help="examples in each prompt (task default)")
    tp.add_argument("--limit", type=positive_int, default=None, help="at most this many documents per task")
    tp.add_argument("--n-ctx", type=positive_int, default=None,
                    help="context in tokens (default: the model's, at most 4096)")
    tp.add_argument("--threads", type=positive_int, default=None,
                    help="worker threads (default: the CPUs this process may use)")
    tp.add_argument("--chat", action="store_true", help="prompts through the model's chat template")
    tp.add_argument("--output", metavar="FILE.json", help="also write lm_eval's results as JSON")
    return p


def _open(path, args):
    """The model with the command line's choices; the window is the context
    (the library refuses one beyond the model's max_seq_len)."""
    from .model import Model

    return Model(path, n_ctx=args.window, n_threads=args.threads, kv_type=args.kv,
                 float_activations=args.float_activations)


def _reference(args):
    if not args.reference:
        return None
    from .scoring import FloatReference

    try:
        return FloatReference(args.reference)
    except (OSError, ValueError) as e:
        raise UsageError(f"{args.reference}: cannot read the reference: {e}") from None


def _kl_columns(s):
    return (f"  {s['kl_mean']:8.4f}  {s['kl_p99']:7.4f}  {s['same_top']:6.3f}"
            if "kl_mean" in s else "")


def _cmd_perplexity(args):
    """One table for MODEL and every --compare file on the same ids (or the
    single perplexity line), with KL columns when --reference is given."""
    import os

    from .scoring import score

    if args.window < 2:
        raise UsageError(f"--window must be >= 2, got {args.window}")
    text = read_text_file(args.text)
    paths = [args.model] + list(args.compare or [])
    ref = _reference(args)
    models = []
    try:
        for path in paths:
            models.append(_open(path, args))
        ids = models[0].tokenize(text, add_bos=True)
        vocab = models[0].config.vocab_size
        for path, m in zip(paths, models):
            if m.config.vocab_size != vocab:
                raise UsageError(f"{path}: vocabulary {m.config.vocab_size} differs from {vocab}")
        if ref is not None and ref.config.vocab_size != vocab:
            raise UsageError(f"{args.reference}: vocabulary {ref.config.vocab_size} differs from {vocab}")
        with progress_bar(total=len(ids), desc="perplexity", unit="token") as bar:
            results = score(models, ids, args.window, ref,
                            progress=lambda done, total: bar.update(done - bar.n))
    finally:
        for m in models:
            m.close()
    if results[0].nll.size == 0:
        raise UsageError("no token to score: the text needs at least 2 tokens")
    if not args.compare:
        s = results[0].summary()
        if ref is not None:
            print(f"kl_mean: {s['kl_mean']:.5f} kl_p99: {s['kl_p99']:.5f} same_top: {s['same_top']:.4f}")
        print(f"perplexity: {s['perplexity']:.4f} tokens: {s['tokens']}")
        return 0
    width = max(len(os.path.basename(x)) for x in paths)
    kl_head = f"  {'KL mean':>8s}  {'KL p99':>7s}  {'top=':>6s}" if ref is not None else ""
    print(f"{'model':{width}s}  {'MB':>7s}  {'perplexity':>10s}  {'tokens':>6s}{kl_head}  {'seconds':>7s}")
    for path, r in zip(paths, results):
        s = r.summary()
        print(f"{os.path.basename(path):{width}s}  {os.path.getsize(path) / 1e6:7.1f}  {s['perplexity']:10.4f}  "
              f"{s['tokens']:6d}{_kl_columns(s)}  {r.seconds:7.1f}", flush=True)
    return 0


def _cmd_tasks(args):
    """lm_eval's table of each task's metrics (pyrunq4.harness)."""
    import json

    try:
        from . import harness
    except ImportError as e:
        raise UsageError(f"the tasks command needs lm-eval ({e}): pip install 'pyrunq4[lmeval]'") from None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UsageError("--tasks names no task")
    out = harness.evaluate(args.model, tasks, include_path=args.include, num_fewshot=args.num_fewshot,
                           limit=args.limit, n_ctx=args.n_ctx, threads=args.threads,
                           apply_chat_template=args.chat)
    if out is None or not out.get("results"):
        raise UsageError(f"no results for {', '.join(tasks)}")
    from lm_eval.utils import make_table
    print(make_table(out), flush=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({k: out[k] for k in ("results", "versions", "n-shot", "config") if k in out},
                      f, indent=2, default=str)
    return 0


def _run(args):
    if args.command == "perplexity":
        return _cmd_perplexity(args)
    if args.command == "tasks":
        return _cmd_tasks(args)
    raise UsageError(f"unknown command {args.command!r}")


def main(argv=None):
    """Entry point; returns the exit status."""
    return run_main(PROG, build_parser(), _run, argv, known_errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
