"""Decoding: one entry point, backends registered by name.

CPU backends write a :class:`CompressedTensor`'s words into a flat NumPy array of unsigned ints:
``reference`` (pure Python, obviously right, slow: for tests) and ``cpu`` (the compiled core). The GPU
backend ``cuda`` (floatzip.decode.cuda) decodes format v2 on the device from a prepared batch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from floatzip.errors import BackendError, InputError
from floatzip.format.blob import CompressedTensor

if TYPE_CHECKING:
    import torch

_UINT_NP = {1: np.uint8, 2: np.uint16, 4: np.uint32}

# name -> module holding `decode(ct, out_words, verify)` for NumPy outputs on the CPU
CPU_BACKENDS: dict[str, str] = {"reference": "floatzip.decode.reference", "cpu": "floatzip.decode.cpu"}
GPU_BACKENDS = ("cuda",)


def _cpu_backend(name: str) -> Callable[[CompressedTensor, np.ndarray, bool], None]:
    try:
        module = CPU_BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown decode backend {name!r}; known: {', '.join(backends())}") from None
    decode: Callable[[CompressedTensor, np.ndarray, bool], None] = importlib.import_module(module).decode
    return decode


def backends() -> list[str]:
    """Names of every decode backend (not all may run on this machine)."""
    return [*CPU_BACKENDS, *GPU_BACKENDS]


def decode_words(ct: CompressedTensor, out: np.ndarray, backend: str = "cpu", *, verify: bool = True) -> None:
    """Decode ``ct`` into ``out``, a flat NumPy array of unsigned ints of the dtype's width.

    ``verify`` checks the decoded bytes against the stored checksum (IntegrityError if they differ).
    """
    if out.dtype != np.dtype(_UINT_NP[ct.layout.nbytes]) or out.size != ct.numel or not out.flags.c_contiguous:
        raise InputError(f"out must be a contiguous array of {ct.numel} uint{8 * ct.layout.nbytes} words")
    _cpu_backend(backend)(ct, out, verify)


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
    verify: bool = True,
) -> torch.Tensor:
    """Decode ``ct`` into a tensor bit-identical to the one compressed.

    ``device`` (default: ``out``'s device, else the CPU) picks the backend when ``backend="auto"``:
    ``cuda`` on CUDA devices (format v2), ``cpu`` elsewhere. ``out``, when given, is filled in place and
    returned. ``verify`` checks the decoded bytes against the stored checksum (on the GPU the kernel checks
    every lane's length, and the checksum is computed on the host afterwards).
    """
    import torch

    if out is not None:
        check_out(ct, out)
        target = out.device
    else:
        target = torch.device(device) if device is not None else torch.device("cpu")
    if backend == "auto":
        backend = "cuda" if target.type == "cuda" and ct.tiled else "cpu"
    if backend == "cuda":
        from floatzip.decode import cuda as cuda_backend

        return cuda_backend.decompress(ct, device=target, out=out, verify=verify)
    host = out if out is not None and out.device.type == "cpu" else torch.empty(ct.shape, dtype=ct.dtype)
    if ct.numel:
        words = host.view(-1).view(torch.uint8).numpy().view(_UINT_NP[ct.layout.nbytes])
        decode_words(ct, words, backend, verify=verify)
    result = host.view(ct.shape)
    if out is not None and out.device.type != "cpu":
        out.view(-1).copy_(result.view(-1), non_blocking=False)
        return out
    return result if target.type == "cpu" else result.to(target)
