"""pyrunq4-export (python -m pyrunq4.export) SOURCE OUTPUT.rq4: convert a
checkpoint to an .rq4 file.

Tensors are read, quantized and written one at a time. On a terminal a
progress bar counts them; the last line on stderr names the largest
quantization error (RMS of w - dequantized w over RMS of w). --verbose prints
each tensor's shape, type and error as llama2.c's export.py does; -q prints
nothing but errors.
"""

import argparse
import os
import signal
import struct
import sys
import time

from .. import __version__
from ..errors import ExportError, Runq4Error
from ..progress import progress_bar
from . import methods, mix
from .format import FFN_ROTATION_ENTRIES, LAYOUTS, MAX_GROUP, MIN_GROUP, validate_group_size
from .quant import QuantizedTensor, dequantize, rms_rel_error
from .sources import open_source
from .verify import binary_tokenizer_problem, check_blobs, input_identities, verify_file
from .writer import OutputPathError, Rq4Writer, check_output_path

PROG = "pyrunq4-export"
EMBEDDING_NAMES = ("tok_embeddings", "output")


def build_parser():
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Convert a Hugging Face Llama checkpoint directory (or a supported other source) "
                    "into an .rq4 file for runq4.")
    p.add_argument("source", help="Hugging Face model directory (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("output", help="the .rq4 file to write (replaced atomically)")
    p.add_argument("--group-size", type=int, default=128,
                   help=f"values per quantization group (a multiple of 32, {MIN_GROUP}..{MAX_GROUP})")
    p.add_argument("--embedding-bits", type=int, choices=(4, 8), default=4,
                   help="bits for tok_embeddings and output (8: q8, better logits, twice the size)")
    p.add_argument("--embedding-group-size", type=int, metavar="N",
                   help="group size of tok_embeddings and output (default: --group-size); a smaller "
                        "group protects the tied classifier for a few more bytes")
    p.add_argument("--embedding-type", choices=methods.WEIGHT_TYPES, metavar="TYPE",
                   help="int4 type of tok_embeddings and output (q4s, q4a, q4t; default: --weight-type): "
                        "q4t g32 costs what q4a g64 costs and measured closer to the float classifier "
                        "(docs/QUALITY.md)")
    p.add_argument("--max-size", metavar="SIZE",
                   help="the largest file to write (e.g. 79MB; MB = 10^6 bytes, MiB = 2^20): every matrix "
                        "is requantized with --group-size or a finer group (down to 32), the finer groups "
                        "where they help most (mix.py, docs/QUALITY.md), as many as fit")
    p.add_argument("--method", choices=(methods.AUTO,) + methods.METHODS, default=methods.AUTO,
                   help=f"how float weights are quantized; {methods.AUTO}: {methods.CALIBRATED_DEFAULT} "
                        f"(calibrated, --act-order) where every weight is quantized from float values (a "
                        f"Hugging Face float checkpoint, --requantize), else {methods.DATA_FREE_DEFAULT} "
                        f"(data-free: a GGUF's exact tensors stay exact)")
    p.add_argument("--layout", choices=LAYOUTS, default="rows",
                   help="how int4 matrices are stored: rows (row-major) or r4 (rows interleaved by 4, "
                        "docs/FORMAT.md; the layout the ARM kernels run fastest); same results either way")
    p.add_argument("--weight-type", choices=methods.WEIGHT_TYPES, default=methods.WEIGHT_TYPES[0],
                   help="int4 type of the quantized matrices: q4s (w = d*q, q in -8..7), q4a "
                        "(w = d*q + m, q in 0..15: one fp16 min more per group; with q4a, --method rtn "
                        "measured better than mse, docs/QUALITY.md) or q4t (w = d*t[q]: 16 int8 levels "
                        "t per tensor fitted to its weights; rows layout only)")
    p.add_argument("--float", action="store_true",
                   help="store every matrix as F32, unquantized: the float model, the reference of "
                        "pyrunq4-eval perplexity --reference (large; slow in the engine)")
    p.add_argument("-q", "--quiet", action="store_true", help="nothing on stderr but errors")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="one line per tensor (shape, type, quantization error) instead of a progress bar")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    methods.add_arguments(p)
    return p


def export(options, log=None, detail=None):
    """Runs one export as the CLI does; raises ExportError/ValueError/OSError.
    log(line): the note and the summary; detail(line): one line per tensor."""
    log = log or (lambda s: None)
    detail = detail or (lambda s: None)
    for flag, gs in (("--group-size", options.group_size),
                     ("--embedding-group-size", getattr(options, "embedding_group_size", None))):
        try:
            if gs is not None:
                validate_group_size(gs)
        except ValueError as e:
            raise ExportError(f"{flag}: {e}") from None
    if getattr(options, "layout", "rows") == "r4" and "q4t" in (methods.weight_type(options),
                                                                methods.embedding_type(options)):
        raise ExportError("--layout r4: q4t has no interleaved type; use --layout rows")
    if getattr(options, "embedding_type", None) and getattr(options, "embedding_bits", 4) == 8:
        raise ExportError("--embedding-type: the embedding is q8 with --embedding-bits 8")
    budget = None
    if getattr(options, "max_size", None) is not None:
        budget = mix.parse_size(options.max_size)
        if getattr(options, "float", False):
            raise ExportError("--max-size chooses the group sizes of quantized matrices: not with --float")
        options.requantize = True   # every tensor at the group size the plan gives it
    method = methods.resolve_method(options)
    if method != getattr(options, "method", None):
        options = argparse.Namespace(**dict(vars(options), method=method))
    out = options.output
    layout = getattr(options, "layout", "rows")
    protect = input_identities(options.source)
    try:
        check_output_path(out, protect)
    except OutputPathError as e:
        raise ExportError(str(e)) from None
    t0 = time.time()
    with open_source(options.source, options) as src:
        if getattr(options, "rotate", False):
            from .rotate import RotatedSource
            src = RotatedSource(src)
        if getattr(options, "rotate_ffn", False):
            from .rotate import FfnRotatedSource
            src = FfnRotatedSource(src)
        if getattr(src, "note", None):
            log(f"note: {src.note}")
        names = src.tensor_names()
        quantizer = methods.make_quantizer(options.method)
        header = dict(src.header, group_size=options.group_size)
        check_blobs(src.blobs, header)
        n = len(names)
        plan = None if budget is None else plan_max_size(src, header, names, options, budget)
        try:
            writer = Rq4Writer(out, header, max_entries=n + len(src.blobs), protect=protect,
                               verify=verify_file)
        except OutputPathError as e:
            raise ExportError(str(e)) from None
        except OSError as e:
            raise ExportError(f"{out}: cannot write: {e.strerror or e}") from None
        worst = (0.0, None)
        bar = progress_bar(total=n, desc="export", unit="tensor",
                           quiet=getattr(options, "quiet", False) or getattr(options, "verbose", False))
        as_float = getattr(options, "float", False)
        with writer as w, bar:
            stream = src.tensors() if as_float else methods.make_stream(src, header, options, plan)
            for i, (name, t) in enumerate(stream):
                if as_float and isinstance(t, QuantizedTensor):
                    t = dequantize(t)           # an exact import, as its float values
                if as_float and t.ndim == 2 and t.shape[0] > 1:
                    w.add_f32(name, t)
                    what, shape = "f32 (--float)", t.shape
                elif isinstance(t, QuantizedTensor):
                    w.add_quantized(name, laid_out(t, layout))
                    what = f"{t.file_type} g{t.group_size}  " + (
                        "as the source gives it" if options.method in methods.DATA_FREE else f"by {options.method}")
                    shape = t.q.shape
                elif t.ndim == 1 or t.shape[0] == 1 or name in FFN_ROTATION_ENTRIES:
                    w.add_f32(name, t)
                    what, shape = "f32", t.shape
                else:
                    if name not in EMBEDDING_NAMES:
                        qtype = methods.weight_type(options)
                    else:
                        qtype = "q8" if options.embedding_bits == 8 else methods.embedding_type(options)
                    if plan is not None and qtype != "q8":
                        gs = plan[name]
                    else:
                        gs = (getattr(options, "embedding_group_size", None) if name in EMBEDDING_NAMES
                              else None) or options.group_size
                    qt = quantizer(name, t, gs, qtype)
                    err = rms_rel_error(t, qt)
                    worst = max(worst, (err, name), key=lambda e: e[0])
                    w.add_quantized(name, laid_out(qt, layout))
                    what = f"{qt.file_type} g{qt.group_size}  rms rel err {err:.4f}"
                    shape = t.shape
                    del qt
                detail(f"[{i + 1:{len(str(n))}d}/{n}] {name:24s} {'x'.join(map(str, shape)):>12s}  {what}")
                bar.update(1)
                del t
            for name, data in src.blobs.items():
                w.add_blob(name, data)
                detail(f"blob {name}: {len(data)} bytes")
        problem = binary_tokenizer_problem(src.blobs)
    largest = f"; largest rms rel err {worst[0]:.4f} ({worst[1]})" if worst[1] else ""
    log(f"wrote {out}: {os.path.getsize(out) / 1e6:.1f} MB in {time.time() - t0:.1f} s{largest}")
    if problem:
        print(f"{PROG}: note: pyrunq4 runs {out}, but the runq4 binary cannot tokenize it: {problem}",
              file=sys.stderr, flush=True)


def plan_max_size(src, header, names, options, budget):
    """--max-size: {matrix name: group size} (mix.plan_export) for the source's tensors."""
    def read(name):
        try:
            return src.read(name)
        except NotImplementedError as e:
            raise ExportError(f"--max-size needs to read the source's tensors in any order: {e}") from None

    layout = getattr(options, "layout", "rows")
    weight_type, embedding_type = methods.weight_type(options), methods.embedding_type(options)
    return mix.plan_export(header, names, src.blobs, read, weight_type, laid_out_type(weight_type, layout),
                           options.group_size, options.embedding_bits == 8, budget,
                           embedding_type, laid_out_type(embedding_type, layout),
                           getattr(options, "embedding_group_size", None))


def laid_out_type(weight_type, layout):
    """The file type of an int4 matrix of weight_type written in `layout` (as laid_out)."""
    return f"{weight_type}_r4" if layout == "r4" and weight_type in ("q4s", "q4a") else weight_type


def laid_out(qt, layout):
    """qt to be written in `layout` (--layout): int4 types only; q8 stays row-major.
    The values are the same (a lossless repack), so are the engine's outputs."""
    if qt.type in ("q4s", "q4a"):
        qt.layout = layout
    return qt


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
                   UnicodeError, RecursionError, LookupError, ArithmeticError, struct.error)


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
        export(options, log, log if options.verbose else None)
    except (Runq4Error, ValueError) as e:
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
