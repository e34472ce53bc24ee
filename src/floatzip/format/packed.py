"""The packed blob: a small version 2 blob without its alignment padding, lookahead words and fixed-width
header fields (docs/FORMAT.md §2.3), for checkpoints of many small tensors.

:func:`pack` drops what :func:`unpack` can put back exactly; :func:`unpack` rebuilds the version 2 blob byte
for byte, and the one blob parser then checks it whole (the blob's own CRC-32C, kept in the packed header,
covers every rebuilt byte). Packing saves about 130 bytes a blob, which matters only for small tensors.
"""

from __future__ import annotations

import math
from typing import Any

from floatzip.errors import FormatError
from floatzip.format import spec

_V2_FIXED = spec.V2_HEADER_FIXED
_CODE_PAD, _RAW_PAD = 4, 2  # zero words after the code and raw streams (§1.4)
_MAX_VARINT = 1 << 40  # no count of a real blob reaches this (W < 2^32 words, n_tiles < 2^32)


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def read_varint(data: bytes | bytearray | memoryview, pos: int, name: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 42:
            raise FormatError(f"{name}: bad packed floatzip blob (truncated or overlong number)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if value >= _MAX_VARINT:
        raise FormatError(f"{name}: bad packed floatzip blob (a count out of range)")
    return value, pos


def _sections(info: dict[str, Any]) -> list[tuple[str, int]]:
    """The sections of a version 2 blob in order, with their lengths in bytes (without padding)."""
    n_tiles = int(info["n_tiles"])
    out = [("tables", int(info["tables_len"]))]
    if int(info["n_tables"]) > 1:
        out.append(("tile_table", n_tiles))
    out += [
        ("tile_words", 4 * (n_tiles + 1)),
        ("tile_lanes", 4 * n_tiles),
        ("deltas", 4 * int(info["delta_words"])),
        ("codes", 4 * int(info["code_words"])),
        ("raw", 4 * int(info["raw_words"])),
    ]
    return out


_AT = {
    "tables": "tables_at",
    "tile_table": "tile_table_at",
    "tile_words": "tile_words_at",
    "tile_lanes": "tile_lanes_at",
    "deltas": "deltas_at",
    "codes": "codes_at",
    "raw": "raw_at",
}


def pack(blob: bytes | memoryview, info: dict[str, Any]) -> bytes:
    """The packed form of the version 2 blob ``blob`` (``info``: its parse by the compiled core)."""
    if int(info["version"]) != 2:
        raise FormatError(f"only version 2 blobs are packed, not version {info['version']}")
    out = bytearray(spec.PACKED_MAGIC)
    out += blob[4:16]  # version, dtype, ndim, split, code length, tables, lane map, reserved
    out += blob[48:56]  # the original data's CRC-32C and the blob's own
    counts = ("steps", "n_tiles", "code_words", "raw_words", "delta_words", "tables_len")
    for key in counts:
        out += varint(int(info[key]))
    for d in info["shape"]:
        out += varint(int(d))
    for section, length in _sections(info):
        at = int(info[_AT[section]])
        out += blob[at : at + length]
    return bytes(out)


def _header(data: bytes | bytearray | memoryview, name: str) -> tuple[list[int], tuple[int, ...], int]:
    """A packed blob's six counts (steps, n_tiles, W, R, D, tables' length), its shape, and where its
    sections start; every field in range."""
    if len(data) < spec.PACKED_FIXED or bytes(data[:4]) != spec.PACKED_MAGIC:
        raise FormatError(f"{name}: not a packed floatzip blob")
    if int.from_bytes(data[4:6], "little") != 2:
        raise FormatError(f"{name}: a packed blob of version {int.from_bytes(data[4:6], 'little')}; only 2 exists")
    ndim = data[7]
    if ndim > spec.MAX_NDIM:
        raise FormatError(f"{name}: bad packed floatzip blob (ndim {ndim})")
    pos = spec.PACKED_FIXED
    values: list[int] = []
    for _ in range(6 + ndim):
        v, pos = read_varint(data, pos, name)
        values.append(v)
    shape = tuple(values[6:])
    if any(d > 1 << 62 for d in shape) or math.prod(shape) > 1 << 62:
        raise FormatError(f"{name}: bad packed floatzip blob (a shape of too many elements)")
    return values[:6], shape, pos


def unpack(data: bytes | bytearray | memoryview, name: str = "blob") -> bytes:
    """The version 2 blob a packed blob stands for, byte for byte; not yet checked beyond its own fields (the
    caller parses the result, which checks the blob's CRC-32C over all of it)."""
    counts, shape, pos = _header(data, name)
    steps, n_tiles, code_words, raw_words, delta_words, tables_len = counts
    info: dict[str, Any] = {
        "n_tiles": n_tiles,
        "n_tables": data[11],
        "tables_len": tables_len,
        "delta_words": delta_words,
        "code_words": code_words,
        "raw_words": raw_words,
    }
    sections = _sections(info)
    if pos + sum(length for _, length in sections) != len(data):
        raise FormatError(f"{name}: bad packed floatzip blob (its sections do not fill it exactly)")
    head = bytearray(_V2_FIXED + 8 * len(shape))
    head[0:4] = spec.BLOB_MAGIC
    head[4:16] = data[4:16]
    head[16:20] = steps.to_bytes(4, "little")
    head[20:24] = (n_tiles & 0xFFFFFFFF).to_bytes(4, "little")  # the parser refuses a wrong count
    head[24:32] = math.prod(shape).to_bytes(8, "little")
    head[32:40] = code_words.to_bytes(8, "little")
    head[48:56] = data[16:24]
    for i, d in enumerate(shape):
        head[_V2_FIXED + 8 * i : _V2_FIXED + 8 * i + 8] = d.to_bytes(8, "little")
    out = bytearray(head)
    for section, length in sections:
        out += bytes(spec.align(len(out)) - len(out))
        out += data[pos : pos + length]
        pos += length
        if section == "codes":
            out += bytes(4 * _CODE_PAD)
        elif section == "raw":
            out += bytes(4 * _RAW_PAD)
    out += bytes(spec.align(len(out)) - len(out))
    return bytes(out)


def head_fields(data: bytes | bytearray | memoryview, name: str) -> tuple[int, tuple[int, ...], int]:
    """A packed blob's dtype code, shape and original data CRC-32C, read from its header alone (checked
    for range, not for consistency: :func:`unpack` and the parser do that)."""
    _, shape, _ = _header(data, name)
    return data[6], shape, int.from_bytes(data[16:20], "little")


# the longest packed header: the fixed part and 6 + MAX_NDIM varints of at most 6 bytes (values < 2^40)
MAX_HEAD_BYTES = spec.PACKED_FIXED + 6 * (6 + spec.MAX_NDIM)

__all__ = ["MAX_HEAD_BYTES", "head_fields", "pack", "unpack"]
