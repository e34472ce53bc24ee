"""The fused decode-GEMV without a GPU: its host twin (the kernel's own per-lane code, run on the CPU) against
a float64 product of the decoded weights, within the fp32-accumulation bound of docs/KERNELS.md; corrupt
tiles flagged; tampered tables refused; the kernels compile offline for sm_80 and sm_90a without spills. On a
machine with a GPU the ``gpu`` test runs the real kernel on the same data and compares it bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import floatzip
from floatzip.decode import _nvrtc, gemv
from floatzip.errors import InputError, IntegrityError

HAS_GPU = torch.cuda.is_available()
U = 2.0**-24  # fp32's unit roundoff


def bound(w64: np.ndarray, x64: np.ndarray) -> np.ndarray:
    """|y - y64| <= gamma_n * sum |w||x|, gamma_n = n u / (1 - n u), with n = 2 in + 5 bounding the roundings on
    any product's path to y: at most in fused multiply-adds (its lane partial), the 5-level lane tree, and the
    row's segments (fewer than in)."""
    n = 2 * w64.shape[1] + 5
    gamma = n * U / (1 - n * U)
    return gamma * (np.abs(x64) @ np.abs(w64).T)


def weights(rows: int, cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.02).to(dtype)


def check(w: torch.Tensor, nb: int, seed: int, steps: int | None = None) -> gemv.GemvPlan:
    ct = floatzip.compress_tensor(w, steps=steps) if steps else floatzip.compress_tensor(w)
    p = gemv.plan(ct)
    x = torch.randn(nb, w.shape[1], generator=torch.Generator().manual_seed(seed + 1)).numpy()
    y, errors = gemv.emulate(p, x)
    assert not errors.any()
    w64 = w.double().numpy()
    x64 = x.astype(np.float64)
    assert y.shape == (nb, w.shape[0]) and y.dtype == np.float32
    assert np.all(np.abs(y - x64 @ w64.T) <= bound(w64, x64))
    # the twin is deterministic: a second run gives the same bits
    assert np.array_equal(gemv.emulate(p, x)[0].view(np.uint32), y.view(np.uint32))
    return p


@pytest.mark.parametrize(
    ("rows", "cols", "nb", "steps", "path"),
    [
        (64, 1024, 1, None, 2),  # the main path: rows end between 4-step blocks
        (48, 2048, 8, 8, 2),  # rows span tiles (a tile is 2048 elements)
        (37, 768, 3, 8, 1),  # in % 256: the row test every step; a partial last tile
        (21, 1280, 5, 24, 1),
        (50, 1000, 8, None, 0),  # any shape: per element
        (300, 264, 2, 16, 0),  # several rows per step
        (9, 7, 1, 8, 0),  # rows shorter than a lane's group
        (3, 4104, 4, 8, 0),
    ],
)
def test_twin_is_within_the_fp32_bound(rows: int, cols: int, nb: int, steps: int | None, path: int) -> None:
    p = check(weights(rows, cols, torch.bfloat16, rows * cols), nb, rows, steps)
    assert p.path == path


@pytest.mark.parametrize("nb", range(1, 9))
def test_every_batch_size(nb: int) -> None:
    check(weights(33, 2048, torch.bfloat16, nb), nb, nb, steps=16)


@pytest.mark.parametrize(("rows", "cols"), [(40, 1024), (17, 768), (23, 333)])
def test_f16(rows: int, cols: int) -> None:
    g = torch.Generator().manual_seed(rows)
    w = (torch.randn(rows, cols, generator=g) * 0.5).to(torch.float16)
    w.view(-1)[:5] = torch.tensor([6e-8, -3e-6, 0.0, -0.0, 60000.0], dtype=torch.float16)  # subnormals, zeros, large
    check(w, 3, rows)


def test_long_codes_and_random_shapes() -> None:
    rng = np.random.default_rng(7)
    for i in range(6):
        rows, cols = int(rng.integers(1, 80)), int(rng.integers(1, 3000))
        # a geometric exponent: codes up to the 16-bit cap (the lane's out-of-line path)
        g = torch.Generator().manual_seed(i)
        exps = torch.clamp(torch.empty(rows * cols).geometric_(0.3, generator=g), max=40).to(torch.int32)
        mant = torch.randint(0, 256, (rows * cols,), generator=g, dtype=torch.int32)
        w = ((100 + exps) << 7 | (mant & 127) | (mant >> 7) << 15).to(torch.int16).view(torch.bfloat16)
        check(w.view(rows, cols), int(rng.integers(1, 9)), i, steps=int(rng.choice([8, 16, 128])))


def test_matches_the_decoded_matmul_closely() -> None:
    # the fused product is not bit-identical to x @ w.T (another summation order) but is within the bound of
    # the exact product; torch's own fp32 product is too
    w = weights(128, 4096, torch.bfloat16, 3)
    x = torch.randn(2, 4096, generator=torch.Generator().manual_seed(4))
    y, _ = gemv.emulate(gemv.plan(floatzip.compress_tensor(w)), x.numpy())
    ref = (x.double() @ w.double().T).numpy()
    torch_y = (x @ w.float().T).numpy()
    b = bound(w.double().numpy(), x.double().numpy())
    assert np.all(np.abs(y - ref) <= b) and np.all(np.abs(torch_y - ref) <= b)


def test_a_corrupt_tile_is_flagged() -> None:
    w = weights(64, 1024, torch.bfloat16, 11)
    ct = floatzip.compress_tensor(w, steps=32)
    p = gemv.plan(ct)
    p.batch.arrays["codes"][: int(ct.section("tile_words")[1])] = 0xFFFFFFFF  # tile 0: every code the longest
    _, errors = gemv.emulate(p, np.ones((2, 1024), dtype=np.float32))
    assert errors[0] == 1 and not errors[1:].any()


def test_tampered_tables_are_refused() -> None:
    p = gemv.plan(floatzip.compress_tensor(weights(64, 1024, torch.bfloat16, 12), steps=8))
    x = np.ones((1, 1024), dtype=np.float32)
    for name, at, value in [("seg_base", 1, 0), ("row_seg", 3, 99), ("row_seg", -1, 1 << 40)]:
        q = gemv.plan(floatzip.compress_tensor(weights(64, 1024, torch.bfloat16, 12), steps=8))
        getattr(q, name)[at] = value
        q.validated.clear()
        with pytest.raises(IntegrityError, match="does not hold together"):
            gemv.emulate(q, x)
    p.batch.arrays["tiles"]["out_byte"][1] += 16
    p.validated.clear()
    with pytest.raises(IntegrityError, match="not W's elements in order"):
        gemv.emulate(p, x)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InputError, match="2-D BF16 or F16"):
        gemv.plan(floatzip.compress_tensor(torch.randn(64, 100)))
    with pytest.raises(InputError, match="2-D BF16 or F16"):
        gemv.plan(floatzip.compress_tensor(weights(1, 8192, torch.bfloat16, 0).view(-1)))
    p = gemv.plan(floatzip.compress_tensor(weights(16, 512, torch.bfloat16, 0)))
    with pytest.raises(InputError, match=r"x must be \[1..8, 512\]"):
        gemv.emulate(p, np.ones((9, 512), dtype=np.float32))
    with pytest.raises(InputError, match=r"x must be \[1..8, 512\]"):
        gemv.emulate(p, np.ones((1, 511), dtype=np.float32))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_kernels_compile_offline_without_spills(arch: str) -> None:
    names = [_nvrtc.gemv_kernel_name(4, True, nb, False, 2) for nb in gemv.KERNEL_BATCHES]
    names += [_nvrtc.gemv_kernel_name(7, False, 1, True, 1), _nvrtc.gemv_kernel_name(11, True, 8, True, 0)]
    c = _nvrtc.compile_gemv(arch, names)
    res = c.resources()
    for expr in [*names, _nvrtc.GEMV_FINISH]:
        r = res[c.names[expr]]
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, (expr, r)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (the twin's tests above cover the numerics on the CPU)")
def test_gpu_kernel_matches_the_twin_bit_for_bit() -> None:
    cases = [(64, 1024, None), (48, 2048, 8), (37, 768, 8), (300, 264, 16), (9, 7, 8), (256, 4096, None)]
    for rows, cols, steps in cases:
        for dtype in (torch.bfloat16, torch.float16):
            w = weights(rows, cols, dtype, rows)
            ct = floatzip.compress_tensor(w, steps=steps) if steps else floatzip.compress_tensor(w)
            p = gemv.plan(ct)
            dg = gemv.prepare(p, "cuda")
            for nb in (1, 3, 8):
                x = torch.randn(nb, cols, generator=torch.Generator().manual_seed(nb))
                want, _ = gemv.emulate(p, x.numpy())
                got = gemv.gemv(dg, x.cuda()).cpu().numpy()
                torch.cuda.synchronize()
                dg.check()
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (rows, cols, dtype, nb)
