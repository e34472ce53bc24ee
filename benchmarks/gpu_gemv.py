"""The fused decode-GEMV against torch's BF16 matmul (cuBLAS) on the GPU, Llama-3.1-8B's Linear shapes.

    python benchmarks/gpu_gemv.py [--json FILE] [--iters 50] [--batches 1,8]

For each shape and batch: the fused kernel's time (GEMV launch + finishing pass, X converted and transposed
included), ``x @ w.T`` in BF16, and decode-then-matmul (floatzip's decoder into a buffer, then the same
matmul: the default exact path), with CUDA events after a warm-up; GB/s of the weight bytes each moves; and a
bit-for-bit check of the kernel against its host twin on the first shape. Never run in this repository's
CI (no GPU there): benchmarks/gpu_run.sh runs it on a lent GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import floatzip
from floatzip.decode import cuda, gemv

SHAPES = {"q/o": (4096, 4096), "k/v": (1024, 4096), "gate/up": (14336, 4096), "down": (4096, 14336)}


def timed(fn: object, iters: int, warmup: int = 5) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs (CUDA events)."""
    assert callable(fn)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


def measure(dg: gemv.DeviceGemv, wd: torch.Tensor, batch: cuda.DeviceBatch, buf: torch.Tensor, xd: torch.Tensor,
            iters: int) -> tuple[float, float, float]:  # fmt: skip
    """(fused, BF16 matmul, decode + matmul) milliseconds for one shape and batch."""
    view = batch.views(buf)[0]

    def decode_mm() -> torch.Tensor:
        cuda.decode_batch(batch, buf)
        return xd @ view.T

    return timed(lambda: gemv.gemv(dg, xd), iters), timed(lambda: xd @ wd.T, iters), timed(decode_mm, iters)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=0, help="tile steps for the encoder (0: the default)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_gemv: no CUDA GPU", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"{torch.cuda.get_device_name()}  fused GEMV vs torch BF16 matmul (ms, median of {args.iters})")
    print(f"{'shape':<8} {'batch':>5} {'fused':>8} {'bf16':>8} {'decode+mm':>10} {'fused/bf16':>10} {'fused GB/s':>10}")
    for i, (name, (out_f, in_f)) in enumerate(SHAPES.items()):
        w = (torch.randn(out_f, in_f, generator=g) * 0.02).to(torch.bfloat16)
        ct = floatzip.compress_tensor(w, steps=args.steps) if args.steps else floatzip.compress_tensor(w)
        p = gemv.plan(ct)
        dg = gemv.prepare(p, "cuda")
        wd = w.cuda()
        batch = cuda.prepare([ct], "cuda", out_align=16)
        buf = torch.empty(batch.nbytes, dtype=torch.uint8, device="cuda")
        for nb in batches:
            x = torch.randn(nb, in_f, generator=g).to(torch.bfloat16)
            xd = x.cuda()
            if i == 0:  # the kernel against its twin, bit for bit
                want, _ = gemv.emulate(p, x.float().numpy())
                got = gemv.gemv(dg, xd).cpu().numpy()
                dg.check()
                same = bool(np.array_equal(got.view(np.uint32), want.view(np.uint32)))
                print(f"  twin check (batch {nb}): {'bit-identical' if same else 'DIFFERENT'}")
                rows.append({"check": name, "batch": nb, "bit_identical": same})

            t_fused, t_bf16, t_dec = measure(dg, wd, batch, buf, xd, args.iters)
            gbs = ct.nbytes / t_fused / 1e6
            up = t_bf16 / t_fused
            print(f"{name:<8} {nb:>5} {t_fused:>8.4f} {t_bf16:>8.4f} {t_dec:>10.4f} {up:>10.2f} {gbs:>10.0f}")
            rows.append({"shape": name, "out": out_f, "in": in_f, "batch": nb, "fused_ms": t_fused, "bf16_ms": t_bf16,
                         "decode_matmul_ms": t_dec, "speedup": t_bf16 / t_fused, "blob_bytes": ct.nbytes})  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
