"""The blob: byte layout, validation, and a fuzzer that may only ever see floatzip's own errors."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest
import torch

import floatzip
from floatzip.errors import FloatzipError, FormatError, IntegrityError, VersionError
from floatzip.format.spec import BLOB_MAGIC, FORMAT_VERSION


@pytest.fixture(scope="module")
def blob() -> bytes:
    t = (torch.randn(3000, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    return floatzip.compress_tensor(t, lanes=32, steps=8).to_bytes()


def with_crc(b: bytearray) -> bytes:
    """Recompute the blob's CRC, so a test reaches the checks behind it."""
    b[44:48] = b"\0\0\0\0"
    b[44:48] = struct.pack("<I", zlib.crc32(bytes(b)) & 0xFFFFFFFF)
    return bytes(b)


def test_header_fields_are_where_the_spec_says(blob: bytes) -> None:
    assert blob[:4] == BLOB_MAGIC
    assert struct.unpack_from("<H", blob, 4)[0] == FORMAT_VERSION
    assert blob[6] == 0  # BF16
    assert blob[7] == 1 and struct.unpack_from("<Q", blob, 48)[0] == 3000
    assert struct.unpack_from("<IIIQ", blob, 12) == (32, 8, 12, 3000)
    assert len(blob) % 16 == 0


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


def test_fuzz_random_flips_and_truncations_raise_only_floatzip_errors(blob: bytes) -> None:
    """Flips with the CRC fixed up reach the structural checks and the decoder's own bounds checks."""
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "error": 0}
    for i in range(600):
        b = bytearray(blob)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        if i % 5 == 0:
            b = b[: int(rng.integers(0, len(b)))]
        data = with_crc(b) if i % 2 == 0 and len(b) >= 48 else bytes(b)
        try:
            ct = floatzip.CompressedTensor.from_bytes(data)
            floatzip.decompress_tensor(ct)
            floatzip.decompress_tensor(ct, backend="reference")
            outcomes["ok"] += 1
        except FloatzipError:
            outcomes["error"] += 1
    assert outcomes["error"] > 300  # most corruptions are caught...
    # ...and those that are not (a flipped raw bit, say) still decode without crashing


def test_corrupt_code_stream_is_an_integrity_error(blob: bytes) -> None:
    good = floatzip.CompressedTensor.from_bytes(blob)
    # every lane now reads the longest codes and overruns its stored size
    ct = dataclasses.replace(good, codes=np.full_like(good.codes, 0xFFFFFFFF), _blob=None)
    with pytest.raises(IntegrityError, match="does not decode"):
        floatzip.decompress_tensor(ct)
    with pytest.raises(IntegrityError):
        floatzip.decompress_tensor(ct, backend="reference")
