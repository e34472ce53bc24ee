"""Format version 1 blobs: read only, so that every v1 checkpoint keeps restoring (docs/FORMAT.md, Appendix A).

:func:`parse_v1` checks every size, offset and count once; the decoders then index the sections without
trusting anything else (the compiled v1 decoder re-checks the sizes it indexes by).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from floatzip.codec.huffman import check_lengths
from floatzip.errors import FormatError, IntegrityError
from floatzip.format.spec import LAYOUT_BY_CODE, MAX_CODE_LEN, MAX_NDIM, FloatLayout, align

VERSION = 1
HEADER_FIXED = 48
MAX_LANES = 1024
MAX_STEPS = 4095  # lane_bits is uint16: steps * MAX_CODE_LEN must stay below 2**16

_FIXED = struct.Struct("<4sHBBBBBBIIIQQII")
assert _FIXED.size == HEADER_FIXED
_CRC_OFFSET = 44


@dataclass(frozen=True, eq=False)
class V1Sections:
    """The parsed sections of a v1 blob (docs/FORMAT.md, Appendix A)."""

    layout: FloatLayout
    shape: tuple[int, ...]
    shift: int
    sym_bits: int
    lanes: int
    steps: int
    code_lengths: npt.NDArray[np.uint8]  # 2 ** sym_bits entries, 0 = unused
    tile_words: npt.NDArray[np.uint32]
    lane_bits: npt.NDArray[np.uint16]
    codes: npt.NDArray[np.uint32]  # W words + 1 padding word
    raw: npt.NDArray[np.uint32]  # ceil(n * raw_bits / 32) words + 1 padding word
    data_crc32: int  # zlib CRC-32 of the original bytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_tiles(self) -> int:
        return -(-self.numel // (self.lanes * self.steps))


def _section_sizes(
    shape: tuple[int, ...], sym_bits: int, used: int, n_tiles: int, lanes: int, code_words: int, raw_words: int
) -> tuple[list[tuple[int, int]], int]:
    """(offset, nbytes) of each section, and the blob's total size."""
    pos = align(HEADER_FIXED + 8 * len(shape))
    out = []
    sizes = (
        -(-(1 << sym_bits) // 8),
        used,
        4 * (n_tiles + 1),
        2 * n_tiles * lanes,
        4 * (code_words + 1),
        4 * raw_words,
    )
    for nbytes in sizes:
        out.append((pos, nbytes))
        pos = align(pos + nbytes)
    return out, pos


def parse_v1(blob: bytes, name: str) -> V1Sections:
    """Parse and validate a version 1 blob; ``name`` appears in every error message."""

    def bad(problem: str) -> FormatError:
        return FormatError(f"{name}: {problem}")

    if len(blob) < HEADER_FIXED:
        raise bad(f"truncated floatzip blob ({len(blob)} bytes, the header alone is {HEADER_FIXED})")
    (_magic, _version, dtype_code, ndim, sym_bits, shift, max_len, _reserved, lanes, steps, n_tiles, numel, code_words,
     data_crc, blob_crc) = _FIXED.unpack_from(blob, 0)  # fmt: skip
    stored = bytearray(blob[:HEADER_FIXED])
    stored[_CRC_OFFSET : _CRC_OFFSET + 4] = b"\0\0\0\0"
    crc = zlib.crc32(blob[HEADER_FIXED:], zlib.crc32(stored)) & 0xFFFFFFFF
    if crc != blob_crc:
        raise IntegrityError(f"{name}: checksum mismatch (the blob is corrupt)")
    layout = LAYOUT_BY_CODE.get(dtype_code)
    if layout is None:
        raise bad(f"unknown dtype code {dtype_code}")
    if ndim > MAX_NDIM or len(blob) < HEADER_FIXED + 8 * ndim:
        raise bad(f"bad ndim {ndim}")
    shape = struct.unpack_from(f"<{ndim}Q", blob, HEADER_FIXED)
    if math.prod(shape) != numel:
        raise bad(f"shape {shape} does not hold {numel} elements")
    if max_len != MAX_CODE_LEN:
        raise bad(f"unsupported maximum code length {max_len}")
    k = sym_bits - layout.exp_bits
    if not (0 <= k <= layout.max_k) or shift != layout.man_bits - k:
        raise bad(f"bad symbol split (sym_bits={sym_bits}, shift={shift}) for {layout.name}")
    if lanes < 1 or lanes > MAX_LANES or lanes & (lanes - 1) or not (1 <= steps <= MAX_STEPS) or (lanes * steps) % 32:
        raise bad(f"bad tile shape (lanes={lanes}, steps={steps})")
    if n_tiles != -(-numel // (lanes * steps)):
        raise bad(f"{n_tiles} tiles do not cover {numel} elements")
    raw_words = -(-numel * (shift + 1) // 32) + 1
    bitmap_at = align(HEADER_FIXED + 8 * ndim)
    bitmap_len = -(-(1 << sym_bits) // 8)
    if len(blob) < bitmap_at + bitmap_len:
        raise bad(f"truncated floatzip blob ({len(blob)} bytes)")
    used = np.unpackbits(np.frombuffer(blob, np.uint8, bitmap_len, bitmap_at))[: 1 << sym_bits].astype(bool)
    secs, total = _section_sizes(shape, sym_bits, int(used.sum()), n_tiles, lanes, code_words, raw_words)
    if total != len(blob):
        raise bad(f"blob is {len(blob)} bytes, its header implies {total} (truncated or padded)")

    def section(i: int, dtype: type) -> np.ndarray:
        off, nbytes = secs[i]
        size = np.dtype(dtype).itemsize
        return np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"), count=nbytes // size, offset=off).astype(
            dtype, copy=False
        )

    lengths = np.zeros(1 << sym_bits, dtype=np.uint8)
    lengths[used] = section(1, np.uint8)
    tile_words = section(2, np.uint32)
    lane_bits = section(3, np.uint16)
    if used.any() and not lengths[used].all():
        raise bad("a used symbol has code length 0")
    try:
        check_lengths(lengths)
    except FormatError as exc:
        raise bad(str(exc)) from None
    lane_sums = lane_bits.reshape(n_tiles, lanes).sum(axis=1, dtype=np.int64) if n_tiles else np.zeros(0, np.int64)
    expect = np.concatenate([[0], np.cumsum((lane_sums + 31) // 32)])
    if tile_words[0] != 0 or not np.array_equal(tile_words.astype(np.int64), expect) or expect[-1] != code_words:
        raise bad("tile offsets do not match the lane sizes")
    return V1Sections(
        layout=layout,
        shape=tuple(int(s) for s in shape),
        shift=shift,
        sym_bits=sym_bits,
        lanes=lanes,
        steps=steps,
        code_lengths=lengths,
        tile_words=tile_words,
        lane_bits=lane_bits,
        codes=section(4, np.uint32),
        raw=section(5, np.uint32),
        data_crc32=data_crc,
    )
