"""pyrunq4.export: writes .rq4 files (docs/FORMAT.md) from model checkpoints.

    pyrunq4-export SOURCE OUTPUT.rq4 [--group-size 128] [--embedding-bits 4|8]
                   [--method rtn|mse|gptq] [--quiet | --verbose]

Modules
    format      constants (read from src/runq4.h through pyrunq4._lib), header/table structs, validation
    quant       QuantizedTensor, quantize_rtn, dequantize, pack, exact-import constructors
    writer      Rq4Writer: streaming, atomic (temp file + fsync + os.replace)
    reader      read_rq4: pure-numpy mirror of the C loader; weights_from_rq4 for pyrunq4.reference
    quantizers  the algorithms: mse, gptq (and the experimental awq), quantize_model
    methods     the --method choices wired to them: options, per-matrix quantizer, tensor stream
    sources/    the checkpoints it reads (hf, bnb, gguf) and open_source, the one dispatch
    c_tokenizer whether the runq4 binary's C tokenizer takes a tokenizer.json
    __main__    the CLI: one loop over the tensor stream

The source protocol (sources/base.py, class Source)
    sources.open_source(path, options) picks the source: SOURCE ending in
    .gguf -> GGUFSource; a directory whose config.json has a
    quantization_config -> BnbSource; any other directory -> HfSource
    (options: the CLI's argparse namespace: group_size, embedding_bits,
    method, ...). A Source is a context manager with
        header          dict of FORMAT.md model fields: dim, hidden_dim, n_layers,
                        n_heads, n_kv_heads, head_dim, vocab_size, max_seq_len,
                        tied_embeddings, bos_id (-1: none), eos_ids (list, <= 4),
                        rope_scaling (0/1), rope_original_max_pos, norm_eps,
                        rope_theta, rope_factor, rope_low_freq_factor,
                        rope_high_freq_factor (group_size is added by the CLI)
        blobs           dict entry name -> bytes: "tokenizer.json" (required by
                        the engine's tokenizer), "chat_template", "config.json"
        tensor_names()  FORMAT.md tensor names in the order tensors() yields them
        tensors()       yields (name, value) one at a time, in file order
                        (tok_embeddings; per layer attention_norm wq wk wv wo
                        ffn_norm w1 w2 w3; norm; output when untied). value is
                        a float32 ndarray (matrices 2-D, norms 1-D) that the CLI
                        stores (norms, f32) or quantizes (--method, q8 for
                        tok_embeddings/output with --embedding-bits 8), or a
                        QuantizedTensor that is written as is (lossless imports:
                        quant.q4s_from_levels / q4a_from_levels / q8_from_levels)
        read(name)      optional: random access to one float32 tensor
        note            optional: one line the CLI prints before exporting
        close()
    and raises pyrunq4.errors.ExportError (one line, no traceback, exit 1)
    for anything it cannot convert.

Quantization methods (methods.py): --method is one of quantizers.METHODS.
A data-free method (rtn, mse) quantizes each float matrix of the source's
stream as it arrives (methods.make_quantizer); a calibrated one (gptq)
replaces the stream with quantizers.quantize_model over source.read(), which
yields QuantizedTensors in file order (methods.make_stream).
"""

from .format import FORMAT_VERSION
from .quant import QuantizedTensor, dequantize, pack, quantize_rtn
from .reader import read_rq4
from .writer import Rq4Writer

__all__ = ["FORMAT_VERSION", "QuantizedTensor", "dequantize", "pack", "quantize_rtn", "read_rq4", "Rq4Writer"]
