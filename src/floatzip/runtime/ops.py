"""floatzip's decode as one PyTorch operator, ``torch.ops.floatzip.decode_into(buffer, key)``.

``torch.compile`` (vLLM compiles its models by default) cannot trace into a decoder, which calls the compiled
core or launches floatzip's CUDA kernel through the driver: it would break the graph there, and a
``fullgraph`` compile fails. As a custom operator that mutates ``buffer``, a decode is one opaque node of the
graph, run in place, and CUDA-graph capture records its kernel launches like any other (the CUDA decoder
launches on the current stream and allocates nothing).

A decoder is registered once (:func:`register`) and named by an integer key, which is what the graph holds.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import torch

from floatzip.errors import InputError

_decoders: dict[int, Callable[[torch.Tensor], None]] = {}
_keys = itertools.count(1)
_lock = threading.Lock()


def register(decode: Callable[[torch.Tensor], None]) -> int:
    """Register ``decode(buffer)``; returns the key :func:`decode_into` takes. Kept until :func:`unregister`."""
    with _lock:
        key = next(_keys)
        _decoders[key] = decode
    return key


def unregister(key: int) -> None:
    with _lock:
        _decoders.pop(key, None)


@torch.library.custom_op("floatzip::decode_into", mutates_args=("buffer",))
def decode_into(buffer: torch.Tensor, key: int) -> None:
    """Decode the weights registered under ``key`` into ``buffer`` (flat uint8, on the decoder's device)."""
    decode = _decoders.get(key)
    if decode is None:
        raise InputError(f"no floatzip decoder is registered under key {key}")
    decode(buffer)


@decode_into.register_fake
def _(buffer: torch.Tensor, key: int) -> None:
    return None


_gathers: dict[int, tuple[Callable[[torch.Tensor], torch.Tensor], int, torch.dtype]] = {}


def register_rows(gather: Callable[[torch.Tensor], torch.Tensor], cols: int, dtype: torch.dtype) -> int:
    """Register ``gather(ids)``, the decoded rows ``ids`` (a flat int64 tensor) of a ``[rows, cols]`` weight of
    ``dtype``, as a new ``[len(ids), cols]`` tensor; returns the key :func:`embedding_rows` takes."""
    with _lock:
        key = next(_keys)
        _gathers[key] = (gather, cols, dtype)
    return key


def unregister_rows(key: int) -> None:
    with _lock:
        _gathers.pop(key, None)


def _gather(key: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], int, torch.dtype]:
    entry = _gathers.get(key)
    if entry is None:
        raise InputError(f"no floatzip embedding is registered under key {key}")
    return entry


@torch.library.custom_op("floatzip::embedding_rows", mutates_args=())
def embedding_rows(ids: torch.Tensor, key: int) -> torch.Tensor:
    """The rows ``ids`` (flat) of the embedding registered under ``key``: only their tiles are decoded."""
    return _gather(key)[0](ids)


@embedding_rows.register_fake
def _(ids: torch.Tensor, key: int) -> torch.Tensor:
    _, cols, dtype = _gather(key)
    return ids.new_empty((ids.shape[0], cols), dtype=dtype)


_gemvs: dict[int, tuple[Callable[[torch.Tensor], torch.Tensor], int]] = {}


def register_gemv(product: Callable[[torch.Tensor], torch.Tensor], out_features: int) -> int:
    """Register ``product(x)``, the fused decode-GEMV ``x W^T`` (``x``: ``[nb, in]``, ``nb`` <= 8) as a new
    ``[nb, out_features]`` fp32 tensor; returns the key :func:`gemv` takes."""
    with _lock:
        key = next(_keys)
        _gemvs[key] = (product, out_features)
    return key


def unregister_gemv(key: int) -> None:
    with _lock:
        _gemvs.pop(key, None)


def _product(key: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    entry = _gemvs.get(key)
    if entry is None:
        raise InputError(f"no floatzip fused weight is registered under key {key}")
    return entry


@torch.library.custom_op("floatzip::gemv", mutates_args=())
def gemv(x: torch.Tensor, key: int) -> torch.Tensor:
    """``x W^T`` in fp32 by the fused decode-GEMV, W the weight registered under ``key`` (opt-in: not cuBLAS's
    summation order, so not bit-identical to ``x @ W.T``; docs/KERNELS.md)."""
    return _product(key)[0](x)


@gemv.register_fake
def _(x: torch.Tensor, key: int) -> torch.Tensor:
    return x.new_empty((x.shape[0], _product(key)[1]), dtype=torch.float32)


__all__ = [
    "decode_into",
    "embedding_rows",
    "gemv",
    "register",
    "register_gemv",
    "register_rows",
    "unregister",
    "unregister_gemv",
    "unregister_rows",
]
