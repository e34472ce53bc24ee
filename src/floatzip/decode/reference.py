"""The slow, obviously-right decoder: reads the streams bit by bit, following docs/FORMAT.md literally.

It parses a v2 or v3 blob's bytes itself (it does not use the compiled core's parser), so the two check each
other. It exists to test the fast decoders against; use it on small tensors only.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from floatzip.codec.huffman import canonical_codes
from floatzip.errors import FormatError, IntegrityError
from floatzip.format.blob import CompressedTensor
from floatzip.format.spec import LANES, MAX_CODE_LEN, align

V2_HEADER = 56
CODE_PAD_WORDS = 4
RAW_PAD_WORDS = 2


def _msb_bit(words: npt.NDArray[np.uint32], p: int) -> int:
    return (int(words[p // 32]) >> (31 - p % 32)) & 1


def _lsb_bits(words: npt.NDArray[np.uint32], p: int, n: int) -> int:
    """n bits from bit p of an LSB-first stream (bit p is bit p mod 32 of word p div 32)."""
    v = 0
    for i in range(n):
        q = p + i
        v |= ((int(words[q // 32]) >> (q % 32)) & 1) << i
    return v


def _codebook(lengths: npt.NDArray[np.uint8]) -> dict[tuple[int, int], int]:
    codes = canonical_codes(lengths)
    return {(int(lengths[s]), int(c)): s for s, c in enumerate(codes) if lengths[s]}


def _read_code(
    words: npt.NDArray[np.uint32], p: int, end: int, book: dict[tuple[int, int], int], max_len: int = MAX_CODE_LEN
) -> tuple[int, int]:
    """(symbol, next bit) of the code starting at bit p of an MSB-first stream, without reading past `end`."""
    code, length = 0, 0
    while (length, code) not in book:
        if length == max_len or p >= end:
            raise IntegrityError("a lane's code stream does not decode")
        code = code << 1 | _msb_bit(words, p)
        length += 1
        p += 1
    return book[(length, code)], p


def _word(field: int, sym: int, mid: int, bits: int, low: int = 0, low_bits: int = 0) -> int:
    """The float's bits from its symbol, its raw field (sign on top of `mid` mantissa bits) and its coded low
    planes (`low_bits` bits, v3)."""
    top = sym << (mid + low_bits)
    return (field >> mid) << (bits - 1) | top | (field & ((1 << mid) - 1)) << low_bits | low


def decode_words_v1(ct: CompressedTensor) -> list[int]:
    """A v1 record's words, in row-major order (docs/FORMAT.md, Appendix A)."""
    s = ct.v1
    n, lanes, per_tile = ct.numel, s.lanes, s.lanes * s.steps
    book = _codebook(s.code_lengths)
    symbols = [0] * n
    for t in range(s.n_tiles):
        m = min(per_tile, n - t * per_tile)
        p = 32 * int(s.tile_words[t])
        for c in range(lanes):
            end = p + int(s.lane_bits[t * lanes + c])
            for e in range(c, m, lanes):
                symbols[t * per_tile + e], p = _read_code(s.codes, p, end, book)
            if p != end:
                raise IntegrityError("a lane's code stream has bits left over")
    bits, r = ct.layout.bits, s.shift + 1
    out = []
    for i, sym in enumerate(symbols):
        field = 0
        for b in range(r):  # v1's raw stream is MSB-first
            field = field << 1 | _msb_bit(s.raw, r * i + b)
        out.append(_word(field, sym, s.shift, bits))
    return out


def decode_words_v2(blob: bytes) -> list[int]:
    """A v2 or v3 blob's words, in row-major order (docs/FORMAT.md §1), from its bytes alone."""
    (version,) = struct.unpack_from("<H", blob, 4)
    (dtype_code, ndim, sym_bits, shift, max_len, n_tables) = struct.unpack_from("<BBBBBB", blob, 6)
    planes, plane_max = struct.unpack_from("<BB", blob, 13) if version == 3 else (0, 0)
    steps, n_tiles, numel, code_words = struct.unpack_from("<IIQQ", blob, 16)
    bits = {0: 16, 1: 16, 2: 32, 3: 8, 4: 8}[dtype_code]
    group = 16 // (bits // 8)
    tile_elems = LANES * steps * group
    mid = shift - 8 * planes  # §1.7: the raw field holds the sign and the mantissa bits above the planes
    r = mid + 1
    pos = align(V2_HEADER + 8 * ndim)

    def table(nsym: int, plane: bool = False) -> dict[tuple[int, int], int]:
        nonlocal pos
        bitmap = np.unpackbits(np.frombuffer(blob, np.uint8, (nsym + 7) // 8, pos))[:nsym].astype(bool)
        pos += (nsym + 7) // 8
        used = int(bitmap.sum())
        if plane and used == 1:  # a constant plane: no nibbles, its byte in 0 bits
            return {(0, 0): int(np.flatnonzero(bitmap)[0])}
        nib = np.frombuffer(blob, np.uint8, (used + 1) // 2, pos)
        pos += (used + 1) // 2
        lengths = np.zeros(nsym, dtype=np.uint8)
        lengths[bitmap] = [((int(nib[i // 2]) >> (4 * (i % 2))) & 15) + 1 for i in range(used)]
        return _codebook(lengths)

    # code tables: bitmap (symbol s is bit 7 - s % 8 of byte s // 8), then (length - 1) in nibbles, low first;
    # in v3 each table's plane tables follow all of them, in lane order (the higher plane first)
    books = [table(1 << sym_bits) for _ in range(n_tables)]
    plane_books = [[table(256, plane=True) for _ in range(planes)] for _ in range(n_tables)]
    pos = align(pos)
    table_of = [0] * n_tiles
    if n_tables > 1:
        table_of = list(np.frombuffer(blob, np.uint8, n_tiles, pos))
        pos = align(pos + n_tiles)

    def words(count: int) -> npt.NDArray[np.uint32]:
        nonlocal pos
        w = np.frombuffer(blob, "<u4", count, pos).astype(np.uint32)
        pos = align(pos + 4 * count)
        return w

    tile_words = words(n_tiles + 1)
    tile_lanes = words(n_tiles)
    widths = [int(v) >> 27 for v in tile_lanes]
    deltas = words(sum(widths))
    codes = words(code_words + CODE_PAD_WORDS)
    raw = blob[pos:]
    raw_words = np.frombuffer(raw, "<u4", len(raw) // 4).astype(np.uint32)

    out = [0] * numel
    delta_at = 0
    raw_at = 0  # words
    for t in range(n_tiles):
        m = min(tile_elems, numel - t * tile_elems)
        full, tail = divmod(m, LANES * group)
        base_bits, width = int(tile_lanes[t]) & ((1 << 27) - 1), widths[t]
        lane_bits = [
            base_bits + (_lsb_bits(deltas, 32 * delta_at + width * c, width) if width else 0) for c in range(LANES)
        ]
        delta_at += width
        book, pbooks = books[table_of[t]], plane_books[table_of[t]]
        lane_words = -(-full * group * r // 32)
        tail_at = raw_at + LANES * lane_words
        p = 32 * int(tile_words[t])
        for c in range(LANES):
            end = p + lane_bits[c]
            # the lane's elements: group g = 32 j + c covers tile elements [group g, group g + group)
            elements = [(j * LANES + c) * group + v for j in range(full) for v in range(group)]
            extra = min(max(tail - group * c, 0), group)
            elements += [(full * LANES + c) * group + v for v in range(extra)]
            for k, e in enumerate(elements):
                sym, p = _read_code(codes, p, end, book)
                low = 0  # the planes' bytes, the higher plane first
                for pb in pbooks:
                    byte, p = _read_code(codes, p, end, pb, plane_max)
                    low = low << 8 | byte
                if k < full * group:  # lane-major raw words: lane c's word i is word c + 32 i of the tile's raw
                    q = k * r
                    field = 0
                    for b in range(r):
                        bit = q + b
                        word = raw_words[raw_at + (bit // 32) * LANES + c]
                        field |= ((int(word) >> (bit % 32)) & 1) << b
                else:  # the tail: element-ordered fields after the lanes' words
                    field = _lsb_bits(raw_words[tail_at:], r * (e - full * LANES * group), r)
                out[t * tile_elems + e] = _word(field, sym, mid, bits, low, 8 * planes)
            if p != end:
                raise IntegrityError("a lane's code stream has bits left over")
        raw_at += LANES * lane_words + (-(-tail * r // 32))
    if max_len > MAX_CODE_LEN:
        raise FormatError("bad maximum code length")
    return out


_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), byte by byte."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def decode(ct: CompressedTensor, out: npt.NDArray[np.unsignedinteger], verify: bool = True) -> None:
    words = decode_words_v1(ct) if ct.version == 1 else decode_words_v2(ct.to_bytes())
    out[:] = np.array(words, dtype=out.dtype)
    if verify:
        if ct.version in (2, 3) and crc32c(out.tobytes()) != ct.data_crc32:
            raise IntegrityError("decodes to the wrong bytes (checksum mismatch)")
        if ct.version == 1:
            ct.check_data(out.view(np.uint8))
