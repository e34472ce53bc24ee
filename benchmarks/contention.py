"""Throughput under contention: floatzip (and ZipNN) quiet, then with busy processes on the same cores.

    python benchmarks/contention.py [--busy 2] [--seconds 4] [--json FILE]

Data: MiniLM-L6-v2's float tensors in BF16 (the tensors of at least 4096 elements). For each tool, the
best of a few rounds of compress and of decompress over the whole set, first with the machine as it is,
then with ``--busy`` processes spinning (one per core by default). The figure that matters is the ratio
loaded / quiet: a thread pool that spins or splits work statically collapses when a core is taken away.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import time
from typing import Any

import torch

from floatzip.bench import _load_zipnn, minilm_bf16
from floatzip.codec.encode import compress_tensor
from floatzip.decode import decompress_tensor
from floatzip.format.blob import CompressedTensor

MB = 1e6


def _spin(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _rounds(fn: Any, seconds: float, setup: Any = None) -> float:
    """Best seconds of fn(setup()) over rounds lasting about ``seconds`` in all (at least 3); setup is untimed."""
    best = float("inf")
    start = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - start < seconds:
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


def measure(tensors: list[torch.Tensor], seconds: float) -> dict[str, float]:
    nbytes = sum(2 * t.numel() for t in tensors)
    out: dict[str, float] = {}
    blobs = [compress_tensor(t).to_bytes() for t in tensors]
    out["floatzip_compress_mbps"] = nbytes / MB / _rounds(lambda _: [compress_tensor(t) for t in tensors], seconds)
    out["floatzip_decompress_mbps"] = (
        nbytes / MB / _rounds(lambda _: [decompress_tensor(CompressedTensor.from_bytes(b)) for b in blobs], seconds)
    )
    zipnn = _load_zipnn()
    if zipnn is not None:
        codec = zipnn.ZipNN(method="huffman", input_format="torch")
        zblobs = [bytes(codec.compress(t.clone())) for t in tensors]
        # ZipNN rewrites its input in place: each round gets fresh copies, made before the clock starts
        out["zipnn_compress_mbps"] = (
            nbytes
            / MB
            / _rounds(lambda copies: [codec.compress(c) for c in copies], seconds, lambda: [t.clone() for t in tensors])
        )
        out["zipnn_decompress_mbps"] = nbytes / MB / _rounds(lambda _: [codec.decompress(b) for b in zblobs], seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="spinning processes in the loaded run")
    ap.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)
    tensors = [t for _, t in minilm_bf16()]
    quiet = measure(tensors, args.seconds)
    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.5)
        loaded = measure(tensors, args.seconds)
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "busy_processes": args.busy,
        "quiet": quiet,
        "loaded": loaded,
        "loaded_over_quiet": {k: loaded[k] / quiet[k] for k in quiet},
    }
    print(f"{doc['date']}, {doc['cores']} cores, {args.busy} busy processes in the loaded run (MB/s of BF16)")
    print(f"{'':<26} {'quiet':>8} {'loaded':>8} {'loaded/quiet':>13}")
    for k in quiet:
        print(f"{k:<26} {quiet[k]:>8.0f} {loaded[k]:>8.0f} {loaded[k] / quiet[k]:>12.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
