"""llama.cpp's own int4 of a GGUF model, for the quality table (docs/QUALITY.md).

    python tools/llamacpp_perplexity.py MODEL.gguf --text FILE [--text FILE2 ...]
        [--ftype q4_0] [--pure] [--window 512] [--ids-from MODEL.rq4]

Requantizes MODEL.gguf to --ftype with llama-cpp-python's llama_model_quantize
(allow_requantize: from the dequantized values, the same float weights our
exporter starts from; --pure: every tensor in that type, else llama.cpp's
default mix), then scores the text(s), concatenated, with the same protocol
as `python -m pyrunq4.eval perplexity`: non-overlapping windows of --window
tokens, each from an empty cache, every token after a window's first scored.
The token ids are those of an .rq4 file's tokenizer (--ids-from) when given,
so both engines score the same sequence; else llama.cpp's tokenizer (no BOS).
Prints the file size and the perplexity.
"""
import argparse
import ctypes
import os
import sys
import tempfile

import numpy as np

FTYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q4_k_s": 14, "q4_k_m": 15, "iq4_nl": 25,
          "iq4_xs": 30}  # llama_ftype values (llama.h)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("--text", action="append", required=True)
    ap.add_argument("--ftype", choices=sorted(FTYPES), default="q4_0")
    ap.add_argument("--pure", action="store_true", help="every tensor in --ftype (llama-quantize --pure)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ids-from", help="tokenize with this .rq4 file's tokenizer (pyrunq4.Model)")
    a = ap.parse_args(argv)
    import llama_cpp

    text = "".join(open(p, encoding="utf-8").read() for p in a.text)
    out = os.path.join(tempfile.mkdtemp(), f"model.{a.ftype}{'.pure' if a.pure else ''}.gguf")
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = FTYPES[a.ftype]
    p.allow_requantize = True
    p.pure = a.pure
    p.nthread = a.threads
    rc = llama_cpp.llama_model_quantize(a.gguf.encode(), out.encode(), ctypes.byref(p))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed: {rc}")
    llm = llama_cpp.Llama(out, n_ctx=a.window, n_batch=a.window, n_ubatch=a.window, logits_all=True,
                          n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    if a.ids_from:
        from pyrunq4.model import Model
        with Model(a.ids_from, n_ctx=a.window, n_threads=1) as m:
            ids = m.tokenize(text, add_bos=True)
    else:
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    nll, n = 0.0, 0
    for s in range(0, len(ids), a.window):
        chunk = ids[s:s + a.window]
        if len(chunk) < 2:
            break
        llm.reset()
        llm.eval(chunk)
        x = np.asarray(llm.scores[:len(chunk) - 1], np.float64)
        mx = x.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(x - mx).sum(axis=1))
        nll -= float((x[np.arange(len(chunk) - 1), chunk[1:]] - lse).sum())
        n += len(chunk) - 1
    print(f"{os.path.basename(out)}  {os.path.getsize(out) / 1e6:.1f} MB  "
          f"perplexity: {np.exp(nll / n):.4f} tokens: {n}")


if __name__ == "__main__":
    main()
