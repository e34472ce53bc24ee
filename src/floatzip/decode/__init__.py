"""Decoding: one entry point, backends registered by name.

Backends: ``reference`` (pure Python, for tests), ``cpu`` (Numba), and ``triton`` (GPU) when present.
Each takes a :class:`CompressedTensor` and writes the words into a flat unsigned-int array or tensor.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import torch

from floatzip.errors import BackendError, InputError
from floatzip.format.tensor import CompressedTensor

_UINT_NP = {1: np.uint8, 2: np.uint16, 4: np.uint32}

# name -> module that holds `decode(ct, out_words)` for numpy outputs on the CPU
CPU_BACKENDS: dict[str, str] = {"reference": "floatzip.decode.reference", "cpu": "floatzip.decode.cpu"}


def _cpu_backend(name: str) -> Callable[[CompressedTensor, np.ndarray], None]:
    try:
        module = CPU_BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown decode backend {name!r}; known: {', '.join(backends())}") from None
    decode: Callable[[CompressedTensor, np.ndarray], None] = importlib.import_module(module).decode
    return decode


def backends() -> list[str]:
    """Names of every decode backend (not all may run on this machine)."""
    return [*CPU_BACKENDS, "triton"]


def decode_words(ct: CompressedTensor, out: np.ndarray, backend: str = "cpu") -> None:
    """Decode ``ct`` into ``out``, a flat NumPy array of unsigned ints of the dtype's width."""
    if out.dtype != np.dtype(_UINT_NP[ct.layout.nbytes]) or out.size != ct.numel:
        raise InputError(f"out must hold {ct.numel} uint{8 * ct.layout.nbytes} words")
    _cpu_backend(backend)(ct, out)


def check_out(ct: CompressedTensor, out: torch.Tensor) -> None:
    """Raise InputError unless ``out`` can hold ``ct`` decoded (dtype, size, contiguous)."""
    if out.dtype != ct.dtype or out.numel() != ct.numel or not out.is_contiguous():
        raise InputError(
            f"out must be a contiguous {ct.dtype} tensor of {ct.numel} elements, "
            f"got {out.dtype} with {out.numel()} elements"
        )


def decompress_tensor(
    ct: CompressedTensor,
    device: torch.device | str | None = None,
    *,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Decode ``ct`` into a tensor bit-identical to the one compressed.

    ``device`` (default: ``out``'s device, else the CPU) picks the backend when ``backend="auto"``:
    ``triton`` on CUDA, ``cpu`` elsewhere. ``out``, when given, is filled in place and returned.
    """
    if out is not None:
        check_out(ct, out)
        target = out.device
    else:
        target = torch.device(device) if device is not None else torch.device("cpu")
    if backend == "auto":
        backend = "triton" if target.type == "cuda" else "cpu"
    if backend == "triton":
        from floatzip.decode import triton as triton_backend

        return triton_backend.decompress(ct, device=target, out=out)
    host = out if out is not None and out.device.type == "cpu" else torch.empty(ct.shape, dtype=ct.dtype)
    if ct.numel == 0:
        return host if out is not None else host.to(target)
    decode_words(ct, host.view(-1).view(torch.uint8).numpy().view(_UINT_NP[ct.layout.nbytes]), backend)
    result = host.view(ct.shape)
    if out is not None and out.device.type != "cpu":
        out.view(-1).copy_(result.view(-1), non_blocking=False)
        return out
    return result if target.type == "cpu" else result.to(target)
