"""The CPU decoder: Numba, lanes stepped together as a GPU would (docs/FORMAT.md §1.4).

Work items are groups of lanes of one tile (every lane's start is known from ``lane_bits``, so groups
are independent), scheduled dynamically over the cores; a group is at least one cache line of output
wide, so two cores never write the same line. Within a group the decoder runs step by step over the
group's lanes: the lanes are independent, so the CPU overlaps their look-ups. A code of at most
PRIMARY_BITS bits is one table look-up; a longer one falls back to the canonical limits.

Safety: reads of the code stream are clamped to the array, so no stream, however corrupt, reads out
of bounds; a lane that does not end exactly at its stored size, or meets an unassigned code, marks its
group bad and the call raises IntegrityError. The raw stream needs no clamp: its size is fixed by the
element count, which the blob parser checks.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from floatzip.codec.huffman import PRIMARY_BITS
from floatzip.errors import IntegrityError
from floatzip.format.spec import MAX_CODE_LEN
from floatzip.format.tensor import CompressedTensor

_U = np.uint64


@intrinsic
def _load_pair(typingctx, words, index):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """``(words[index] << 32) | words[index + 1]`` (uint64) from one unaligned 8-byte load and a rotate."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(64).as_pointer())
        x = builder.load(ptr, align=4)  # little-endian: words[index] in the low half
        return builder.or_(builder.shl(x, ir.Constant(x.type, 32)), builder.lshr(x, ir.Constant(x.type, 32)))

    return types.uint64(words, index), codegen
GROUP_ELEMS = 1 << 15  # target elements per work item


@nb.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy", parallel=True)
def _decode(primary, limits, first_code, first_index, symbols, codes, raw, tile_words, lane_bits, lanes, steps,
            group, shift, out):  # fmt: skip  # pragma: no cover - compiled
    n = out.size
    per_tile = lanes * steps
    n_tiles = tile_words.size - 1
    groups = lanes // group
    n_items = n_tiles * groups
    max_len = limits.size
    primary_shift = _U(64 - PRIMARY_BITS)
    window_shift = _U(64 - max_len)
    raw_bits = shift + 1
    raw_mask = (_U(1) << _U(raw_bits)) - _U(1)
    sign_shift = _U(out.itemsize * 8 - 1)
    ushift = _U(shift)
    sign_mul = (_U(1) << sign_shift) - (_U(1) << ushift)
    last_word = codes.size - 2  # reading words w and w + 1 needs w <= last_word
    bad = np.zeros(n_items, dtype=np.uint8)
    for it in nb.prange(n_items):
        t = it // groups
        c0 = (it % groups) * group
        # lane state, padded by a cache line on each side: two threads' small allocations may be
        # neighbours on the heap, and a shared line would bounce between the cores at every step
        state = np.empty(2 * group + 16, dtype=np.int64)
        pos = state[8 : 8 + group]
        end = state[8 + group : 8 + 2 * group]
        p = np.int64(tile_words[t]) * 32
        for c in range(c0):
            p += np.int64(lane_bits[t * lanes + c])
        for c in range(group):
            pos[c] = p
            p += np.int64(lane_bits[t * lanes + c0 + c])
            end[c] = p
        base = t * per_tile
        m = min(per_tile, n - base)
        flag = 0
        for j in range((m - c0 + lanes - 1) // lanes if m > c0 else 0):
            e0 = base + j * lanes + c0
            width = min(group, base + m - e0)
            q = e0 * raw_bits
            for c in range(width):
                p = pos[c]
                window = _load_pair(codes, min(p >> 5, last_word)) << _U(p & 31)
                entry = primary[window >> primary_shift]
                if entry != 0:
                    length = np.int64(entry & 31)
                    sym = _U(entry >> 5)
                else:  # a code longer than PRIMARY_BITS, or an unassigned one
                    v = window >> window_shift
                    length = 1
                    for lim in limits:
                        length += 1 if v >= lim else 0
                    if length > max_len:
                        flag = 1
                        length = max_len
                    idx = first_index[length] + np.int64(v >> _U(max_len - length)) - first_code[length]
                    sym = _U(symbols[min(max(idx, 0), symbols.size - 1)])
                pos[c] = p + length
                rv = (_load_pair(raw, q >> 5) >> _U(64 - raw_bits - (q & 31))) & raw_mask
                q += raw_bits
                # sign to the top bit, low bits kept: rv + s * (2**sign_shift - 2**shift) with s = rv >> shift
                out[_U(e0 + c)] = rv + (rv >> ushift) * sign_mul | (sym << ushift)
        for c in range(group):
            if pos[c] != end[c]:
                flag = 1
        bad[it] = flag
    return bad


def _group_lanes(lanes: int, steps: int, itemsize: int) -> int:
    """Lanes per work item: at least a cache line (64 bytes) of output per step, about GROUP_ELEMS elements."""
    group = min(lanes, max(1, 64 // itemsize))
    while group < lanes and 2 * group * steps <= GROUP_ELEMS:
        group *= 2
    return group


def decode(ct: CompressedTensor, out: npt.NDArray[np.unsignedinteger]) -> None:
    """Decode ``ct`` into ``out`` (flat, unsigned ints of the dtype's width)."""
    if ct.numel == 0:
        return
    tb = ct.tables
    assert tb.max_len == MAX_CODE_LEN
    if ct.codes.size < 2:  # elements but not one code bit
        raise IntegrityError("the code stream is empty (corrupt data)")
    group = _group_lanes(ct.lanes, ct.steps, out.itemsize)
    with nb.parallel_chunksize(1):  # a partial tile's groups are small: hand groups out one at a time
        bad = _decode(tb.primary, tb.limits, tb.first_code, tb.first_index, tb.symbols, ct.codes, ct.raw,
                      ct.tile_words, ct.lane_bits, ct.lanes, ct.steps, group, ct.shift, out)  # fmt: skip
    if bad.any():
        tile = int(np.flatnonzero(bad)[0]) // (ct.lanes // group)
        raise IntegrityError(f"tile {tile} of the code stream does not decode (corrupt data)")
