"""Run models straight from compressed weights: block discovery, decode buffers, hooks, transformers.

Importing this package stays light: the transformers quantizer (:mod:`floatzip.runtime.quantizer`)
is imported only once transformers itself is (see :mod:`floatzip.runtime._register`).
"""

from __future__ import annotations

from floatzip.runtime.blocks import (
    FloatzipRuntime,
    MemoryReport,
    find_blocks,
    install,
    memory_report,
    runtime_of,
)
from floatzip.runtime.model import compress_model, load_model

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
