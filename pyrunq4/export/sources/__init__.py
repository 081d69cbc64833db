"""Model sources for the exporter, and the one dispatch that picks one.

    hf              HfSource: Hugging Face LlamaForCausalLM directories (safetensors)
    bnb             BnbSource: the same with bitsandbytes 4-bit weights
    gguf            GGUFSource: llama.cpp GGUF files
    gguf_tokenizer  rebuilds a tokenizer.json from a GGUF's metadata
    base            Source (the protocol's base class), read_json
"""

import os

from ...errors import ExportError
from .base import Source, read_json
from .bnb import BnbSource
from .gguf import GGUFSource
from .hf import HfSource

__all__ = ["Source", "HfSource", "BnbSource", "GGUFSource", "open_source"]


def open_source(path, options):
    """The Source for `path`: a .gguf file (GGUFSource), a Hugging Face
    directory with a quantization_config (BnbSource), or a plain Hugging Face
    Llama directory (HfSource). `options`: the CLI's argparse namespace
    (group_size, embedding_bits, method, ...)."""
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
        return GGUFSource(path, options)
    if not os.path.isdir(path):
        raise ExportError(f"{path}: not a Hugging Face model directory or a .gguf file")
    config = read_json(os.path.join(path, "config.json"), "Hugging Face config")
    if config.get("quantization_config"):
        return BnbSource(path, options)
    return HfSource(path, options)
