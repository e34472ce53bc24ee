"""Encode one float tensor (format v2; v3 for an F32 tensor whose low byte planes are worth coding): the
compiled core picks the symbol split, the tables and the planes, builds the codes and packs the tiles; this
module checks the input and wraps the blob."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from floatzip import _core
from floatzip.errors import InputError
from floatzip.format.blob import CompressedTensor
from floatzip.format.spec import MAX_CODE_LEN, MAX_STEPS, FloatLayout, layout_for

if TYPE_CHECKING:
    import torch

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def tensor_words(t: torch.Tensor, layout: FloatLayout) -> npt.NDArray[np.unsignedinteger]:
    """The tensor's bits as a flat unsigned-integer array (a view when ``t`` is contiguous on the CPU)."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return np.zeros(0, dtype=_UINT[layout.nbytes])
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return flat.contiguous().view(_torch_uint(layout.nbytes)).numpy().view(_UINT[layout.nbytes])


def _torch_uint(nbytes: int) -> torch.dtype:
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32}[nbytes]


def compress_words(
    words: npt.NDArray[np.unsignedinteger],
    layout: FloatLayout,
    shape: tuple[int, ...],
    *,
    steps: int | None = None,
    max_code_len: int = MAX_CODE_LEN,
    threads: int = 0,
    max_tables: int = 0,
    planes: int | None = None,
) -> CompressedTensor:
    """Code the words of a float tensor (flat, its dtype's width) of the given shape.

    ``max_tables`` caps the code tables (docs/FORMAT.md §1.2): 0 lets the encoder keep up to 16 where they
    make the blob smaller, 1 codes the whole tensor with one table. ``planes`` (F32 only, §1.7): the low
    mantissa byte planes to code (0, 1 or 2; a version 3 blob above 0); None lets the encoder choose by size.
    """
    steps = layout.default_steps if steps is None else steps
    if not 8 <= steps <= MAX_STEPS or steps % 8:
        raise InputError(f"bad tile shape steps={steps}: a multiple of 8 from 8 to {MAX_STEPS} (docs/FORMAT.md §1.4)")
    if not 1 <= max_code_len <= MAX_CODE_LEN:
        raise InputError(f"max_code_len must be from 1 to {MAX_CODE_LEN}")
    if not 0 <= max_tables <= 16:
        raise InputError("max_tables must be from 0 (the encoder's choice) to 16")
    if planes is not None and not (0 <= planes <= 2 and (planes == 0 or layout.name == "F32")):
        raise InputError(f"planes must be None (the encoder's choice), 0, or 1 or 2 for F32; not {planes}")
    blob = _core.compress(words, layout.code, list(shape), steps, max_code_len, threads, max_tables,
                          -1 if planes is None else planes)  # fmt: skip
    return CompressedTensor.from_bytes(blob, check_crc=False)


def compress_tensor(
    t: torch.Tensor,
    *,
    steps: int | None = None,
    max_code_len: int = MAX_CODE_LEN,
    threads: int = 0,
    max_tables: int = 0,
    planes: int | None = None,
) -> CompressedTensor:
    """Code a float tensor losslessly. The input is never modified.

    ``steps`` sets the tile (docs/FORMAT.md §1.4: 32 lanes x ``steps`` x 16 bytes of output); the default
    gives each lane 1024 symbols. ``threads=0`` uses every core (see ``FLOATZIP_NUM_THREADS``).
    """
    import torch

    if not isinstance(t, torch.Tensor):
        raise InputError(f"compress_tensor takes a torch.Tensor, not {type(t).__name__}")
    layout = layout_for(t.dtype)
    if layout is None:
        raise InputError(f"floatzip codes floating tensors (bfloat16, float16, float32, float8); got {t.dtype}")
    if t.dim() > 8:
        raise InputError(f"floatzip codes tensors of at most 8 dimensions, not {t.dim()}")
    return compress_words(
        tensor_words(t, layout),
        layout,
        tuple(t.shape),
        steps=steps,
        max_code_len=max_code_len,
        threads=threads,
        max_tables=max_tables,
        planes=planes,
    )
