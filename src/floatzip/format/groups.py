"""Small tensors coded together (docs/FORMAT.md §2.4): a *group record* holds the elements of several small
float tensors of one dtype as one blob, stored in place of the group's first tensor; each other member is
stored as a 12-byte *member mark* naming the record (by its checksum) and its place in it.

A mark names its record by content, not by tensor name, so that a loader which renames tensors (transformers'
key mappings) still finds each member's values. Everything here is read from untrusted files and checked.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from floatzip import _core
from floatzip.errors import FormatError, IntegrityError
from floatzip.format import spec
from floatzip.format.blob import CompressedTensor
from floatzip.format.packed import read_varint, varint

RECORD_MAGIC = b"FZgr"
MARK_MAGIC = b"FZgm"
MARK_BYTES = 12
MAX_MEMBERS = 1 << 16  # members of one record
MAX_GROUP_NUMEL = 1 << 20  # elements of one record: a loader decodes it whole
MIN_MEMBER_BYTES = 64  # a smaller tensor costs more as a member (its mark and shape) than it saves
# a record is kept only when smaller than its members (at most MAX_GROUP_NUMEL elements of 4 bytes) and their
# shapes: a reader refuses a larger one before reading it
MAX_RECORD_BYTES = 16 << 20


def kind(head: bytes | bytearray | memoryview) -> str:
    """What a stored U8 tensor of a floatzip file is, from its first 4 bytes: ``blob``, ``record``,
    ``mark`` or ``unknown``."""
    magic = bytes(head[:4])
    if magic in (spec.BLOB_MAGIC, spec.PACKED_MAGIC):
        return "blob"
    return {RECORD_MAGIC: "record", MARK_MAGIC: "mark"}.get(magic, "unknown")


@dataclass(frozen=True)
class GroupRecord:
    """A parsed group record: its members' shapes (in order) and the blob of all their elements."""

    crc: int  # CRC-32C of the record after its first 8 bytes: what its marks name
    shapes: tuple[tuple[int, ...], ...]
    blob: CompressedTensor

    @property
    def layout(self) -> spec.FloatLayout:
        return self.blob.layout

    @classmethod
    def build(cls, shapes: Sequence[tuple[int, ...]], blob: CompressedTensor) -> bytes:
        """The record of members of ``shapes`` whose elements, in order, ``blob`` codes (1-D)."""
        body = bytearray(varint(len(shapes)))
        for shape in shapes:
            body.append(len(shape))
            for d in shape:
                body += varint(d)
        body += blob.stored_bytes()
        return RECORD_MAGIC + _core.crc32c(bytes(body)).to_bytes(4, "little") + bytes(body)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | npt.NDArray[np.uint8], name: str) -> GroupRecord:
        """Parse and check a record (its checksum, member shapes, and that they add up to its blob)."""
        data = bytes(data) if not isinstance(data, bytes) else data
        if len(data) < 9 or data[:4] != RECORD_MAGIC:
            raise FormatError(f"{name}: not a floatzip group record")
        crc = struct.unpack_from("<I", data, 4)[0]
        if _core.crc32c(data[8:]) != crc:
            raise IntegrityError(f"{name}: checksum mismatch (the group record is corrupt)")
        m, pos = read_varint(data, 8, name)
        if not 1 <= m <= MAX_MEMBERS:
            raise FormatError(f"{name}: bad group record ({m} members)")
        shapes: list[tuple[int, ...]] = []
        total = 0
        for _ in range(m):
            if pos >= len(data) or data[pos] > spec.MAX_NDIM:
                raise FormatError(f"{name}: bad group record (a member's shape)")
            ndim, pos = data[pos], pos + 1
            dims = []
            for _ in range(ndim):
                d, pos = read_varint(data, pos, name)
                dims.append(d)
            total += math.prod(dims)
            if total > MAX_GROUP_NUMEL:
                raise FormatError(f"{name}: bad group record (over {MAX_GROUP_NUMEL} elements)")
            shapes.append(tuple(dims))
        blob = CompressedTensor.from_bytes(data[pos:], f"{name} (group record)")
        if blob.shape != (total,):
            raise FormatError(f"{name}: bad group record (its blob holds {list(blob.shape)}, its members {total})")
        return cls(crc, tuple(shapes), blob)

    def split(self, words: npt.NDArray[np.generic]) -> list[npt.NDArray[np.generic]]:
        """The members' flat elements, as views of the record's decoded ``words``."""
        out, at = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            out.append(words[at : at + n])
            at += n
        return out


def mark(record_crc: int, index: int) -> bytes:
    """What a member other than the first is stored as: its record's checksum and its place in it."""
    return MARK_MAGIC + struct.pack("<II", record_crc, index)


def read_mark(data: bytes | bytearray | memoryview, name: str) -> tuple[int, int]:
    """(record checksum, member index) of a member mark."""
    if len(data) != MARK_BYTES or bytes(data[:4]) != MARK_MAGIC:
        raise FormatError(f"{name}: not a floatzip group member mark")
    crc, index = struct.unpack_from("<II", bytes(data), 4)
    if not 1 <= index < MAX_MEMBERS:
        raise FormatError(f"{name}: bad group member mark (member {index})")
    return int(crc), int(index)


__all__ = [
    "MARK_BYTES",
    "MAX_GROUP_NUMEL",
    "MAX_MEMBERS",
    "MAX_RECORD_BYTES",
    "MIN_MEMBER_BYTES",
    "GroupRecord",
    "kind",
    "mark",
    "read_mark",
]
