"""bitsandbytes 4-bit dequantization in numpy (pyrunq4/export/sources/bnb.py).

Always: hand-made bytes with known values (nibble order, tables, double quantization), and a tiny
checkpoint written with safetensors in exactly the Hugging Face bnb layout.
Optional (when torch and bitsandbytes import): bitsandbytes' own quantize_4bit / dequantize_4bit
on CPU, compared for exact float32 equality.
"""
import json

import numpy as np
import pytest

from pyrunq4.export.reader import weights_from_rq4

from pyrunq4.export.sources import bnb
from fixtures import save_raw_safetensors

CASES = [(qt, dq, dt) for qt in ("nf4", "fp4") for dq in (False, True) for dt in ("float32", "bfloat16", "float16")]


def _rand(shape, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _deq(t, qt):
    st = bnb.unpack_quant_state(t["quant_state.bitsandbytes__" + qt])
    return bnb.dequantize_4bit(t[""], t["absmax"], t["quant_map"], st, t.get("nested_absmax"), t.get("nested_quant_map"))


def test_nibble_order_and_tables():
    # one block of 4 values: codes 15, 0 | 7, 8  -> bytes 0xF0, 0x78 (first value in the HIGH nibble)
    state = {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [1, 4]}
    packed = np.array([[0xF0], [0x78]], np.uint8)
    w = bnb.dequantize_4bit(packed, np.array([2.0], np.float32), bnb.NF4, state)
    assert w.tolist() == [[2.0, -2.0, 0.0, np.float32(0.07958029955625534) * 2]]
    # fp4: code 3 = 12/12 = 1, code 11 = -1, code 1 = 0.0625/12, code 6 = 2/12
    state["quant_type"] = "fp4"
    w = bnb.dequantize_4bit(np.array([0x3B, 0x16], np.uint8), np.array([1.0], np.float32), None, state)
    assert w.tolist() == [[1.0, -1.0, np.float32(0.0625) / np.float32(12), np.float32(2) / np.float32(12)]]


def test_double_quant_absmax():
    # 3 blocks of 32 values; absmax_u8 decoded with the nested map and nested absmax, plus the offset
    nmap = bnb.dynamic_map()
    assert nmap.size == 256 and -1.0 < nmap[0] < -0.99 and nmap[-1] == 1.0 and np.all(np.diff(nmap) >= 0)
    state = {"quant_type": "nf4", "blocksize": 32, "dtype": "float32", "shape": [3, 32],
             "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5}
    qabs = np.array([255, 0, 127], np.uint8)
    packed = np.full(48, 0xFF, np.uint8)        # every code 15 -> 1.0 * absmax
    w = bnb.dequantize_4bit(packed, qabs, bnb.NF4, state, np.array([0.25], np.float32), nmap)
    expect = nmap[qabs] * np.float32(0.25) + np.float32(0.5)
    assert np.array_equal(w, np.repeat(expect[:, None], 32, axis=1))


def test_short_last_block_and_odd_count():
    w = _rand((5, 13), seed=3)          # 65 values: one block of 64 and a block of 1, odd byte count
    t = bnb.quantize_4bit(w, "nf4", 64, False, "float32")
    assert t[""].shape == (33, 1) and t["absmax"].shape == (2,)
    y = _deq(t, "nf4")
    assert y.shape == (5, 13)
    assert y.reshape(-1)[64] == pytest.approx(w.reshape(-1)[64])   # a block of one value is exact


@pytest.mark.parametrize("qt,dq,dt", CASES)
def test_roundtrip_error(qt, dq, dt):
    w = _rand((64, 256), seed=1)
    y = _deq(bnb.quantize_4bit(w, qt, 64, dq, dt), qt)
    rel = float(np.sqrt(((y - w) ** 2).mean() / (w ** 2).mean()))
    assert rel < (0.10 if qt == "nf4" else 0.13)
    if dt == "bfloat16":   # values are bf16: the low 16 bits are zero
        assert not np.any(y.view(np.uint32) & 0xFFFF)


def test_round_to_bf16_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, 1.0 + 2 ** -9, -3.3, np.inf], np.float32)
    y = bnb.round_to_dtype(x, "bfloat16")
    assert y.tolist()[:3] == [1.0, 1.0, 1.015625]        # ties go to even
    assert y[3] == np.float32(1.0)
    assert y[4] == np.float32(-3.296875) and np.isinf(y[5])
    assert np.isnan(bnb.round_to_dtype(np.array([np.nan], np.float32), "bfloat16")[0])


def write_bnb_checkpoint(folder, weights, quant_type="nf4", double_quant=True, blocksize=64, dtype="bfloat16",
                         skip=("lm_head", "embed_tokens")):
    """A safetensors file + config.json in the Hugging Face bnb-4bit layout: every 2-D weight whose name
    has none of `skip` is stored quantized, the rest as given. Returns {name: dequantized float32}."""
    from safetensors.numpy import save_file
    tensors, expect = {}, {}
    for name, w in weights.items():
        if w.ndim == 2 and not any(s in name for s in skip):
            t = bnb.quantize_4bit(w, quant_type, blocksize, double_quant, dtype)
            for suffix, arr in t.items():
                tensors[name + ("." + suffix if suffix else "")] = arr
            expect[name] = _deq(t, quant_type)
        else:
            tensors[name] = w
            expect[name] = w
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                                      "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": double_quant,
                                      "bnb_4bit_compute_dtype": dtype, "bnb_4bit_quant_storage": "uint8",
                                      "llm_int8_skip_modules": ["lm_head"]}}
    (folder / "config.json").write_text(json.dumps(config))
    return expect, config


@pytest.mark.parametrize("qt,dq", [("nf4", True), ("nf4", False), ("fp4", True), ("fp4", False)])
def test_checkpoint_layout(tmp_path, qt, dq):
    from safetensors.numpy import load_file
    weights = {"model.embed_tokens.weight": _rand((64, 64), 7),
               "model.layers.0.self_attn.q_proj.weight": _rand((64, 64), 8),
               "model.layers.0.mlp.down_proj.weight": _rand((64, 96), 9),
               "model.layers.0.input_layernorm.weight": np.ones(64, np.float32)}
    expect, config = write_bnb_checkpoint(tmp_path, weights, qt, dq)
    assert bnb.is_bnb_4bit(config)
    stored = load_file(str(tmp_path / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert stored[q].dtype == np.uint8 and stored[q].shape == (64 * 64 // 2, 1)
    assert (q + ".nested_absmax" in stored) == dq
    assert json.loads(bytes(stored[q + ".quant_state.bitsandbytes__" + qt]))["shape"] == [64, 64]
    deq, consumed = bnb.dequantize_named(stored.__getitem__, list(stored))
    assert set(deq) == {q, "model.layers.0.mlp.down_proj.weight"}
    assert all(n in consumed for n in bnb.quant_state_names(q) if n in stored)
    assert "model.embed_tokens.weight" not in consumed
    for name, w in deq.items():
        assert w.dtype == np.float32 and np.array_equal(w, expect[name])


def test_refusals():
    state = {"quant_type": "int4", "blocksize": 64, "dtype": "float32", "shape": [1, 2]}
    with pytest.raises(bnb.BnbError, match="quant_type"):
        bnb.dequantize_4bit(np.zeros(1, np.uint8), np.ones(1, np.float32), None, state)
    state.update(quant_type="nf4", blocksize=48)
    with pytest.raises(bnb.BnbError, match="blocksize"):
        bnb.dequantize_4bit(np.zeros(1, np.uint8), np.ones(1, np.float32), None, state)
    with pytest.raises(bnb.BnbError, match="8-bit"):
        bnb.check_config({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}})


# ---- against bitsandbytes itself (optional: needs torch + bitsandbytes, runs on CPU) ----

def _bnb_modules():
    torch = pytest.importorskip("torch")
    bf = pytest.importorskip("bitsandbytes.functional")
    return torch, bf


def _to_numpy(torch, v):
    if v.dtype == torch.bfloat16:
        return v.float().numpy()
    return v.cpu().numpy()


@pytest.mark.parametrize("qt,dq,dt", CASES)
def test_equals_bitsandbytes(qt, dq, dt):
    torch, bf = _bnb_modules()
    w = _rand((96, 320), seed=5)
    tw = torch.from_numpy(w).to(getattr(torch, dt))
    packed, qs = bf.quantize_4bit(tw, blocksize=64, compress_statistics=dq, quant_type=qt)
    ref = bf.dequantize_4bit(packed, qs).float().numpy()
    # serialize as transformers saves it, then read back with numpy only
    sd = {k: _to_numpy(torch, v) for k, v in qs.as_dict(packed=True).items()}
    state = bnb.unpack_quant_state(sd["quant_state.bitsandbytes__" + qt])
    ours = bnb.dequantize_4bit(packed.numpy(), sd["absmax"], sd["quant_map"], state,
                               sd.get("nested_absmax"), sd.get("nested_quant_map"))
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.array_equal(ours, ref), float(np.abs(ours - ref).max())


@pytest.mark.parametrize("qt,dq", [("nf4", True), ("fp4", False)])
def test_fixture_quantizer_read_by_bitsandbytes(qt, dq):
    """Our numpy fixture quantizer writes what bitsandbytes reads back to the same values."""
    torch, bf = _bnb_modules()
    w = _rand((32, 192), seed=6)
    t = bnb.quantize_4bit(w, qt, 64, dq, "float32")
    qs_dict = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in t.items() if k}
    qs = bf.QuantState.from_dict(qs_dict, device=torch.device("cpu"))
    ref = bf.dequantize_4bit(torch.from_numpy(t[""]), qs).float().numpy()
    assert np.array_equal(_deq(t, qt), ref)
    # and the codes are the ones bitsandbytes' own quantizer picks
    packed, _ = bf.quantize_4bit(torch.from_numpy(w), blocksize=64, compress_statistics=dq, quant_type=qt)
    assert np.array_equal(packed.numpy().reshape(-1), t[""].reshape(-1))


# ---- through the exporter: a tiny Llama in the bnb-4bit layout -> .rq4 ----

def _save_mixed_safetensors(path, tensors):
    """safetensors with per-tensor dtypes: float32 arrays named in `bf16` are written as BF16
    (numpy has no bf16), uint8 as U8, float32 as F32."""
    raw = {}
    for name, (a, dt) in tensors.items():
        if dt == "BF16":
            a = (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype("<u2")
        else:
            a = np.ascontiguousarray(a, {"U8": np.uint8, "F32": "<f4"}[dt])
        raw[name] = (a, dt)
    save_raw_safetensors(path, raw)


def make_bnb_llama(folder, quant_type="nf4", double_quant=True, blocksize=64):
    """A tiny HF Llama (tests/fixtures.make_hf_llama, bf16) rewritten as transformers saves a
    BitsAndBytesConfig(load_in_4bit) model: Linear weights packed 4-bit, embedding and norms bf16.
    Returns (directory, {HF name: the float32 values bitsandbytes would dequantize})."""
    from fixtures import make_hf_llama
    m = make_hf_llama(folder, dtype="bf16")
    tensors, expect = {}, {}
    for name, w in m.weights.items():
        if w.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name:
            t = bnb.quantize_4bit(w, quant_type, blocksize, double_quant, "bfloat16")
            for suffix, arr in t.items():
                tensors[name + ("." + suffix if suffix else "")] = (arr, "U8" if arr.dtype == np.uint8 else "F32")
            expect[name] = _deq(t, quant_type)
        else:
            tensors[name] = (w, "BF16")
            expect[name] = w
    _save_mixed_safetensors(str(folder / "model.safetensors"), tensors)
    cfg = dict(m.config)
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                                  "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": double_quant,
                                  "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
                                  "llm_int8_skip_modules": ["lm_head"]}
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder), expect


@pytest.mark.parametrize("qt,dq", [("nf4", True), ("fp4", False)])
def test_export_bnb_checkpoint(tmp_path, capsys, qt, dq):
    from pyrunq4.export.__main__ import main
    from pyrunq4.export.quant import quantize_rtn
    from pyrunq4.export.reader import read_rq4
    from test_export_hf import rq4_name
    folder, expect = make_bnb_llama(tmp_path / "hf", qt, dq)
    out = tmp_path / "m.rq4"
    rc = main([folder, str(out), "--group-size", "64", "--method", "rtn", "--weight-type", "q4s"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "bitsandbytes %s: 14 weights dequantized" % qt in err
    header, entries = read_rq4(str(out))
    assert header["dim"] == 64 and header["n_layers"] == 2
    for hf_name, w in expect.items():
        e = entries[rq4_name(hf_name)]
        if w.ndim == 1:
            assert np.array_equal(np.asarray(e).reshape(-1), w)
            continue
        ref = quantize_rtn(w, 64)   # the dequantized bnb weight, requantized as any float weight
        assert e.type == ref.type and np.array_equal(e.q, ref.q) and np.array_equal(e.d, ref.d), hf_name


def test_export_bnb_refusals(tmp_path, capsys):
    from pyrunq4.export.__main__ import main
    folder, _ = make_bnb_llama(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["quantization_config"]["load_in_4bit"] = False
    cfg["quantization_config"]["load_in_8bit"] = True
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    assert main([folder, str(tmp_path / "m.rq4")]) == 1
    assert "8-bit" in capsys.readouterr().err
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    assert main([folder, str(tmp_path / "m.rq4")]) == 1
    assert "'gptq' is not supported" in capsys.readouterr().err


def test_export_bnb_logits_vs_reference(tmp_path, capsys):
    """The .rq4 exported from the bnb checkpoint runs in the engine as the numpy reference says on the
    same (dequantized) weights: float activations to 1e-4, int8 activations within the engine's 0.05
    (tests/test_reference.py explains both bounds)."""
    pytest.importorskip("cffi")
    from pyrunq4.export.__main__ import main
    from pyrunq4 import Model
    from pyrunq4 import reference as R
    from test_reference import INT8_TOLERANCE, rel_err
    folder, _ = make_bnb_llama(tmp_path / "hf", "nf4", True)
    out = str(tmp_path / "m.rq4")
    assert main([folder, out, "--group-size", "64", "-q"]) == 0
    weights, cfg = weights_from_rq4(out)
    tokens = np.random.default_rng(2).integers(0, cfg["vocab_size"], 48)
    ref = R.forward(weights, cfg, tokens)
    with Model(out, float_activations=True, n_threads=2, kv_type="f32") as m:  # the float path
        assert rel_err(m.logits(tokens), ref) < 1e-4
    with Model(out, n_threads=2) as m:
        assert rel_err(m.logits(tokens), ref) < INT8_TOLERANCE
