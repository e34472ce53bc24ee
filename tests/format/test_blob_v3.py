"""Blob version 3 (F32 with coded low planes, docs/FORMAT.md §1.7): its header fields where the spec puts them,
every new field checked, corrupt plane tables and codes refused, a fuzzer that only ever sees floatzip's errors,
the committed golden v3 blobs, and a checkpoint that holds one."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import floatzip
from floatzip.decode import cuda
from floatzip.errors import FormatError, IntegrityError
from floatzip.format.spec import BLOB_VERSION_PLANES
from tests.codec.test_encode import assert_bits_equal, emulated_gpu_decode
from tests.codec.test_low_planes import low_plane_f32
from tests.format.test_blob import decode_everywhere, with_crc

GOLDEN_V3 = Path(__file__).resolve().parents[1] / "golden" / "blobs_v3"


@pytest.fixture(scope="module")
def tensor() -> torch.Tensor:
    return low_plane_f32(3000, torch.Generator().manual_seed(0), "both")


@pytest.fixture(scope="module")
def blob(tensor: torch.Tensor) -> bytes:
    return floatzip.compress_tensor(tensor, steps=8, planes=2).to_bytes()


def test_header_fields_are_where_the_spec_says(blob: bytes) -> None:
    assert struct.unpack_from("<H", blob, 4)[0] == BLOB_VERSION_PLANES == 3
    assert blob[6] == 2 and blob[13] == 2 and 1 <= blob[14] <= 12 and blob[15] == 0  # F32, 2 planes, plane cap
    ct = floatzip.CompressedTensor.from_bytes(blob)
    assert ct.version == 3 and ct.planes == 2 and int(ct.v2["plane_max_len"]) == blob[14]
    assert ct.raw_bits == ct.shift + 1 - 16
    # the tables section: the symbol table, then the two plane tables (a 32-byte bitmap and nibbles each)
    lengths = np.frombuffer(ct.v2["plane_lengths"], dtype=np.uint8).reshape(2, 256)
    nsym = 1 << ct.sym_bits
    main = (nsym + 7) // 8 + (int(np.count_nonzero(ct.code_lengths)) + 1) // 2
    planes = sum(32 + (int(np.count_nonzero(row)) + 1) // 2 for row in lengths)
    assert int(ct.v2["tables_len"]) == main + planes
    assert lengths.max() == blob[14]


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (13, 0, "bad low plane count"),
        (13, 3, "bad low plane count"),
        (14, 0, "longer than its table allows"),  # 0 says every plane is constant: these are not
        (14, 13, "maximum plane code length"),
        (15, 1, "reserved"),
        (6, 0, "only F32"),
    ],
)
def test_each_new_header_field_is_checked(blob: bytes, offset: int, value: int, message: str) -> None:
    b = bytearray(blob)
    b[offset] = value
    with pytest.raises(FormatError, match=message):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")


def test_a_version_2_blob_may_not_announce_planes() -> None:
    b = bytearray(floatzip.compress_tensor(torch.randn(3000), steps=8).to_bytes())
    assert b[4] == 2
    b[13] = 1
    with pytest.raises(FormatError, match="reserved"):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")


def test_plane_tables_are_checked(blob: bytes) -> None:
    ct = floatzip.CompressedTensor.from_bytes(blob)
    nsym = 1 << ct.sym_bits
    first_plane = int(ct.v2["tables_at"]) + (nsym + 7) // 8 + (int(np.count_nonzero(ct.code_lengths)) + 1) // 2
    # the first plane table's first nibble: length 16 (> the plane cap)
    b = bytearray(blob)
    b[first_plane + 32] |= 0x0F
    with pytest.raises(FormatError, match=r"longer than its table allows|maximum plane code length"):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")
    # every byte value used, all of length 1: not a prefix code
    b = bytearray(blob)
    b[first_plane : first_plane + 32] = b"\xff" * 32
    with pytest.raises(FormatError):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")
    # a plane table with no symbol at all
    b = bytearray(blob)
    b[first_plane : first_plane + 32] = bytes(32)
    with pytest.raises(FormatError):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")


def test_a_constant_plane_table_is_checked() -> None:
    zeros = bytearray(floatzip.compress_tensor(torch.zeros(4000), steps=8).to_bytes())
    ct = floatzip.CompressedTensor.from_bytes(bytes(zeros))
    assert ct.planes == 2 and int(ct.v2["plane_max_len"]) == 0
    first_plane = int(ct.v2["tables_at"]) + (1 << ct.sym_bits) // 8 + 1  # the symbol table: one used symbol
    assert zeros[first_plane] == 0x80  # byte 0 alone: a bitmap and no nibbles
    b = bytearray(zeros)
    b[first_plane] = 0xC0  # a second byte value: the table now needs nibbles, and the lanes bits
    with pytest.raises(FormatError):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")
    b = bytearray(zeros)
    b[14] = 1  # a plane code length no table has
    with pytest.raises(FormatError, match="maximum plane code length does not match"):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")


def test_lane_lengths_must_fit_every_code_of_an_element(blob: bytes) -> None:
    """A lane of n elements holds at least 3 n bits with two planes (one per code): a shorter one is refused."""
    ct = floatzip.CompressedTensor.from_bytes(blob)
    b = bytearray(blob)
    at = int(ct.v2["tile_lanes_at"])
    width = struct.unpack_from("<I", b, at)[0] >> 27
    struct.pack_into("<I", b, at, width << 27 | 64)  # the shortest lane 64 bits: 2 per element of its 32 (needs 3)
    with pytest.raises(FormatError, match="length does not fit its symbols"):
        floatzip.CompressedTensor.from_bytes(with_crc(b), "w.bin")


def test_corrupt_plane_codes_are_an_integrity_error(blob: bytes) -> None:
    ct = floatzip.CompressedTensor.from_bytes(blob)
    b = bytearray(blob)
    at, n = int(ct.v2["codes_at"]), 4 * int(ct.v2["code_words"])
    b[at : at + n] = b"\xff" * n
    bad = floatzip.CompressedTensor.from_bytes(with_crc(b))
    with pytest.raises(IntegrityError, match="does not decode"):
        floatzip.decompress_tensor(bad)
    with pytest.raises(IntegrityError):
        floatzip.decompress_tensor(bad, backend="reference")
    hb = cuda.host_batch([bad])
    assert cuda.emulate(hb, np.zeros(hb.nbytes, dtype=np.uint8)).all()


def test_fuzz_random_flips_raise_only_floatzip_errors(blob: bytes) -> None:
    """Flips (the CRC fixed up half the time) in a v3 blob: the CPU core, the reference and the kernel's code
    (emulated) agree on what decodes, and nothing but floatzip's own errors escapes."""
    rng = np.random.default_rng(1)
    outcomes = {"ok": 0, "error": 0}
    for i in range(300):
        b = bytearray(blob)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, 64)) if i % 3 == 0 else int(rng.integers(0, len(b)))  # the header often
            b[at] ^= 1 << int(rng.integers(0, 8))
        if i % 7 == 0:
            b = b[: int(rng.integers(0, len(b)))]
        data = with_crc(b) if i % 2 == 0 and len(b) >= 56 else bytes(b)
        outcomes["ok" if decode_everywhere(data) else "error"] += 1
    assert outcomes["error"] > 150


EXPECTED_V3 = json.loads((GOLDEN_V3 / "expected.json").read_text())


# the reference decoder is slow: it decodes the small golden blobs only
GOLDEN_CASES = [(name, backend) for name in sorted(EXPECTED_V3) for backend in ("cpu", "reference", "emulated")
                if backend != "reference" or math.prod(EXPECTED_V3[name]["shape"]) <= 20_000]  # fmt: skip


@pytest.mark.parametrize(("name", "backend"), GOLDEN_CASES)
def test_golden_v3_blobs_decode_to_their_recorded_sha256(name: str, backend: str) -> None:
    """Version 3 blobs written once (2026-12-02) by this encoder and committed: they must always decode."""
    blob = load_file(str(GOLDEN_V3 / "blobs.safetensors"))[name].tobytes()
    ct = floatzip.CompressedTensor.from_bytes(blob, name)
    exp = EXPECTED_V3[name]
    assert ct.version == 3 and ct.planes == exp["planes"] and list(ct.shape) == exp["shape"]
    out = emulated_gpu_decode(ct) if backend == "emulated" else floatzip.decompress_tensor(ct, backend=backend)
    assert hashlib.sha256(out.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest() == exp["sha256"]


def test_a_checkpoint_holding_v3_blobs_restores_byte_for_byte(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from floatzip.format.checkpoint import compress_checkpoint, decompress_checkpoint, read_compressed_file
    from tests.conftest import digests

    g = torch.Generator().manual_seed(9)
    src = tmp_path / "src"
    src.mkdir()
    tensors = {
        "emb.weight": low_plane_f32(40_000, g, "both").reshape(400, 100),
        "w.weight": torch.randn(64, 90, generator=g),
        "b.weight": (torch.randn(80, 80, generator=g) * 0.02).to(torch.bfloat16),
    }
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    compress_checkpoint(src, tmp_path / "fz")
    stored = read_compressed_file(tmp_path / "fz" / "model.safetensors")
    versions = {k: v.version for k, v in stored.items() if isinstance(v, floatzip.CompressedTensor)}
    assert versions == {"emb.weight": 3, "w.weight": 2, "b.weight": 2}
    decompress_checkpoint(tmp_path / "fz", tmp_path / "back")
    assert digests(tmp_path / "back") == digests(src)
    ct = stored["emb.weight"]
    assert isinstance(ct, floatzip.CompressedTensor)
    assert_bits_equal(floatzip.decompress_tensor(ct), tensors["emb.weight"])
