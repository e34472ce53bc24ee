"""The CUDA decoder without a GPU: its batches decoded on the CPU by the kernel's own code (bit for bit
against the reference), its batch checks, and its offline compile for sm_80 and sm_90a (no spills).
On a machine with a GPU the ``gpu`` tests run the real kernel on the same data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import floatzip
from floatzip import _core
from floatzip.decode import _nvrtc, cuda
from floatzip.errors import IntegrityError

HAS_GPU = torch.cuda.is_available()


def skewed_bf16(n: int, g: torch.Generator) -> torch.Tensor:
    """BF16 whose top four mantissa bits are skewed (as in trained weights): the encoder picks raw width 4."""
    exp = 120 + torch.clamp((torch.randn(n, generator=g) * 2).round(), -8, 6).to(torch.int32)
    top = torch.clamp(torch.empty(n).geometric_(0.5, generator=g), max=15).to(torch.int32)
    low = torch.randint(0, 8, (n,), generator=g, dtype=torch.int32)
    sign = torch.randint(0, 2, (n,), generator=g, dtype=torch.int32)
    return ((sign << 15) | (exp << 7) | (top << 3) | low).to(torch.int16).view(torch.bfloat16)


def long_code_bf16(n: int, g: torch.Generator) -> torch.Tensor:
    """BF16 with a geometric exponent: codes up to the 16-bit cap (the kernel's out-of-line path)."""
    exps = torch.clamp(torch.empty(n).geometric_(0.3, generator=g), max=40).to(torch.int32)
    mant = torch.randint(0, 128, (n,), generator=g, dtype=torch.int32)
    return ((100 + exps) << 7 | mant).to(torch.int16).view(torch.bfloat16)


def mixed_tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        skewed_bf16(100_000, g),  # raw width 4: the kernel's main specialisation
        long_code_bf16(90_000, g),
        (torch.randn(300, 500, generator=g) * 0.02).to(torch.bfloat16),  # several tiles, a partial last one
        (torch.randn(77, 33, generator=g)).to(torch.float16),
        torch.randn(1000, 7, generator=g),
        torch.randn(5000, generator=g).to(torch.float8_e4m3fn),
        torch.randn(3, 3, generator=g).to(torch.float8_e5m2),  # a tail only
        torch.zeros(0, 4, dtype=torch.bfloat16),  # nothing at all
        (torch.randn(70000, generator=g) * 0.05).to(torch.bfloat16),
    ]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def test_emulated_batch_of_every_dtype_is_bit_exact() -> None:
    ts = mixed_tensors()
    cts = [floatzip.compress_tensor(t) for t in ts]
    hb = cuda.host_batch(cts)
    assert {launch.bits for launch in hb.launches} == {8, 16, 32}
    assert (16, 4, True) in {(launch.bits, launch.raw_bits, launch.long_codes) for launch in hb.launches}
    assert cts[1].max_code_len == 16
    assert all(off % cuda.OUT_ALIGN == 0 for off in hb.offsets)
    out = np.full(hb.nbytes, 0xA5, dtype=np.uint8)  # poisoned: every element must be written
    assert not cuda.emulate(hb, out).any()
    views = cuda.tensor_views(hb.offsets, hb.dtypes, hb.shapes, torch.from_numpy(out))
    for t, v in zip(ts, views, strict=True):
        assert v.shape == t.shape and v.dtype == t.dtype and torch.equal(bits(v), bits(t))


@pytest.mark.parametrize("steps", [8, 24, 64])
def test_emulated_batch_matches_the_reference_at_every_tile_shape(steps: int) -> None:
    g = torch.Generator().manual_seed(steps)
    t = (torch.randn(37, 129, generator=g) * 0.03).to(torch.bfloat16)
    ct = floatzip.compress_tensor(t, steps=steps)
    hb = cuda.host_batch([ct], out_align=16)
    out = np.zeros(hb.nbytes, dtype=np.uint8)
    assert not cuda.emulate(hb, out).any()
    ref = floatzip.decompress_tensor(ct, backend="reference")
    assert torch.equal(bits(torch.from_numpy(out[: t.numel() * 2].copy()).view(torch.bfloat16)), bits(ref))


def test_a_corrupt_tile_is_flagged_and_only_that_tile() -> None:
    t = (torch.randn(100_000, generator=torch.Generator().manual_seed(5)) * 0.02).to(torch.bfloat16)
    ct = floatzip.compress_tensor(t)
    hb = cuda.host_batch([ct])
    # tile 0's codes all ones: every symbol reads the longest code, and its lanes overrun their lengths (a
    # single flipped bit may resynchronise, as prefix codes do: the blob's checksums are what catch that)
    hb.arrays["codes"][: int(ct.section("tile_words")[1])] = 0xFFFFFFFF
    errors = cuda.emulate(hb, np.zeros(hb.nbytes, dtype=np.uint8))
    assert errors[0] == 1 and not errors[1:].any()


def test_tampered_descriptors_are_refused_before_any_decode() -> None:
    ct = floatzip.compress_tensor((torch.randn(20000) * 0.02).to(torch.bfloat16))
    for field, value in [("raw_word", 1 << 40), ("code_bit", 1 << 50), ("out_byte", 8), ("delta_word", 1 << 40)]:
        hb = cuda.host_batch([ct])
        hb.arrays["tiles"][field][0] = value
        with pytest.raises(IntegrityError, match="does not hold together"):
            cuda._validate(hb)
    hb = cuda.host_batch([ct])
    hb.arrays["jobs"]["n_tiles"][0] = 5
    with pytest.raises(IntegrityError, match="tiles are out of range"):
        cuda._validate(hb)


def test_v1_records_are_refused_with_the_fix() -> None:
    from safetensors.numpy import load_file

    from tests.format.test_blob import GOLDEN_V1

    blob = load_file(str(GOLDEN_V1 / "blobs.safetensors"))["bf16_normal"].tobytes()
    with pytest.raises(floatzip.BackendError, match="compress the checkpoint again"):
        cuda.host_batch([floatzip.CompressedTensor.from_bytes(blob)])


@pytest.fixture(scope="module", params=["sm_80", "sm_90a"])
def compiled(request: pytest.FixtureRequest) -> _nvrtc.Compiled:
    try:
        _nvrtc.library()
    except floatzip.BackendError as exc:
        pytest.fail(f"NVRTC is part of the test dependencies: {exc}")
    return _nvrtc.compile_decoder(request.param)


def test_every_kernel_compiles_offline_without_spills(compiled: _nvrtc.Compiled) -> None:
    res = compiled.resources()
    assert set(compiled.names) == set(_nvrtc.decode_kernel_names())
    for expr, mangled in compiled.names.items():
        r = res[mangled]
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, (expr, r)
        # the code's primary table; the F32 kernels with coded low planes (their R) hold 16-bit plane tables too
        planes = int(expr.split(",")[1].strip().rstrip("u")) if expr.startswith("fz::decode_kernel<32,") else 0
        assert r["registers"] <= 96 and r["smem"] == (4 << 12) + planes * (2 << 12), (expr, r)
    assert compiled.cubin[:4] == b"\x7fELF"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (the emulated tests above cover the numerics on the CPU)")
def test_gpu_kernel_matches_the_cpu_bit_for_bit() -> None:
    ts = mixed_tensors(1)
    cts = [floatzip.compress_tensor(t) for t in ts]
    batch = cuda.prepare(cts, "cuda")
    buf = torch.full((batch.nbytes,), 0xA5, dtype=torch.uint8, device="cuda")
    cuda.decode_batch(batch, buf)
    torch.cuda.synchronize()
    batch.check()
    for t, v in zip(ts, batch.views(buf), strict=True):
        assert torch.equal(bits(v.cpu()), bits(t))
    for t, ct in zip(ts, cts, strict=True):
        assert torch.equal(bits(floatzip.decompress_tensor(ct, "cuda").cpu()), bits(t))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_decode_replays_in_a_cuda_graph() -> None:
    t = (torch.randn(4096, 512) * 0.02).to(torch.bfloat16)
    batch = cuda.prepare([floatzip.compress_tensor(t)], "cuda")
    buf = torch.zeros(batch.nbytes, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        cuda.decode_batch(batch, buf)  # warm up (module load) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cuda.decode_batch(batch, buf)
    buf.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(bits(batch.views(buf)[0].cpu()), bits(t))


def test_crc32c_of_chains_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # the data CRC of GPU output is computed on the host a chunk at a time: chunks must chain to the whole
    data = torch.randint(0, 256, (10_007,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    whole = _core.crc32c(data.numpy().tobytes())
    monkeypatch.setattr(cuda, "CRC_CHUNK", 1000)
    assert cuda.crc32c_of(data) == whole
    assert cuda.crc32c_of(data[:0]) == 0
