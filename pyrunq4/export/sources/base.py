"""The source protocol's base class, and the JSON reader every source uses.

A source turns some checkpoint into what an .rq4 file holds; the protocol is
described in pyrunq4/export/__init__.py.
"""

import json

from ...errors import ExportError


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
    if not isinstance(obj, dict):
        raise ExportError(f"{path}: not a JSON object")
    return obj

