"""An .rq4 model's weights as a bitsandbytes NF4 checkpoint (Hugging Face layout).

Every linear matrix is quantized with the exporter's numpy twin of bitsandbytes'
quantize_4bit (pyrunq4/export/sources/bnb.py: NF4, block 64, double
quantization, bf16, as the unsloth ...-bnb-4bit checkpoints); the embedding, an
untied classifier and the norms are stored bf16; tokenizer.json and the chat
template come from the .rq4. What docs/QUALITY.md's NF4 rows were made from
(from `export --float` of SmolLM2's GGUF):

    python tools/rq4_to_nf4.py float.rq4 nf4_dir
    python -m pyrunq4.export nf4_dir nf4_q4t_g64.rq4 --weight-type q4t --method rtn --group-size 64
"""
import argparse
import json
import os

import numpy as np

from pyrunq4.export.quant import dequantize
from pyrunq4.export.reader import read_rq4
from pyrunq4.export.sources import bnb

LAYER = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
         "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj",
         "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
OTHER = {"tok_embeddings": "model.embed_tokens.weight", "norm": "model.norm.weight", "output": "lm_head.weight"}


def bf16(a):
    """(the bf16 bits of a, rounded to nearest even, "BF16")"""
    a = bnb.round_to_dtype(np.asarray(a, np.float32), "bfloat16")
    return (a.view(np.uint32) >> 16).astype("<u2"), "BF16"


def save_safetensors(path, tensors):
    """name -> (little-endian array as stored, safetensors dtype name), written by hand (numpy has no bf16)."""
    header, off = {}, 0
    for name in sorted(tensors):
        a, dt = tensors[name]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with open(path, "wb") as f:
        f.write(len(hj).to_bytes(8, "little") + hj)
        for name in sorted(tensors):
            f.write(np.ascontiguousarray(tensors[name][0]).tobytes())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="the .rq4 whose (dequantized) weights are encoded")
    p.add_argument("out", help="the checkpoint directory to write")
    p.add_argument("--blocksize", type=int, default=64, help="bitsandbytes block size")
    a = p.parse_args(argv)
    h, e = read_rq4(a.model)
    os.makedirs(a.out, exist_ok=True)
    raw = {}
    for name, v in e.items():
        if isinstance(v, bytes):
            continue
        w = np.asarray(v if isinstance(v, np.ndarray) else dequantize(v), np.float32)
        if name in OTHER:
            raw[OTHER[name]] = bf16(w.reshape(-1) if name == "norm" else w)
            continue
        _, i, k = name.split(".")
        hf = f"model.layers.{i}.{LAYER[k]}.weight"
        if k.endswith("norm"):
            raw[hf] = bf16(w.reshape(-1))
            continue
        for suffix, arr in bnb.quantize_4bit(w, "nf4", a.blocksize, True, "bfloat16").items():
            raw[hf + ("." + suffix if suffix else "")] = (arr, "U8" if arr.dtype == np.uint8 else "F32")
    save_safetensors(os.path.join(a.out, "model.safetensors"), raw)
    with open(os.path.join(a.out, "tokenizer.json"), "wb") as f:
        f.write(e["tokenizer.json"])
    if "chat_template" in e:
        with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
            json.dump({"chat_template": e["chat_template"].decode("utf-8")}, f)
    eos = list(h["eos_ids"])
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h["dim"],
           "intermediate_size": h["hidden_dim"], "num_hidden_layers": h["n_layers"],
           "num_attention_heads": h["n_heads"], "num_key_value_heads": h["n_kv_heads"], "head_dim": h["head_dim"],
           "vocab_size": h["vocab_size"], "max_position_embeddings": h["max_seq_len"], "rms_norm_eps": h["norm_eps"],
           "rope_theta": h["rope_theta"], "tie_word_embeddings": bool(h["tied_embeddings"]),
           "bos_token_id": h["bos_id"], "eos_token_id": eos[0] if len(eos) == 1 else eos, "hidden_act": "silu",
           "torch_dtype": "bfloat16",
           "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                                   "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                   "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
                                   "llm_int8_skip_modules": ["lm_head"]}}
    if h["rope_scaling"]:
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": h["rope_factor"],
                               "low_freq_factor": h["rope_low_freq_factor"],
                               "high_freq_factor": h["rope_high_freq_factor"],
                               "original_max_position_embeddings": h["rope_original_max_pos"]}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    print(f"wrote {a.out}: {sum(1 for n in raw if n.endswith('quant_state.bitsandbytes__nf4'))} NF4 weights")


if __name__ == "__main__":
    main()
