"""The v2 blob: byte layout, validation, and a fuzzer that may only ever see floatzip's own errors."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import floatzip
from floatzip import _core
from floatzip.decode import cuda, decode_words
from floatzip.errors import FloatzipError, FormatError, IntegrityError, VersionError
from floatzip.format.spec import BLOB_MAGIC, BLOB_VERSION

GOLDEN_V1 = Path(__file__).resolve().parents[1] / "golden" / "v1" / "blobs"


@pytest.fixture(scope="module")
def blob() -> bytes:
    t = (torch.randn(3000, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    return floatzip.compress_tensor(t, steps=8).to_bytes()


def with_crc(b: bytearray) -> bytes:
    """Recompute the blob's CRC-32C, so a test reaches the checks behind it."""
    b[52:56] = b"\0\0\0\0"
    b[52:56] = struct.pack("<I", _core.crc32c(bytes(b)))
    return bytes(b)


def test_header_fields_are_where_the_spec_says(blob: bytes) -> None:
    assert blob[:4] == BLOB_MAGIC
    assert struct.unpack_from("<H", blob, 4)[0] == BLOB_VERSION == 2  # format version 3 kept the v2 blob
    assert blob[6] == 0 and blob[7] == 1  # BF16, one dimension
    assert blob[11] == 1 and blob[12] == 0  # one table, lane map 0
    steps, n_tiles, numel = struct.unpack_from("<IIQ", blob, 16)
    assert (steps, numel) == (8, 3000) and n_tiles == -(-3000 // (32 * 8 * 8))
    assert struct.unpack_from("<Q", blob, 56)[0] == 3000  # the shape
    assert len(blob) % 16 == 0
    assert _core.crc32c(blob[:52] + b"\0\0\0\0" + blob[56:]) == struct.unpack_from("<I", blob, 52)[0]


def test_data_checksum_is_crc32c_of_the_original_bytes() -> None:
    t = (torch.randn(5000, generator=torch.Generator().manual_seed(1)) * 0.1).to(torch.float16)
    ct = floatzip.compress_tensor(t)
    from floatzip.decode.reference import crc32c

    assert ct.data_crc32 == crc32c(t.view(torch.int16).numpy().tobytes())


def test_unknown_version_is_refused_by_name(blob: bytes) -> None:
    b = bytearray(blob)
    b[4:6] = struct.pack("<H", 99)
    with pytest.raises(VersionError, match=r"w\.bin: floatzip format version 99 is not supported"):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")


def test_bad_magic_truncation_and_corruption(blob: bytes) -> None:
    with pytest.raises(FormatError, match="bad magic"):
        floatzip.CompressedTensor.from_bytes(b"XXXX" + blob[4:])
    with pytest.raises(FormatError, match="truncated"):
        floatzip.CompressedTensor.from_bytes(blob[:20])
    with pytest.raises(IntegrityError, match="checksum"):
        floatzip.CompressedTensor.from_bytes(blob[:-16])
    b = bytearray(blob)
    b[200] ^= 0x10
    with pytest.raises(IntegrityError, match="checksum"):
        floatzip.CompressedTensor.from_bytes(bytes(b))
    with pytest.raises(FormatError, match="header implies"):
        floatzip.CompressedTensor.from_bytes(with_crc(bytearray(blob + bytes(16))))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (6, 9, "unknown dtype"),
        (7, 9, "bad ndim"),
        (8, 3, "bad symbol split"),
        (10, 15, "maximum code length"),
        (11, 0, "bad table count"),
        (12, 1, "unknown lane map"),
        (13, 1, "reserved"),
        (16, 7, "bad steps"),
    ],
)
def test_each_header_field_is_checked(blob: bytes, offset: int, value: int, message: str) -> None:
    b = bytearray(blob)
    b[offset] = value
    with pytest.raises(FormatError, match=message):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")


def test_an_empty_shape_with_a_huge_dimension_is_refused() -> None:
    # (0, 2^63): numel 0 matches, but no tensor of that shape can be made, even empty
    b = bytearray(floatzip.compress_tensor(torch.empty((0, 5), dtype=torch.bfloat16)).to_bytes())
    assert struct.unpack_from("<QQ", b, 56) == (0, 5)
    struct.pack_into("<Q", b, 64, 1 << 63)
    with pytest.raises(FormatError, match="a dimension of the shape is too large"):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")


def decode_everywhere(data: bytes) -> bool:
    """Whether a (mutated) blob parses and decodes, by the CPU core, the reference and the GPU kernel's code
    (emulated), which must agree on it: the fast decoders report a tile whose lanes do not end where they should;
    the reference also stops at an unassigned code, which the fast ones see only as a lane ending elsewhere."""
    try:
        ct = floatzip.CompressedTensor.from_bytes(data)
    except FloatzipError:
        return False
    words = {1: np.uint8, 2: np.uint16, 4: np.uint32}[ct.layout.bits // 8]
    results = []
    for backend in ("cpu", "reference"):
        out = np.zeros(ct.numel, dtype=words)
        try:
            decode_words(ct, out, backend, verify=False)
            results.append(out.tobytes())
        except FloatzipError:
            results.append(None)
    hb = cuda.host_batch([ct])
    gpu = np.zeros(max(hb.nbytes, 16), dtype=np.uint8)
    errors = cuda.emulate(hb, gpu)
    results.append(None if errors.any() else gpu[: ct.layout.bits // 8 * ct.numel].tobytes())
    assert results[0] == results[2]
    if results[1] is not None:
        assert results[0] == results[1]
    return results[0] is not None


def test_fuzz_random_flips_and_truncations_raise_only_floatzip_errors(blob: bytes) -> None:
    """Flips with the CRC fixed up reach the structural checks and the decoders' own bounds checks; the CPU
    decoder, the reference and the GPU kernel's code (emulated) must agree on what decodes."""
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "error": 0}
    for i in range(400):
        b = bytearray(blob)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        if i % 5 == 0:
            b = b[: int(rng.integers(0, len(b)))]
        data = with_crc(b) if i % 2 == 0 and len(b) >= 56 else bytes(b)
        outcomes["ok" if decode_everywhere(data) else "error"] += 1
    assert outcomes["error"] > 200  # most corruptions are caught...
    # ...and those that are not (a flipped raw bit, say) still decode without crashing


def test_corrupt_code_stream_is_an_integrity_error(blob: bytes) -> None:
    ct = floatzip.CompressedTensor.from_bytes(blob)
    b = bytearray(blob)
    at = int(ct.v2["codes_at"])
    b[at : at + 4 * int(ct.v2["code_words"])] = b"\xff" * (4 * int(ct.v2["code_words"]))
    bad = floatzip.CompressedTensor.from_bytes(with_crc(b))
    with pytest.raises(IntegrityError, match="does not decode"):
        floatzip.decompress_tensor(bad)
    with pytest.raises(IntegrityError):
        floatzip.decompress_tensor(bad, backend="reference")
    hb = cuda.host_batch([bad])
    assert cuda.emulate(hb, np.zeros(hb.nbytes, dtype=np.uint8)).all()


def test_a_flipped_raw_bit_is_caught_by_the_data_checksum(blob: bytes) -> None:
    ct = floatzip.CompressedTensor.from_bytes(blob)
    b = bytearray(blob)
    b[int(ct.v2["raw_at"]) + 5] ^= 0x04
    bad = floatzip.CompressedTensor.from_bytes(with_crc(b))
    with pytest.raises(IntegrityError, match="checksum"):
        floatzip.decompress_tensor(bad)
    floatzip.decompress_tensor(bad, verify=False)  # decodes; only the checksum can tell


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float8_e4m3fn])
@pytest.mark.parametrize("where", [0.0, 0.5, 0.99])
def test_the_data_checksum_covers_every_tile(dtype: torch.dtype, where: float) -> None:
    # an odd number of tiles, the last one partial: the decoder checksums pairs of tiles as it goes and joins
    # the CRCs (a lone last tile, parts of equal length before it)
    t = (torch.randn(9000, generator=torch.Generator().manual_seed(2)) * 0.02).to(dtype)
    ct = floatzip.compress_tensor(t, steps=8)
    n_tiles = int(ct.v2["n_tiles"])
    assert n_tiles >= 3 and n_tiles % 2 == 1 and ct.raw_bits > 0
    floatzip.decompress_tensor(ct)  # the good blob verifies
    b = bytearray(ct.to_bytes())
    raw_at, raw_len = int(ct.v2["raw_at"]), ct.numel * ct.raw_bits // 8
    b[raw_at + int(where * raw_len)] ^= 0x10
    bad = floatzip.CompressedTensor.from_bytes(with_crc(b))
    with pytest.raises(IntegrityError, match="checksum"):
        floatzip.decompress_tensor(bad)


def test_the_checksum_of_a_large_blob_is_taken_in_slices_and_joined() -> None:
    # over 2 MiB: the parser checks the blob's CRC-32C one 1 MiB-or-more slice per thread (when it has two)
    t = (torch.randn(1_700_000, generator=torch.Generator().manual_seed(3)) * 0.02).to(torch.bfloat16)
    blob = floatzip.compress_tensor(t).to_bytes()
    assert len(blob) > 2 << 20
    floatzip.CompressedTensor.from_bytes(blob)
    for at in (100, len(blob) // 2, len(blob) - 40):
        b = bytearray(blob)
        b[at] ^= 0x01
        with pytest.raises(IntegrityError, match="checksum mismatch"):
            floatzip.CompressedTensor.from_bytes(bytes(b))


EXPECTED_V1 = json.loads((GOLDEN_V1 / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED_V1))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_golden_v1_blobs_decode_to_their_recorded_sha256(name: str, backend: str) -> None:
    """Blobs written by format v1's own encoder (floatzip 0.1), committed once: they must always decode."""
    blob = load_file(str(GOLDEN_V1 / "blobs.safetensors"))[name].tobytes()
    ct = floatzip.CompressedTensor.from_bytes(blob, name)
    exp = EXPECTED_V1[name]
    assert ct.version == 1 and list(ct.shape) == exp["shape"] and str(ct.dtype) == f"torch.{exp['dtype']}"
    out = floatzip.decompress_tensor(ct, backend=backend)
    assert hashlib.sha256(out.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest() == exp["sha256"]


def test_from_bytes_without_a_copy_reads_the_callers_memory(blob: bytes) -> None:
    arr = np.frombuffer(bytearray(blob), dtype=np.uint8)
    ct = floatzip.CompressedTensor.from_bytes(arr, copy=False)
    assert np.shares_memory(np.frombuffer(ct.buffer, dtype=np.uint8), arr)
    copied = floatzip.CompressedTensor.from_bytes(arr)
    assert not np.shares_memory(np.frombuffer(copied.buffer, dtype=np.uint8), arr)
    assert torch.equal(floatzip.decompress_tensor(ct), floatzip.decompress_tensor(copied))
    strided = np.frombuffer(bytearray(blob + blob), dtype=np.uint8)[::2]  # not contiguous: copied
    with pytest.raises(floatzip.FloatzipError):
        floatzip.CompressedTensor.from_bytes(strided, copy=False)
