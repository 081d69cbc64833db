"""A calibration text for `pyrunq4.export --calib`: the exporter's default text and text the model writes itself.

    python tools/self_calibration.py MODEL.rq4 OUT.txt [--tokens 34000] [--seed 0] [--threads N]

MODEL.rq4: an export of the model to be quantized (the texts measured in docs/QUALITY.md
came from its g32 q4a GPTQ export). OUT.txt gets evenly spaced slices of the default
calibration text (pydoc_data.topics), then --tokens tokens sampled from the model
(temperature 1, top-p 0.95), in sequences of up to --seq-len tokens, each started from a
word of the default text. The model's own text covers what it predicts in general, the
default text what technical prose looks like; GPTQ's Hessians from both fit the
classifier better than either alone (docs/QUALITY.md, "Self-generated calibration").
The same seed gives the same text with the same engine build and kernel set (the
kernels' last bits steer the sampling). OUT.txt is written whole or not at all."""
import argparse
import os
import sys

import numpy as np

from pyrunq4._cli import run_main
from pyrunq4.errors import UsageError
from pyrunq4.export import methods

DEFAULT_SLICES = 34         # slices of the default text
DEFAULT_SLICE_CHARS = 2200  # characters per slice (about 500 tokens)


def default_text_slices(text, n=DEFAULT_SLICES, width=DEFAULT_SLICE_CHARS):
    """n slices of `width` characters, evenly spaced over text (all of it when shorter)."""
    if len(text) <= n * width:
        return [text]
    return [text[int(i * (len(text) - width) / (n - 1)):][:width] for i in range(n)]


def generate(model, words, tokens, seq_len, seed, progress=None):
    """Texts sampled from model, tokens tokens in all, each started from one of words."""
    rng = np.random.default_rng(seed)
    out, total = [], 0
    while total < tokens:
        model.reset()
        start = str(words[rng.integers(len(words))]).capitalize()
        text = start + model.generate(start, max_new_tokens=min(seq_len, tokens - total), temperature=1.0,
                                      top_p=0.95, seed=int(rng.integers(1 << 30)))
        total += len(model.tokenize(text, add_bos=False))
        out.append(text)
        if progress:
            progress(min(total, tokens), tokens)
    return out


def run(a):
    if a.tokens < 1 or a.seq_len < 1:
        raise UsageError("--tokens and --seq-len must be >= 1")
    from pyrunq4 import Model
    from pyrunq4.progress import progress_bar

    default = methods.default_calibration_text()
    words = [w for w in default.split() if w.isalpha() and len(w) > 3]
    tmp = a.output + ".tmp"
    try:
        # opened first: an output that cannot be written fails before minutes of generating
        with open(tmp, "w", encoding="utf-8") as f:
            with Model(a.model, n_threads=a.threads) as m, \
                    progress_bar(total=a.tokens, desc="generating", unit="token") as bar:
                texts = generate(m, words, a.tokens, a.seq_len, a.seed, lambda done, total: bar.update(done - bar.n))
            f.write("\n\n".join(default_text_slices(default) + texts))
        os.replace(tmp, a.output)
    finally:  # failed or interrupted: no half-written file left behind
        if os.path.exists(tmp):
            os.unlink(tmp)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="self_calibration.py", description=__doc__.split("\n")[0])
    ap.add_argument("model", metavar="MODEL.rq4")
    ap.add_argument("output", metavar="OUT.txt")
    ap.add_argument("--tokens", type=int, default=34000, help="tokens to generate (default: 34000)")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per generated sequence (default: 512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="engine threads (default: all CPUs)")
    return run_main("self_calibration.py", ap, run, argv)


if __name__ == "__main__":
    sys.exit(main())
