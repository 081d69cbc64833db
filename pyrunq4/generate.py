"""Command line generation: python -m pyrunq4.generate MODEL.rq4 [options]

Streams only the new text to stdout (flushed piece by piece), then prints the
prompt and decode speeds to stderr. --chat renders the model's own chat
template; with --chat and no -p it is an interactive multi-turn chat reading
one user message per line from stdin until EOF (Ctrl-D). Known errors (a
missing file, a file that is not .rq4, bad option values) print one line on
stderr and exit with status 1; a closed pipe (| head -c 20) exits quietly.
"""

from __future__ import annotations

import argparse
import math
import sys

from ._cli import HelpFormatter, Parser, UsageError, positive_int, run_main, write_output

PROG = "python -m pyrunq4.generate"


def _nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _temperature(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return v


def _top_p(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def build_parser():
    from ._lib import DEFAULT_CTX

    p = Parser(prog=PROG, description="Generate text with an .rq4 model (int4 C engine).",
                formatter_class=HelpFormatter)
    p.add_argument("model", metavar="MODEL.rq4", help="the model file")
    p.add_argument("-p", "--prompt", default=None,
                   help="the prompt (with --chat: the user message); without --chat the "
                        "default is the empty prompt (just BOS)")
    p.add_argument("-n", "--max-new-tokens", type=_nonneg_int, default=256,
                   help="the most tokens to generate (per answer with --chat)")
    p.add_argument("-t", "--temperature", type=_temperature, default=0.0,
                   help="sampling temperature; 0 is greedy")
    p.add_argument("--top-p", type=_top_p, default=1.0,
                   help="nucleus sampling: keep the most likely tokens up to this mass; 1 keeps all")
    p.add_argument("--top-k", type=_nonneg_int, default=0,
                   help="keep only the k most likely tokens; 0 keeps all")
    p.add_argument("--seed", type=_nonneg_int, default=None,
                   help="random seed, for reproducible sampling (default: fresh entropy)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="worker threads (default: the CPUs this process may use)")
    p.add_argument("--ctx", type=positive_int, default=None,
                   help=f"context length, the KV cache size (default: {DEFAULT_CTX}, or the "
                        "model's max_seq_len if that is smaller)")
    p.add_argument("--chat", action="store_true",
                   help="use the model's chat template; without -p, chat interactively "
                        "(one message per line on stdin, Ctrl-D ends)")
    p.add_argument("--system", default=None, metavar="TEXT",
                   help="a system message for --chat")
    return p


def _write(text):
    write_output(text)


def _report(model, totals):
    """Prompt and decode speeds on stderr."""
    pt, ps, nt, ds = totals
    pr = pt / ps if ps > 0 else 0.0
    dr = nt / ds if ds > 0 else 0.0
    print(f"prompt: {pt} tokens, {pr:.1f} tokens/s; decode: {nt} tokens, {dr:.1f} tokens/s "
          f"(kernel {model.kernel}, {model.config.n_threads} threads)", file=sys.stderr)


def _accumulate(totals, stats):
    if stats and stats.get("stop_reason") == "context":
        print("(stopped: the context is full; --ctx sets its length)", file=sys.stderr)
    if stats:
        totals[0] += stats["prompt_fed"]
        totals[1] += stats["prompt_seconds"]
        totals[2] += stats["new_tokens"]
        totals[3] += stats["decode_seconds"]


def _run(args):
    from .model import Model

    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
               top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    totals = [0, 0.0, 0, 0.0]
    with Model(args.model, n_ctx=args.ctx, n_threads=args.threads) as m:
        if not args.chat:
            if args.system is not None:
                raise UsageError("--system needs --chat")
            for piece in m.stream(args.prompt or "", **gen):
                _write(piece)
            _write("\n")
            _accumulate(totals, m.last_stats)
        else:
            messages = []
            if args.system is not None:
                messages.append({"role": "system", "content": args.system})
            interactive = args.prompt is None
            while True:
                if interactive:
                    if sys.stdin.isatty():
                        sys.stderr.write("> ")
                        sys.stderr.flush()
                    line = sys.stdin.readline()
                    if not line:  # EOF
                        break
                    user = line.rstrip("\n")
                    if not user.strip():
                        continue
                else:
                    user = args.prompt
                messages.append({"role": "user", "content": user})
                reply = []
                for piece in m.chat_stream(messages, **gen):
                    reply.append(piece)
                    _write(piece)
                _write("\n")
                _accumulate(totals, m.last_stats)
                messages.append({"role": "assistant", "content": "".join(reply)})
                if not interactive:
                    break
        _report(m, totals)
    return 0


def main(argv=None):
    """Entry point; returns the exit status (0 ok, 1 a known error)."""
    return run_main(PROG, build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
