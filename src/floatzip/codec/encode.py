"""Encode one float tensor: pick the symbol split, build the code, pack the lanes."""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt
import torch

from floatzip.codec import lanes as _lanes
from floatzip.codec.huffman import canonical_codes, code_lengths
from floatzip.errors import InputError
from floatzip.format.spec import DEFAULT_LANES, DEFAULT_STEPS, MAX_LANES, MAX_STEPS, FloatLayout, layout_for
from floatzip.format.tensor import CompressedTensor

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def tensor_words(t: torch.Tensor, layout: FloatLayout) -> npt.NDArray[np.unsignedinteger]:
    """The tensor's bits as a flat unsigned-integer array (a view when ``t`` is contiguous on the CPU)."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return np.zeros(0, dtype=_UINT[layout.nbytes])
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return flat.contiguous().view(torch.uint8).numpy().view(_UINT[layout.nbytes])


def choose_split(hist: npt.NDArray[np.int64], layout: FloatLayout) -> tuple[int, npt.NDArray[np.uint8]]:
    """The ``k`` (mantissa bits joined to the exponent) giving the smallest blob, and its code lengths.

    ``hist`` counts symbols of the widest split (``k = layout.max_k``); narrower ones sum its bins.
    """
    n = int(hist.sum())
    best: tuple[int, int, npt.NDArray[np.uint8]] | None = None
    for k in range(layout.max_k, -1, -1):
        merged = hist.reshape(-1, 1 << (layout.max_k - k)).sum(axis=1)
        lengths = code_lengths(merged)
        shift = layout.man_bits - k
        table_bits = merged.size + 8 * int(np.count_nonzero(lengths))
        bits = int((merged * lengths).sum()) + n * (shift + 1) + table_bits
        if best is None or bits < best[0]:
            best = (bits, k, lengths)
    assert best is not None
    return best[1], best[2]


def compress_tensor(t: torch.Tensor, *, lanes: int = DEFAULT_LANES, steps: int = DEFAULT_STEPS) -> CompressedTensor:
    """Code a float tensor losslessly. The input is never modified.

    ``lanes`` and ``steps`` set the tile (docs/FORMAT.md §1.4); the defaults suit GPU decoding.
    """
    if not isinstance(t, torch.Tensor):
        raise InputError(f"compress_tensor takes a torch.Tensor, not {type(t).__name__}")
    layout = layout_for(t.dtype)
    if layout is None:
        raise InputError(f"floatzip codes floating tensors (bfloat16, float16, float32, float8); got {t.dtype}")
    if lanes < 1 or lanes > MAX_LANES or lanes & (lanes - 1) or not 1 <= steps <= MAX_STEPS or (lanes * steps) % 32:
        raise InputError(f"bad tile shape lanes={lanes}, steps={steps} (see docs/FORMAT.md §1.4)")
    words = tensor_words(t, layout)
    n = words.size
    wide_shift = layout.man_bits - layout.max_k
    hist = _lanes.histogram(words, wide_shift, layout.exp_bits + layout.max_k) if n else np.zeros(
        1 << (layout.exp_bits + layout.max_k), dtype=np.int64
    )
    k, lengths = choose_split(hist, layout)
    shift = layout.man_bits - k
    sym_bits = layout.exp_bits + k
    sym_mask = (1 << sym_bits) - 1
    codes = canonical_codes(lengths)

    lane_bits = _lanes.lane_bit_counts(words, shift, sym_mask, lengths.astype(np.int64), lanes, steps)
    tile_words = _lanes.tile_word_offsets(lane_bits, lanes)
    out_codes = np.zeros(int(tile_words[-1]) + 1, dtype=np.uint32)
    out_raw = np.zeros(-(-n * (shift + 1) // 32) + 1, dtype=np.uint32)
    if n:
        _lanes.pack(words, shift, sym_mask, lengths.astype(np.int64), codes.astype(np.int64), lanes, steps,
                    lane_bits, tile_words, out_codes, out_raw)  # fmt: skip
    return CompressedTensor(
        layout=layout,
        shape=tuple(t.shape),
        shift=shift,
        sym_bits=sym_bits,
        lanes=lanes,
        steps=steps,
        code_lengths=lengths,
        tile_words=tile_words,
        lane_bits=lane_bits.astype(np.uint16),
        codes=out_codes,
        raw=out_raw,
        data_crc32=zlib.crc32(words.view(np.uint8)) & 0xFFFFFFFF,
    )
