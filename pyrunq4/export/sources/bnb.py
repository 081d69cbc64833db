"""bitsandbytes 4-bit checkpoints (Hugging Face layout) dequantized in numpy, no torch needed.

A checkpoint saved by transformers with BitsAndBytesConfig(load_in_4bit=True) (e.g.
unsloth/Llama-3.2-1B-Instruct-bnb-4bit) has `quantization_config` in config.json
({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4",
"bnb_4bit_use_double_quant": true, ...}) and stores each quantized Linear `P` as

    P.weight                                   uint8 (ceil(n/2), 1): two 4-bit codes a byte, HIGH nibble first
    P.weight.absmax                            float32 (nblocks,), or uint8 with double quantization
    P.weight.quant_map                         float32 (16,): code -> value in [-1, 1] (NF4 or FP4 table)
    P.weight.nested_absmax                     float32 (ceil(nblocks / nested_blocksize),)   [double quant]
    P.weight.nested_quant_map                  float32 (256,): bnb's signed dynamic 8-bit map  [double quant]
    P.weight.quant_state.bitsandbytes__nf4     uint8: UTF-8 JSON {"quant_type", "blocksize", "dtype",
        (or __fp4)                                 "shape": [out, in], "nested_blocksize", "nested_dtype",
                                                   "nested_offset"}

(bitsandbytes functional.py QuantState.as_dict(packed=True) / from_dict, utils.pack_dict_to_tensor.)
The n = out*in values are taken flat in row-major order and cut into blocks of `blocksize`
(the last block may be shorter). Dequantization, as bitsandbytes' dequantize_4bit:

    absmax = nested_quant_map[absmax_u8] * nested_absmax[i // nested_blocksize] + nested_offset  (double quant; f32)
    w[i]   = quant_map[code[i]] * absmax[i // blocksize]                                         (f32)
    then rounded to `dtype` (bfloat16 / float16 / float32), as bitsandbytes returns it

The result is a float matrix that goes through the exporter's normal requantization; 4-bit NF4/FP4
levels are not uniform, so there is no uniform int4 form of them. With --weight-type q4t (data-free
methods, the group size = bnb's blocksize) NF4 weights are imported instead as q4t: the same codes
into the code book rounded to int8 once, the absmax / 127 as the fp16 group scale (q4t_of_4bit).

quantize_4bit() is the numpy twin of bitsandbytes.functional.quantize_4bit (nearest code by
midpoints, absmax per block, optional double quantization of absmax with blocksize 256 after
subtracting their mean); tests use it to build checkpoints in exactly the serialized layout.
"""
import json

import numpy as np

from ...errors import BnbError, ExportError
from .hf import HfSource

# bitsandbytes functional.get_4bit_type("nf4"): the NormalFloat4 table (QLoRA), sorted
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
# get_4bit_type("fp4"): 1 sign, 2 exponent, 1 mantissa bit, in bit-pattern order, divided by 12
FP4 = (np.array([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                 -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0], np.float32) / np.float32(12.0))
TABLES = {"nf4": NF4, "fp4": FP4}

STATE_SUFFIXES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map",
                  "quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def is_bnb_4bit(config):
    """True for a config.json whose quantization_config is bitsandbytes 4-bit."""
    qc = (config or {}).get("quantization_config") or {}
    return qc.get("quant_method") == "bitsandbytes" and bool(qc.get("load_in_4bit"))


def check_config(config):
    """Refuse bitsandbytes configs we cannot dequantize (8-bit LLM.int8 checkpoints)."""
    qc = (config or {}).get("quantization_config") or {}
    if qc.get("quant_method") == "bitsandbytes" and not qc.get("load_in_4bit"):
        raise BnbError("bitsandbytes 8-bit (LLM.int8) checkpoints are not supported, only 4-bit (nf4/fp4)")


def round_to_dtype(x, dtype):
    """float32 x rounded to bfloat16/float16 (nearest even) and back to float32, as torch's .to(dtype)."""
    x = np.ascontiguousarray(x, np.float32)
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        u = x.view(np.uint32).astype(np.uint64)
        nan = (u & 0x7FFFFFFF) > 0x7F800000
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        r = np.where(nan, (u | 0x00400000) & 0xFFFF0000, r)   # keep NaN a (quiet) NaN
        return r.astype(np.uint32).view(np.float32)
    raise BnbError("unsupported bitsandbytes dtype %r (bfloat16, float16 or float32)" % dtype)


def unpack_quant_state(arr):
    """The JSON dict stored in a quant_state.bitsandbytes__* uint8 tensor."""
    try:
        return json.loads(bytes(np.asarray(arr, np.uint8).reshape(-1)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BnbError("unreadable bitsandbytes quant_state: %s" % e) from e


def pack_quant_state(d):
    """uint8 tensor holding d as JSON (bitsandbytes utils.pack_dict_to_tensor)."""
    return np.frombuffer(json.dumps(d).encode("utf-8"), np.uint8).copy()


def _blockwise(values, scales, blocksize):
    """values (n,) * scales[i // blocksize], float32; the last block may be shorter."""
    n = values.shape[0]
    full = n - n % blocksize
    out = np.empty(n, np.float32)
    out[:full] = (values[:full].reshape(-1, blocksize) * scales[:full // blocksize, None]).reshape(-1)
    if full < n:
        out[full:] = values[full:] * scales[full // blocksize]
    return out


def _state_int(state, key, lo):
    """An integer field of a quant state, >= lo; BnbError otherwise."""
    v = state.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or int(v) < lo:
        raise BnbError("bitsandbytes quant state: %s = %r must be an integer >= %d" % (key, v, lo))
    return int(v)


def dequantize_4bit(packed, absmax, quant_map, state, nested_absmax=None, nested_quant_map=None):
    """float32 matrix state["shape"] from the serialized pieces of one bnb 4-bit weight (see module doc)."""
    codes, code, scales, bs, shape = decode_4bit(packed, absmax, quant_map, state, nested_absmax, nested_quant_map)
    w = _blockwise(code[codes], scales, bs)
    return round_to_dtype(w, state.get("dtype", "float32")).reshape(shape)


def decode_4bit(packed, absmax, quant_map, state, nested_absmax=None, nested_quant_map=None):
    """The pieces of one bnb 4-bit weight, checked: (codes (n,) uint8 in value order,
    code book (16,) float32, block scales (nblocks,) float32, blocksize, shape)."""
    qtype = state.get("quant_type")
    if qtype not in TABLES:
        raise BnbError("unsupported bitsandbytes quant_type %r (nf4 or fp4)" % qtype)
    if not isinstance(state.get("blocksize"), int) or state["blocksize"] not in BLOCKSIZES:
        raise BnbError("invalid bitsandbytes blocksize %r" % state.get("blocksize"))
    bs = state["blocksize"]
    shape = state.get("shape")
    if not isinstance(shape, list) or not shape or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise BnbError("bitsandbytes quant state: shape %r must be a list of positive integers" % (shape,))
    shape = tuple(shape)
    n = int(np.prod(shape))
    packed = np.asarray(packed).reshape(-1).view(np.uint8) if np.asarray(packed).dtype != np.uint8 \
        else np.asarray(packed).reshape(-1)
    if packed.size < (n + 1) // 2:
        raise BnbError("packed 4-bit data has %d bytes for %d values" % (packed.size, n))
    code = np.asarray(quant_map if quant_map is not None else TABLES[qtype], np.float32).reshape(-1)
    if code.size != 16:
        raise BnbError("quant_map must have 16 entries, got %d" % code.size)
    nblocks = (n + bs - 1) // bs

    if absmax is None:
        raise BnbError("missing absmax")
    absmax = np.asarray(absmax).reshape(-1)
    if nested_absmax is not None:
        if nested_quant_map is None or "nested_blocksize" not in state or "nested_offset" not in state:
            raise BnbError("double quantization needs nested_quant_map, nested_blocksize and nested_offset")
        nbs = _state_int(state, "nested_blocksize", 1)
        offset = state["nested_offset"]
        if isinstance(offset, bool) or not isinstance(offset, (int, float)):
            raise BnbError("bitsandbytes quant state: nested_offset %r is not a number" % (offset,))
        ncode = np.asarray(nested_quant_map, np.float32).reshape(-1)
        if absmax.dtype != np.uint8 or ncode.size != 256:
            raise BnbError("double-quantized absmax must be uint8 with a 256-entry nested_quant_map")
        scales = _blockwise(ncode[absmax], np.asarray(nested_absmax, np.float32).reshape(-1), nbs)
        scales = round_to_dtype(scales, state.get("nested_dtype", "float32"))
        scales = scales + np.float32(offset)
    else:
        scales = absmax.astype(np.float32)
    if scales.size != nblocks:
        raise BnbError("absmax has %d blocks, expected %d" % (scales.size, nblocks))

    codes = np.empty(2 * packed.size, np.uint8)
    codes[0::2] = packed >> 4          # first value in the high nibble
    codes[1::2] = packed & 0x0F
    return codes[:n], code, scales.astype(np.float32), bs, shape


def q4t_of_4bit(codes, code, scales, bs, shape, group_size):
    """The q4t tensor of a decoded bnb 4-bit weight without a second rounding, or None
    when there is none: the code book sorted and rounded to int8 once (t = round(127 *
    code)), the codes mapped to their place in it, d = fp16(absmax / 127) per block.
    Needs a matrix whose rows are whole blocks (cols % bs == 0) of the export's group
    size, and a code book that stays strictly increasing once rounded (NF4; not FP4,
    whose -0 and 0 coincide)."""
    from ..quant import q4t_from_levels
    if len(shape) != 2 or bs != group_size or shape[1] % bs:
        return None
    order = np.argsort(code, kind="stable")
    table = np.rint(code[order].astype(np.float64) * 127)
    if np.abs(table).max() > 127 or not (np.diff(table) > 0).all():
        return None
    place = np.empty(16, np.uint8)
    place[order] = np.arange(16, dtype=np.uint8)
    with np.errstate(over="ignore"):
        d = (scales / np.float32(127)).astype(np.float16)
    if not np.isfinite(d).all():
        return None
    rows, cols = shape
    return q4t_from_levels(place[codes].reshape(rows, cols), d.reshape(rows, cols // bs), table.astype(np.int8),
                           group_size)


def quant_state_names(weight_name):
    """The auxiliary tensor names that belong to a bnb-quantized `weight_name`."""
    return [weight_name + "." + s for s in STATE_SUFFIXES]


def find_quantized(names):
    """{weight name: quant_state tensor name} for every bnb 4-bit weight among the tensor names."""
    out = {}
    for name in names:
        for qt in ("nf4", "fp4"):
            suffix = ".quant_state.bitsandbytes__" + qt
            if name.endswith(suffix):
                out[name[:-len(suffix)]] = name
    return out


def dequantize_named(get, names):
    """Dequantize every bnb 4-bit weight of a checkpoint.

    get(name) -> numpy array of a stored tensor; names: all tensor names of the checkpoint.
    Returns (dequantized, consumed): {weight name: float32 matrix}, and the set of names
    (packed weights and their quant state) the caller must not read as ordinary tensors.
    """
    names = set(names)
    dequantized, consumed = {}, set()
    for wname, qsname in sorted(find_quantized(names).items()):
        state = unpack_quant_state(get(qsname))
        for need in ("absmax", "quant_map"):
            if wname + "." + need not in names:
                raise BnbError("%s: missing %s.%s" % (wname, wname, need))
        nested = wname + ".nested_absmax" in names
        w = dequantize_4bit(get(wname), get(wname + ".absmax"), get(wname + ".quant_map"), state,
                            get(wname + ".nested_absmax") if nested else None,
                            get(wname + ".nested_quant_map") if nested else None)
        dequantized[wname] = w
        consumed.add(wname)
        consumed.update(n for n in quant_state_names(wname) if n in names)
    return dequantized, consumed


# ---- the numpy twin of bitsandbytes' quantizer (test fixtures) ----

def dynamic_map():
    """bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 sorted floats."""
    data = []
    for i in range(7):
        bounds = np.linspace(0.1, 1, 2 ** i + 1, dtype=np.float32)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2.0)
        scale = 10.0 ** (-6 + i)
        data += (np.float32(scale) * means).tolist()
        data += (-np.float32(scale) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return np.array(sorted(data), np.float32)


def _quantize_blockwise_codes(x, code, blocksize):
    """Nearest code index of x / absmax per block (bitsandbytes' default backend); (codes, absmax)."""
    n = x.size
    nb = (n + blocksize - 1) // blocksize
    pad = np.zeros(nb * blocksize, np.float32)
    pad[:n] = x
    blocks = pad.reshape(nb, blocksize)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    if n % blocksize:   # the short last block's absmax covers only its real values
        absmax[-1] = np.abs(x[(nb - 1) * blocksize:]).max()
    scaled = np.clip(blocks * (np.float32(1.0) / np.maximum(absmax, np.float32(1e-38)))[:, None], -1, 1)
    order = np.argsort(code, kind="stable")
    sc = code[order]
    mids = (sc[:-1] + sc[1:]) / np.float32(2.0)
    idx = np.searchsorted(mids, scaled.reshape(-1)[:n], side="left")   # torch.bucketize(right=False)
    return order[idx].astype(np.uint8), absmax


def quantize_4bit(w, quant_type="nf4", blocksize=64, double_quant=False, dtype="float32", nested_blocksize=256):
    """Serialized bnb 4-bit tensors of a float matrix w: {suffix: array}, suffixes '' (the packed
    weight), 'absmax', 'quant_map', ['nested_absmax', 'nested_quant_map'], 'quant_state.bitsandbytes__<type>'."""
    w = round_to_dtype(np.asarray(w, np.float32), dtype)
    flat = w.reshape(-1)
    code = TABLES[quant_type]
    codes, absmax = _quantize_blockwise_codes(flat, code, blocksize)
    if codes.size % 2:
        codes = np.concatenate([codes, np.zeros(1, np.uint8)])
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8).reshape(-1, 1)
    out = {"": packed, "quant_map": code.copy()}
    state = {"quant_type": quant_type, "blocksize": blocksize, "dtype": dtype, "shape": list(w.shape)}
    if double_quant:
        offset = np.float32(absmax.mean(dtype=np.float32))
        dmap = dynamic_map()
        qabs, nested_absmax = _quantize_blockwise_codes(absmax - offset, dmap, nested_blocksize)
        out.update({"absmax": qabs, "nested_absmax": nested_absmax, "nested_quant_map": dmap})
        state.update({"nested_blocksize": nested_blocksize, "nested_dtype": "float32",
                      "nested_offset": float(offset)})
    else:
        out["absmax"] = absmax
    out["quant_state.bitsandbytes__" + quant_type] = pack_quant_state(state)
    return out



# ---- the exporter's source (the protocol of sources/base.py) ----

_RAW_DTYPES = {"U8": np.uint8, "I8": np.int8, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _read_raw(sf, name):
    """A tensor of a hf.SafetensorsFile as stored (BF16 widened to float32): the quant state pieces."""
    info = sf.tensors[name]
    dt = _RAW_DTYPES.get(info.get("dtype"))
    if dt is None:
        raise BnbError("%s: tensor %s has dtype %s" % (sf.path, name, info.get("dtype")))
    dt = np.dtype(dt).newbyteorder("<")
    shape = tuple(info["shape"])
    begin, end = info["data_offsets"]
    count = int(np.prod(shape, dtype=np.int64))
    if end - begin != count * dt.itemsize or sf.data_start + end > sf.size or begin < 0:
        raise BnbError("%s: tensor %s: data offsets do not match its shape" % (sf.path, name))
    with open(sf.path, "rb") as f:
        f.seek(sf.data_start + begin)
        a = np.frombuffer(f.read(end - begin), dt).reshape(shape)
    if info["dtype"] == "BF16":
        a = (a.astype(np.uint32) << 16).view(np.float32)
    return a


class _ShapeOnly:
    """Stands in for a packed bnb weight (with its unpacked shape) while HfSource checks the names."""

    def __init__(self, name, shape):
        self.path = "(bitsandbytes quant_state)"
        self.tensors = {name: {"shape": list(shape or ()), "dtype": "F32"}}


class BnbSource(HfSource):
    """The source for a Hugging Face directory whose config.json has a bitsandbytes
    quantization_config.

    A bitsandbytes 4-bit Llama checkpoint. The quantized Linear weights are dequantized to
    exactly bitsandbytes' float values and requantized by the exporter like float weights;
    the tensors bitsandbytes left alone (embedding, norms, lm_head) are read as HfSource does."""

    def check_quantization(self, cfg, config_path):
        qc = cfg.get("quantization_config") or {}
        if qc.get("quant_method") != "bitsandbytes":
            raise ExportError("%s: quantization method %r is not supported (bitsandbytes 4-bit only)"
                              % (config_path, qc.get("quant_method")))
        try:
            check_config(cfg)
        except BnbError as e:
            raise ExportError("%s: %s" % (config_path, e)) from None
        self.quant_type = qc.get("bnb_4bit_quant_type", "4-bit")

    def _check_names(self):
        # HfSource's checks, on a view where each packed weight is a stand-in of its real shape
        # and the quant state pieces are hidden
        real = self.where
        self.quantized = find_quantized(real)           # weight name -> quant_state name
        aux = {n for w in self.quantized for n in quant_state_names(w) if n in real}
        view = {n: sf for n, sf in real.items() if n not in aux and n not in self.quantized}
        try:
            for wname, qsname in self.quantized.items():
                if wname not in real:
                    raise BnbError("%s has a quant state but no packed weight" % wname)
                view[wname] = _ShapeOnly(wname, unpack_quant_state(_read_raw(real[qsname], qsname)).get("shape"))
        except BnbError as e:
            raise ExportError("%s: %s" % (self.dir, e)) from None
        self.where = view
        try:
            HfSource._check_names(self)
        finally:
            self.where = real
        self.note = ((self.note + "; ") if self.note else "") + \
            ("bitsandbytes %s: %d weights %s" % (self.quant_type, len(self.quantized),
                                                 "imported into q4t where the blocks fit the groups"
                                                 if self.q4t_group else "dequantized, then requantized"))

    def __init__(self, directory, options=None):
        # the group size NF4 weights are imported into q4t at (None: dequantized instead)
        self.q4t_group = None
        if options is not None and getattr(options, "weight_type", None) == "q4t" \
                and getattr(options, "method", None) in ("rtn", "mse") and not getattr(options, "requantize", False):
            self.q4t_group = options.group_size
        HfSource.__init__(self, directory, options)

    def load(self, hf_name):
        return self.read_bnb(hf_name) if hf_name in self.quantized else HfSource.load(self, hf_name)

    def tensors(self):
        """As HfSource's, with the bnb weights that import into q4t as QuantizedTensors."""
        for ours, theirs, _ in self.plan:
            qt = self.read_q4t(theirs) if self.q4t_group and theirs in self.quantized else None
            yield ours, qt if qt is not None else self.load(theirs)

    def read_q4t(self, wname):
        """The q4t QuantizedTensor of one bitsandbytes weight, or None (q4t_of_4bit)."""
        return self._decode(wname, lambda *pieces: q4t_of_4bit(*decode_4bit(*pieces), self.q4t_group))

    def read_bnb(self, wname):
        """The dequantized float32 matrix of one bitsandbytes weight."""
        w = self._decode(wname, dequantize_4bit)
        if not np.isfinite(w).all():
            raise ExportError("tensor %s has NaN or Inf values" % wname)
        return w

    def _decode(self, wname, decoder):
        """decoder(packed, absmax, quant_map, state, nested_absmax, nested_quant_map) on the
        serialized pieces of one bitsandbytes weight; a malformed piece is an ExportError."""
        names = self.where
        get = lambda n: _read_raw(names[n], n) if n in names else None  # noqa: E731
        try:
            return decoder(get(wname), get(wname + ".absmax"), get(wname + ".quant_map"),
                           unpack_quant_state(get(self.quantized[wname])),
                           get(wname + ".nested_absmax"), get(wname + ".nested_quant_map"))
        except (BnbError, KeyError, TypeError, ValueError) as e:
            raise ExportError("%s: %s: %s" % (self.dir, wname, e)) from None
