"""python -m pyrunq4.export SOURCE OUTPUT.rq4: convert a checkpoint to an .rq4 file.

Tensors are read, quantized and written one at a time; each line on stderr
shows a tensor's shape, type and quantization error (RMS of w - dequantized w
over RMS of w), as llama2.c's export.py does.
"""

import argparse
import importlib
import os
import signal
import sys
import time

from .format import validate_group_size
from .quant import QuantizedTensor, quantize_rtn, rms_rel_error
from .source import ExportError, open_source
from .verify import binary_tokenizer_problem, check_blobs, input_identities, verify_file
from .writer import OutputPathError, Rq4Writer, check_output_path

PROG = "python -m pyrunq4.export"
EMBEDDING_NAMES = ("tok_embeddings", "output")


def _quantizers_module():
    """export/quantizers.py (more --method choices) when present, else None."""
    try:
        return importlib.import_module(f"{__package__}.quantizers")
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith("quantizers"):
            return None
        raise


def rtn(name, w, group_size, qtype):
    return quantize_rtn(w, group_size, qtype)


def make_quantizer(method, options, source):
    """callable(name, w float32 (rows, cols), group_size, qtype) -> QuantizedTensor
    for the float matrices of the stream. Non-rtn methods come from
    export/quantizers.py: its make_quantizer(method, options, source) if it has
    one, else its quantize(w, method, group_size) for q4s (rtn for q8)."""
    if method == "rtn":
        return rtn
    mod = _quantizers_module()
    if mod is None:
        raise ExportError(f"--method {method} is not available in this build")
    if hasattr(mod, "make_quantizer"):
        return mod.make_quantizer(method, options, source)
    if method not in getattr(mod, "DATA_FREE", ("mse",)):
        raise ExportError(f"--method {method} needs calibration, which this exporter does not run yet")

    def quantize(name, w, group_size, qtype):
        if qtype != "q4s":
            return quantize_rtn(w, group_size, qtype)
        return mod.quantize(w, method, group_size)
    return quantize


def tensor_stream(source, header, options):
    """(name, float32 array | QuantizedTensor) in file order: the source's own
    stream, or, when export/quantizers.py has make_stream(source, header,
    options) (whole-model methods: gptq, awq), that one (it may call
    source.read(name) and yield QuantizedTensors)."""
    if options.method != "rtn":
        mod = _quantizers_module()
        if mod is not None and hasattr(mod, "make_stream"):
            return mod.make_stream(source, header, options)
    return source.tensors()


def build_parser():
    qmod = _quantizers_module()
    methods = ["rtn"] + [m for m in getattr(qmod, "METHODS", ()) if m != "rtn"]
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Convert a Hugging Face Llama checkpoint directory (or a supported other source) "
                    "into an .rq4 file for runq4.")
    p.add_argument("source", help="Hugging Face model directory (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("output", help="the .rq4 file to write (replaced atomically)")
    p.add_argument("--group-size", type=int, default=128,
                   help="values per quantization group (a multiple of 32, 32..4096)")
    p.add_argument("--embedding-bits", type=int, choices=(4, 8), default=4,
                   help="bits for tok_embeddings and output (8: q8, better logits, twice the size)")
    p.add_argument("--method", choices=methods, default="rtn", help="how float weights are quantized")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-tensor lines on stderr")
    if qmod is not None and hasattr(qmod, "add_arguments"):
        qmod.add_arguments(p)
    return p


def export(options, log=None):
    """Runs one export as the CLI does; raises ExportError/ValueError/OSError."""
    log = log or (lambda s: None)
    try:
        validate_group_size(options.group_size)
    except ValueError as e:
        raise ExportError(f"--group-size: {e}") from None
    out = options.output
    protect = input_identities(options.source)
    try:
        check_output_path(out, protect)
    except OutputPathError as e:
        raise ExportError(str(e)) from None
    t0 = time.time()
    with open_source(options.source, options) as src:
        if getattr(src, "note", None):
            log(f"note: {src.note}")
        names = src.tensor_names()
        quantizer = make_quantizer(options.method, options, src)
        header = dict(src.header, group_size=options.group_size)
        check_blobs(src.blobs, header)
        n = len(names)
        try:
            writer = Rq4Writer(out, header, max_entries=n + len(src.blobs), protect=protect,
                               verify=verify_file)
        except OutputPathError as e:
            raise ExportError(str(e)) from None
        except OSError as e:
            raise ExportError(f"{out}: cannot write: {e.strerror or e}") from None
        with writer as w:
            for i, (name, t) in enumerate(tensor_stream(src, header, options)):
                if isinstance(t, QuantizedTensor):
                    w.add_quantized(name, t)
                    what = f"{t.type} g{t.group_size}  " + (
                        "as the source gives it" if options.method == "rtn" else f"by {options.method}")
                    shape = t.q.shape
                elif t.ndim == 1 or t.shape[0] == 1:
                    w.add_f32(name, t)
                    what, shape = "f32", t.shape
                else:
                    qtype = "q8" if (name in EMBEDDING_NAMES and options.embedding_bits == 8) else "q4s"
                    qt = quantizer(name, t, options.group_size, qtype)
                    err = rms_rel_error(t, qt)
                    w.add_quantized(name, qt)
                    what = f"{qt.type} g{qt.group_size}  rms rel err {err:.4f}"
                    shape = t.shape
                    del qt
                log(f"[{i + 1:{len(str(n))}d}/{n}] {name:24s} {'x'.join(map(str, shape)):>12s}  {what}")
                del t
            for name, data in src.blobs.items():
                w.add_blob(name, data)
                log(f"blob {name}: {len(data)} bytes")
        problem = binary_tokenizer_problem(src.blobs)
    log(f"wrote {out}: {os.path.getsize(out) / 1e6:.1f} MB in {time.time() - t0:.1f} s")
    if problem:
        print(f"{PROG}: note: pyrunq4 runs {out}, but the runq4 binary cannot tokenize it: {problem}",
              file=sys.stderr, flush=True)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so the writer
    removes its temporary file."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


# What a malformed input (a config field of the wrong type, a damaged
# safetensors header, GGUF metadata of another type) raises in code that
# trusted its shape: reported as one line about the input, not a traceback.
MALFORMED_INPUT = (KeyError, TypeError, IndexError, AttributeError, ZeroDivisionError, OverflowError,
                   UnicodeError, RecursionError, LookupError, ArithmeticError)


def main(argv=None):
    options = build_parser().parse_args(argv)
    log = (lambda s: None) if options.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    handlers = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, _terminate)
    except ValueError:  # not the main thread: the caller owns the signals
        pass
    try:
        export(options, log)
    except (ExportError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except MALFORMED_INPUT as e:
        if os.environ.get("PYRUNQ4_TRACEBACK"):
            raise
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"{PROG}: error: {options.source}: malformed input ({type(e).__name__}: {msg}); "
              f"PYRUNQ4_TRACEBACK=1 shows where", file=sys.stderr)
        return 1
    except Terminated as e:
        print(f"{PROG}: terminated by signal {e.signum}; nothing was written", file=sys.stderr)
        return 128 + e.signum
    except OSError as e:
        what = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
        print(f"{PROG}: error: {what}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
