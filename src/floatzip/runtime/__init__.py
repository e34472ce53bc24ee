"""Run models straight from compressed weights: block discovery, decode buffers, hooks, transformers.

Importing this package stays light (no torch): its names are imported when first used, and the
transformers quantizer (:mod:`floatzip.runtime.quantizer`) only once transformers itself is (see
:mod:`floatzip.runtime._register`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from floatzip.runtime.blocks import (
        FloatzipRuntime,
        MemoryReport,
        find_blocks,
        install,
        memory_report,
        runtime_of,
    )
    from floatzip.runtime.model import compress_model, load_model

_LAZY = {
    "FloatzipRuntime": "floatzip.runtime.blocks",
    "MemoryReport": "floatzip.runtime.blocks",
    "find_blocks": "floatzip.runtime.blocks",
    "install": "floatzip.runtime.blocks",
    "memory_report": "floatzip.runtime.blocks",
    "runtime_of": "floatzip.runtime.blocks",
    "compress_model": "floatzip.runtime.model",
    "load_model": "floatzip.runtime.model",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'floatzip.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "FloatzipRuntime",
    "MemoryReport",
    "compress_model",
    "find_blocks",
    "install",
    "load_model",
    "memory_report",
    "runtime_of",
]
