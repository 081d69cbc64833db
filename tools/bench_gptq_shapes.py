"""CPU time of one Llama-3.2-1B-shaped layer (random weights) through the gptq pipeline, for docs/QUALITY.md.

    OPENBLAS_NUM_THREADS=1 python tools/bench_gptq_shapes.py

Prints the float64 reference forward of one layer on 512 tokens, GPTQ (act order, g128) of each
matrix shape, and the peak RSS."""
import resource
import time

import numpy as np

from pyrunq4 import reference as R
from pyrunq4.export import quantizers as Q

rng = np.random.default_rng(0)
dim, hid, nh, nkv, hd = 2048, 8192, 32, 8, 64
cfg = dict(dim=dim, hidden_dim=hid, n_layers=16, n_heads=nh, n_kv_heads=nkv, head_dim=hd, norm_eps=1e-5,
           rope_theta=500000.0, rope_scaling=1, rope_factor=32.0, rope_low_freq_factor=1.0,
           rope_high_freq_factor=4.0, rope_original_max_pos=8192)
shapes = dict(wq=(nh*hd, dim), wk=(nkv*hd, dim), wv=(nkv*hd, dim), wo=(dim, nh*hd), w1=(hid, dim), w2=(dim, hid), w3=(hid, dim))
W = {f'layers.0.{k}': (rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32) for k, s in shapes.items()}
W['layers.0.attention_norm'] = np.ones(dim, np.float32); W['layers.0.ffn_norm'] = np.ones(dim, np.float32)
W64 = {k: v.astype(np.float64) for k, v in W.items()}
h = rng.standard_normal((512, dim))
t = time.process_time(); R.layer(W64, cfg, 0, h); fwd = time.process_time() - t
print(f'layer forward, 512 tokens: {fwd:.1f}s cpu', flush=True)
acc = Q._capture_hessians(R, W64, cfg, 0, [h], ('wq', 'wo', 'w1', 'w2'))
gq = {}
for k in ('wq', 'wk', 'wo', 'w1', 'w2'):
    src = {'wk': 'wq'}.get(k, k)
    t = time.process_time(); Q.quantize_gptq(W['layers.0.' + k], acc[src].hessian(), 128, act_order=True); gq[k] = time.process_time() - t
    print(f'gptq {k} {shapes[k]}: {gq[k]:.1f}s cpu', flush=True)
gl = gq['wq'] + 2 * gq['wk'] + gq['wo'] + 2 * gq['w1'] + gq['w2']
print(f'gptq per layer {gl:.0f}s; forward per layer per 512-token seq {fwd:.1f}s (x2: capture + rerun)')
print(f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1e6:.2f} GB')
