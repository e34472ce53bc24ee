"""The tensor record: :class:`CompressedTensor` and its byte form, the blob (docs/FORMAT.md §1).

``from_bytes`` is the one place a blob from outside is trusted: it checks every size, offset and
count once, so the decoders may index the sections without further bounds checks beyond a lane's own.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
import torch

from floatzip.codec.huffman import DecodeTables, check_lengths, decode_tables
from floatzip.errors import FormatError, IntegrityError, VersionError
from floatzip.format.spec import (
    BLOB_MAGIC,
    FORMAT_VERSION,
    HEADER_FIXED,
    LAYOUT_BY_CODE,
    MAX_CODE_LEN,
    MAX_LANES,
    MAX_NDIM,
    MAX_STEPS,
    FloatLayout,
    align,
)

_FIXED = struct.Struct("<4sHBBBBBBIIIQQII")
assert _FIXED.size == HEADER_FIXED
_CRC_OFFSET = 44


@dataclass(eq=False)
class CompressedTensor:
    """One float tensor in floatzip's coded form (see docs/FORMAT.md §1)."""

    layout: FloatLayout
    shape: tuple[int, ...]
    shift: int
    sym_bits: int
    lanes: int
    steps: int
    code_lengths: npt.NDArray[np.uint8]
    tile_words: npt.NDArray[np.uint32]
    lane_bits: npt.NDArray[np.uint16]
    codes: npt.NDArray[np.uint32]  # W words + 1 padding word
    raw: npt.NDArray[np.uint32]  # ceil(n * raw_bits / 32) words + 1 padding word
    data_crc32: int
    _blob: bytes | None = field(default=None, repr=False)

    # --- derived sizes -------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.layout.torch_dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_tiles(self) -> int:
        return -(-self.numel // (self.lanes * self.steps))

    @property
    def raw_bits(self) -> int:
        return self.shift + 1

    @property
    def code_words(self) -> int:
        return int(self.codes.size) - 1

    @property
    def original_nbytes(self) -> int:
        return self.numel * self.layout.nbytes

    @property
    def nbytes(self) -> int:
        """Size of the blob in bytes."""
        used = int(np.count_nonzero(self.code_lengths))
        return _sections(self.shape, self.sym_bits, used, self.n_tiles, self.lanes, self.code_words, self.raw.size)[1]

    @property
    def ratio(self) -> float:
        """Compressed size over original size (lower is better); 1.0 for an empty tensor."""
        return self.nbytes / self.original_nbytes if self.numel else 1.0

    @property
    def coded_bits_per_weight(self) -> float:
        """Bits per weight of the coded streams alone (codes + raw), without tables or lane sizes."""
        n = max(self.numel, 1)
        return (int(self.tile_words[-1]) * 32 + self.numel * self.raw_bits) / n

    @cached_property
    def tables(self) -> DecodeTables:
        """The decode tables, rebuilt from the code lengths."""
        return decode_tables(self.code_lengths)

    # --- bytes ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        if self._blob is None:
            self._blob = _serialize(self)
        return self._blob

    @classmethod
    def from_bytes(
        cls, blob: bytes | bytearray | memoryview | npt.NDArray[np.uint8], name: str = "blob"
    ) -> CompressedTensor:
        """Parse and validate a blob; ``name`` appears in every error message."""
        return _parse(bytes(blob) if not isinstance(blob, bytes) else blob, name)


def _sections(
    shape: tuple[int, ...],
    sym_bits: int,
    used: int,
    n_tiles: int,
    lanes: int,
    code_words: int,
    raw_words: int,
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


def _serialize(ct: CompressedTensor) -> bytes:
    used = ct.code_lengths > 0
    secs, total = _sections(ct.shape, ct.sym_bits, int(used.sum()), ct.n_tiles, ct.lanes, ct.code_words, ct.raw.size)
    buf = bytearray(total)
    _FIXED.pack_into(
        buf,
        0,
        BLOB_MAGIC,
        FORMAT_VERSION,
        ct.layout.code,
        len(ct.shape),
        ct.sym_bits,
        ct.shift,
        MAX_CODE_LEN,
        0,
        ct.lanes,
        ct.steps,
        ct.n_tiles,
        ct.numel,
        ct.code_words,
        ct.data_crc32,
        0,
    )
    struct.pack_into(f"<{len(ct.shape)}Q", buf, HEADER_FIXED, *ct.shape)
    bitmap = np.packbits(used)  # big-endian bit order: symbol 0 is bit 7 of byte 0
    arrays: tuple[np.ndarray, ...] = (bitmap, ct.code_lengths[used], ct.tile_words, ct.lane_bits, ct.codes, ct.raw)
    for (off, nbytes), arr in zip(secs, arrays, strict=True):
        data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        assert len(data) == nbytes
        buf[off : off + nbytes] = data
    struct.pack_into("<I", buf, _CRC_OFFSET, zlib.crc32(buf) & 0xFFFFFFFF)
    return bytes(buf)


def _parse(blob: bytes, name: str) -> CompressedTensor:
    def bad(problem: str) -> FormatError:
        return FormatError(f"{name}: {problem}")

    if len(blob) < HEADER_FIXED:
        raise bad(f"truncated floatzip blob ({len(blob)} bytes, the header alone is {HEADER_FIXED})")
    (magic, version, dtype_code, ndim, sym_bits, shift, max_len, _reserved, lanes, steps, n_tiles, numel, code_words,
     data_crc, blob_crc) = _FIXED.unpack_from(blob, 0)  # fmt: skip
    if magic != BLOB_MAGIC:
        raise bad("not a floatzip blob (bad magic)")
    if version != FORMAT_VERSION:
        raise VersionError(
            f"{name}: floatzip format version {version} is not supported by this floatzip "
            f"(it reads version {FORMAT_VERSION}); upgrade floatzip"
        )
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
    secs, total = _sections(shape, sym_bits, int(used.sum()), n_tiles, lanes, code_words, raw_words)
    if total != len(blob):
        raise bad(f"blob is {len(blob)} bytes, its header implies {total} (truncated or padded)")

    def section(i: int, dtype: type) -> np.ndarray:
        off, nbytes = secs[i]
        return np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"), count=nbytes // np.dtype(dtype).itemsize,
                             offset=off).astype(dtype, copy=False)  # fmt: skip

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
    return CompressedTensor(
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
        _blob=blob,
    )
