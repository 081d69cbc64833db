"""CPU time of one Llama-3.2-1B-shaped layer (random weights) through the gptq pipeline, for docs/QUALITY.md
(process_time: the CPU seconds of every thread together).

    python tools/bench_gptq_shapes.py

Prints the float32 calibration forward of one layer on 512 tokens (with the Hessian capture),
GPTQ (act order, g128) of each matrix shape and of 16,384 rows of the 128256 x 2048 embedding,
the estimate for the whole model (16 layers, 8 sequences of 512, capture + rerun) and the peak RSS."""
import resource
import time

import numpy as np

from pyrunq4 import reference as R
from pyrunq4.export import quantizers as Q

rng = np.random.default_rng(0)
dim, hid, nh, nkv, hd, vocab = 2048, 8192, 32, 8, 64, 128256
n_layers, n_seq = 16, 8
cfg = dict(dim=dim, hidden_dim=hid, n_layers=n_layers, n_heads=nh, n_kv_heads=nkv, head_dim=hd, norm_eps=1e-5,
           rope_theta=500000.0, rope_scaling=1, rope_factor=32.0, rope_low_freq_factor=1.0,
           rope_high_freq_factor=4.0, rope_original_max_pos=8192)
shapes = dict(wq=(nh*hd, dim), wk=(nkv*hd, dim), wv=(nkv*hd, dim), wo=(dim, nh*hd), w1=(hid, dim), w2=(dim, hid), w3=(hid, dim))
W = {f'layers.0.{k}': (rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32) for k, s in shapes.items()}
W['layers.0.attention_norm'] = np.ones(dim, np.float32); W['layers.0.ffn_norm'] = np.ones(dim, np.float32)
h = rng.standard_normal((512, dim)).astype(np.float32)
t = time.process_time(); R.layer(W, cfg, 0, h, dtype=np.float32); fwd = time.process_time() - t
print(f'layer forward, 512 tokens: {fwd:.1f}s cpu', flush=True)
t = time.process_time(); acc = Q._capture_hessians(W, cfg, 0, [h], ('wq', 'wo', 'w1', 'w2')); cap = time.process_time() - t
print(f'layer forward with the Hessian capture, 512 tokens: {cap:.1f}s cpu', flush=True)
gq = {}
for k in ('wq', 'wk', 'wo', 'w1', 'w2'):
    src = {'wk': 'wq'}.get(k, k)
    t = time.process_time(); Q.quantize_gptq(W['layers.0.' + k], acc[src].hessian(), 128, act_order=True); gq[k] = time.process_time() - t
    print(f'gptq {k} {shapes[k]}: {gq[k]:.1f}s cpu', flush=True)
gl = gq['wq'] + 2 * gq['wk'] + gq['wo'] + 2 * gq['w1'] + gq['w2']
rows = 16384
t = time.process_time()
Q.quantize_gptq((rng.standard_normal((rows, dim)) * 0.02).astype(np.float32), acc['wq'].hessian(), 128, act_order=True)
emb = (time.process_time() - t) * vocab / rows
print(f'gptq of the embedding ({rows} of {vocab} rows, scaled): {emb:.0f}s cpu', flush=True)
total = n_layers * (gl + n_seq * (cap + fwd)) + emb
print(f'gptq per layer {gl:.0f}s; calibration per layer {n_seq * (cap + fwd):.0f}s; '
      f'whole model ~{total:.0f}s cpu on one core')
print(f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1e6:.2f} GB')
