"""Encode one float tensor: pick the symbol split, build the code, pack the lanes."""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np
import numpy.typing as npt
import torch

from floatzip.codec import lanes as _lanes
from floatzip.codec.huffman import canonical_codes, code_lengths
from floatzip.errors import InputError
from floatzip.format.spec import (
    DEFAULT_LANES,
    DEFAULT_STEPS,
    MAX_CODE_LEN,
    MAX_LANES,
    MAX_STEPS,
    FloatLayout,
    layout_for,
)
from floatzip.format.tensor import CompressedTensor

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}
_PARALLEL_CRC_BYTES = 8 << 20  # below this, one zlib.crc32 call beats starting threads
_crc_pool: ThreadPoolExecutor | None = None


def _crc32(data: npt.NDArray[np.uint8]) -> int:
    """zlib CRC-32 of ``data``; large buffers in one slice per thread (zlib releases the GIL), combined."""
    threads = nb.get_num_threads()
    if data.size < _PARALLEL_CRC_BYTES or threads < 2:
        return zlib.crc32(data.data) & 0xFFFFFFFF
    global _crc_pool
    if _crc_pool is None:
        _crc_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="floatzip-crc")
    bounds = np.linspace(0, data.size, threads + 1).astype(np.int64)
    parts = [data[bounds[i] : bounds[i + 1]].data for i in range(threads)]
    crcs = list(_crc_pool.map(zlib.crc32, parts))
    crc = crcs[0]
    for part, part_crc in zip(parts[1:], crcs[1:], strict=True):
        crc = int(_lanes.crc32_combine(crc, part_crc, part.nbytes))
    return crc & 0xFFFFFFFF


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


def _segment_lanes(lanes: int, steps: int) -> int:
    """Lanes per encoder work item: about ``SEGMENT_ELEMS`` elements, a power of two dividing ``lanes``."""
    seg = 1
    while seg < lanes and 2 * seg * steps <= _lanes.SEGMENT_ELEMS:
        seg *= 2
    return seg


def _pack(
    words: npt.NDArray[np.unsignedinteger],
    shift: int,
    sym_bits: int,
    enc: npt.NDArray[np.int64],
    max_len: int,
    lanes: int,
    steps: int,
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint16], npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """(tile_words, lane_bits, code stream, raw stream), each stream with its padding word."""
    n = words.size
    per_tile = lanes * steps
    n_tiles = -(-n // per_tile)
    raw_words = -(-n * (shift + 1) // 32)
    out_raw = np.empty(raw_words + 1, dtype=np.uint32)
    out_raw[-1] = 0
    if n == 0:
        return np.zeros(1, np.uint32), np.zeros(0, np.uint16), np.zeros(1, np.uint32), out_raw
    seg_lanes = _segment_lanes(lanes, steps)
    segs_per_tile = lanes // seg_lanes
    # a segment holds at most min(n, seg_lanes * steps) codes of max_len bits, plus one word of slack
    seg_cap = -(-min(n, seg_lanes * steps) * max_len // 32) + 2
    raw_chunk = max(32, _lanes.SEGMENT_ELEMS)
    items, order = _lanes.plan(n, lanes, steps, seg_lanes, raw_chunk, nb.get_num_threads())
    lane_bits = np.empty(n_tiles * lanes, dtype=np.uint16)
    seg_bits = np.empty(n_tiles * segs_per_tile, dtype=np.int64)
    scratch = np.empty(n_tiles * segs_per_tile * seg_cap, dtype=np.uint32)
    sym_mask = (1 << sym_bits) - 1
    tile = (lanes, steps, seg_cap)
    _lanes.pack(words, items, order, shift, sym_mask, enc, *tile, lane_bits, seg_bits, scratch, out_raw)
    tile_words = _lanes.tile_word_offsets(seg_bits, segs_per_tile)
    out_codes = np.empty(int(tile_words[-1]) + 1, dtype=np.uint32)
    out_codes[-1] = 0
    _lanes.assemble(scratch, seg_cap, seg_bits, segs_per_tile, tile_words, out_codes)
    return tile_words, lane_bits, out_codes, out_raw


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
    wide_bits = layout.exp_bits + layout.max_k
    if n:
        hist = _lanes.histogram(words, layout.man_bits - layout.max_k, wide_bits, nb.get_num_threads())
    else:
        hist = np.zeros(1 << wide_bits, dtype=np.int64)
    k, lengths = _lanes.choose_split(hist, layout.max_k, layout.man_bits, MAX_CODE_LEN)
    shift = layout.man_bits - k
    sym_bits = layout.exp_bits + k
    enc = (canonical_codes(lengths).astype(np.int64) << 5) | lengths
    max_len = int(lengths.max(initial=1))
    tile_words, lane_bits, out_codes, out_raw = _pack(words, shift, sym_bits, enc, max_len, lanes, steps)
    return CompressedTensor(
        layout=layout,
        shape=tuple(t.shape),
        shift=shift,
        sym_bits=sym_bits,
        lanes=lanes,
        steps=steps,
        code_lengths=lengths,
        tile_words=tile_words,
        lane_bits=lane_bits,
        codes=out_codes,
        raw=out_raw,
        data_crc32=_crc32(words.view(np.uint8)),
    )
