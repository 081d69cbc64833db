"""Command line generation: pyrunq4-generate (python -m pyrunq4.generate)
MODEL.rq4 [options]

Streams only the new text to stdout (flushed piece by piece), then prints the
prompt and decode speeds to stderr. --chat renders the model's own chat
template; with --chat and no --prompt it is an interactive multi-turn chat
reading one user message per line from stdin until EOF (Ctrl-D). Known errors
(a missing file, a file that is not .rq4, bad option values) print one line on
stderr and exit with status 1; a closed pipe (| head -c 20) exits quietly.

The long options are the runq4 binary's, with the same meanings and defaults
(tests/test_cli.py runs one argument list through both).
"""

from __future__ import annotations

import os
import sys

from ._cli import HelpFormatter, Parser, UsageError, add_version, run_main, write_output
from .checks import check_max_new_tokens, check_sampling

PROG = "pyrunq4-generate"


def build_parser():
    from ._lib import DEFAULT_CTX, DEFAULT_KV_TYPE, DEFAULT_REPEAT_LAST_N, KV_TYPES

    p = Parser(prog=PROG, description="Generate text with an .rq4 model (int4 C engine).",
               formatter_class=HelpFormatter)
    p.add_argument("model", metavar="MODEL.rq4", help="the model file")
    p.add_argument("-p", "--prompt", default=None,
                   help="the prompt (with --chat: the first user message); without --chat the "
                        "default is the empty prompt (just BOS)")
    p.add_argument("-n", "--max-new-tokens", type=int, default=256, metavar="N",
                   help="tokens to generate (per answer with --chat); 0: none; -1: until the end "
                        "of the turn or a full context")
    p.add_argument("-t", "--temperature", type=float, default=0.0, metavar="F",
                   help="sampling temperature; 0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0, metavar="F",
                   help="nucleus sampling: keep the most likely tokens up to this mass, in (0, 1]; "
                        "1 keeps all")
    p.add_argument("--top-k", type=int, default=0, metavar="N",
                   help="keep only the k most likely tokens; 0 keeps all")
    p.add_argument("--min-p", type=float, default=0.0, metavar="F",
                   help="keep the tokens at least F times as likely as the most likely one, "
                        "F in [0, 1]; 0 keeps all")
    p.add_argument("--repeat-penalty", type=float, default=1.0, metavar="F",
                   help="divide the positive logits of the ids among the last --repeat-last-n "
                        "(multiply the negative ones) by F > 0; 1 is off")
    p.add_argument("--repeat-last-n", type=int, default=DEFAULT_REPEAT_LAST_N, metavar="N",
                   help="the ids the repetition penalty looks back over")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="random seed in [0, 2^64), for reproducible sampling (default: random)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="worker threads (default: the CPUs this process may use, at most "
                        "RQ4_MAX_THREADS)")
    p.add_argument("--ctx", type=int, default=None, metavar="N",
                   help=f"context length, the KV cache size (default: {DEFAULT_CTX}, or the "
                        "model's max_seq_len if that is smaller)")
    p.add_argument("--kv-type", choices=sorted(KV_TYPES), default=DEFAULT_KV_TYPE,
                   help="KV cache element type")
    p.add_argument("--chat", action="store_true",
                   help="use the model's chat template; without --prompt, chat interactively "
                        "(one message per line on stdin, Ctrl-D ends)")
    p.add_argument("--system", default=None, metavar="TEXT",
                   help="a system message for --chat")
    p.add_argument("--max-memory", type=int, default=None, metavar="MIB",
                   help="refuse to open the model if weights + KV cache + buffers would need more "
                        "than this many MiB (default: no limit)")
    p.add_argument("--prompt-cache", default=None, metavar="FILE",
                   help="reuse the KV cache of the prompt saved in FILE (the first chat turn in --chat), "
                        "then save this prompt's; a missing or unfitting file is (re)written")
    add_version(p)
    return p


def _max_new_tokens(n):
    """The command line's -n: -1 means no limit (None for Model)."""
    if n == -1:
        return None
    if n < -1:
        raise UsageError(f"--max-new-tokens must be >= -1, got {n}")
    return check_max_new_tokens(n)


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


class _PromptCache:
    """--prompt-cache: the saved state is loaded before the first prompt, so
    the model reuses its common prefix with the prompt; after that prompt's
    answer the cache is cut back to the prompt and saved, unless the file
    already holds exactly that prompt."""

    def __init__(self, model, path):
        self.model, self.path, self.saved = model, path, None
        if path is None:
            return
        from .errors import Runq4Error

        try:
            self.model.load_state(path)
            self.saved = self.model.tokens
        except Runq4Error as e:
            if os.path.lexists(path):
                print(f"{PROG}: prompt cache not used: {e}", file=sys.stderr)

    def after_first(self, prompt_ids):
        """Called once the first prompt's answer is done."""
        if self.path is None:
            return
        n = len(prompt_ids)
        reused = n - self.model.last_stats["prompt_fed"]
        print(f"{PROG}: prompt cache {self.path}: {reused} of {n} prompt tokens reused", file=sys.stderr)
        if self.saved != tuple(prompt_ids) and self.model.tokens[:n] == tuple(prompt_ids):
            self.model.rewind(n)  # the answer is fed again by a later turn, if any
            self.model.save_state(self.path)
        self.path = None


def _run(args):
    from .model import Model

    check_sampling(args.temperature, args.top_p, args.top_k, args.seed, args.min_p,
                   args.repeat_penalty, args.repeat_last_n)
    if args.max_memory is not None and args.max_memory < 1:
        raise UsageError(f"--max-memory must be a number of MiB >= 1, got {args.max_memory}")
    gen = dict(max_new_tokens=_max_new_tokens(args.max_new_tokens), temperature=args.temperature,
               top_p=args.top_p, top_k=args.top_k, seed=args.seed, min_p=args.min_p,
               repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, progress=True)
    totals = [0, 0.0, 0, 0.0]
    max_memory = None if args.max_memory is None else args.max_memory << 20
    with Model(args.model, n_ctx=args.ctx, n_threads=args.threads, kv_type=args.kv_type,
               max_memory=max_memory) as m:
        cache = _PromptCache(m, args.prompt_cache)
        if not args.chat:
            if args.system is not None:
                raise UsageError("--system needs --chat")
            ids = m.tokenize(args.prompt or "", add_bos=True)
            for piece in m.stream(ids, **gen):
                _write(piece)
            _write("\n")
            _accumulate(totals, m.last_stats)
            cache.after_first(ids)
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
                ids = m.chat_tokens(messages)
                reply = []
                for piece in m.stream(ids, **gen):
                    reply.append(piece)
                    _write(piece)
                _write("\n")
                _accumulate(totals, m.last_stats)
                cache.after_first(ids)
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
