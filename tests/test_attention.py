"""Attention over the KV cache: the x86 256-bit attention loops
(src/kernels/attention_avx2.c, used with every x86 SIMD kernel set)
against the portable ones (used with the scalar set), bit for bit, end to end:
every query-head grouping (1 to 4 heads per kv head, and the one-head items
of decoding with 2 threads), head sizes that are and are not a multiple of 8
and 16, f32 and f16 caches, prompts longer than several 16-key blocks with a
partial last one. The 70-token prompts also run the AVX2 loops' query tiles
(several tokens' rows per pass, so rows of different causal lengths share a
pass, and tiles split over two passes with 4 heads per kv head) and more
than one 64-position chunk of the weighted sums."""

import numpy as np
import pytest

from conftest import write_random_model

pyrunq4 = pytest.importorskip("pyrunq4")

# (n_heads, n_kv_heads, head_dim): kv_mul 1..4; head_dim 36 is not a multiple of 8
SHAPES = [(4, 4, 32), (4, 2, 32), (6, 2, 48), (8, 2, 64), (8, 8, 36)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: "h%d_kv%d_hd%d" % s)
def attention_model(request, tmp_path_factory):
    n_heads, n_kv_heads, head_dim = request.param
    path = tmp_path_factory.mktemp("attn") / "m.rq4"
    return str(write_random_model(path, dim=64, hidden_dim=64, n_layers=2, n_heads=n_heads,
                                  n_kv_heads=n_kv_heads, head_dim=head_dim, tied=True, rope=True,
                                  max_seq_len=128, seed=n_heads * 100 + head_dim))


def logits_of(path, kernel, kv_type, threads, monkeypatch):
    monkeypatch.setenv("RUNQ4_KERNEL", kernel)
    ids = [(i * 53 + 7) % 200 + 5 for i in range(75)]
    with pyrunq4.Model(path, n_threads=threads, kv_type=kv_type) as m:
        name = m.kernel
        batched = np.array(m.logits(ids[:70]), copy=True)
        stepped = np.stack([np.array(m.feed([t]), copy=True).reshape(-1) for t in ids[70:]])
    return name, batched, stepped


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("threads", [1, 2])
def test_attention_identical_across_kernel_sets(attention_model, kv_type, threads, monkeypatch):
    ref_name, ref_batched, ref_stepped = logits_of(attention_model, "scalar", kv_type, threads, monkeypatch)
    assert ref_name == "scalar"
    assert np.isfinite(ref_batched).all()
    seen = {ref_name}
    for kernel in ["avx2", "avxvnni", "avx512vnni", "neon", "neon_dotprod"]:
        name, batched, stepped = logits_of(attention_model, kernel, kv_type, threads, monkeypatch)
        if name in seen:
            continue
        seen.add(name)
        assert batched.tobytes() == ref_batched.tobytes(), name
        assert stepped.tobytes() == ref_stepped.tobytes(), name
