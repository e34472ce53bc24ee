"""The CPU decoder: Numba, lanes stepped together as a GPU would (docs/FORMAT.md §1.4).

Work items are groups of lanes of one tile (every lane's start is known from ``lane_bits``, so groups
are independent), dealt to the threads so that each gets the same number of elements; a group is at
least one cache line of output wide, so two cores never write the same line. Within a group the
decoder runs step by step over the group's lanes: the lanes are independent, so the CPU overlaps
their look-ups. A code of at most PRIMARY_BITS bits is one table look-up; a longer one falls back to
the canonical limits. Two words of a stream come from one unaligned 8-byte load and a rotate.

Safety: reads of the code stream are clamped to the array, so no stream, however corrupt, reads out
of bounds; a lane that does not end exactly at its stored size, or meets an unassigned code, marks its
group bad and the call raises IntegrityError. The raw stream needs no clamp: its size is fixed by the
element count, which the blob parser checks.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from floatzip.codec.huffman import PRIMARY_BITS
from floatzip.codec.lanes import schedule
from floatzip.errors import IntegrityError
from floatzip.format.spec import MAX_CODE_LEN
from floatzip.format.tensor import CompressedTensor

_U = np.uint64


@intrinsic
def _load_pair(typingctx, words, index):  # pragma: no cover - compiled
    """``(words[index] << 32) | words[index + 1]`` (uint64) from one unaligned 8-byte load and a rotate."""

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(64).as_pointer())
        x = builder.load(ptr, align=4)  # little-endian: words[index] in the low half
        return builder.or_(builder.shl(x, ir.Constant(x.type, 32)), builder.lshr(x, ir.Constant(x.type, 32)))

    return types.uint64(words, index), codegen


load_pair: Any = _load_pair  # called from compiled code only (its Python signature is the typing one)
GROUP_ELEMS = 1 << 15  # target elements per work item


@nb.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy", parallel=True)
def _decode(primary, limits, first_code, first_index, symbols, codes, raw, tile_words, lane_bits, lanes,
            steps, group, order, shift, out):  # fmt: skip  # pragma: no cover - compiled
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
    for k in nb.prange(order.size):
        it = order[k]
        if it < 0:
            continue
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
                window = load_pair(codes, min(p >> 5, last_word)) << _U(p & 31)
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
                rv = (load_pair(raw, q >> 5) >> _U(64 - raw_bits - (q & 31))) & raw_mask
                q += raw_bits
                # sign to the top bit, low bits kept: rv + s * (2**sign_shift - 2**shift) with s = rv >> shift
                out[_U(e0 + c)] = rv + (rv >> ushift) * sign_mul | (sym << ushift)
        for c in range(group):
            if pos[c] != end[c]:
                flag = 1
        bad[it] = flag
    return bad


@nb.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
def _tables(lengths, max_len, primary_bits):  # pragma: no cover - compiled
    """The arrays of :func:`floatzip.codec.huffman.decode_tables`, built in microseconds.

    Lengths that are not a prefix code (a length over ``max_len``, Kraft sum above one) give empty
    tables (``symbols.size == 0``), which :func:`decode` reports as corruption.
    """
    kraft = 0
    for s in range(lengths.size):
        if lengths[s] > max_len:
            kraft = (1 << max_len) + 1
            break
        if lengths[s] != 0:
            kraft += 1 << (max_len - lengths[s])
    if kraft > (1 << max_len):
        none32 = np.zeros(0, dtype=np.uint32)
        none = np.zeros(0, dtype=np.int32)
        return none32, none32, none, none, np.zeros(0, dtype=np.uint16)
    per_len = np.zeros(max_len + 1, dtype=np.int64)
    nused = 0
    for s in range(lengths.size):
        if lengths[s] != 0:
            per_len[lengths[s]] += 1
            nused += 1
    symbols = np.empty(nused, dtype=np.uint16)
    first_code = np.zeros(max_len + 1, dtype=np.int32)
    first_index = np.zeros(max_len + 1, dtype=np.int32)
    limits = np.zeros(max_len, dtype=np.uint32)
    code = 0
    index = 0
    for length in range(1, max_len + 1):
        code = (code + per_len[length - 1]) << 1 if length > 1 else 0
        first_code[length] = code
        first_index[length] = index
        index += per_len[length]
        limits[length - 1] = (code + per_len[length]) << (max_len - length)
    primary = np.zeros(1 << primary_bits, dtype=np.uint32)
    fill = first_index.copy()
    for length in range(1, max_len + 1):
        for s in range(lengths.size):
            if lengths[s] != length:
                continue
            rank = fill[length]
            fill[length] += 1
            symbols[rank] = s
            if length <= primary_bits:
                start = (first_code[length] + rank - first_index[length]) << (primary_bits - length)
                for i in range(start, start + (1 << (primary_bits - length))):
                    primary[i] = (s << 5) | length
    return primary, limits, first_code, first_index, symbols


@nb.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
def _order(n, lanes, steps, group, threads):  # pragma: no cover - compiled
    """Work items (tile, group of lanes) in an order that balances a static ``prange`` (see ``schedule``)."""
    per_tile = lanes * steps
    n_tiles = (n + per_tile - 1) // per_tile
    groups = lanes // group
    costs = np.empty(n_tiles * groups, dtype=np.int64)
    for t in range(n_tiles):
        m = min(per_tile, n - t * per_tile)
        for g in range(groups):
            elems = 0
            for c in range(g * group, (g + 1) * group):
                elems += (m - c + lanes - 1) // lanes if m > c else 0
            costs[t * groups + g] = elems
    return schedule(costs, threads)


def _group_lanes(lanes: int, steps: int, itemsize: int) -> int:
    """Lanes per work item: a cache line (64 bytes) of output per step or more, about GROUP_ELEMS elements."""
    group = min(lanes, max(1, 64 // itemsize))
    while group < lanes and 2 * group * steps <= GROUP_ELEMS:
        group *= 2
    return group


def decode(ct: CompressedTensor, out: npt.NDArray[np.unsignedinteger]) -> None:
    """Decode ``ct`` into ``out`` (flat, unsigned ints of the dtype's width)."""
    if ct.numel == 0:
        return
    primary, limits, first_code, first_index, symbols = _tables(ct.code_lengths, MAX_CODE_LEN, PRIMARY_BITS)
    # what the kernel trusts: a prefix code, and sections of the sizes the header implies (from_bytes
    # checks these for a blob; a record built in memory is checked here)
    if symbols.size == 0:
        raise IntegrityError("the code lengths are not a prefix code, or no symbol is used (corrupt data)")
    n_tiles = -(-ct.numel // (ct.lanes * ct.steps))
    if (
        ct.raw.size != -(-ct.numel * ct.raw_bits // 32) + 1
        or ct.tile_words.size != n_tiles + 1
        or ct.lane_bits.size != n_tiles * ct.lanes
    ):
        raise IntegrityError("the record's sections do not match its shape (corrupt data)")
    if ct.codes.size < 2:  # elements but not one code bit
        raise IntegrityError("the code stream is empty (corrupt data)")
    group = _group_lanes(ct.lanes, ct.steps, out.itemsize)
    order = _order(ct.numel, ct.lanes, ct.steps, group, nb.get_num_threads())
    bad = _decode(primary, limits, first_code, first_index, symbols, ct.codes, ct.raw,
                  ct.tile_words, ct.lane_bits, ct.lanes, ct.steps, group, order, ct.shift, out)  # fmt: skip
    if bad.any():
        tile = int(np.flatnonzero(bad)[0]) // (ct.lanes // group)
        raise IntegrityError(f"tile {tile} of the code stream does not decode (corrupt data)")
