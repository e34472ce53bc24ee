"""Packed blobs (docs/FORMAT.md §2.3): a small version 2 blob without its padding, rebuilt byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from floatzip.codec.encode import compress_tensor
from floatzip.decode import decompress_tensor
from floatzip.errors import FormatError, IntegrityError
from floatzip.format import packed, spec
from floatzip.format.blob import HEAD_BYTES, CompressedTensor, blob_head

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2]


def _tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 0.05).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "steps"), [((96, 80), None), ((128,), None), ((40_000,), 8), ((3, 5, 7), 8)])
def test_packing_rebuilds_the_blob_byte_for_byte(dtype: torch.dtype, shape: tuple[int, ...], steps: int | None) -> None:
    t = _tensor(shape, dtype)
    ct = compress_tensor(t, steps=steps, planes=0)  # a version 2 blob: the encoder may give randn's F32 a plane
    small = ct.packed_bytes()
    assert small[:4] == spec.PACKED_MAGIC and len(small) < ct.nbytes
    assert packed.unpack(small) == ct.to_bytes()
    back = CompressedTensor.from_bytes(small, "packed")
    assert back.to_bytes() == ct.to_bytes() and back.shape == shape
    assert torch.equal(decompress_tensor(back).view(torch.uint8), t.view(torch.uint8))


def test_a_version_3_blob_is_never_packed() -> None:
    # randn's F32 low byte is not quite uniform: on 40,000 elements the encoder codes it (version 3, §1.7)
    ct = compress_tensor(_tensor((40_000,), torch.float32), steps=8)
    assert ct.version == 3
    assert ct.stored_bytes() == ct.to_bytes()
    with pytest.raises(FormatError, match="only version 2 blobs are packed"):
        ct.packed_bytes()


def test_a_blob_of_several_tables_packs_too() -> None:
    # columns of very different scales along the tensor: the encoder gives its tiles different tables
    g = torch.Generator().manual_seed(3)
    scales = torch.tensor([1e-4, 1.0, 1e3, 1e-2]).repeat_interleave(16_384)
    t = (torch.randn(scales.numel(), generator=g) * scales).to(torch.bfloat16)
    ct = compress_tensor(t, steps=8)
    assert int(ct.v2["n_tables"]) > 1
    assert packed.unpack(ct.packed_bytes()) == ct.to_bytes()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5000), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_any_small_tensor_packs_and_unpacks(n: int, dtype: torch.dtype, seed: int) -> None:
    ct = compress_tensor(_tensor((n,), dtype, seed), steps=8)
    small = ct.packed_bytes()
    assert packed.unpack(small) == ct.to_bytes()
    layout, shape, crc = blob_head(small[:HEAD_BYTES], "packed")
    assert (layout, shape, crc) == (ct.layout, (n,), ct.data_crc32)
    assert blob_head(ct.to_bytes()[:HEAD_BYTES], "blob") == (layout, shape, crc)


def _packed() -> bytes:
    return compress_tensor(_tensor((1000,), torch.bfloat16)).packed_bytes()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda b: b[:-1], FormatError, "do not fill it exactly"),
        (lambda b: b + b"\0", FormatError, "do not fill it exactly"),
        (lambda b: b[:20], FormatError, "not a packed floatzip blob"),
        (lambda b: b[:4] + b"\x03\x00" + b[6:], FormatError, "only 2 exists"),
        (lambda b: b[:7] + b"\x09" + b[8:], FormatError, "ndim"),
        (lambda b: b[:24] + b"\xff" * 8 + b[32:], FormatError, "overlong number|out of range"),
        (lambda b: b[:-3] + bytes([b[-3] ^ 1]) + b[-2:], IntegrityError, "checksum mismatch"),
        (lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], (FormatError, IntegrityError), ""),
    ],
    ids=["truncated", "trailing byte", "short", "version 3", "ndim 9", "runaway varint", "flipped code", "code length"],
)
def test_a_bad_packed_blob_is_one_clear_error(change, error, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        CompressedTensor.from_bytes(change(_packed()), "tensor 'x'")


def test_every_truncation_and_byte_flip_of_a_packed_blob_is_refused() -> None:
    good = _packed()
    rng = np.random.default_rng(0)
    for cut in range(len(good)):
        with pytest.raises((FormatError, IntegrityError)):
            CompressedTensor.from_bytes(good[:cut], "cut")
    for at in rng.choice(len(good), 200, replace=False):
        bad = bytearray(good)
        bad[at] ^= 1 << int(rng.integers(8))
        with pytest.raises((FormatError, IntegrityError)):
            CompressedTensor.from_bytes(bytes(bad), "flipped")
