"""Several code tables per tensor, one named per tile (docs/FORMAT.md §1.2): the encoder uses them where
tiles differ in distribution, and every decoder (compiled core, pure-Python reference, the GPU kernel's code
emulated on the CPU) restores the tensor bit for bit; a tile naming a table that does not exist is refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

import floatzip
from floatzip import _core
from floatzip.decode import cuda
from floatzip.errors import FormatError

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2]


def banded(dtype: torch.dtype, n: int = 24_000, seed: int = 0) -> torch.Tensor:
    """Blocks of values at scales far apart (as rows of an embedding or columns of a projection): tiles of
    one scale share a distribution that the others' does not."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1e-3, 1.0, 0.03, 20.0])
    band = (torch.arange(n) // 3000) % 4
    return (torch.randn(n, generator=g) * scales[band]).to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_banded_tensors_get_several_tables_and_every_decoder_restores_them(dtype: torch.dtype) -> None:
    t = banded(dtype)
    ct = floatzip.compress_tensor(t, steps=8)
    info = ct.v2
    assert int(info["n_tables"]) > 1
    ids = np.frombuffer(ct.to_bytes(), np.uint8, int(info["n_tiles"]), int(info["tile_table_at"]))
    assert len(set(ids.tolist())) == int(info["n_tables"])  # every table is used
    for backend in ("cpu", "reference"):
        assert torch.equal(bits(floatzip.decompress_tensor(ct, backend=backend)), bits(t))
    hb = cuda.host_batch([ct], out_align=16)
    out = np.zeros(hb.nbytes, dtype=np.uint8)
    assert not cuda.emulate(hb, out).any()
    assert np.array_equal(out[: t.numel() * t.element_size()], bits(t).numpy())


def test_one_distribution_keeps_one_table() -> None:
    t = (torch.randn(60_000, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
    assert int(floatzip.compress_tensor(t, steps=8).v2["n_tables"]) == 1


def test_the_tables_make_the_blob_smaller_than_the_bound_of_one() -> None:
    """The order-0 entropy of the whole tensor's symbols is what one table can at best reach; per-tile
    tables go below it on banded data."""
    t = banded(torch.float8_e4m3fn, n=96_000)
    ct = floatzip.compress_tensor(t, steps=8)
    sym = t.view(torch.uint8).numpy() & 0x7F
    p = np.bincount(sym, minlength=128) / sym.size
    p = p[p > 0]
    bound_bytes = (-(p * np.log2(p)).sum() + 1) * sym.size / 8
    assert ct.nbytes < bound_bytes


def test_a_tile_naming_a_missing_table_is_refused() -> None:
    ct = floatzip.compress_tensor(banded(torch.bfloat16), steps=8)
    b = bytearray(ct.to_bytes())
    at = int(ct.v2["tile_table_at"])
    b[at + 1] = int(ct.v2["n_tables"])
    b[52:56] = b"\0\0\0\0"
    b[52:56] = struct.pack("<I", _core.crc32c(bytes(b)))
    with pytest.raises(FormatError, match="a tile names a table that does not exist"):
        floatzip.CompressedTensor.from_bytes(bytes(b), "w.bin")


def test_the_encoding_does_not_depend_on_the_thread_count() -> None:
    t = banded(torch.float16, n=50_000)
    blobs = {floatzip.compress_tensor(t, steps=8, threads=n).to_bytes() for n in (1, 2, 3)}
    assert len(blobs) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_max_tables_caps_the_table_count_and_every_cap_is_deterministic(dtype: torch.dtype) -> None:
    t = banded(dtype, n=48_000)
    one = floatzip.compress_tensor(t, steps=8, max_tables=1)
    assert int(one.v2["n_tables"]) == 1
    for cap in (2, 3, 0):
        blobs = {floatzip.compress_tensor(t, steps=8, max_tables=cap, threads=n).to_bytes() for n in (1, 2, 3)}
        assert len(blobs) == 1
        ct = floatzip.CompressedTensor.from_bytes(blobs.pop())
        assert 1 < int(ct.v2["n_tables"]) <= (cap or 16)
        assert torch.equal(bits(floatzip.decompress_tensor(ct)), bits(t))
    with pytest.raises(ValueError):
        _core.compress(np.zeros(8, np.uint16), 0, [8], 8, 16, 1, 17)
