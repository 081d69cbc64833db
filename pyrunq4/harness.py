"""Task accuracy through lm-evaluation-harness: Rq4LM, an lm_eval model that
runs an .rq4 file with the C engine, and evaluate() behind
`python -m pyrunq4.eval tasks MODEL --tasks ...`.

Needs the optional lm-eval package (`pip install 'pyrunq4[lmeval]'`: its core
imports no torch). Importing this module registers the model as "rq4", so
lm_eval's own Python API takes `model="rq4", model_args="path=MODEL.rq4"`.

Tokenization follows lm_eval's Hugging Face model: the continuation's tokens
are those of context + continuation after the context's (trailing spaces of
the context move to the continuation), so a word is scored as the tokenizer
would see it in running text. Contexts start with the model's BOS token
when it has one (as pyrunq4's generate does; the model was trained that
way), else with its first end-of-sequence token when the context is empty.
Requests are scored in the order of their token ids, so requests that share
a context (the choices of a multiple-choice question) reuse the KV cache of
their common prefix; a sequence longer than the context keeps its last
tokens.
"""

from __future__ import annotations

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from .progress import progress_bar
from .scoring import chunk_rows, log_softmax

__all__ = ["Rq4LM", "evaluate"]


@register_model("rq4")
class Rq4LM(LM):
    """lm_eval model of an .rq4 file. n_ctx: the context (default the file's
    max_seq_len, at most 4096); threads: engine threads (default all CPUs);
    max_gen_toks: generate_until's limit when a task gives none."""

    def __init__(self, path, n_ctx=None, threads=None, max_gen_toks=256, progress=True):
        super().__init__()
        from .model import Model
        self.model = Model(path, n_ctx=None if n_ctx is None else int(n_ctx),
                           n_threads=None if threads is None else int(threads))
        self.path = path
        self.max_gen_toks = int(max_gen_toks)
        self.progress = str(progress).lower() not in ("false", "0", "no")   # model_args give strings
        cfg = self.model.config
        self.n_ctx = cfg.n_ctx
        self.prefix_id = cfg.bos_id if cfg.bos_id >= 0 else (cfg.eos_ids[0] if cfg.eos_ids else None)

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        """model_args "path=MODEL.rq4,n_ctx=2048,threads=2" (lm_eval's form)."""
        kw = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv)
        return cls(**kw)

    @property
    def tokenizer_name(self):
        return self.path

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return self.model.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    # ---- tokens ---------------------------------------------------------------

    def _context_ids(self, text):
        """Ids of a context: BOS first when the model has one; an empty context
        without BOS is the end-of-sequence token (something to predict from)."""
        ids = self.model.tokenize(text, add_bos=True)
        if not ids:
            if self.prefix_id is None:
                raise ValueError(f"{self.path}: no BOS or end-of-sequence token to start a text with")
            ids = [self.prefix_id]
        return ids

    def _split(self, context, continuation):
        """(context ids, continuation ids) as lm_eval's HF model splits them."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        ctx = self._context_ids(context)
        if context:
            cont = self.model.tokenize(context + continuation, add_bos=True)[len(ctx):]
        else:
            cont = self.model.tokenize(continuation, add_bos=False)
        if not cont:
            raise ValueError(f"continuation {continuation!r} has no tokens of its own")
        return ctx, cont

    # ---- scoring -----------------------------------------------------------------

    def _score(self, ctx, cont):
        """(sum of log p(cont | ctx), whether every cont token is the argmax)."""
        ids = list(ctx) + list(cont)
        if len(ids) - 1 > self.n_ctx:            # keep the last tokens that fit
            ids = ids[len(ids) - 1 - self.n_ctx:]
        if len(cont) > len(ids) - 1:
            raise ValueError(f"a continuation of {len(cont)} tokens does not fit in the "
                             f"context of {self.n_ctx}")
        first = len(ids) - 1 - len(cont)         # the position whose logits predict cont[0]
        m = self.model
        keep = 0
        for a, b in zip(m.tokens, ids[:first]):
            if a != b:
                break
            keep += 1
        m.rewind(keep)
        if first > keep:
            m.feed(ids[keep:first])
        total, greedy = 0.0, True
        step = chunk_rows(m.config.vocab_size)
        for a in range(first, len(ids) - 1, step):
            b = min(a + step, len(ids) - 1)
            lp = log_softmax(m.feed(ids[a:b], all_logits=True))
            target = np.asarray(ids[a + 1:b + 1])
            rows = np.arange(b - a)
            total += float(lp[rows, target].astype(np.float64).sum())
            greedy = greedy and bool((lp.argmax(axis=1) == target).all())
        return total, greedy

    def _score_all(self, pairs, desc):
        """_score of each (ctx, cont), in token order for cache reuse; results in input order."""
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0] + pairs[i][1])
        out = [None] * len(pairs)
        with progress_bar(total=len(pairs), desc=desc, unit="request",
                          quiet=not self.progress) as bar:
            for i in order:
                out[i] = self._score(*pairs[i])
                bar.update(1)
        return out

    def loglikelihood(self, requests, disable_tqdm=False):
        pairs = [self._split(*r.args) for r in requests]
        return self._score_all(pairs, "loglikelihood")

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """Log-likelihood of whole texts in disjoint windows of n_ctx tokens
        (lm_eval's rolling windows), the first token predicted from the prefix."""
        windows, owner = [], []
        for k, r in enumerate(requests):
            ids = self.model.tokenize(r.args[0], add_bos=False)
            if self.prefix_id is None:
                raise ValueError(f"{self.path}: no BOS or end-of-sequence token to start a text with")
            for w in get_rolling_token_windows(ids, self.prefix_id, self.n_ctx, 1):
                windows.append(make_disjoint_window(w))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (ll, _) in zip(owner, self._score_all(windows, "loglikelihood_rolling")):
            totals[k] += ll
        return totals

    def generate_until(self, requests, disable_tqdm=False):
        """Greedy continuation (sampled when the task asks for do_sample with a
        temperature) up to max_gen_toks tokens or the first `until` string."""
        out = []
        with progress_bar(total=len(requests), desc="generate_until", unit="request",
                          quiet=not self.progress) as bar:
            for r in requests:
                context, kw = r.args
                kw = dict(kw or {})
                until = kw.get("until") or []
                if isinstance(until, str):
                    until = [until]
                max_new = int(kw.get("max_gen_toks", self.max_gen_toks))
                temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0
                ids = self._context_ids(context)
                room = max(1, self.n_ctx - max_new)
                ids = ids[-room:]
                max_new = min(max_new, self.n_ctx - len(ids))
                text = self.model.generate(ids, max_new_tokens=max_new, temperature=temperature,
                                           stop=list(until) or None)
                for s in until:                  # the stop string itself is not part of the answer
                    if s and s in text:
                        text = text[:text.index(s)]
                out.append(text)
                bar.update(1)
        return out

    def close(self):
        self.model.close()


def evaluate(path, tasks, include_path=None, num_fewshot=None, limit=None, n_ctx=None,
             threads=None, apply_chat_template=False, progress=True):
    """lm_eval's simple_evaluate of the .rq4 file on `tasks` (names; task YAML
    files in include_path are found as well); returns its results dict."""
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    lm = Rq4LM(path, n_ctx=n_ctx, threads=threads, progress=progress)
    try:
        return evaluator.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
            task_manager=TaskManager(include_path=include_path),
            apply_chat_template=apply_chat_template, bootstrap_iters=0, log_samples=False,
            verbosity="ERROR")
    finally:
        lm.close()
