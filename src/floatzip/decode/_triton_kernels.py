"""Triton kernels for the GPU decoder (docs/FORMAT.md §1.4). Private: use :mod:`floatzip.decode.triton`.

One program decodes one tile: its ``LANES`` lanes are the block dimension, and it runs one step per
``LANES`` consecutive output elements. Everything is integer arithmetic on the words' bits (never float
arithmetic), stored through an integer pointer of the element's width; the caller views the bytes as floats.

Whether these kernels are compiled or interpreted is fixed when this module is imported: Triton reads
``TRITON_INTERPRET`` when a function is decorated (and when ``triton.language`` itself is first imported).

Per-tile descriptor (int64, ``DESC_COLS`` columns), built by ``floatzip.decode.triton.prepare``:

====  =========================================================================================
col   meaning
====  =========================================================================================
0     code word offset: index in the batch's code buffer of the tile's first code word
1     lane offset: index in the batch's lane_bits buffer of the tile's lane 0
2     raw word offset: index in the batch's raw buffer of the tile's first raw word
3     first element: index, within its tensor, of the tile's element 0 (``t * lanes * steps``)
4     valid: elements in this tile (``lanes * steps``, fewer in a tensor's last tile)
5     tensor: index of the tensor in the batch (its tables and output offset)
6     steps of the tensor's tiles
7     ``shift | (element bytes << 8)``
====  =========================================================================================

Tables, per tensor ``i``: ``primary[i * 4096 + prefix]`` (``(symbol << 5) | length``, 0 = longer code),
``limits[i * 16 + l - 1]``, ``base[i * 32 + l] = first_index[l] - first_code[l]`` and
``symbols[i * 4096 + k]`` (used symbols in canonical order).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Sizes shared with the launcher (constexpr so that the kernel may read them as globals).
DESC_COLS = tl.constexpr(8)
PRIMARY_STRIDE = tl.constexpr(4096)  # 2 ** PRIMARY_BITS entries
LIMITS_STRIDE = tl.constexpr(16)  # MAX_CODE_LEN
BASE_STRIDE = tl.constexpr(32)  # lengths 0..16, padded
SYMBOLS_STRIDE = tl.constexpr(4096)  # at most 2 ** MAX_SYMBOL_BITS used symbols


@triton.jit
def decode_tiles_kernel(
    desc_ptr,  # int64 [n_tiles, DESC_COLS]
    codes_ptr,  # int32: every tensor's code words (uint32 bits), padding included, plus one zero word
    raw_ptr,  # int32: every tensor's raw words (uint32 bits), padding included
    lane_bits_ptr,  # int32 [n_tiles * LANES]
    primary_ptr,  # int32 [n_tensors * 4096]
    limits_ptr,  # int32 [n_tensors * 16]
    base_ptr,  # int32 [n_tensors * 32]
    symbols_ptr,  # int16 [n_tensors * 4096]
    out_ptr,  # uint8: the output base address
    out_offsets_ptr,  # int64 [n_tensors]: byte offset of each tensor's output from out_ptr
    err_ptr,  # int32 [n_tiles]: set to 1 where a tile does not decode (corrupt stream), else 0
    LANES: tl.constexpr,
    CANONICAL: tl.constexpr,  # True: length from the 16 limits; False: 12-bit primary table, limits for longer codes
):
    tile = tl.program_id(0).to(tl.int64)
    desc = desc_ptr + tile * DESC_COLS
    code_word = tl.load(desc)
    lane_off = tl.load(desc + 1)
    raw_word = tl.load(desc + 2)
    first = tl.load(desc + 3)
    valid = tl.load(desc + 4).to(tl.int32)
    tensor = tl.load(desc + 5)
    info = tl.load(desc + 7).to(tl.int32)
    shift = info & 0xFF
    width = info >> 8

    lane = tl.arange(0, LANES)
    bits = tl.load(lane_bits_ptr + lane_off + lane)
    end = tl.cumsum(bits, axis=0)  # bit offsets relative to the tile's first code word
    pos = end - bits
    bad = tl.zeros([LANES], dtype=tl.int32)

    lim_ptr = limits_ptr + tensor * LIMITS_STRIDE
    lim1 = tl.load(lim_ptr)
    lim2 = tl.load(lim_ptr + 1)
    lim3 = tl.load(lim_ptr + 2)
    lim4 = tl.load(lim_ptr + 3)
    lim5 = tl.load(lim_ptr + 4)
    lim6 = tl.load(lim_ptr + 5)
    lim7 = tl.load(lim_ptr + 6)
    lim8 = tl.load(lim_ptr + 7)
    lim9 = tl.load(lim_ptr + 8)
    lim10 = tl.load(lim_ptr + 9)
    lim11 = tl.load(lim_ptr + 10)
    lim12 = tl.load(lim_ptr + 11)
    lim13 = tl.load(lim_ptr + 12)
    lim14 = tl.load(lim_ptr + 13)
    lim15 = tl.load(lim_ptr + 14)
    lim16 = tl.load(lim_ptr + 15)
    primary = primary_ptr + tensor * PRIMARY_STRIDE
    base = base_ptr + tensor * BASE_STRIDE
    symbols = symbols_ptr + tensor * SYMBOLS_STRIDE

    ushift = shift.to(tl.uint32)
    raw_bits = shift + 1
    raw_out = (32 - raw_bits).to(tl.uint32)
    low_mask = ((1 << ushift) - 1).to(tl.uint32)
    sign_shift = (width * 8 - 1).to(tl.uint32)
    out_base = out_ptr + tl.load(out_offsets_ptr + tensor)
    out8 = out_base.to(tl.pointer_type(tl.int8)) + first
    out16 = out_base.to(tl.pointer_type(tl.int16)) + first
    out32 = out_base.to(tl.pointer_type(tl.int32)) + first

    n_steps = (valid + LANES - 1) // LANES
    for j in range(0, n_steps):
        e = j * LANES + lane
        active = e < valid

        # the 32 bits of the lane's stream from `pos`, MSB-first (shift counts stay in 0..31)
        w = code_word + (pos >> 5)
        s = (pos & 31).to(tl.uint32)
        hi = tl.load(codes_ptr + w, mask=active, other=0).to(tl.uint32, bitcast=True)
        lo = tl.load(codes_ptr + w + 1, mask=active, other=0).to(tl.uint32, bitcast=True)
        window = (hi << s) | ((lo >> 1) >> (31 - s))
        v = (window >> 16).to(tl.int32)  # the next 16 bits, left-justified to the longest code

        if CANONICAL:
            length = (
                1
                + (v >= lim1).to(tl.int32)
                + (v >= lim2).to(tl.int32)
                + (v >= lim3).to(tl.int32)
                + (v >= lim4).to(tl.int32)
                + (v >= lim5).to(tl.int32)
                + (v >= lim6).to(tl.int32)
                + (v >= lim7).to(tl.int32)
                + (v >= lim8).to(tl.int32)
                + (v >= lim9).to(tl.int32)
                + (v >= lim10).to(tl.int32)
                + (v >= lim11).to(tl.int32)
                + (v >= lim12).to(tl.int32)
                + (v >= lim13).to(tl.int32)
                + (v >= lim14).to(tl.int32)
                + (v >= lim15).to(tl.int32)
                + (v >= lim16).to(tl.int32)
            )
            ok = length <= 16
            clen = tl.minimum(length, 16)
            idx = tl.load(base + clen, mask=active, other=0) + (v >> (16 - clen))
            sym = tl.load(symbols + idx, mask=active & ok, other=0).to(tl.int32)
        else:
            entry = tl.load(primary + (window >> 20).to(tl.int32), mask=active, other=0)
            # entry 0 means v >= lim12: a code of 13..16 bits, or an unassigned one
            long_len = (
                13
                + (v >= lim13).to(tl.int32)
                + (v >= lim14).to(tl.int32)
                + (v >= lim15).to(tl.int32)
                + (v >= lim16).to(tl.int32)
            )
            is_long = active & (entry == 0)
            ok = long_len <= 16
            clen = tl.minimum(long_len, 16)
            idx = tl.load(base + clen, mask=is_long, other=0) + (v >> (16 - clen))
            long_sym = tl.load(symbols + idx, mask=is_long & ok, other=0).to(tl.int32)
            length = tl.where(entry == 0, long_len, entry & 31)
            sym = tl.where(entry == 0, long_sym, entry >> 5)

        nxt = pos + length
        bad = bad | (active & ((length > 16) | (nxt > end))).to(tl.int32)
        pos = tl.where(active, tl.minimum(nxt, end), pos)

        # raw value of element e: bits [raw_bits * e, raw_bits * (e + 1)) of the tile's raw words
        q = raw_bits * e
        rw = raw_word + (q >> 5)
        rs = (q & 31).to(tl.uint32)
        rhi = tl.load(raw_ptr + rw, mask=active, other=0).to(tl.uint32, bitcast=True)
        rlo = tl.load(raw_ptr + rw + 1, mask=active, other=0).to(tl.uint32, bitcast=True)
        rv = ((rhi << rs) | ((rlo >> 1) >> (31 - rs))) >> raw_out

        word = ((rv >> ushift) << sign_shift) | (sym.to(tl.uint32) << ushift) | (rv & low_mask)
        if width == 2:
            tl.store(out16 + e, word.to(tl.uint16).to(tl.int16, bitcast=True), mask=active)
        elif width == 1:
            tl.store(out8 + e, word.to(tl.uint8).to(tl.int8, bitcast=True), mask=active)
        else:
            tl.store(out32 + e, word.to(tl.int32, bitcast=True), mask=active)

    bad = bad | (pos != end).to(tl.int32)
    tl.store(err_ptr + tile, tl.max(bad, axis=0))
