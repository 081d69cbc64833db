"""pyrunq4.export: writes .rq4 files (docs/FORMAT.md) from Hugging Face checkpoints.

    python -m pyrunq4.export SOURCE OUTPUT.rq4 [--group-size 128] [--embedding-bits 4|8]

Modules: format (constants, header/table layout), quant (QuantizedTensor,
quantize_rtn, pack), writer (Rq4Writer), reader (read_rq4).
"""

from .format import FORMAT_VERSION
from .quant import QuantizedTensor, dequantize, pack, quantize_rtn
from .reader import read_rq4
from .writer import Rq4Writer

__all__ = ["FORMAT_VERSION", "QuantizedTensor", "dequantize", "pack", "quantize_rtn", "read_rq4", "Rq4Writer"]
