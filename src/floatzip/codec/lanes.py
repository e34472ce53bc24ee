"""Compiled kernels of the codec: the symbol histogram and the tile × lane packer (docs/FORMAT.md §1.3–1.4).

Tiles start on word boundaries and hold a multiple of 32 elements, so they never share a word of
either stream and are packed in parallel (``prange``); within a tile, lanes are packed one after the
other. Words are typed uint64 in the arithmetic to keep numba from promoting to float.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import numpy.typing as npt

_PARALLEL = dict(nogil=True, cache=True, parallel=True)


@nb.njit(**_PARALLEL)
def histogram(words, shift, sym_bits):  # pragma: no cover - compiled
    """Counts of ``(word >> shift) & mask`` over all words, one partial histogram per chunk."""
    n = words.size
    nbins = 1 << sym_bits
    mask = nbins - 1
    chunks = max(1, min(64, n // 65536))
    partial = np.zeros((chunks, nbins), dtype=np.int64)
    per = (n + chunks - 1) // chunks
    for ch in nb.prange(chunks):
        lo = ch * per
        hi = min(n, lo + per)
        h = partial[ch]
        for i in range(lo, hi):
            h[(np.int64(words[i]) >> shift) & mask] += 1
    return partial.sum(axis=0)


@nb.njit(**_PARALLEL)
def lane_bit_counts(words, shift, sym_mask, lengths, lanes, steps):  # pragma: no cover - compiled
    """Bits each lane's codes take, as an int64 array of n_tiles * lanes."""
    n = words.size
    per_tile = lanes * steps
    n_tiles = (n + per_tile - 1) // per_tile
    out = np.zeros(n_tiles * lanes, dtype=np.int64)
    for t in nb.prange(n_tiles):
        base = t * per_tile
        m = min(per_tile, n - base)
        for e in range(m):
            sym = (np.int64(words[base + e]) >> shift) & sym_mask
            out[t * lanes + e % lanes] += lengths[sym]
    return out


@nb.njit(**_PARALLEL)
def pack(words, shift, sym_mask, lengths, codes, lanes, steps, lane_bits, tile_words, out_codes, out_raw):  # pragma: no cover
    """Write every tile's lane code strings and raw values (MSB-first) into zeroed word arrays."""
    n = words.size
    per_tile = lanes * steps
    n_tiles = tile_words.size - 1
    raw_bits = np.uint64(shift + 1)
    low_mask = np.int64((1 << shift) - 1)
    sign_shift = np.int64(words.itemsize * 8 - 1)
    for t in nb.prange(n_tiles):
        base = t * per_tile
        m = min(per_tile, n - base)
        # codes: lane by lane, each lane's string right after the previous one
        p = np.uint64(tile_words[t]) * np.uint64(32)
        for c in range(lanes):
            for e in range(c, m, lanes):
                sym = (np.int64(words[base + e]) >> shift) & sym_mask
                ln = np.uint64(lengths[sym])
                v = np.uint64(codes[sym]) << (np.uint64(64) - ln - (p & np.uint64(31)))
                w = p >> np.uint64(5)
                out_codes[w] |= np.uint32(v >> np.uint64(32))
                if (p & np.uint64(31)) + ln > np.uint64(32):  # never touch a word the code does not reach:
                    out_codes[w + np.uint64(1)] |= np.uint32(v & np.uint64(0xFFFFFFFF))  # it may be the next tile's
                p += ln  # the next lane's string starts right here
        # raw values, in element order
        q = np.uint64(base) * raw_bits
        for e in range(m):
            x = np.int64(words[base + e])
            raw = np.uint64((((x >> sign_shift) & 1) << shift) | (x & low_mask))
            v = raw << (np.uint64(64) - raw_bits - (q & np.uint64(31)))
            w = q >> np.uint64(5)
            out_raw[w] |= np.uint32(v >> np.uint64(32))
            if (q & np.uint64(31)) + raw_bits > np.uint64(32):
                out_raw[w + np.uint64(1)] |= np.uint32(v & np.uint64(0xFFFFFFFF))
            q += raw_bits


def tile_word_offsets(lane_bits: npt.NDArray[np.int64], lanes: int) -> npt.NDArray[np.uint32]:
    """``tile_words`` from the lane sizes: each tile starts on the word after the previous one ends."""
    per_tile = lane_bits.reshape(-1, lanes).sum(axis=1)
    return np.concatenate([[0], np.cumsum((per_tile + 31) // 32)]).astype(np.uint32)
