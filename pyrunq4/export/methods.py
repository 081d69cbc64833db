"""The exporter's --method choices: command-line options, the per-matrix
quantizer and the whole-model stream, wired to the algorithms in
quantizers.py.

    rtn, mse   data-free: the source's own tensor stream; each float matrix
               is quantized by make_quantizer() as it arrives
    gptq       calibrated: quantizers.quantize_model() over source.read(),
               which yields QuantizedTensors in file order
"""

import argparse
import json
import os
import sys

from .quant import quantize_rtn
from .quantizers import METHODS, WEIGHT_TYPES, calibration_sequences, quantize_mse, quantize_model, quantize_q4t

__all__ = ["METHODS", "WEIGHT_TYPES", "DATA_FREE", "AUTO", "DATA_FREE_DEFAULT", "CALIBRATED_DEFAULT",
           "add_arguments", "resolve_method", "make_quantizer", "make_stream", "weight_type", "embedding_type",
           "calibration_ids",
           "default_calibration_text"]

DATA_FREE = ("rtn", "mse")
# --method's default: resolve_method() picks one of the two below for the source.
AUTO = "auto"
# Where the source's tensors are imported as they are (docs/QUALITY.md: the best data-free
# method for the default weight type; GGUF Q4_0/Q4_1/Q8_0 tensors stay exact, unless --requantize).
DATA_FREE_DEFAULT = "mse"
# Where every weight is quantized from float values: the best method that meets the
# exporter's time target (docs/QUALITY.md), with act order.
CALIBRATED_DEFAULT = "gptq"


def add_arguments(parser):
    """The options of the calibrated methods, added to the exporter's CLI."""
    g = parser.add_argument_group("gptq calibration")
    g.add_argument("--calib", metavar="FILE",
                   help="UTF-8 text to calibrate on (default: the Python help topics shipped with "
                        "CPython, pydoc_data.topics)")
    g.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens in total")
    g.add_argument("--calib-seq-len", type=int, default=512, help="tokens per calibration sequence")
    g.add_argument("--requantize", action="store_true",
                   help="re-quantize every tensor of an already quantized source (GGUF) from its "
                        "float values with --method instead of importing exact ones as is "
                        "(gptq always does)")
    g.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                   help="gptq: quantize columns in order of decreasing Hessian diagonal "
                        "(static group scales, so groups stay contiguous in the file)")
    parser.add_argument("--rotate", action="store_true",
                        help="rotate the residual stream by a randomized Hadamard matrix folded into "
                             "the weights before quantizing (rotate.py; exact in float; a tied "
                             "embedding comes out untied, so the file is larger)")
    parser.add_argument("--rotate-ffn", action="store_true",
                        help="store every w2 (FFN down-projection) as W2 Q^T and have the engine multiply "
                             "its input by Q, a randomized Hadamard matrix, at run time: spreads the FFN's "
                             "outliers before quantizing (docs/QUALITY.md; a file older builds refuse)")


def resolve_method(options):
    """The --method to run: options.method unless it is AUTO; then CALIBRATED_DEFAULT where
    every weight is quantized from float values (a plain Hugging Face directory, a GGUF with
    --requantize), DATA_FREE_DEFAULT where the source's tensors import as they are (a GGUF's
    exact types, a bitsandbytes checkpoint) or nothing is quantized (--float), so a lossless
    import stays lossless and needs no calibration text."""
    method = getattr(options, "method", AUTO) or AUTO
    if method != AUTO:
        return method
    if getattr(options, "float", False):
        return DATA_FREE_DEFAULT
    source = os.fspath(options.source)
    if source.lower().endswith(".gguf"):
        return CALIBRATED_DEFAULT if getattr(options, "requantize", False) else DATA_FREE_DEFAULT
    try:
        with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
            quantized = bool(json.load(f).get("quantization_config"))
    except (OSError, ValueError, AttributeError):
        return DATA_FREE_DEFAULT  # not a readable model directory: the source says why when opened
    return DATA_FREE_DEFAULT if quantized else CALIBRATED_DEFAULT


def make_quantizer(method):
    """callable(name, w, group_size, qtype) -> QuantizedTensor for the float
    matrices of the stream, qtype one of WEIGHT_TYPES or q8 (q8 tables are
    always RTN; gptq streams yield their matrices quantized already, so what
    reaches here gets mse)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")

    def quantize_one(name, w, group_size, qtype):
        if qtype == "q4t":
            return quantize_q4t(w, group_size, method)
        if qtype not in WEIGHT_TYPES or method == "rtn":
            return quantize_rtn(w, group_size, qtype)
        return quantize_mse(w, group_size, weight_type=qtype)
    return quantize_one


def weight_type(options):
    """The int4 type the quantizers write (--weight-type; q4s for callers without it)."""
    return getattr(options, "weight_type", None) or WEIGHT_TYPES[0]


def embedding_type(options):
    """The int4 type of tok_embeddings (and an untied output): --embedding-type, else weight_type."""
    return getattr(options, "embedding_type", None) or weight_type(options)


def default_calibration_text():
    """The default calibration text: the Python language reference / library
    help topics shipped with every CPython (pydoc_data.topics), English
    technical prose unrelated to the evaluation texts."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # stripped Python builds
        raise RuntimeError("no default calibration text (pydoc_data missing): pass --calib FILE") from e
    return "\n\n".join(topics[k] for k in sorted(topics))


def calibration_ids(tokenizer_json, text, seq_len=512, n_tokens=4096, bos_id=-1):
    """Token sequences for calibration from a tokenizer.json blob and a text."""
    from tokenizers import Tokenizer
    if not tokenizer_json:
        raise ValueError("calibration needs the model's tokenizer.json")
    if isinstance(tokenizer_json, (bytes, bytearray, memoryview)):
        tokenizer_json = bytes(tokenizer_json).decode("utf-8")
    try:
        tok = Tokenizer.from_str(tokenizer_json)
        # the whole text, whatever truncation or padding the model's tokenizer.json asks for
        tok.no_truncation()
        tok.no_padding()
        ids = tok.encode(text, add_special_tokens=False).ids
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as e:  # noqa: B902 (the tokenizers library may panic: a BaseException)
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(f"the model's tokenizer cannot tokenize the calibration text: {msg}") from None
    if len(ids) < 2:
        raise ValueError("calibration text is empty")
    return calibration_sequences(ids, seq_len, n_tokens, bos_id)


def make_stream(source, header, options, group_sizes=None):
    """(name, value) of the whole model: the source's own stream for data-free
    methods (the exporter quantizes each float matrix with make_quantizer), or
    quantize_model() over source.read() for gptq/awq. group_sizes: {matrix
    name: group size} (--max-size) instead of the options' group sizes."""
    method = options.method
    if method in DATA_FREE:
        return source.tensors()
    calib = getattr(options, "calib", None)
    if calib:
        with open(calib, encoding="utf-8", errors="replace") as f:
            text = f.read()
    else:
        text = default_calibration_text()
    seqs = calibration_ids((source.blobs or {}).get("tokenizer.json"), text,
                           int(getattr(options, "calib_seq_len", 512)),
                           int(getattr(options, "calib_tokens", 4096)),
                           int(header.get("bos_id", -1)))
    quiet = getattr(options, "quiet", False)
    if not quiet:
        n = sum(len(s) for s in seqs)
        print(f"[quantize] {method}: {len(seqs)} calibration sequences, {n} tokens from "
              f"{calib or 'pydoc_data.topics (default)'}", file=sys.stderr, flush=True)

    def read(name):
        try:
            return source.read(name)
        except NotImplementedError as e:  # a source without random access
            raise ValueError(f"--method {method} needs to read the source's tensors in any order: {e}") from None

    return quantize_model(read, header, method, options.group_size, seqs,
                          act_order=bool(getattr(options, "act_order", False)),
                          embed_qtype="q8" if getattr(options, "embedding_bits", 4) == 8 else embedding_type(options),
                          progress=not quiet, weight_type=weight_type(options),
                          embed_group_size=getattr(options, "embedding_group_size", None),
                          group_sizes=group_sizes)
