"""GPU decode throughput: floatzip's CUDA kernel vs a device-to-device copy vs DFloat11's kernel.

Measures GB/s of BF16 *output* (decoded bytes per second) with CUDA events, the L2 flushed before each
timed launch, for:

* single tensors of 16 MB to 1 GB (``--quick``: 16 and 64 MB);
* a Llama-3-8B-shaped transformer block (q, k, v, o, gate, up, down) decoded as one batch;
* tile shapes (symbols per lane: 512, 1024, 2048) on one tensor, and 12-bit codes (no long-code path);
* the ceiling: ``copy_`` of the same number of bytes, device to device;
* DFloat11's own CUDA kernel (``decode.ptx`` from the ``dfloat11`` package, launched with CuPy, on data
  encoded here in DFloat11's format with its own code tables), when dfloat11, cupy and dahuffman import.

Every decode is checked bit for bit against the original once. Run on a CUDA machine::

    python benchmarks/gpu_decode.py            # everything (a few minutes, mostly compression on the CPU)
    python benchmarks/gpu_decode.py --quick    # smaller sizes, fewer variants
    python benchmarks/gpu_decode.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from floatzip import compress_tensor

LLAMA8B_BLOCK = {
    "q_proj": (4096, 4096),
    "k_proj": (1024, 4096),
    "v_proj": (1024, 4096),
    "o_proj": (4096, 4096),
    "gate_proj": (14336, 4096),
    "up_proj": (14336, 4096),
    "down_proj": (4096, 14336),
}
MB = 1 << 20


@dataclass
class Row:
    case: str  # what was decoded
    method: str  # floatzip, floatzip-12bit, copy, dfloat11
    steps: int | None
    out_bytes: int
    in_bytes: int  # bytes the decoder reads from its compressed inputs (streams, tables, descriptors)
    ms: float  # median time per launch
    gbps: float  # output GB/s (1e9 bytes)
    exact: bool | None  # bit-identical to the original
    note: str = ""


# --- timing -----------------------------------------------------------------------------------------
class Timer:
    def __init__(self, iters: int, warmup: int, flush_mb: int) -> None:
        self.iters, self.warmup = iters, warmup
        self.flush = torch.empty(flush_mb * MB, dtype=torch.uint8, device="cuda") if flush_mb else None

    def __call__(self, fn: Callable[[], object]) -> float:
        """Median milliseconds of ``fn`` (launches on the current stream), the L2 flushed before each."""
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.iters):
            if self.flush is not None:
                self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


def gbps(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


# --- data -------------------------------------------------------------------------------------------
def weights(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random normal * 0.02 in BF16, made on the GPU (fast), returned on the CPU."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, generator=g, device="cuda") * 0.02).to(torch.bfloat16).cpu()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.reshape(-1).view(torch.int16), b.reshape(-1).view(torch.int16))


# --- floatzip ---------------------------------------------------------------------------------------
def bench_floatzip(
    case: str, tensors: list[torch.Tensor], timer: Timer, *, steps: int | None = None, max_code_len: int = 16
) -> Row:
    from floatzip.decode import cuda

    t0 = time.perf_counter()
    cts = [compress_tensor(t, steps=steps, max_code_len=max_code_len) for t in tensors]
    enc_mbs = sum(t.numel() * t.element_size() for t in tensors) / MB / max(time.perf_counter() - t0, 1e-9)
    batch = cuda.prepare(cts, "cuda")
    buffer = torch.empty(batch.nbytes, dtype=torch.uint8, device="cuda")
    originals = [t.cuda() for t in tensors]
    out_bytes = sum(t.numel() * t.element_size() for t in tensors)
    ratio = sum(ct.nbytes for ct in cts) / out_bytes
    buffer.fill_(0xA5)
    cuda.decode_batch(batch, buffer)
    torch.cuda.synchronize()
    batch.check()
    exact = all(same_bits(v, o) for v, o in zip(batch.views(buffer), originals, strict=True))
    ms = timer(lambda: cuda.decode_batch(batch, buffer))
    kernels = ",".join(sorted({launch.kernel.split("<")[1].rstrip(">") for launch in batch.launches}))
    note = (f"ratio {ratio:.4f}, {len(cts)} tensors, {batch.n_tiles} tiles, kernels <{kernels}>, "
            f"encode {enc_mbs:.0f} MB/s")  # fmt: skip
    method = "floatzip" if max_code_len == 16 else f"floatzip-{max_code_len}bit"
    row = Row(case, method, cts[0].steps, out_bytes, batch.device_nbytes, ms, gbps(out_bytes, ms), exact, note)
    print_row(row)
    return row


def bench_copy(case: str, nbytes: int, timer: Timer) -> Row:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    row = Row(case, "copy", None, nbytes, nbytes, ms, gbps(nbytes, ms), bool(torch.equal(src, dst)))
    print_row(row)
    return row


# --- DFloat11 ---------------------------------------------------------------------------------------
DF11_THREADS = 512
DF11_BYTES_PER_THREAD = 8


def _load_df11() -> tuple[Any, Any, Any]:
    """(cupy, the decode kernel, dfloat11_utils) without importing the dfloat11 package itself (its
    ``__init__`` needs pkg_resources, accelerate and huggingface_hub)."""
    import cupy as cp
    import dahuffman  # noqa: F401  (dfloat11_utils builds its code with it)

    spec = importlib.util.find_spec("dfloat11")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dfloat11 is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    uspec = importlib.util.spec_from_file_location("_df11_utils", root / "dfloat11_utils.py")
    assert uspec is not None and uspec.loader is not None
    utils = importlib.util.module_from_spec(uspec)
    uspec.loader.exec_module(utils)
    kernel = cp.RawModule(path=str(root / "decode.ptx")).get_function("decode")
    return cp, kernel, utils


def bench_df11(case: str, tensors: list[torch.Tensor], timer: Timer, df11: tuple[Any, Any, Any]) -> Row:
    cp, kernel, utils = df11
    w = torch.cat([t.reshape(-1) for t in tensors]).view(torch.int16)
    n = w.numel()
    exp = ((w >> 7) & 0xFF).to(torch.uint8).numpy()
    other = (((w >> 8) & 0x80) | (w & 0x7F)).to(torch.uint8)
    counts = np.bincount(exp, minlength=256)
    counter = {int(s): int(c) for s, c in enumerate(counts) if c}
    # DFloat11's own encoder (imported, not copied): pure Python, about 4 MB/s, hence --df11-max-mb
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codec, _counter, table = utils.get_32bit_codec(counter)
        luts = utils.get_luts(table)
        encoded, packed_gaps, positions_t = utils.encode(exp.tolist(), codec, DF11_BYTES_PER_THREAD, DF11_THREADS)
    out = np.asarray(encoded, dtype=np.uint8)
    nbytes = out.size
    blocks = math.ceil(nbytes / (DF11_THREADS * DF11_BYTES_PER_THREAD))
    positions = np.asarray(positions_t, dtype=np.uint32)
    shared = DF11_THREADS * 4 + 4 + int(np.diff(positions.astype(np.int64)).max()) * 2
    gap_bytes = np.asarray(packed_gaps, dtype=np.uint8)

    d_luts = luts.cuda()
    d_enc = torch.from_numpy(out.copy()).cuda()
    d_other = other.cuda()
    d_pos = torch.from_numpy(positions.view(np.uint8).copy()).cuda()
    d_gaps = torch.from_numpy(gap_bytes.copy()).cuda()
    d_out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    n_luts = int(luts.shape[0])

    launch_args = [d_luts.data_ptr(), d_enc.data_ptr(), d_other.data_ptr(), d_pos.data_ptr(), d_gaps.data_ptr(),
                   d_out.data_ptr(), n_luts, nbytes, n]  # fmt: skip

    def run() -> None:
        kernel(grid=(blocks,), block=(DF11_THREADS,), shared_mem=shared, args=launch_args)

    with cp.cuda.Device(0):
        run()
        torch.cuda.synchronize()
        exact = same_bits(d_out, torch.cat([t.reshape(-1) for t in tensors]).cuda())
        ms = timer(run)
    in_bytes = sum(t.numel() * t.element_size() for t in (d_luts, d_enc, d_other, d_pos, d_gaps))
    ratio = (nbytes + n + positions.size * 4 + d_gaps.numel()) / (2 * n)
    note = f"ratio {ratio:.4f}, {blocks} blocks"
    row = Row(case, "dfloat11", None, 2 * n, in_bytes, ms, gbps(2 * n, ms), exact, note)
    print_row(row)
    return row


# --- report -----------------------------------------------------------------------------------------
HEADER = f"{'case':<22} {'method':<16} {'steps':>5} {'out MB':>8} {'ms':>9} {'GB/s':>8} exact  note"


def print_row(r: Row) -> None:
    steps = "-" if r.steps is None else str(r.steps)
    print(f"{r.case:<22} {r.method:<16} {steps:>5} {r.out_bytes / MB:>8.1f} {r.ms:>9.3f} {r.gbps:>8.1f} "
          f"{r.exact!s:<5}  {r.note}", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 and 64 MB tensors, fewer tile variants")
    ap.add_argument("--json", type=Path, help="also write the rows (and the device) to this JSON file")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--flush-mb", type=int, default=256, help="bytes zeroed before each timed launch (0: none)")
    ap.add_argument("--no-dfloat11", action="store_true")
    ap.add_argument(
        "--df11-max-mb",
        type=float,
        default=64.0,
        help="skip DFloat11 on cases larger than this (its Python encoder runs at ~4 MB/s)",
    )
    ap.add_argument("--no-block", action="store_true", help="skip the Llama-8B block")
    ap.add_argument("--no-variants", action="store_true", help="skip the tile-shape and 12-bit variants")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("gpu_decode: no CUDA device; this benchmark needs one", file=sys.stderr)
        return 2
    from floatzip.decode import _nvrtc, cuda

    t0 = time.perf_counter()
    cuda.compiled("sm_{}{}".format(*torch.cuda.get_device_capability(0)))  # NVRTC (or the disk cache) first
    compile_s = time.perf_counter() - t0
    dev = torch.cuda.get_device_properties(0)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": dev.name,
        "sm_count": dev.multi_processor_count,
        "torch": torch.__version__,
        "nvrtc": ".".join(map(str, _nvrtc.version())),
        "kernel_compile_s": round(compile_s, 2),
        "python": platform.python_version(),
        "iters": args.iters,
        "flush_mb": args.flush_mb,
    }
    print(json.dumps(meta))
    timer = Timer(args.iters, args.warmup, args.flush_mb)
    df11: tuple[Any, Any, Any] | None = None
    if not args.no_dfloat11:
        try:
            df11 = _load_df11()
        except Exception as exc:  # any import or load failure: report and go on
            print(f"dfloat11: not available ({type(exc).__name__}: {exc})")

    rows: list[Row] = []
    print(HEADER)
    sizes_mb = [16, 64] if args.quick else [16, 64, 256, 1024]
    for i, size in enumerate(sizes_mb):
        n = size * MB // 2
        t = weights((n // 4096, 4096), seed=i)
        case = f"{size}MB"
        rows.append(bench_floatzip(case, [t], timer))
        rows.append(bench_copy(case, size * MB, timer))
        if df11 is not None and t.numel() * 2 <= args.df11_max_mb * 1e6:
            rows.append(bench_df11(case, [t], timer, df11))
        del t
        torch.cuda.empty_cache()

    if not args.no_block:
        block = [weights(shape, seed=100 + i) for i, shape in enumerate(LLAMA8B_BLOCK.values())]
        case = "llama8b-block"
        rows.append(bench_floatzip(case, block, timer))
        rows.append(bench_copy(case, sum(t.numel() * 2 for t in block), timer))
        if df11 is not None and sum(t.numel() * 2 for t in block) <= args.df11_max_mb * 1e6:
            rows.append(bench_df11(case, block, timer, df11))
        del block
        torch.cuda.empty_cache()

    if not args.no_variants:
        size = 64 if args.quick else 256
        t = weights((size * MB // 2 // 4096, 4096), seed=7)
        case = f"{size}MB-variants"
        for steps in (64, 128, 256):
            rows.append(bench_floatzip(case, [t], timer, steps=steps))
        rows.append(bench_floatzip(case, [t], timer, max_code_len=12))
        del t

    print()
    best: dict[str, Row] = {}
    for r in rows:
        if r.exact is not False and (r.case not in best or r.gbps > best[r.case].gbps) and r.method.startswith("fl"):
            best[r.case] = r
    print("best floatzip per case:")
    for case, r in best.items():
        copy = next((c for c in rows if c.case == case and c.method == "copy"), None)
        frac = f", {r.gbps / copy.gbps:.0%} of copy" if copy else ""
        how = f"{r.method}, steps {r.steps}{frac}"
        print(f"  {case:<20} {r.gbps:8.1f} GB/s ({how})")
    failed = [r for r in rows if r.exact is False]
    for r in failed:
        print(f"NOT EXACT: {r.case} {r.method} steps={r.steps}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
