"""
floatzip's compiled core: the v2 encoder, the v1 and v2 CPU decoders, the blob parser, CRC-32C.
"""

from collections.abc import Sequence

class FormatError(ValueError):
    pass

class IntegrityError(ValueError):
    pass

LANES: int = 32

PRIMARY_BITS: int = 12

MAX_CODE_LEN: int = 16

MAX_STEPS: int = 8192

CODE_PAD_WORDS: int = 4

RAW_PAD_WORDS: int = 2

def compress(
    words: object,
    dtype_code: int,
    shape: Sequence[int],
    steps: int,
    max_code_len: int = 16,
    threads: int = 0,
    max_tables: int = 0,
    planes: int = -1,
) -> bytes:
    """
    Encode a tensor's words as a v2 blob (v3 with coded low planes).

    max_tables: at most this many code
    tables (0: the encoder's choice of up to 16; 1: one code for the tensor). planes (F32): the low byte
    planes to code, -1: the encoder's choice by coded size.
    """

def parse(blob: object, check_crc: bool = True) -> dict:
    """Parse and validate a v2 or v3 blob."""

def decode(
    blob: object, out: object, threads: int = 0, check_blob_crc: bool = False, check_data_crc: bool = True
) -> None:
    """Decode a v2 blob into `out` (numel words)."""

def decode_tiles(blob: object, first: int, count: int, out: object, threads: int = 0) -> None:
    """Decode tiles [first, first + count) of a v2 blob."""

def decode_v1(
    codes: object,
    raw: object,
    tile_words: object,
    lane_bits: object,
    lengths: object,
    numel: int,
    lanes: int,
    steps: int,
    shift: int,
    sym_bits: int,
    bits: int,
    out: object,
    threads: int = 0,
) -> None:
    """Decode v1 streams."""

def crc32c(data: object, crc: int = 0, path: str = "auto") -> int:
    """
    CRC-32C of a buffer (chaining like zlib.crc32); path: auto or one of crc32c_paths().
    """

def crc32c_paths() -> list[str]:
    """The CRC-32C implementations this CPU can run."""

def code_lengths(counts: Sequence[int], max_len: int = 16) -> bytes:
    """Optimal code lengths of at most max_len bits."""

def tables(lengths: object, shift: int, bits: int) -> tuple:
    """
    Decode tables (primary, long patterns, limits, offsets, max length) for one code.
    """

def plane_table(lengths: object) -> bytes:
    """
    The decode table (4096 entries (byte << 8) | length) of one low plane's code.
    """

MAX_PLANES: int = 2

PLANE_MAX_LEN: int = 12

def lane_starts(blob: object, tile: int) -> tuple:
    """Start and end bit of each lane of a tile."""

def default_threads() -> int:
    """Threads the core uses by default."""

def df11_decode(
    stream: object,
    n_bits: int,
    gaps: object,
    window_bits: int,
    tpb: int,
    luts: object,
    lens: object,
    link_min: int,
    positions: object,
    sign_mantissa: object,
    out: object,
    firsts: object,
    ends: object,
    bad: object,
    block_ends: object,
) -> None:
    """
    The decode pass of one DF11 block (every index bounded by the arrays' sizes).
    """

WARPS: int = 4

TILE_DESC_BYTES: int = 48

JOB_DESC_BYTES: int = 16

LONG_CODES_BYTES: int = 216

def longcodes_bytes(lengths: object, shift: int, bits: int) -> bytes:
    """The long-code table of one code, as the kernel's LongCodes struct."""

def validate_batch(
    jobs: object,
    tiles: object,
    codes: object,
    raw: object,
    deltas: object,
    primaries: object,
    longcs: object,
    long_patterns: object,
    long_at: object,
    out_bytes: int,
    bits: int,
    planes: int = 0,
) -> None:
    """
    Check every index a decode batch's kernel reads by (planes: the F32 kernel's coded low planes).
    """

def decode_batch_host(
    jobs: object,
    tiles: object,
    codes: object,
    raw: object,
    deltas: object,
    primaries: object,
    longcs: object,
    long_patterns: object,
    long_at: object,
    out: object,
    errors: object,
    bits: int,
    r: int,
    long_codes: bool,
    threads: int = 0,
) -> None:
    """
    Decode a batch's arrays on the CPU exactly as the decode kernel does on the GPU (r: the raw width of a
    16-bit kernel, the coded low planes of the F32 one).
    """

GEMV_MAX_BATCH: int = 8

def validate_gemv(
    jobs: object,
    tiles: object,
    codes: object,
    raw: object,
    deltas: object,
    primaries: object,
    longcs: object,
    long_patterns: object,
    long_at: object,
    seg_base: object,
    row_seg: object,
    in_features: int,
    rows: int,
    batch: int,
    path: int,
    x_len: int,
    partials_len: int,
    y_len: int,
) -> None:
    """Check every index the fused GEMV kernel reads by."""

def gemv_host(
    jobs: object,
    tiles: object,
    codes: object,
    raw: object,
    deltas: object,
    primaries: object,
    longcs: object,
    long_patterns: object,
    long_at: object,
    x: object,
    seg_base: object,
    row_seg: object,
    partials: object,
    y: object,
    errors: object,
    in_features: int,
    rows: int,
    batch: int,
    path: int,
    r: int,
    long_codes: bool,
    f16: bool,
    threads: int = 0,
) -> None:
    """
    The fused GEMV (Y = X W^T) of a one-tensor batch on the CPU, exactly as the kernel computes it.
    """
