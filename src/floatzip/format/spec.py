"""Constants of the floatzip format (docs/FORMAT.md is the authority).

Importing this module does not import torch: a layout's ``torch_dtype`` is looked up when first asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 4  # what this floatzip writes
READ_VERSIONS = (1, 2, 3, 4)  # what it reads
BLOB_VERSION = 2  # the tensor record a version 2, 3 or 4 checkpoint holds (3 and 4 changed the container only)
BLOB_VERSION_PLANES = 3  # blob version 2 plus F32's coded low byte planes (docs/FORMAT.md §1.7)
BLOB_TILED_VERSIONS = (2, 3)  # the blobs of tiles and lanes (§1), which a version 2, 3 or 4 checkpoint may hold
BLOB_READ_VERSIONS = (1, 2, 3)  # the tensor records it reads
BLOB_MAGIC = b"FZtn"
PACKED_MAGIC = b"FZpk"  # a version 2 blob without its padding and fixed-width fields (docs/FORMAT.md §2.3)
PACKED_FIXED = 24  # bytes of a packed blob's header before its varints
# A checkpoint writes a blob packed when its tensor has at most this many elements (docs/FORMAT.md §2.3)
PACK_MAX_NUMEL = 1 << 16
MAX_CODE_LEN = 16
MAX_SYMBOL_BITS = 12  # exponent + joined mantissa bits
ALIGN = 16
MAX_NDIM = 8
V1_HEADER_FIXED = 48  # bytes of a blob's header before its shape
V2_HEADER_FIXED = 56

# format v2: a tile is one warp of 32 lanes; a lane decodes GROUP_BYTES of output per step
LANES = 32
GROUP_BYTES = 16
MAX_STEPS = 8192
LANE_SYMBOLS = 1024  # the default symbols per lane (steps = LANE_SYMBOLS / elements per step)

# A checkpoint stores a float tensor as a blob only from this many elements on.
MIN_ENCODED_NUMEL = 4096

NOTE_NAME = "README.floatzip.md"  # how to load and restore, for people; not in the manifest
MANIFEST_NAME = "floatzip.json"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest (or a config.json it restores) larger than this is refused
META_VERSION = "floatzip.format_version"
# versions 1 and 2 (docs/FORMAT.md §2.1)
META_ENCODED = "floatzip.encoded"  # JSON list of the names stored as blobs
META_ORIGINAL_HEADER = "floatzip.original_header"  # base64 of the zlib-compressed original header (also v3)
META_CRC32C = "floatzip.crc32c"  # JSON {name: CRC-32C of the tensor's original bytes}, every tensor
# version 3 (docs/FORMAT.md §2.2): what the file's own header does not already say
META_BLOBS = "floatzip.blobs"  # base64 of a bitmap over the tensors in data order: 1 = stored as a blob
META_CRCS = "floatzip.crcs"  # base64 of a CRC-32C per tensor in data order, then one of the names
META_HEADER = "floatzip.header"  # JSON: how the original header follows from this file's (else ORIGINAL_HEADER)
QUANT_METHOD = "floatzip"


@dataclass(frozen=True)
class FloatLayout:
    """How one float dtype splits into sign, exponent and mantissa bits."""

    code: int
    name: str  # the safetensors dtype name
    torch_name: str
    bits: int
    exp_bits: int
    man_bits: int

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.torch_name)
        return dtype

    @property
    def max_k(self) -> int:
        """The most mantissa bits that may join the exponent in the coded symbol."""
        return min(self.man_bits, MAX_SYMBOL_BITS - self.exp_bits)

    @property
    def nbytes(self) -> int:
        return self.bits // 8

    @property
    def group(self) -> int:
        """Elements a v2 lane decodes per step (16 bytes of output)."""
        return GROUP_BYTES // self.nbytes

    @property
    def default_steps(self) -> int:
        """Steps per tile giving LANE_SYMBOLS symbols per lane."""
        return LANE_SYMBOLS // self.group


LAYOUTS: tuple[FloatLayout, ...] = (
    FloatLayout(0, "BF16", "bfloat16", 16, 8, 7),
    FloatLayout(1, "F16", "float16", 16, 5, 10),
    FloatLayout(2, "F32", "float32", 32, 8, 23),
    FloatLayout(3, "F8_E4M3", "float8_e4m3fn", 8, 4, 3),
    FloatLayout(4, "F8_E5M2", "float8_e5m2", 8, 5, 2),
)
LAYOUT_BY_CODE = {layout.code: layout for layout in LAYOUTS}
LAYOUT_BY_NAME = {layout.name: layout for layout in LAYOUTS}
LAYOUT_BY_TORCH_NAME = {layout.torch_name: layout for layout in LAYOUTS}

# safetensors dtype name -> bytes per element, for every dtype a header may name.
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


def layout_for(dtype: torch.dtype) -> FloatLayout | None:
    """The layout of a torch dtype floatzip can code, or None."""
    return LAYOUT_BY_TORCH_NAME.get(str(dtype).removeprefix("torch."))


def align(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to
