"""Test helpers of the exporter: tiny Hugging Face Llama models and their .rq4 exports."""

import json
import os
from dataclasses import dataclass, field

import numpy as np

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                  "<|end_header_id|>"]
BOS_ID, EOT_ID, EOS_IDS = 0, 2, [1, 2]   # ids of SPECIAL_TOKENS (they come first in the vocab)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a tiny model that lived in a file.",
    "Int4 weights, int8 activations and a float accumulator.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Llama models use rotary position embeddings and grouped query attention.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u2014 na\u00efve r\u00e9sum\u00e9 \U0001F600.",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass
class HfModel:
    path: str        # the model directory
    config: dict     # config.json as written
    weights: dict = field(repr=False)  # Hugging Face name -> float32 array, exactly the stored values


def load_checkout_module(name, relpath):
    """The module in file relpath of this checkout (a tools/ script, pyrunq4/_build.py):
    what an installed package does not carry."""
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, relpath))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_tokenizer(vocab_size=300):
    """A small byte-level BPE (tokenizers library) trained on SENTENCES, with the
    Llama 3 special tokens as ids 0..4 and a post-processor that prepends BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", BOS_ID)])
    return tok


def _bf16_round(a):
    """float32 -> the nearest bf16 values (round to nearest even), as (float32, uint16 bits)."""
    u = a.astype(np.float32).view(np.uint32)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32), bits


def save_raw_safetensors(path, tensors):
    """A safetensors file written by hand (numpy has no bf16): tensors maps
    name -> (array already in its stored little-endian type, safetensors dtype
    name such as "BF16", "U8", "F32")."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a, dt = tensors[name]
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with open(path, "wb") as f:
        f.write(len(hj).to_bytes(8, "little") + hj + b"".join(blobs))


def _save_safetensors(path, tensors, dtype):
    """tensors: name -> float32; written as dtype 'bf16' (by hand: numpy has no bf16),
    'fp16' or 'fp32' (with the safetensors library)."""
    if dtype == "bf16":
        save_raw_safetensors(path, {n: (_bf16_round(t)[1].astype("<u2"), "BF16") for n, t in tensors.items()})
    else:
        from safetensors.numpy import save_file
        np_dtype = {"fp16": np.float16, "fp32": np.float32}[dtype]
        save_file({k: np.ascontiguousarray(v, np_dtype) for k, v in tensors.items()}, path,
                  metadata={"format": "pt"})


def make_hf_llama(path, *, dtype="bf16", sharded=False, dim=64, hidden_dim=96, n_layers=2, n_heads=4,
                  n_kv_heads=2, head_dim=32, vocab_size=None, max_position_embeddings=128,
                  rope_scaling="llama3", rope_theta=10000.0, original_max_position_embeddings=16,
                  tie_word_embeddings=True, rms_norm_eps=1e-5, chat_template=True, generation_config=True,
                  seed=0, config_overrides=None, extra_tensors=None):
    """Writes a tiny random LlamaForCausalLM checkpoint into directory `path` and returns
    HfModel(path, config, weights).

    Defaults: dim 64, hidden 96 (groups of 64 leave a short last group of 32), 2 layers,
    4 heads of head_dim 32 (!= dim/heads = 16; None: dim/heads), 2 kv heads (GQA),
    llama3 rope scaling with original_max_position_embeddings 16 so a 64-token test runs
    past it (rope_scaling=None: no scaling), tied embeddings, a ~300-token byte-level BPE
    tokenizer (vocab_size None: the tokenizer's size; larger: padded rows), Llama 3 style
    special tokens (bos 0, eos [1, 2]) and chat template. dtype: 'bf16' | 'fp16' | 'fp32';
    sharded: two safetensors shards plus model.safetensors.index.json. config_overrides are
    merged into config.json last; extra_tensors (HF name -> array) are added to the weights."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    tok = make_tokenizer()
    tok.save(os.path.join(path, "tokenizer.json"))
    vocab = vocab_size or tok.get_vocab_size()
    assert vocab >= tok.get_vocab_size()
    hd = head_dim or dim // n_heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": dim, "intermediate_size": hidden_dim, "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads, "num_key_value_heads": n_kv_heads, "head_dim": hd,
        "vocab_size": vocab, "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": rms_norm_eps, "rope_theta": rope_theta, "tie_word_embeddings": tie_word_embeddings,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": BOS_ID, "eos_token_id": EOS_IDS[0],
        "torch_dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype],
        "rope_scaling": None if rope_scaling is None else {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": original_max_position_embeddings},
    }
    config.update(config_overrides or {})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tok_cfg = {"bos_token": SPECIAL_TOKENS[BOS_ID], "eos_token": SPECIAL_TOKENS[EOT_ID],
               "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_position_embeddings}
    if chat_template:
        tok_cfg["chat_template"] = CHAT_TEMPLATE
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2)
    if generation_config:
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": BOS_ID, "eos_token_id": EOS_IDS}, f, indent=2)

    def lin(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(dim)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, dim)).astype(np.float32)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = lin(n_heads * hd, dim)
        w[p + "self_attn.k_proj.weight"] = lin(n_kv_heads * hd, dim)
        w[p + "self_attn.v_proj.weight"] = lin(n_kv_heads * hd, dim)
        w[p + "self_attn.o_proj.weight"] = lin(dim, n_heads * hd)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = lin(hidden_dim, dim)
        w[p + "mlp.up_proj.weight"] = lin(hidden_dim, dim)
        w[p + "mlp.down_proj.weight"] = lin(dim, hidden_dim)
    w["model.norm.weight"] = norm()
    if not tie_word_embeddings:
        w["lm_head.weight"] = rng.standard_normal((vocab, dim)).astype(np.float32) / np.sqrt(dim)
    w.update({k: np.asarray(v, np.float32) for k, v in (extra_tensors or {}).items()})
    # the values exactly as stored
    if dtype == "bf16":
        w = {k: _bf16_round(v)[0] for k, v in w.items()}
    elif dtype == "fp16":
        w = {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}

    if sharded:
        names = list(w)
        shards = [names[:len(names) // 2], names[len(names) // 2:]]
        wmap = {}
        for k, part in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            _save_safetensors(os.path.join(path, fname), {n: w[n] for n in part}, dtype)
            wmap.update({n: fname for n in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(v.size for v in w.values()) * 2}, "weight_map": wmap}, f,
                      indent=2)
    else:
        _save_safetensors(os.path.join(path, "model.safetensors"), w, dtype)
    return HfModel(str(path), config, w)


def make_rq4(path, hf_dir=None, *, group_size=64, embedding_bits=4, extra_args=(), **hf_kwargs):
    """Exports a tiny model to the .rq4 file `path` and returns `path`. hf_dir: an existing
    Hugging Face directory, else one is made next to `path` with make_hf_llama(**hf_kwargs).
    Raises RuntimeError with the exporter's message if the export fails. The method is mse
    unless extra_args names one: the exporter's default for a float checkpoint (gptq) needs a
    calibration pass, which the tests of the engine have no use for (test_quantizers.py tests it)."""
    import contextlib
    import io
    path = str(path)
    if hf_dir is None:
        hf_dir = path + ".hf"
        make_hf_llama(hf_dir, **hf_kwargs)
    from pyrunq4.export.__main__ import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        method = () if "--method" in extra_args else ("--method", "mse")
        rc = main([str(hf_dir), path, "--group-size", str(group_size), "--embedding-bits",
                   str(embedding_bits), "--quiet", *method, *extra_args])
    if rc != 0:
        raise RuntimeError(f"export failed: {err.getvalue().strip()}")
    return path
