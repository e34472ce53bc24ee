"""The tensor record: :class:`CompressedTensor` and its byte form, the blob (docs/FORMAT.md §1).

:meth:`CompressedTensor.from_bytes` is the one place a blob from outside is trusted: it checks every size,
offset, table and lane length once (format v2 in the compiled core, v1 in :mod:`floatzip.format.blob_v1`),
so that the decoders may index the sections with no further checks than their own bounds.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from floatzip import _core
from floatzip.errors import FormatError, IntegrityError, VersionError
from floatzip.format import packed
from floatzip.format.blob_v1 import V1Sections, parse_v1
from floatzip.format.spec import (
    BLOB_MAGIC,
    BLOB_READ_VERSIONS,
    BLOB_TILED_VERSIONS,
    LAYOUT_BY_CODE,
    MAX_NDIM,
    PACK_MAX_NUMEL,
    PACKED_MAGIC,
    V2_HEADER_FIXED,
    FloatLayout,
)

if TYPE_CHECKING:
    import torch


def core_error(exc: Exception, name: str | None = None) -> FormatError:
    """The floatzip error for an error of the compiled core, naming ``name`` when given."""
    message = f"{name}: {exc}" if name else str(exc)
    if isinstance(exc, _core.IntegrityError):
        return IntegrityError(message)
    return FormatError(message)


@dataclass(eq=False)
class CompressedTensor:
    """One float tensor in floatzip's coded form: a blob of format v2 or v3 (what floatzip writes: v3 for F32
    tensors whose low planes it codes) or v1 (read only)."""

    layout: FloatLayout
    shape: tuple[int, ...]
    version: int
    data_crc32: int  # of the original bytes: CRC-32C in v2 and v3, zlib's CRC-32 in v1
    _blob: bytes | memoryview  # a view of a staging buffer, for offload
    _info: dict[str, Any] | None = None  # v2: the core's parse of the header and sections
    _v1: V1Sections | None = None

    # --- sizes -----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.layout.torch_dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def original_nbytes(self) -> int:
        return self.numel * self.layout.nbytes

    @property
    def nbytes(self) -> int:
        """Size of the blob in bytes."""
        return len(self._blob)

    @property
    def ratio(self) -> float:
        """Compressed size over original size (lower is better); 1.0 for an empty tensor."""
        return self.nbytes / self.original_nbytes if self.numel else 1.0

    # --- the code ---------------------------------------------------------------------------
    @property
    def sym_bits(self) -> int:
        return int(self.v2["sym_bits"]) if self._v1 is None else self._v1.sym_bits

    @property
    def shift(self) -> int:
        """Low mantissa bits stored raw (with the sign) rather than coded."""
        return int(self.v2["shift"]) if self._v1 is None else self._v1.shift

    @property
    def planes(self) -> int:
        """F32's low byte planes coded rather than stored raw (blob version 3; else 0)."""
        return int(self.v2["planes"]) if self._v1 is None else 0

    @property
    def raw_bits(self) -> int:
        """Bits of each element's raw field: the sign and the mantissa bits below the symbol, less the planes."""
        return self.shift + 1 - 8 * self.planes

    @property
    def tiled(self) -> bool:
        """Whether the record has the tiles and lanes of docs/FORMAT.md §1 (versions 2 and 3)."""
        return self._v1 is None

    @cached_property
    def code_lengths(self) -> npt.NDArray[np.uint8]:
        """Code length of every symbol (0 = unused) of the first (in v1 the only) code table."""
        if self._v1 is not None:
            return self._v1.code_lengths
        nsym = 1 << self.sym_bits
        return np.frombuffer(self.v2["lengths"], dtype=np.uint8)[:nsym].copy()

    @property
    def max_code_len(self) -> int:
        return int(self.v2["max_code_len"]) if self._v1 is None else int(self._v1.code_lengths.max(initial=0))

    # --- the layout (v2) --------------------------------------------------------------------
    @property
    def v2(self) -> dict[str, Any]:
        """The parsed v2 or v3 header and section offsets (see ``floatzip._core.parse``)."""
        if self._info is None:
            raise FormatError(f"a format v{self.version} record has no v2 layout")
        return self._info

    @property
    def v1(self) -> V1Sections:
        if self._v1 is None:
            raise FormatError(f"a format v{self.version} record has no v1 sections")
        return self._v1

    @property
    def steps(self) -> int:
        return int(self.v2["steps"]) if self._v1 is None else self._v1.steps

    @property
    def n_tiles(self) -> int:
        return int(self.v2["n_tiles"]) if self._v1 is None else self._v1.n_tiles

    @property
    def tile_elements(self) -> int:
        """Elements of a full tile (v2: 32 lanes x steps x elements per step)."""
        return int(self.v2["tile_elems"])

    def section(self, name: str) -> npt.NDArray[np.uint32]:
        """A v2 stream section as uint32 words: ``codes``, ``raw`` (padding included), ``tile_words``,
        ``tile_lanes`` or ``deltas``."""
        info = self.v2
        counts = {
            "codes": ("codes_at", int(info["code_words"]) + _core.CODE_PAD_WORDS),
            "raw": ("raw_at", int(info["raw_words"]) + _core.RAW_PAD_WORDS),
            "tile_words": ("tile_words_at", int(info["n_tiles"]) + 1),
            "tile_lanes": ("tile_lanes_at", int(info["n_tiles"])),
            "deltas": ("deltas_at", int(info["delta_words"])),
        }
        at, count = counts[name]
        return np.frombuffer(self._blob, dtype="<u4", count=count, offset=int(info[at])).astype(np.uint32, copy=False)

    @property
    def coded_bits_per_weight(self) -> float:
        """Bits per weight of the coded streams alone (codes + raw), without tables or lane sizes."""
        n = max(self.numel, 1)
        if self._v1 is not None:
            return (int(self._v1.tile_words[-1]) * 32 + self.numel * self.raw_bits) / n
        return (int(self.v2["code_words"]) * 32 + self.numel * self.raw_bits) / n

    # --- bytes ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return self._blob if isinstance(self._blob, bytes) else bytes(self._blob)

    def packed_bytes(self) -> bytes:
        """The packed form of this (version 2) blob (docs/FORMAT.md §2.3): what a checkpoint stores for a
        small tensor; :meth:`from_bytes` reads either form."""
        return packed.pack(self._blob, self.v2)

    def stored_bytes(self) -> bytes:
        """What a version 4 checkpoint stores for this blob: the packed form for a version 2 blob of at most
        ``spec.PACK_MAX_NUMEL`` elements, else the blob itself (a version 3 blob is never packed)."""
        if self.version == 2 and self.numel <= PACK_MAX_NUMEL:
            return self.packed_bytes()
        return self.to_bytes()

    @property
    def buffer(self) -> bytes | memoryview:
        """The blob's bytes without a copy (a view when the record lives in a staging buffer)."""
        return self._blob

    @classmethod
    def from_bytes(
        cls,
        blob: bytes | bytearray | memoryview | npt.NDArray[np.uint8],
        name: str = "blob",
        *,
        check_crc: bool = True,
        copy: bool = True,
    ) -> CompressedTensor:
        """Parse and validate a blob of any version floatzip reads, or a packed one (§2.3); ``name`` appears
        in every error message.

        ``check_crc=False`` skips the blob checksum only (for a blob this process just wrote). ``copy=False``
        keeps a view of ``blob`` instead of a copy (a loader's tensor, which then must not change: it is what
        the record decodes from); a version 1 blob and a packed one are always copied (a packed one is
        rebuilt, and its checksum always checked: it covers the rebuilt bytes).
        """
        data: bytes | memoryview
        if copy or isinstance(blob, bytes):
            data = blob if isinstance(blob, bytes) else bytes(blob)
        else:
            arr = blob if isinstance(blob, np.ndarray) else np.frombuffer(blob, dtype=np.uint8)
            if arr.dtype == np.uint8 and arr.ndim == 1 and arr.flags.c_contiguous:
                data = arr.data.toreadonly()
            else:
                data = arr.tobytes()
        if len(data) < 8:
            raise FormatError(f"{name}: truncated floatzip blob ({len(data)} bytes)")
        if data[:4] == PACKED_MAGIC:
            data, check_crc = packed.unpack(data, name), True
        if data[:4] != BLOB_MAGIC:
            raise FormatError(f"{name}: not a floatzip blob (bad magic)")
        version = struct.unpack_from("<H", data, 4)[0]
        if version not in BLOB_READ_VERSIONS:
            raise VersionError(
                f"{name}: floatzip format version {version} is not supported by this floatzip "
                f"(it reads blob versions {', '.join(map(str, BLOB_READ_VERSIONS))}); upgrade floatzip"
            )
        if version == 1:
            owned = bytes(data)
            v1 = parse_v1(owned, name)
            return cls(v1.layout, v1.shape, 1, v1.data_crc32, owned, _v1=v1)
        try:
            info = _core.parse(data, check_crc)
        except (_core.FormatError, _core.IntegrityError) as exc:
            raise core_error(exc, name) from None
        layout = LAYOUT_BY_CODE[int(info["dtype_code"])]
        shape = tuple(int(s) for s in info["shape"])
        return cls(layout, shape, int(info["version"]), int(info["data_crc"]), data, _info=info)

    def check_data(self, data: bytes | memoryview | np.ndarray, name: str = "blob") -> None:
        """Raise IntegrityError unless ``data`` (the decoded bytes) has the stored checksum."""
        buf = data.data if isinstance(data, np.ndarray) else data
        if self.version == 1:
            import zlib

            crc = zlib.crc32(buf) & 0xFFFFFFFF
        else:
            crc = _core.crc32c(buf)
        if crc != self.data_crc32:
            raise IntegrityError(f"{name}: decodes to the wrong bytes (checksum mismatch)")


def blob_head(head: bytes | bytearray | memoryview, name: str) -> tuple[FloatLayout, tuple[int, ...], int]:
    """The dtype, shape and original data CRC a version 2, 3 or packed blob's header records, from its
    first :data:`HEAD_BYTES` bytes (or all of a shorter blob), checked for range only (the full parse checks
    the rest). Raises FormatError naming ``name`` for anything else."""
    if bytes(head[:4]) == PACKED_MAGIC:
        code, shape, crc = packed.head_fields(head, name)
    elif bytes(head[:4]) == BLOB_MAGIC and len(head) >= V2_HEADER_FIXED and head[4:6] in _TILED_HEADS:
        ndim = head[7]
        if ndim > MAX_NDIM or len(head) < V2_HEADER_FIXED + 8 * ndim:
            raise FormatError(f"{name}: bad blob header (dtype or shape)")
        shape = struct.unpack_from(f"<{ndim}Q", head, V2_HEADER_FIXED)
        if any(d > 1 << 62 for d in shape) or math.prod(shape) > 1 << 62:
            raise FormatError(f"{name}: bad blob header (a shape of too many elements)")
        code, crc = head[6], struct.unpack_from("<I", head, 48)[0]
    else:
        raise FormatError(f"{name}: not a version 2 or 3 floatzip blob")
    layout = LAYOUT_BY_CODE.get(code)
    if layout is None:
        raise FormatError(f"{name}: bad blob header (dtype or shape)")
    return layout, tuple(int(d) for d in shape), int(crc)


_TILED_HEADS = tuple(v.to_bytes(2, "little") for v in BLOB_TILED_VERSIONS)
HEAD_BYTES = max(V2_HEADER_FIXED + 8 * MAX_NDIM, packed.MAX_HEAD_BYTES)
