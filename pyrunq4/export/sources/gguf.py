"""GGUF files (llama.cpp) as a SOURCE of `python -m pyrunq4.export SOURCE.gguf OUT.rq4`.

Read with the `gguf` package (gguf.GGUFReader maps the file; gguf.quants.dequantize knows every
ggml block type). Only the llama architecture is accepted.

Tensors (GGUF name -> FORMAT.md name; GGUF shapes are (cols, rows), the reader gives rows x cols):
    token_embd -> tok_embeddings, output -> output (absent: tied_embeddings = 1), output_norm -> norm,
    blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_down, ffn_up}
      -> layers.N.{attention_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3},
    rope_freqs (llama3 rope factors) -> only read to recover the header's llama3 rope parameters.

Exact imports (not requantized: the .rq4 holds the same levels and the same fp16 scales, so the
dequantized values are bit for bit those of gguf.quants.dequantize):
    Q4_0 -> q4s g32 (q = u - 8, same d)   Q4_1 -> q4a g32 (same d, m)   Q8_0 -> q8 g32 (same d)
    IQ4_NL -> q4t g32 (same nibbles and d; the table: IQ4_NL's kvalues, int8 already)
ggml's 4-bit blocks hold value j in the low nibble of byte j and value j+16 in its high nibble; our
QuantizedTensor holds plain levels, so only the order changes. Every other type (F32, F16, BF16,
Q5_x, Q4_K, Q6_K, ...) is dequantized to float32 and requantized by the exporter (--method,
--group-size), which prints each such tensor's error. With options.requantize every tensor is.

llama.cpp's converter permutes the rows of wq and wk for the llama architecture (rotary pairs
(i, i + head_dim/2) of Hugging Face become adjacent rows (2i, 2i+1), per head; wk with the
n_kv_heads of GQA). We undo it: row h*hd + k*hd/2 + i of ours is row h*hd + 2i + k of the GGUF. It
is a permutation of whole rows, so it applies to quantized rows (levels and scales) unchanged.
"""
import json

import numpy as np

from ...errors import ExportError, TokenizerError
from ..format import ROPE_LLAMA3, ROPE_NONE, complete_header, validate_model_header
from ..quant import q4a_from_levels, q4s_from_levels, q4t_from_levels, q8_from_levels
from .base import Source
from .gguf_tokenizer import build_tokenizer

LAYER_MAP = {
    "attn_norm": "attention_norm", "attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
    "ffn_norm": "ffn_norm", "ffn_gate": "w1", "ffn_down": "w2", "ffn_up": "w3",
}
EXACT_TYPES = ("Q4_0", "Q4_1", "Q8_0", "IQ4_NL")
# IQ4_NL's one table (ggml-common.h kvalues_iq4nl): its nibbles index it, as q4t's do
IQ4_NL_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)


def read_metadata(reader):
    """All key/value metadata of a gguf.GGUFReader as a dict of Python values (arrays as lists)."""
    meta = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = f.contents()
    return meta


def unpermute_rows(n_rows, n_head):
    """Index array idx with ours = gguf[idx] (undoes convert_hf_to_gguf's LlamaModel.permute)."""
    hd = n_rows // n_head
    # llama.cpp: gguf = hf.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2).reshape(...)  => gguf = hf[perm]
    perm = np.arange(n_rows).reshape(n_head, 2, hd // 2).swapaxes(1, 2).reshape(-1)
    return np.argsort(perm)


def _blocks(t, nbytes):
    """A quantized tensor's raw blocks: uint8 (rows, nblocks, nbytes)."""
    data = np.asarray(t.data)
    return data.reshape(data.shape[0], -1, nbytes)


def exact_tensor(t, rows_idx=None):
    """QuantizedTensor (g32) holding exactly the values of a Q4_0, Q4_1, Q8_0 or IQ4_NL ggml
    tensor (IQ4_NL: q4t with IQ4_NL's table)."""
    kind = t.tensor_type.name
    size = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34, "IQ4_NL": 18}[kind]
    b = _blocks(t, size)
    if rows_idx is not None:
        b = b[rows_idx]
    rows, nb, _ = b.shape
    d = np.ascontiguousarray(b[:, :, 0:2]).view(np.float16).reshape(rows, nb)
    if kind == "Q8_0":
        q = np.ascontiguousarray(b[:, :, 2:]).view(np.int8).reshape(rows, nb * 32)
        return q8_from_levels(q, d, 32)
    off = 4 if kind == "Q4_1" else 2
    qs = b[:, :, off:off + 16]
    u = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(rows, nb * 32)   # values 0..15 then 16..31
    if kind == "Q4_1":
        m = np.ascontiguousarray(b[:, :, 2:4]).view(np.float16).reshape(rows, nb)
        return q4a_from_levels(u.astype(np.uint8), d, m, 32)
    if kind == "IQ4_NL":
        return q4t_from_levels(u.astype(np.uint8), d, IQ4_NL_LEVELS, 32)
    return q4s_from_levels(u.astype(np.int8) - 8, d, 32)


def float_tensor(t, rows_idx=None):
    """A ggml tensor dequantized to float32 (rows, cols), or (n,) for 1-D ones."""
    import gguf
    try:
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    except NotImplementedError:
        raise ExportError(f"tensor {t.name}: ggml type {t.tensor_type.name} cannot be dequantized "
                          "by this gguf package") from None
    w = np.asarray(w, np.float32)
    if len(t.shape) >= 2:
        w = w.reshape(int(t.shape[1]), int(t.shape[0]))
    else:
        w = w.reshape(-1)
    if rows_idx is not None:
        w = w[rows_idx]
    if not np.isfinite(w).all():
        raise ExportError(f"tensor {t.name} has NaN or Inf values")
    return np.ascontiguousarray(w)


def _fit_llama3_rope(factors, theta, head_dim, meta):
    """(factor, low, high, original_max_pos) of llama3 rope scaling that reproduce the GGUF's
    rope_freqs factors (llama.cpp stores the per-frequency factors, not the parameters)."""
    factors = np.asarray(factors, np.float64)
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    factor = float(factors.max())
    origs = [int(meta["llama.rope.scaling.original_context_length"])] \
        if "llama.rope.scaling.original_context_length" in meta else [8192, 4096, 2048, 16384, 32768]
    for orig in origs:
        for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0), (2.0, 8.0)):
            smooth = (orig / wavelen - low) / (high - low)
            f = np.where(wavelen < orig / high, 1.0,
                         np.where(wavelen > orig / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
            if np.allclose(f, factors, rtol=1e-4, atol=1e-6):
                return factor, low, high, orig
    raise ExportError("rope_freqs holds rope factors that are not the llama3 rule with standard "
                      "parameters; this engine cannot reproduce them")


class GGUFSource(Source):
    """A llama-architecture GGUF file. options: group_size, embedding_bits, method (used by the
    exporter), requantize (bool: dequantize and requantize every tensor, no exact imports)."""

    def __init__(self, path, options=None):
        import gguf
        self.path = path
        self.requantize = bool(getattr(options, "requantize", False))
        try:
            self.reader = gguf.GGUFReader(path)
        except (ValueError, OSError, IndexError) as e:
            raise ExportError(f"{path}: not a readable GGUF file ({e})") from None
        self.meta = read_metadata(self.reader)
        self.by_name = {t.name: t for t in self.reader.tensors}
        arch = self.meta.get("general.architecture")
        if arch != "llama":
            raise ExportError(f"{path}: GGUF architecture {arch!r} is not supported (llama only)")
        try:
            self.tok = build_tokenizer(self.meta)
        except TokenizerError as e:
            raise ExportError(f"{path}: {e}") from None
        self.header = self._header()
        self.blobs = {"tokenizer.json": self.tok.json.encode("utf-8")}
        if self.tok.chat_template:
            self.blobs["chat_template"] = self.tok.chat_template.encode("utf-8")
        self.blobs["config.json"] = json.dumps(self._config(), indent=1).encode("utf-8")
        self.plan = self._plan()
        self.exact = [] if self.requantize else \
            [ours for ours, g in self.plan if self.by_name[g].tensor_type.name in EXACT_TYPES]
        self.note = self._note()

    # ---- metadata -> header ----
    def _need(self, key):
        v = self.meta.get("llama." + key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ExportError(f"{self.path}: metadata llama.{key} missing or not a positive integer ({v!r})")
        return v

    def _header(self):
        m = self.meta
        dim, n_heads = self._need("embedding_length"), self._need("attention.head_count")
        n_kv = m.get("llama.attention.head_count_kv") or n_heads
        head_dim = m.get("llama.attention.key_length") or dim // n_heads
        if m.get("llama.attention.value_length", head_dim) != head_dim:
            raise ExportError(f"{self.path}: key_length != value_length is not supported")
        rot = m.get("llama.rope.dimension_count", head_dim)
        if rot != head_dim:
            raise ExportError(f"{self.path}: partial rotary embeddings (rope.dimension_count {rot}, "
                              f"head_dim {head_dim}) are not supported")
        emb = self.by_name.get("token_embd.weight")
        if emb is None:
            raise ExportError(f"{self.path}: no token_embd.weight tensor")
        vocab = int(emb.shape[1])
        if self.tok.vocab_size != vocab:
            raise ExportError(f"{self.path}: the tokenizer has {self.tok.vocab_size} tokens, "
                              f"token_embd has {vocab} rows")
        theta = float(m.get("llama.rope.freq_base", 10000.0))
        h = {
            "dim": dim, "hidden_dim": self._need("feed_forward_length"), "n_layers": self._need("block_count"),
            "n_heads": n_heads, "n_kv_heads": n_kv, "head_dim": head_dim, "vocab_size": vocab,
            "max_seq_len": self._need("context_length"),
            "tied_embeddings": int("output.weight" not in self.by_name),
            "bos_id": self.tok.bos_id, "eos_ids": self.tok.eos_ids,
            "norm_eps": float(m.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": theta, "rope_scaling": ROPE_NONE,
        }
        kind = m.get("llama.rope.scaling.type")
        if kind not in (None, "none", "llama3"):
            raise ExportError(f"{self.path}: rope scaling {kind!r} is not supported (none or llama3)")
        if "rope_freqs.weight" in self.by_name:
            factors = float_tensor(self.by_name["rope_freqs.weight"]).reshape(-1)
            if factors.size != head_dim // 2:
                raise ExportError(f"{self.path}: rope_freqs has {factors.size} values, expected {head_dim // 2}")
            if not np.all(factors == 1.0):
                f, low, high, orig = _fit_llama3_rope(factors, theta, head_dim, m)
                h.update(rope_scaling=ROPE_LLAMA3, rope_factor=f, rope_low_freq_factor=low,
                         rope_high_freq_factor=high, rope_original_max_pos=orig)
        try:
            validate_model_header(complete_header(dict(h, group_size=0)))
        except ValueError as e:
            raise ExportError(f"{self.path}: this engine cannot run it: {e}") from None
        return h

    def _config(self):
        """A Hugging Face style config.json of the model, for reference (blob "config.json")."""
        h = self.header
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h["dim"],
               "intermediate_size": h["hidden_dim"], "num_hidden_layers": h["n_layers"],
               "num_attention_heads": h["n_heads"], "num_key_value_heads": h["n_kv_heads"],
               "head_dim": h["head_dim"], "vocab_size": h["vocab_size"],
               "max_position_embeddings": h["max_seq_len"], "rms_norm_eps": h["norm_eps"],
               "rope_theta": h["rope_theta"], "tie_word_embeddings": bool(h["tied_embeddings"]),
               "bos_token_id": h["bos_id"] if h["bos_id"] >= 0 else None, "eos_token_id": h["eos_ids"],
               "source": "gguf", "gguf_name": self.meta.get("general.name"),
               "gguf_file_type": self.meta.get("general.file_type")}
        if h["rope_scaling"] == ROPE_LLAMA3:
            cfg["rope_scaling"] = {"rope_type": "llama3", "factor": h["rope_factor"],
                                   "low_freq_factor": h["rope_low_freq_factor"],
                                   "high_freq_factor": h["rope_high_freq_factor"],
                                   "original_max_position_embeddings": h["rope_original_max_pos"]}
        return cfg

    # ---- tensors ----
    def _plan(self):
        """[(FORMAT.md name, GGUF name)] in file order; checks shapes and refuses extra tensors."""
        h = self.header
        dim, hid = h["dim"], h["hidden_dim"]
        qd, kvd = h["n_heads"] * h["head_dim"], h["n_kv_heads"] * h["head_dim"]
        shapes = {"attn_norm": (dim,), "ffn_norm": (dim,), "attn_q": (qd, dim), "attn_k": (kvd, dim),
                  "attn_v": (kvd, dim), "attn_output": (dim, qd), "ffn_gate": (hid, dim),
                  "ffn_down": (dim, hid), "ffn_up": (hid, dim)}
        plan = [("tok_embeddings", "token_embd.weight", (h["vocab_size"], dim))]
        for i in range(h["n_layers"]):
            for g, ours in LAYER_MAP.items():
                plan.append((f"layers.{i}.{ours}", f"blk.{i}.{g}.weight", shapes[g]))
        plan.append(("norm", "output_norm.weight", (dim,)))
        if not h["tied_embeddings"]:
            plan.append(("output", "output.weight", (h["vocab_size"], dim)))
        for ours, g, shape in plan:
            t = self.by_name.get(g)
            if t is None:
                raise ExportError(f"{self.path}: missing tensor {g}")
            got = tuple(int(s) for s in reversed(list(t.shape)))
            if got != shape:
                raise ExportError(f"{self.path}: tensor {g} has shape {got}, expected {shape} from the metadata")
        known = {g for _, g, _ in plan} | {"rope_freqs.weight"}
        for name in self.by_name:
            if name not in known:
                raise ExportError(f"{self.path}: tensor {name} is not supported (a llama model without "
                                  "biases or extra modules only)")
        return [(ours, g) for ours, g, _ in plan]

    def _rows_idx(self, ours):
        h = self.header
        if ours.endswith(".wq"):
            return unpermute_rows(h["n_heads"] * h["head_dim"], h["n_heads"])
        if ours.endswith(".wk"):
            return unpermute_rows(h["n_kv_heads"] * h["head_dim"], h["n_kv_heads"])
        return None

    def _note(self):
        types = {}
        for _, g in self.plan:
            k = self.by_name[g].tensor_type.name
            types[k] = types.get(k, 0) + 1
        desc = ", ".join(f"{n} {k}" for k, n in sorted(types.items()))
        if self.requantize:
            return f"GGUF tensors {desc}: all dequantized to float and requantized (--requantize)"
        redo = [ours for ours, g in self.plan if self.by_name[g].tensor_type.name not in EXACT_TYPES + ("F32",)
                or (self.by_name[g].tensor_type.name == "F32" and len(self.by_name[g].shape) >= 2)]
        return (f"GGUF tensors {desc}: Q4_0/Q4_1/Q8_0 imported exactly (g32; IQ4_NL as q4t); "
                f"{len(redo)} tensor(s) dequantized and requantized" + (f": {', '.join(redo)}" if redo else ""))

    def tensor_names(self):
        return [ours for ours, _ in self.plan]

    def tensors(self):
        for ours, g in self.plan:
            yield ours, self.tensor(ours, g)

    def tensor(self, ours, g=None, as_float=False):
        """One tensor by FORMAT.md name: a QuantizedTensor for an exact import, else float32."""
        g = g or dict(self.plan)[ours]
        t = self.by_name[g]
        idx = self._rows_idx(ours)
        if not as_float and ours in self.exact:
            return exact_tensor(t, idx)
        return float_tensor(t, idx)

    def read(self, name):
        """Random access (sources/base.py): the float32 array of entry `name`, dequantized."""
        if name not in dict(self.plan):
            raise KeyError(name)
        return self.tensor(name, as_float=True)

    def float_weights(self):
        """{FORMAT.md name: float32 array} of every tensor, dequantized (the float reference's weights)."""
        return {ours: self.tensor(ours, g, as_float=True) for ours, g in self.plan}

    def close(self):
        self.reader = None
        self.by_name = {}

