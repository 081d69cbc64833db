"""Hugging Face Llama checkpoints (LlamaForCausalLM, safetensors) as an export source.

Reads config.json, model.safetensors or model-0000k-of-0000n.safetensors with
model.safetensors.index.json, tokenizer.json, tokenizer_config.json and
generation_config.json. Tensors are read straight from the safetensors files
(the format is an 8-byte header length, a JSON header of dtype/shape/offsets,
then raw little-endian data; parsed here because the safetensors library's
numpy loader cannot read bf16) in 4M-value chunks (BF16, F16, F32; bf16 ->
float32 is a 16-bit shift), one tensor at a time, so the peak memory is about
one tensor in float32 (Llama-3.2-1B: 1 GB for the embedding, ~1.6 GB peak RSS).
"""

import json
import os
import struct

import numpy as np

from ...errors import ExportError
from ..format import MAX_EOS, ROPE_LLAMA3, ROPE_NONE, complete_header, validate_model_header
from ..quant import CHUNK_VALUES
from .base import Source, read_json

# safetensors dtype -> numpy storage dtype (BF16 is read as its uint16 bits)
DTYPES = {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4")}
CONFIG_DTYPES = (None, "bfloat16", "float16", "float32")

# FORMAT.md name suffix of a layer tensor -> Hugging Face name suffix
LAYER_MAP = {
    "attention_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "ffn_norm": "post_attention_layernorm.weight",
    "w1": "mlp.gate_proj.weight",
    "w2": "mlp.down_proj.weight",
    "w3": "mlp.up_proj.weight",
}


def header_from_config(cfg, where="config.json"):
    """FORMAT.md model fields (without bos/eos) of a Llama config.json; ExportError
    on anything this engine does not run."""
    arch = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" or (arch and "LlamaForCausalLM" not in arch):
        got = ", ".join(arch) if arch else f"model_type {cfg.get('model_type')!r}"
        raise ExportError(f"{where}: unsupported architecture {got}; only LlamaForCausalLM (model_type llama)")
    for k in ("attention_bias", "mlp_bias"):
        if cfg.get(k):
            raise ExportError(f"{where}: {k} = true is not supported (Llama without biases only)")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ExportError(f"{where}: hidden_act {act!r} is not supported (silu only)")
    dtype = cfg.get("torch_dtype", cfg.get("dtype"))
    if dtype not in CONFIG_DTYPES:
        raise ExportError(f"{where}: dtype {dtype!r} is not supported (bfloat16, float16, float32)")

    def need(k):
        v = cfg.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ExportError(f"{where}: {k} missing or not a positive integer ({v!r})")
        return v

    dim, heads = need("hidden_size"), need("num_attention_heads")
    head_dim = cfg.get("head_dim") or dim // heads
    h = {
        "dim": dim,
        "hidden_dim": need("intermediate_size"),
        "n_layers": need("num_hidden_layers"),
        "n_heads": heads,
        "n_kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "vocab_size": need("vocab_size"),
        "max_seq_len": need("max_position_embeddings"),
        "tied_embeddings": int(bool(cfg.get("tie_word_embeddings", False))),
        "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(cfg.get("rope_theta", 10000.0)),
        "rope_scaling": ROPE_NONE,
    }
    rs = cfg.get("rope_scaling")
    kind = (rs.get("rope_type", rs.get("type")) if isinstance(rs, dict) else None) if rs else None
    if rs and kind not in ("default", "llama3"):
        raise ExportError(f"{where}: rope_scaling type {kind!r} is not supported (none or llama3)")
    if kind == "llama3":
        try:
            h.update(rope_scaling=ROPE_LLAMA3,
                     rope_factor=float(rs["factor"]),
                     rope_low_freq_factor=float(rs["low_freq_factor"]),
                     rope_high_freq_factor=float(rs["high_freq_factor"]),
                     rope_original_max_pos=int(rs["original_max_position_embeddings"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ExportError(f"{where}: llama3 rope_scaling needs factor, low_freq_factor, high_freq_factor "
                              f"and original_max_position_embeddings ({e!r})") from None
    return h


def _ids(v):
    """A token id or a list of them (config/generation_config style) as a list."""
    if v is None:
        return []
    vals = v if isinstance(v, list) else [v]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        raise ExportError(f"token ids must be integers, got {v!r}")
    return vals


def token_id(tokenizer, token):
    """The id of a token string (or AddedToken dict) in a tokenizer.json object, or None."""
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    for t in tokenizer.get("added_tokens") or []:
        if t.get("content") == token:
            return t.get("id")
    vocab = (tokenizer.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        return vocab.get(token)
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        for i, (piece, _) in enumerate(vocab):
            if piece == token:
                return i
    return None


def special_ids(cfg, gen, tok_cfg, tokenizer):
    """(bos_id or -1, [eos ids, at most 4], note or None): generation_config.json
    first, then config.json, then tokenizer_config.json's token strings. All eos
    ids found are kept (a chat model stops on any of them), in that order."""
    bos = _ids(gen.get("bos_token_id")) or _ids(cfg.get("bos_token_id"))
    if not bos:
        t = token_id(tokenizer, tok_cfg.get("bos_token"))
        bos = [] if t is None else [t]
    eos = []
    for v in _ids(gen.get("eos_token_id")) + _ids(cfg.get("eos_token_id")) + \
            [token_id(tokenizer, tok_cfg.get("eos_token"))]:
        if v is not None and v not in eos:
            eos.append(v)
    note = None
    if len(eos) > MAX_EOS:
        note = f"keeping the first {MAX_EOS} of the eos ids {eos}"
        eos = eos[:MAX_EOS]
    return (bos[0] if bos else -1), eos, note


def chat_template(directory, tok_cfg):
    """The chat template text: chat_template.jinja, else tokenizer_config.json's
    chat_template (a string, or a list of named templates: 'default'), else None."""
    p = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            return f.read()
    t = tok_cfg.get("chat_template")
    if isinstance(t, list):
        named = {x.get("name"): x.get("template") for x in t if isinstance(x, dict)}
        t = named.get("default") or next(iter(named.values()), None)
        if t is None:
            raise ExportError("tokenizer_config.json: chat_template is a list without named templates")
    if t is not None and not isinstance(t, str):
        raise ExportError(f"tokenizer_config.json: chat_template is a {type(t).__name__}, not text")
    return t or None


class SafetensorsFile:
    """One .safetensors file: its header parsed, its data mapped read-only."""

    def __init__(self, path):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                if n > min(size - 8, 1 << 28):
                    raise ValueError("header length past the end of the file")
                meta = json.loads(f.read(n))
        except FileNotFoundError:
            raise ExportError(f"{path}: missing") from None
        except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
            raise ExportError(f"{path}: not a safetensors file ({e})") from None
        meta.pop("__metadata__", None)
        self.data_start = 8 + n
        self.tensors = meta
        self.size = size
        self._file = None

    def read(self, name):
        """The tensor as float32 (a fresh array), converted in row chunks; ExportError
        on an unsupported dtype, a bad offset or a NaN/Inf value."""
        info = self.tensors[name]
        dt = DTYPES.get(info.get("dtype"))
        if dt is None:
            raise ExportError(f"{self.path}: tensor {name} has dtype {info.get('dtype')} "
                              f"(supported: {', '.join(DTYPES)})")
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dt.itemsize or self.data_start + end > self.size or begin < 0:
            raise ExportError(f"{self.path}: tensor {name}: data offsets do not match its shape")
        if self._file is None:
            self._file = open(self.path, "rb")
        self._file.seek(self.data_start + begin)
        out = np.empty(count, np.float32)
        buf = np.empty(min(count, CHUNK_VALUES), dt)
        # read in chunks rather than through a mapping: a mapping's pages would stay
        # resident, and by the last tensor the whole checkpoint would count as RSS
        for i in range(0, count, CHUNK_VALUES):
            j = min(count, i + CHUNK_VALUES)
            chunk = buf[:j - i]
            if self._file.readinto(memoryview(chunk).cast("B")) != chunk.nbytes:
                raise ExportError(f"{self.path}: tensor {name}: unexpected end of file")
            if info["dtype"] == "BF16":
                u = out[i:j].view(np.uint32)
                u[...] = chunk
                u <<= 16  # bf16 is the top half of a float32
            else:
                out[i:j] = chunk
            if not np.isfinite(out[i:j]).all():
                raise ExportError(f"tensor {name} has NaN or Inf values")
        return out.reshape(shape)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class HfSource(Source):
    """A Hugging Face LlamaForCausalLM directory with safetensors weights."""

    def __init__(self, directory, options=None):
        self.dir = os.fspath(directory)
        self.files = {}
        j = lambda name: os.path.join(self.dir, name)  # noqa: E731
        cfg = read_json(j("config.json"), "Hugging Face config")
        self.check_quantization(cfg, j("config.json"))
        h = header_from_config(cfg, j("config.json"))
        if not os.path.isfile(j("tokenizer.json")):
            raise ExportError(f"{j('tokenizer.json')}: missing (the fast tokenizer is embedded in the .rq4)")
        with open(j("tokenizer.json"), "rb") as f:
            tok_bytes = f.read()
        try:
            tokenizer = json.loads(tok_bytes)
        except (ValueError, UnicodeDecodeError) as e:
            raise ExportError(f"{j('tokenizer.json')}: invalid JSON: {e}") from None
        if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("model"), dict):
            # refused here, not later when the .rq4 is opened
            raise ExportError(f"{j('tokenizer.json')}: not a tokenizers file (no \"model\" object)")
        tok_cfg = read_json(j("tokenizer_config.json")) if os.path.isfile(j("tokenizer_config.json")) else {}
        gen = read_json(j("generation_config.json")) if os.path.isfile(j("generation_config.json")) else {}
        bos, eos, self.note = special_ids(cfg, gen, tok_cfg, tokenizer)
        for what, ids in (("bos", [bos] if bos >= 0 else []), ("eos", eos)):
            bad = [i for i in ids if not 0 <= i < h["vocab_size"]]
            if bad:
                raise ExportError(f"{self.dir}: {what} token id {bad[0]} is outside the vocabulary "
                                  f"(vocab_size {h['vocab_size']})")
        h.update(bos_id=bos, eos_ids=eos)
        try:
            validate_model_header(complete_header(dict(h, group_size=0)))
        except ValueError as e:
            raise ExportError(f"{j('config.json')}: this engine cannot run it: {e}") from None
        self.header = h
        self.blobs = {"tokenizer.json": tok_bytes}
        tmpl = chat_template(self.dir, tok_cfg)
        if tmpl is not None:
            self.blobs["chat_template"] = tmpl.encode("utf-8")
        with open(j("config.json"), "rb") as f:
            self.blobs["config.json"] = f.read()
        self._index_weights()
        self._check_names()

    def _index_weights(self):
        """self.where: Hugging Face tensor name -> SafetensorsFile."""
        index = os.path.join(self.dir, "model.safetensors.index.json")
        single = os.path.join(self.dir, "model.safetensors")
        if os.path.isfile(index):
            wmap = read_json(index).get("weight_map")
            if not isinstance(wmap, dict) or not wmap:
                raise ExportError(f"{index}: no weight_map")
            shards = sorted(set(wmap.values()))
        elif os.path.isfile(single):
            wmap, shards = None, ["model.safetensors"]
        else:
            raise ExportError(f"{self.dir}: no model.safetensors or model.safetensors.index.json "
                              "(only safetensors weights are supported)")
        self.where = {}
        for shard in shards:
            if os.path.basename(shard) != shard:
                raise ExportError(f"{index}: shard name {shard!r} is not a file name")
            sf = SafetensorsFile(os.path.join(self.dir, shard))
            self.files[shard] = sf
            for name in sf.tensors:
                if wmap is None or wmap.get(name) == shard:
                    self.where[name] = sf
        if wmap is not None:
            lost = [n for n in wmap if n not in self.where]
            if lost:
                raise ExportError(f"{index}: tensor {lost[0]} is not in {wmap[lost[0]]}")

    def _hf_names(self):
        """[(FORMAT.md name, Hugging Face name, expected shape)] in file order."""
        h = self.header
        dim, hid, qd = h["dim"], h["hidden_dim"], h["n_heads"] * h["head_dim"]
        kv = h["n_kv_heads"] * h["head_dim"]
        shapes = {"attention_norm": (dim,), "ffn_norm": (dim,), "wq": (qd, dim), "wk": (kv, dim),
                  "wv": (kv, dim), "wo": (dim, qd), "w1": (hid, dim), "w2": (dim, hid), "w3": (hid, dim)}
        out = [("tok_embeddings", "model.embed_tokens.weight", (h["vocab_size"], dim))]
        for i in range(h["n_layers"]):
            for ours, theirs in LAYER_MAP.items():
                out.append((f"layers.{i}.{ours}", f"model.layers.{i}.{theirs}", shapes[ours]))
        out.append(("norm", "model.norm.weight", (dim,)))
        if not h["tied_embeddings"]:
            out.append(("output", "lm_head.weight", (h["vocab_size"], dim)))
        return out

    def _check_names(self):
        """Every expected tensor present with its shape and a supported dtype; no
        tensor this engine would silently ignore (biases, extra modules)."""
        self.plan = self._hf_names()
        expected = {theirs for _, theirs, _ in self.plan}
        for ours, theirs, shape in self.plan:
            sf = self.where.get(theirs)
            if sf is None:
                raise ExportError(f"{self.dir}: missing tensor {theirs}")
            info = sf.tensors[theirs]
            if tuple(info.get("shape", ())) != shape:
                raise ExportError(f"{sf.path}: tensor {theirs} has shape {tuple(info.get('shape', ()))}, "
                                  f"expected {shape} from config.json")
            if info.get("dtype") not in DTYPES:
                raise ExportError(f"{sf.path}: tensor {theirs} has dtype {info.get('dtype')} "
                                  f"(supported: {', '.join(DTYPES)})")
        for name in sorted(self.where):
            if name in expected or name.endswith("rotary_emb.inv_freq"):
                continue
            if name == "lm_head.weight" and self.header["tied_embeddings"]:
                continue  # a tied checkpoint that also stores the copy
            if name.endswith(".bias"):
                raise ExportError(f"{self.dir}: bias tensor {name} is not supported (Llama without biases only)")
            raise ExportError(f"{self.dir}: unexpected tensor {name} (not part of LlamaForCausalLM)")

    def check_quantization(self, cfg, config_path):
        """Refuses a config.json with a quantization_config (subclasses that
        decode one, e.g. bitsandbytes, override this)."""
        if cfg.get("quantization_config"):
            raise ExportError(f"{config_path}: quantized checkpoints (quantization_config) are not "
                              "plain Hugging Face weights")

    def tensor_names(self):
        return [ours for ours, _, _ in self.plan]

    def load(self, hf_name):
        """One Hugging Face tensor as float32 (subclasses override this to decode
        other storage, e.g. bitsandbytes)."""
        return self.where[hf_name].read(hf_name)

    def tensors(self):
        for ours, theirs, _ in self.plan:
            yield ours, self.load(theirs)

    def read(self, name):
        for ours, theirs, _ in self.plan:
            if ours == name:
                return self.load(theirs)
        raise KeyError(name)

    def close(self):
        for sf in self.files.values():
            sf.close()
