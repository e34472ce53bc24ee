"""The Triton decoder, bit for bit against the original tensors and the CPU decoder.

Every check runs twice: in Triton's interpreter on the CPU (``interpreter``; tests/decode/conftest.py sets
TRITON_INTERPRET=1 where there is no GPU) and compiled on CUDA (``gpu``). The interpreter costs a few ms
per program step, so the tensors here are small and the tiles small (``lanes * steps`` of 256 to 2048).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from floatzip import compress_tensor, decompress_tensor
from floatzip.decode import triton as tdec
from floatzip.errors import BackendError, InputError, IntegrityError
from floatzip.format.tensor import CompressedTensor

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2]
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32}

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.interpreter, id="interpreter"),
    pytest.param("cuda", marks=pytest.mark.gpu, id="cuda"),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    if request.param == "cpu":
        if not tdec.INTERPRETED:
            pytest.skip("Triton's interpreter is off: run with TRITON_INTERPRET=1 (set before triton is imported)")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    if tdec.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1: the kernels are interpreted, not compiled; run the gpu tests without it")
    return torch.device("cuda")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's words as integers of the same width, flat, on the CPU (NaN-safe comparisons)."""
    return t.detach().reshape(-1).cpu().view(_INT[t.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def from_bits(words: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    width = torch.empty(0, dtype=dtype).element_size()
    return torch.from_numpy(words.astype({1: np.uint8, 2: np.uint16, 4: np.uint32}[width])).view(dtype)


def specials(dtype: torch.dtype) -> torch.Tensor:
    """NaN (with payloads), ±inf, ±0, subnormals, extremes: every pattern for 8-bit floats."""
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return from_bits(np.arange(256), dtype)
    if dtype == torch.float32:
        words = [0x7FC00000, 0x7FA00001, 0xFFFFFFFF, 0x7F800000, 0xFF800000, 0x80000000, 0, 1, 0x807FFFFF,
                 0x00400000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x3F800000]  # fmt: skip
    elif dtype == torch.bfloat16:
        words = [0x7FC0, 0x7FA1, 0xFFFF, 0x7F80, 0xFF80, 0x8000, 0, 1, 0x807F, 0x0040, 0x7F7F, 0xFF7F, 0x0080, 0x3F80]
    else:
        words = [0x7E00, 0x7D01, 0xFFFF, 0x7C00, 0xFC00, 0x8000, 0, 1, 0x83FF, 0x0200, 0x7BFF, 0xFBFF, 0x0400, 0x3C00]
    return from_bits(np.array(words, dtype=np.int64), dtype)


def weights(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * 0.02).to(dtype)


def check(ct: CompressedTensor, original: torch.Tensor, device: torch.device, canonical: bool = False) -> None:
    """Triton output == original == the CPU decoder's output, bit for bit."""
    out = torch.full(original.shape, 0, dtype=original.dtype, device=device) if original.numel() else None
    if out is not None:
        out.view(-1).view(torch.uint8).fill_(0xA5)  # no stale zeros can pass for decoded ones
        got = tdec.decompress_many([ct], [out], canonical=canonical)[0]
    else:
        got = tdec.decompress(ct, device=device)
    assert got.device.type == device.type
    assert same_bits(got.view(original.shape), original)
    assert same_bits(decompress_tensor(ct, backend="cpu"), original)


@pytest.mark.parametrize("canonical", [False, True], ids=["table", "canonical"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_with_specials(device: torch.device, dtype: torch.dtype, canonical: bool) -> None:
    # 1000 + specials elements: not a multiple of the 256-element tile, so the last tile is partial
    t = torch.cat([weights(1000, dtype), specials(dtype)])
    t = t[torch.randperm(t.numel(), generator=torch.Generator().manual_seed(1))].reshape(-1, 2)
    ct = compress_tensor(t, lanes=32, steps=8)
    assert ct.numel % (ct.lanes * ct.steps) != 0
    check(ct, t, device, canonical)


@pytest.mark.parametrize("canonical", [False, True], ids=["table", "canonical"])
def test_long_codes(device: torch.device, canonical: bool) -> None:
    # Fibonacci counts give a maximally skewed code: every length from 1 to 16 is used
    fib = [1, 1]
    while len(fib) < 17:
        fib.append(fib[-1] + fib[-2])
    vals = torch.cat([torch.full((c,), 2.0 ** (i - 10)) for i, c in enumerate(fib)])
    g = torch.Generator().manual_seed(2)
    signs = torch.where(torch.rand(vals.numel(), generator=g) < 0.5, -1.0, 1.0)
    t = (vals * signs)[torch.randperm(vals.numel(), generator=g)].to(torch.bfloat16)
    ct = compress_tensor(t, lanes=256, steps=8)
    lengths = ct.code_lengths[ct.code_lengths > 0]
    assert lengths.max() == 16 and set(lengths.tolist()) == set(range(1, 17))
    check(ct, t, device, canonical)


@pytest.mark.parametrize("n", [1, 5, 31, 256, 257, 700], ids=lambda n: f"n{n}")
def test_sizes(device: torch.device, n: int) -> None:
    t = weights(n, torch.bfloat16, seed=n)
    check(compress_tensor(t, lanes=32, steps=8), t, device)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float8_e5m2], ids=str)
def test_single_symbol(device: torch.device, dtype: torch.dtype) -> None:
    t = torch.full((300,), 0.5, dtype=dtype)
    t[::3] = -0.5  # one symbol (the sign is raw), varied raw bits
    ct = compress_tensor(t, lanes=32, steps=8)
    assert np.count_nonzero(ct.code_lengths) == 1
    check(ct, t, device)
    z = torch.zeros(40, 7, dtype=dtype)
    check(compress_tensor(z, lanes=32, steps=8), z, device)


def test_empty(device: torch.device) -> None:
    for shape in [(0,), (3, 0, 2)]:
        t = torch.empty(shape, dtype=torch.float16)
        ct = compress_tensor(t, lanes=32, steps=8)
        got = tdec.decompress(ct, device=device)
        assert got.shape == t.shape and got.dtype == t.dtype and got.device.type == device.type


def test_batch_one_launch_one_buffer(device: torch.device) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = [
        (torch.randn(33, 17, generator=g) * 0.02).to(torch.bfloat16),
        torch.empty(0, dtype=torch.float32),
        torch.cat([weights(500, torch.float16, 4), specials(torch.float16)]),
        (torch.randn(130, generator=g) * 0.05).to(torch.float8_e4m3fn),
        torch.randn(9, 31, generator=g),
        specials(torch.float8_e5m2),
    ]
    steps = [8, 4, 16, 8, 4, 8]  # different steps, one lanes value
    cts = [compress_tensor(t, lanes=64, steps=s) for t, s in zip(tensors, steps, strict=True)]
    batch = tdec.prepare(cts, device)
    assert batch.n_tensors == len(tensors) and batch.n_tiles == sum(ct.n_tiles for ct in cts)
    assert all(off % tdec.OUT_ALIGN == 0 for off in batch.offsets)
    buffer = torch.full((batch.nbytes + 64,), 0x5A, dtype=torch.uint8, device=device)
    for canonical in (False, True):
        tdec.decode_batch(batch, buffer, canonical=canonical)
        batch.check()
        views = batch.views(buffer)
        for view, t, ct in zip(views, tensors, cts, strict=True):
            assert same_bits(view, t)
            assert same_bits(decompress_tensor(ct, backend="cpu"), t)
        # the gaps between outputs and the tail are never written
        written = torch.zeros(buffer.numel(), dtype=torch.bool)
        for off, view in zip(batch.offsets, views, strict=True):
            written[off : off + view.numel() * view.element_size()] = True
        assert bool((buffer.cpu()[~written] == 0x5A).all())

    # the same tensors into separate outputs, anywhere in memory, in one launch
    outs = [torch.empty(t.shape, dtype=t.dtype, device=device) for t in tensors]
    for out, t in zip(tdec.decompress_many(cts, outs), tensors, strict=True):
        assert same_bits(out, t)


def test_dispatcher(device: torch.device) -> None:
    t = weights(600, torch.bfloat16, seed=5).reshape(20, 30)
    ct = compress_tensor(t, lanes=32, steps=8)
    got = decompress_tensor(ct, device, backend="triton")
    assert got.shape == t.shape and got.device.type == device.type and same_bits(got, t)
    out = torch.empty_like(t, device=device)
    assert decompress_tensor(ct, out=out, backend="triton") is out and same_bits(out, t)


@pytest.mark.parametrize("canonical", [False, True], ids=["table", "canonical"])
@pytest.mark.parametrize("corruption", ["flipped", "zeroed"])
def test_corrupt_stream_is_reported(device: torch.device, corruption: str, canonical: bool) -> None:
    t = weights(512, torch.bfloat16, seed=6)
    ct = compress_tensor(t, lanes=32, steps=8)
    codes = ct.codes.copy()
    # flipped: lanes overrun their stored sizes; zeroed: every code reads as the shortest one, so lanes
    # stop short of their stored sizes (caught only by the final position check)
    codes[: ct.code_words] = codes[: ct.code_words] ^ np.uint32(0xFFFFFFFF) if corruption == "flipped" else 0
    bad = dataclasses.replace(ct, codes=codes, _blob=None)
    with pytest.raises(IntegrityError):
        decompress_tensor(bad, backend="cpu")
    with pytest.raises(IntegrityError, match="tensor 0 of the batch"):
        tdec.decompress_many([bad], [torch.empty_like(t, device=device)], canonical=canonical)
    batch = tdec.prepare([ct, bad], device)
    buffer = torch.empty(batch.nbytes, dtype=torch.uint8, device=device)
    tdec.decode_batch(batch, buffer, canonical=canonical)
    with pytest.raises(IntegrityError, match="tensor 1 of the batch"):
        batch.check()
    assert same_bits(batch.views(buffer)[0], t)  # the good tensor still decodes
    tdec.decode_batch(tdec.prepare([ct], device), buffer)  # error flags are per launch, not sticky


def test_bad_inputs(device: torch.device) -> None:
    a = compress_tensor(weights(300, torch.bfloat16), lanes=32, steps=8)
    b = compress_tensor(weights(300, torch.bfloat16), lanes=64, steps=4)
    with pytest.raises(BackendError, match="one lanes value"):
        tdec.prepare([a, b], device)
    batch = tdec.prepare([a], device)
    with pytest.raises(InputError, match="bytes"):
        tdec.decode_batch(batch, torch.empty(batch.nbytes - 1, dtype=torch.uint8, device=device))
    with pytest.raises(InputError):
        tdec.decompress_many([a], [torch.empty(300, dtype=torch.float16, device=device)])
    with pytest.raises(InputError):
        tdec.decompress_many([a, a], [torch.empty(300, dtype=torch.bfloat16, device=device)])


@pytest.mark.gpu
def test_gpu_default_tiles_large() -> None:
    if not torch.cuda.is_available() or tdec.INTERPRETED:
        pytest.skip("needs a CUDA GPU and the compiled kernels (TRITON_INTERPRET unset)")
    g = torch.Generator().manual_seed(7)
    t = (torch.randn(4096, 1531, generator=g) * 0.02).to(torch.bfloat16)  # 6.3M elements, partial last tile
    ct = compress_tensor(t)
    for canonical in (False, True):
        out = torch.empty_like(t, device="cuda")
        tdec.decompress_many([ct], [out], canonical=canonical)
        assert same_bits(out, t)
