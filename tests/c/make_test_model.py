"""Writes a tiny random Llama model for tests/c/test_engine.c, with pyrunq4/export/writer.py.

    python tests/c/make_test_model.py OUT.rq4

GQA (8 query heads, 4 kv heads), head_dim 24 != dim / n_heads, llama3 RoPE
with original_max_pos 16 (the test runs past it), untied classifier, and every
quantized type and several group sizes (wk at 32, w2's 160-wide rows at 96:
a shorter last group), q4a embedding table.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from pyrunq4.export.quant import quantize_rtn  # noqa: E402
from pyrunq4.export.writer import Rq4Writer  # noqa: E402

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 64, 160, 2, 8, 4, 24, 97


def main(path, seed=0):
    rng = np.random.default_rng(seed)
    header = dict(dim=DIM, hidden_dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=KV_HEADS,
                  head_dim=HEAD_DIM, vocab_size=VOCAB, max_seq_len=160, tied_embeddings=0, bos_id=1,
                  eos_ids=[2], rope_scaling=1, rope_original_max_pos=16, norm_eps=1e-5, rope_theta=10000.0,
                  rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, group_size=64)

    def matrix(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm():
        return (1 + 0.1 * rng.standard_normal((1, DIM))).astype(np.float32)

    types = ("q4s", "q4a", "q8")
    with Rq4Writer(path, header, max_entries=4 + 9 * LAYERS) as w:
        w.add_quantized("tok_embeddings", quantize_rtn(matrix(VOCAB, DIM), 64, "q4a"))
        w.add_quantized("output", quantize_rtn(matrix(VOCAB, DIM), 32, "q8"))
        w.add_f32("norm", norm())
        for i in range(LAYERS):
            p = f"layers.{i}."
            w.add_f32(p + "attention_norm", norm())
            w.add_f32(p + "ffn_norm", norm())
            shapes = {"wq": (HEADS * HEAD_DIM, DIM, 64), "wk": (KV_HEADS * HEAD_DIM, DIM, 32),
                      "wv": (KV_HEADS * HEAD_DIM, DIM, 64), "wo": (DIM, HEADS * HEAD_DIM, 64),
                      "w1": (HIDDEN, DIM, 64), "w2": (DIM, HIDDEN, 96), "w3": (HIDDEN, DIM, 64)}
            for k, (name, (rows, cols, gs)) in enumerate(shapes.items()):
                w.add_quantized(p + name, quantize_rtn(matrix(rows, cols), gs, types[(i + k) % 3]))
        w.add_blob("tokenizer.json", b"{}")


if __name__ == "__main__":
    main(sys.argv[1])
