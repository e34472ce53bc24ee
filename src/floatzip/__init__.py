"""floatzip: lossless compression of LLM weights, decoded on the fly, bit for bit.

Importing floatzip stays light: the public names are imported when first used (PEP 562), so
``import floatzip`` (and ``floatzip --help``) loads neither torch nor CUDA nor transformers. It does
register quant_method "floatzip" with transformers, lazily (see floatzip.runtime._register).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from floatzip.errors import (
    BackendError,
    FloatzipError,
    FormatError,
    InputError,
    IntegrityError,
    VersionError,
)
from floatzip.runtime import _register

if TYPE_CHECKING:
    from floatzip.codec.encode import compress_tensor
    from floatzip.decode import decompress_tensor
    from floatzip.format.blob import CompressedTensor
    from floatzip.format.checkpoint import (
        CheckpointReport,
        compress_checkpoint,
        decompress_checkpoint,
        verify_checkpoint,
    )
    from floatzip.runtime.blocks import memory_report
    from floatzip.runtime.model import compress_model, load_model
    from floatzip.runtime.quantizer import FloatzipConfig

__version__ = "0.2.0"

_LAZY = {
    "compress_tensor": "floatzip.codec.encode",
    "decompress_tensor": "floatzip.decode",
    "CompressedTensor": "floatzip.format.blob",
    "CheckpointReport": "floatzip.format.checkpoint",
    "compress_checkpoint": "floatzip.format.checkpoint",
    "decompress_checkpoint": "floatzip.format.checkpoint",
    "verify_checkpoint": "floatzip.format.checkpoint",
    "memory_report": "floatzip.runtime.blocks",
    "compress_model": "floatzip.runtime.model",
    "load_model": "floatzip.runtime.model",
    "FloatzipConfig": "floatzip.runtime.quantizer",  # imports transformers, when first used
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'floatzip' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


_register.install()  # registers quant_method "floatzip" with transformers, lazily (transformers is not imported)

__all__ = [
    "BackendError",
    "CheckpointReport",
    "CompressedTensor",
    "FloatzipConfig",
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
