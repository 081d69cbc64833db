"""--max-size: per-matrix group sizes within a byte budget (pyrunq4/export/mix.py)."""

import os

import numpy as np
import pytest

from pyrunq4.export import mix
from pyrunq4.export.format import TYPE_IDS, entry_size

# SmolLM2-135M's shapes
SMOL = {"dim": 576, "hidden_dim": 1536, "n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "head_dim": 64,
        "vocab_size": 49152, "tied_embeddings": 1}


def _names(cfg):
    out = []
    for i in range(cfg["n_layers"]):
        p = f"layers.{i}."
        out += [p + "attention_norm", p + "wq", p + "wk", p + "wv", p + "wo", p + "ffn_norm", p + "w1",
                p + "w2", p + "w3"]
    return out + ["norm", "tok_embeddings"]


def _planned_size(cfg, plan, file_type, blobs):
    shapes = mix.matrix_shapes(cfg)
    sizes = [entry_size(TYPE_IDS[file_type], *shapes[n], plan[n]) if n in plan else cfg["dim"] * 4
             for n in _names(cfg)]
    return mix.file_size(sizes + [len(b) for b in blobs.values()], len(sizes) + len(blobs))


@pytest.mark.parametrize("file_type", ["q4s", "q4a", "q4t", "q4a_r4"])
def test_plan_fits_every_budget(file_type):
    """From the smallest file to the largest, the plan fits, is the same when asked
    twice, and spends the budget: what is left is less than the cheapest step."""
    blobs = {"tokenizer.json": b"x" * 1001}
    shapes = mix.matrix_shapes(SMOL)
    n_norms = len(_names(SMOL)) - len(shapes)
    fixed = [SMOL["dim"] * 4] * n_norms + [1001]
    n_entries = len(_names(SMOL)) + 1
    rng = np.random.default_rng(0)
    losses = {n: {g: e * rng.uniform(0.5, 2.0) for g, e in ((128, 4.0), (64, 2.0), (32, 1.0))} for n in shapes}

    def plan(budget):
        return mix.plan_group_sizes(shapes, losses, file_type, 128, fixed, n_entries, int(budget))

    lo_size = _planned_size(SMOL, dict.fromkeys(shapes, 128), file_type, blobs)
    hi_size = _planned_size(SMOL, dict.fromkeys(shapes, 32), file_type, blobs)
    assert set(plan(10 ** 12).values()) == {32}
    cheapest = min(entry_size(TYPE_IDS[file_type], *s, g1) - entry_size(TYPE_IDS[file_type], *s, g0)
                   for s in shapes.values() for g0, g1 in ((128, 64), (64, 32)))
    for budget in np.linspace(lo_size, hi_size, 7).astype(int):
        got = plan(budget)
        assert got == plan(budget)
        assert set(got.values()) <= {128, 64, 32}
        size = _planned_size(SMOL, got, file_type, blobs)
        assert size <= budget
        if budget < hi_size:
            assert budget - size < cheapest + 64
    with pytest.raises(mix.MixError):
        plan(lo_size - 1)


def test_plan_follows_the_losses():
    """Of two equal matrices, the one whose loss falls most gets the finer groups first."""
    shapes = {"a": (256, 512), "b": (256, 512)}
    sizes = {g: entry_size(TYPE_IDS["q4a"], 256, 512, g) for g in (128, 64, 32)}
    budget = mix.file_size([sizes[128], sizes[128]], 2) + (sizes[64] - sizes[128])

    def plan(sa, sb):
        losses = {"a": {128: 2 * sa, 64: sa, 32: 0}, "b": {128: 2 * sb, 64: sb, 32: 0}}
        return mix.plan_group_sizes(shapes, losses, "q4a", 128, [], 2, budget)
    assert plan(1.0, 2.0) == {"a": 128, "b": 64}
    assert plan(3.0, 2.0) == {"a": 64, "b": 128}
    assert plan(1.0, 1.0) == {"a": 64, "b": 128}


def test_rtn_errors():
    """The error of round-to-nearest falls with the group, and is 0 at the group of
    a matrix that is already on a q4a grid of groups of 32."""
    from pyrunq4.export.quant import dequantize, quantize_rtn
    w = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    err = mix.rtn_errors(w, "q4a", (128, 64, 32))
    assert err[128] > err[64] > err[32] > 0
    exact = dequantize(quantize_rtn(w, 32, "q4a"))
    assert mix.rtn_errors(exact, "q4a", (32,))[32] < 1e-10


def test_parse_size():
    assert mix.parse_size("79MB") == 79_000_000
    assert mix.parse_size("79.1 mb") == 79_100_000
    assert mix.parse_size("2MiB") == 2 * 2 ** 20
    assert mix.parse_size("1234") == 1234
    for bad in ("", "MB", "-3MB", "0", "79 parsecs", "1e3MB"):
        with pytest.raises(mix.MixError):
            mix.parse_size(bad)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_exporter_max_size(tmp_path, capsys, method):
    """The file is within the budget and as the plan says; the engine runs it; a budget
    too small, a size that is not one and a conflicting option are one line each and
    exit 1 with no file written."""
    from fixtures import SENTENCES, make_hf_llama
    from pyrunq4 import Model
    from pyrunq4 import reference as R
    from pyrunq4.export.__main__ import main
    from pyrunq4.export.reader import read_rq4, weights_from_rq4

    hf = make_hf_llama(tmp_path / "hf", dtype="fp32", dim=128, hidden_dim=256, n_heads=4, head_dim=32)
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(SENTENCES * 20))
    args = ["--method", method, "--weight-type", "q4a", "--group-size", "128", "-q",
            "--calib", str(calib), "--calib-tokens", "256", "--calib-seq-len", "64"]
    sizes = {}
    for g in (128, 32):
        path = tmp_path / f"g{g}.rq4"
        assert main([hf.path, str(path), *args, "--group-size", str(g)]) == 0
        sizes[g] = os.path.getsize(path)
    budget = (sizes[128] + sizes[32]) // 2
    path = tmp_path / "mix.rq4"
    assert main([hf.path, str(path), *args, "--max-size", f"{budget}B"]) == 0
    size = os.path.getsize(path)
    assert size <= budget
    header, entries = read_rq4(path)
    blobs = {n: e for n, e in entries.items() if isinstance(e, (bytes, bytearray, memoryview))}
    names = [n for n in entries if n not in blobs]
    from pyrunq4.export.__main__ import build_parser
    from pyrunq4.export.sources import open_source
    options = build_parser().parse_args([hf.path, "unused.rq4", "--weight-type", "q4a"])
    with open_source(hf.path, options) as src:
        plan = mix.plan_export(header, names, blobs, src.read, "q4a", "q4a", 128, False, budget)
    assert {n: e.group_size for n, e in entries.items() if hasattr(e, "q")} == plan
    assert len(set(plan.values())) > 1
    # the size model is the writer's layout, to the byte
    sizes_in_order = [entry_size(TYPE_IDS[e.file_type], *e.q.shape, e.group_size) if hasattr(e, "q")
                      else (len(e) if n in blobs else e.size * 4) for n, e in entries.items()]
    assert mix.file_size(sizes_in_order, len(entries)) == size
    w, cfg = weights_from_rq4(path)
    with Model(str(path)) as m:
        ids = m.tokenize(SENTENCES[0])[:32]
        got = m.logits(ids)
    want = R.forward(w, cfg, ids)
    assert np.mean((got - want) ** 2) < 0.05 * np.mean((want - want.mean()) ** 2)
    capsys.readouterr()
    for bad in (["--max-size", f"{sizes[128] - 1}B"], ["--max-size", "lots"],
                ["--max-size", "1GB", "--float"]):
        out = tmp_path / "bad.rq4"
        assert main([hf.path, str(out), *args, *bad]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "max-size" in err, err
        assert not out.exists()


@pytest.mark.slow
def test_mix_sensitivity_tool(tmp_path):
    """tools/mix_sensitivity.py on a tiny float model: one entry per role and block and
    the embedding, KL >= 0, and the error of round-to-nearest falling with the group."""
    import json

    from fixtures import load_checkout_module, make_rq4
    tool = load_checkout_module("mix_sensitivity", os.path.join("tools", "mix_sensitivity.py"))
    path = make_rq4(tmp_path / "float.rq4", dtype="fp32", dim=128, hidden_dim=256, n_heads=4, head_dim=32,
                    extra_args=("--float",))
    out = tmp_path / "sens.json"
    assert tool.main([str(path), str(out), "--tokens", "32", "--block", "1"]) == 0
    got = json.loads(out.read_text())
    assert set(got) == {f"{r}@{b}" for r in mix.LAYER_MATRICES for b in (0, 1)} | {"tok_embeddings@0"}
    for r in got.values():
        assert r["kl128"] >= 0 and r["sensitivity"] >= 0
        assert r["err128"] > r["err64"] > r["err32"] > 0
