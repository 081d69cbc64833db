"""The sensitivity table of pyrunq4/export/mix.py (SENSITIVITY), measured on a float model.

    python tools/mix_sensitivity.py float.rq4 sens.json [--tokens 128] [--block 6]

float.rq4: an export with --float. For each role (wq ... w2) and block of --block layers,
and for the embedding: the KL divergence of the model's next-token distribution from the
float model's when only those matrices are round-to-nearest q4a at group 128 (numpy float
forward, float32, over --tokens tokens of the calibration text, pydoc_data.topics), and
their relative squared error at groups 128, 64 and 32. Writes them as JSON and prints the
table: KL per million weights and unit of relative squared error, as SENSITIVITY holds it.
Runs the layers from the block on only (the float inputs of each block are kept)."""
import argparse
import json

import numpy as np

from pyrunq4 import reference as R
from pyrunq4.export import methods
from pyrunq4.export.mix import LAYER_MATRICES
from pyrunq4.export.quant import dequantize, quantize_rtn
from pyrunq4.export.reader import read_rq4, weights_from_rq4


def log_softmax(logits):
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("float_model")
    ap.add_argument("output")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--block", type=int, default=6)
    a = ap.parse_args(argv)
    W, cfg = weights_from_rq4(a.float_model)
    ids = methods.calibration_ids(read_rq4(a.float_model)[1]["tokenizer.json"], methods.default_calibration_text(),
                                  a.tokens, a.tokens, int(cfg.get("bos_id", -1)))[0]
    n_layers = int(cfg["n_layers"])

    def logprobs(start, h):
        for i in range(start, n_layers):
            h = R.layer(W, cfg, i, h, dtype=np.float32)
        return log_softmax(R.head(W, cfg, h))

    inputs = [R.embed(W, ids).astype(np.float32)]          # the float input of every layer
    for i in range(n_layers):
        inputs.append(R.layer(W, cfg, i, inputs[-1], dtype=np.float32))
    ref = logprobs(n_layers, inputs[-1])
    p_ref = np.exp(ref)
    units = [(role, b) for b in range(0, n_layers, a.block) for role in LAYER_MATRICES] + [("tok_embeddings", 0)]
    out = {}
    for role, b in units:
        names = ["tok_embeddings"] if role == "tok_embeddings" else \
            [f"layers.{i}.{role}" for i in range(b, min(b + a.block, n_layers))]
        orig = {n: W[n] for n in names}
        r = {"weights": int(sum(w.size for w in orig.values()))}
        for g in (32, 64, 128):                             # 128 last: the one the forward runs with
            for n in names:
                W[n] = dequantize(quantize_rtn(orig[n], g, "q4a")).astype(np.float32)
            r[f"err{g}"] = float(np.mean([np.sum((orig[n] - W[n]) ** 2) / np.sum(orig[n] ** 2) for n in names]))
        start, h = (0, R.embed(W, ids).astype(np.float32)) if role == "tok_embeddings" else (b, inputs[b])
        r["kl128"] = float(np.mean(np.sum(p_ref * (ref - logprobs(start, h)), axis=1)))
        r["sensitivity"] = r["kl128"] / (r["weights"] / 1e6 * r["err128"]) if r["err128"] else 0.0
        W.update(orig)
        out[f"{role}@{b}"] = r
        print(f"{role:>14s} layers {b:2d}+  KL {r['kl128']:.4f}  sensitivity {r['sensitivity']:.3g}", flush=True)
        with open(a.output, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
