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

__version__ = "0.1.0"

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
    "compress_tensor",
    "decompress_checkpoint",
    "decompress_tensor",
    "verify_checkpoint",
]
