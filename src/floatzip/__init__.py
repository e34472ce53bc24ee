"""floatzip: lossless compression of LLM weights, decoded on the fly, bit for bit.

Importing floatzip stays light: no Triton, no CUDA initialisation, no transformers.
"""

from __future__ import annotations

from floatzip.codec.encode import compress_tensor
from floatzip.decode import decompress_tensor
from floatzip.errors import (
    BackendError,
    FloatzipError,
    FormatError,
    InputError,
    IntegrityError,
    VersionError,
)
from floatzip.format.checkpoint import (
    CheckpointReport,
    compress_checkpoint,
    decompress_checkpoint,
    verify_checkpoint,
)
from floatzip.format.tensor import CompressedTensor
from floatzip.runtime import _register
from floatzip.runtime.blocks import memory_report
from floatzip.runtime.model import compress_model, load_model

__version__ = "0.1.0"

_register.install()  # registers quant_method "floatzip" with transformers, lazily (transformers is not imported)

__all__ = [
    "BackendError",
    "CheckpointReport",
    "CompressedTensor",
    "FloatzipError",
    "FormatError",
    "InputError",
    "IntegrityError",
    "VersionError",
    "__version__",
    "compress_checkpoint",
    "compress_model",
    "compress_tensor",
    "decompress_checkpoint",
    "decompress_tensor",
    "load_model",
    "memory_report",
    "verify_checkpoint",
]
