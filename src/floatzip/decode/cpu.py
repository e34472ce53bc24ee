"""The CPU decoder: Numba, tiles in parallel, lanes stepped together as a GPU would (docs/FORMAT.md §1.4).

Within a tile it runs step by step over all lanes, so output is written in element order. A code of at
most PRIMARY_BITS bits is one table look-up; a longer one falls back to the canonical limits. Each lane
is checked against its stored size: a corrupt stream raises IntegrityError, never reads out of bounds.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import numpy.typing as npt

from floatzip.codec.huffman import PRIMARY_BITS
from floatzip.errors import IntegrityError
from floatzip.format.spec import MAX_CODE_LEN
from floatzip.format.tensor import CompressedTensor

_U = np.uint64


@nb.njit(nogil=True, cache=True, parallel=True)
def _decode(primary, limits, first_code, first_index, symbols, codes, raw, tile_words, lane_bits, lanes, steps,
            shift, out):  # fmt: skip  # pragma: no cover - compiled
    n = out.size
    per_tile = lanes * steps
    n_tiles = tile_words.size - 1
    max_len = _U(limits.size)
    primary_shift = _U(64 - PRIMARY_BITS)
    window_shift = _U(64) - max_len
    raw_bits = _U(shift + 1)
    raw_mask = (_U(1) << raw_bits) - _U(1)
    low_mask = _U((1 << shift) - 1)
    sign_shift = _U(out.itemsize * 8 - 1)
    ushift = _U(shift)
    bad = np.zeros(n_tiles, dtype=np.uint8)
    for t in nb.prange(n_tiles):
        pos = np.empty(lanes, dtype=np.uint64)
        end = np.empty(lanes, dtype=np.uint64)
        p = _U(tile_words[t]) * _U(32)
        for c in range(lanes):
            pos[c] = p
            p += _U(lane_bits[t * lanes + c])
            end[c] = p
        base = t * per_tile
        m = min(per_tile, n - base)
        q = _U(base) * raw_bits
        for e in range(m):
            c = e % lanes
            p = pos[c]
            w = p >> _U(5)
            # the next 64 bits of the lane, left-justified (bits past word w+1 read as zero)
            window = ((_U(codes[w]) << _U(32)) | _U(codes[w + _U(1)])) << (p & _U(31))
            entry = _U(primary[window >> primary_shift])
            if entry != 0:
                length = entry & _U(31)
                sym = entry >> _U(5)
            else:
                v = window >> window_shift
                length = _U(1)
                for lim in limits:
                    length += _U(v >= lim)
                if length > max_len:
                    bad[t] = 1
                    break
                idx = first_index[length] + np.int64(v >> (max_len - length)) - first_code[length]
                sym = _U(symbols[idx])
            p += length
            if p > end[c]:
                bad[t] = 1
                break
            pos[c] = p
            wr = q >> _U(5)
            rwin = (_U(raw[wr]) << _U(32)) | _U(raw[wr + _U(1)])
            rv = (rwin >> (_U(64) - raw_bits - (q & _U(31)))) & raw_mask
            q += raw_bits
            out[base + e] = ((rv >> ushift) << sign_shift) | (sym << ushift) | (rv & low_mask)
        for c in range(lanes):
            if pos[c] != end[c]:
                bad[t] = 1
    return bad


def decode(ct: CompressedTensor, out: npt.NDArray[np.unsignedinteger]) -> None:
    """Decode ``ct`` into ``out`` (flat, unsigned ints of the dtype's width)."""
    if ct.numel == 0:
        return
    tb = ct.tables
    assert tb.max_len == MAX_CODE_LEN
    bad = _decode(tb.primary, tb.limits, tb.first_code, tb.first_index, tb.symbols, ct.codes, ct.raw,
                  ct.tile_words, ct.lane_bits, ct.lanes, ct.steps, ct.shift, out)  # fmt: skip
    if bad.any():
        raise IntegrityError(f"tile {int(np.flatnonzero(bad)[0])} of the code stream does not decode (corrupt data)")
