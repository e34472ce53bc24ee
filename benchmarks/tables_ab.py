"""One table vs per-tile tables (issue 11), same process, rounds alternating, best of N.

python benchmarks/tables_ab.py [--synthetic-mb 128] [--repeats 7] [--threads 0] [--only minilm|synthetic]

A noisy machine moves both arms alike when they alternate within one process, so the ratio of the two
(``auto / one``) is what to read; each arm's MB/s is the best of its rounds. The blobs of each arm are
checked to decode to the input bit for bit before the clock starts.
"""

from __future__ import annotations

import argparse
import time

import torch

from floatzip.bench import minilm_bf16, synthetic_bf16
from floatzip.codec.encode import compress_tensor
from floatzip.decode import decompress_tensor
from floatzip.format.blob import CompressedTensor

Named = list[tuple[str, torch.Tensor]]
ARMS = (("one", 1), ("auto", 0))  # name, max_tables


def _compress(tensors: Named, max_tables: int, threads: int) -> list[bytes]:
    return [compress_tensor(t, max_tables=max_tables, threads=threads).to_bytes() for _, t in tensors]


def _decompress(blobs: list[bytes]) -> list[torch.Tensor]:
    return [decompress_tensor(CompressedTensor.from_bytes(b)) for b in blobs]


def measure(tensors: Named, repeats: int, threads: int) -> dict[str, dict[str, float]]:
    nbytes = sum(t.numel() * t.element_size() for _, t in tensors)
    blobs = {name: _compress(tensors, mt, threads) for name, mt in ARMS}
    for name, _ in ARMS:
        for (_, t), out in zip(tensors, _decompress(blobs[name]), strict=True):
            assert torch.equal(t.view(torch.int16), out.view(torch.int16)), f"{name}: not bit-exact"
    best: dict[str, dict[str, float]] = {n: {"c": float("inf"), "d": float("inf")} for n, _ in ARMS}
    for r in range(repeats):
        order = ARMS if r % 2 == 0 else ARMS[::-1]  # alternate which arm goes first
        for name, mt in order:
            t0 = time.perf_counter()
            _compress(tensors, mt, threads)
            best[name]["c"] = min(best[name]["c"], time.perf_counter() - t0)
        for name, _ in order:
            t0 = time.perf_counter()
            _decompress(blobs[name])
            best[name]["d"] = min(best[name]["d"], time.perf_counter() - t0)
    out: dict[str, dict[str, float]] = {}
    for name, _ in ARMS:
        size = sum(len(b) for b in blobs[name])
        out[name] = {
            "ratio": 100 * size / nbytes,
            "c_mbps": nbytes / best[name]["c"] / 1e6,
            "d_mbps": nbytes / best[name]["d"] / 1e6,
            "tables": sum(CompressedTensor.from_bytes(b).v2["n_tables"] for b in blobs[name]) / len(blobs[name]),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic-mb", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="0: every core")
    p.add_argument("--only", choices=("minilm", "synthetic"), default=None)
    a = p.parse_args()
    minilm = minilm_bf16()
    sets: list[tuple[str, Named]] = []
    if a.only in (None, "minilm"):
        sets.append(("minilm-bf16", minilm))
    if a.only in (None, "synthetic") and a.synthetic_mb > 0:
        sets.append((f"synthetic-{a.synthetic_mb}MB", synthetic_bf16(minilm, a.synthetic_mb)))
    print(f"{'set':<18} {'arm':<5} {'tables':>6} {'ratio %':>8} {'comp MB/s':>10} {'decomp MB/s':>12}")
    for label, tensors in sets:
        res = measure(tensors, a.repeats, a.threads)
        for name, _ in ARMS:
            r = res[name]
            speeds = f"{r['c_mbps']:>10.1f} {r['d_mbps']:>12.1f}"
            print(f"{label:<18} {name:<5} {r['tables']:>6.2f} {r['ratio']:>8.3f} {speeds}")
        one, auto = res["one"], res["auto"]
        print(
            f"{label:<18} auto/one: compress {auto['c_mbps'] / one['c_mbps']:.3f}x, "
            f"decompress {auto['d_mbps'] / one['d_mbps']:.3f}x, ratio {auto['ratio'] - one['ratio']:+.3f} points"
        )


if __name__ == "__main__":
    main()
