"""GGUF files (llama.cpp) as a SOURCE of the exporter. (work in progress)"""
import numpy as np


def read_metadata(reader):
    """All key/value metadata of a gguf.GGUFReader as a dict of Python values (arrays as lists)."""
    meta = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = f.contents()
    return meta
