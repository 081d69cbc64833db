"""Model sources for the exporter: the protocol, the known-error class, the dispatch.

A source turns some checkpoint into what an .rq4 file holds. See the package
docstring (export/__init__.py) for the protocol; Source below is its base class.
"""

import json
import os


class ExportError(Exception):
    """A known, user-facing problem (unsupported model, missing file, bad value):
    the CLI prints its message as one line and exits 1, without a traceback."""


class Source:
    """Base class of a model source. Subclasses set `header` and `blobs` in
    __init__ and implement tensor_names() and tensors()."""

    header = None  # dict: FORMAT.md model fields (dim ... rope_high_freq_factor), no group_size
    blobs = None   # dict: entry name -> bytes ("tokenizer.json", "chat_template", "config.json")

    def tensor_names(self):
        """FORMAT.md names of the tensors, in the order tensors() yields them."""
        raise NotImplementedError

    def tensors(self):
        """Yields (name, value) in file order, one at a time; value is a float32
        ndarray (2-D matrix; norms 1-D or 1 x n) to be quantized/stored by the
        exporter, or a QuantizedTensor written as is (exact imports)."""
        raise NotImplementedError

    def read(self, name):
        """Optional random access: the float32 array of FORMAT.md entry `name`
        (for whole-model quantizers such as gptq/awq that call get(name))."""
        raise NotImplementedError(f"{type(self).__name__} has no random access")

    def close(self):
        """Releases files and mappings. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_json(path, what=None):
    """A JSON file's object; ExportError naming the file if it is missing or invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise ExportError(f"{path}: missing{' (' + what + ')' if what else ''}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(obj, dict):  # a list or a number here was an AttributeError traceback (issue 8)
        raise ExportError(f"{path}: not a JSON object")
    return obj


def open_source(path, options):
    """The Source for `path`: a .gguf file (export/gguf_source.py), a Hugging Face
    directory with a bitsandbytes quantization_config (export/bnb.py), or a plain
    Hugging Face Llama directory (export/hf.py). `options`: the CLI's argparse
    namespace (group_size, embedding_bits, method, ...)."""
    path = os.fspath(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        pass  # said below, as the kind of source expected
    except OSError as e:  # a loop of symbolic links, a folder that cannot be searched...
        raise ExportError(f"{path}: {e.strerror or e}") from None
    if path.lower().endswith(".gguf"):
        if not os.path.isfile(path):
            raise ExportError(f"{path}: no such GGUF file")
        return _optional("gguf_source", "GGUF files")(path, options)
    if not os.path.isdir(path):
        raise ExportError(f"{path}: not a Hugging Face model directory or a .gguf file")
    config = read_json(os.path.join(path, "config.json"), "Hugging Face config")
    if config.get("quantization_config"):
        return _optional("bnb", "quantized Hugging Face checkpoints")(path, options)
    from .hf import HfSource
    return HfSource(path, options)


def _optional(module, what):
    """open_source of an optional source module of this package."""
    import importlib
    try:
        mod = importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith(module):
            raise ExportError(f"{what} are not supported by this build (no export/{module}.py)") from None
        raise
    return mod.open_source
