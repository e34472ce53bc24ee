"""FP32 without and with coded low planes (issue 11, blob version 3), same process, rounds alternating, best of N.

    python benchmarks/planes_ab.py [--repeats 7] [--threads 0] [--synthetic-mb 0]

Data: MiniLM-L6-v2's stored FP32 tensors of at least 4096 elements (dtype_ratios.py's set), and optionally a
synthetic FP32 set of that size (weights cast up from BF16 plus a geometric low byte: every tensor codes two
planes). Arms: ``v2`` (``planes=0``: the encoder as before, version 2 blobs) and ``auto`` (the encoder's choice:
version 3 where planes pay). A noisy machine moves both arms alike when they alternate within one process, so
the ratio of the two is what to read; each arm's MB/s is the best of its rounds. Every blob is checked to
decode to the input bit for bit before the clock starts. ``v3 only`` repeats the decode figures over the
tensors the encoder gave planes, where the difference lies; ``v2-only comp`` repeats the compress figures over the
others, where the encoder only decides that planes do not pay.
"""

from __future__ import annotations

import argparse
import time

import torch

from floatzip.codec.encode import compress_tensor
from floatzip.decode import decompress_tensor
from floatzip.format.blob import CompressedTensor

ARMS = (("v2", 0), ("auto", None))  # name, planes


def minilm_f32() -> list[torch.Tensor]:
    from safetensors.torch import load_file

    from floatzip.demo import minilm_dir

    weights = load_file(minilm_dir() / "model.safetensors")
    return [t.contiguous() for t in weights.values() if t.is_floating_point() and t.numel() >= 4096]


def synthetic_f32(mb: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out, left = [], mb << 20
    while left > 0:
        n = min(left // 4, 4 << 20)
        x = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16).float().view(torch.int32)
        low = torch.clamp(torch.empty(n).geometric_(0.2, generator=g) - 1, max=255).to(torch.int32)
        out.append((x | low).view(torch.float32))
        left -= 4 * n
    return out


def _compress(ts: list[torch.Tensor], planes: int | None, threads: int) -> list[bytes]:
    return [compress_tensor(t, planes=planes, threads=threads).to_bytes() for t in ts]


def _decompress(blobs: list[bytes], threads: int) -> None:
    for b in blobs:
        decompress_tensor(CompressedTensor.from_bytes(b, check_crc=False))


def measure(ts: list[torch.Tensor], repeats: int, threads: int) -> dict[str, dict[str, float]]:
    nbytes = sum(t.numel() * 4 for t in ts)
    blobs = {name: _compress(ts, p, threads) for name, p in ARMS}
    for name, _ in ARMS:
        for t, b in zip(ts, blobs[name], strict=True):
            out = decompress_tensor(CompressedTensor.from_bytes(b))
            assert torch.equal(t.view(torch.int32), out.view(torch.int32)), f"{name}: not bit-exact"
    v3 = [i for i, b in enumerate(blobs["auto"]) if CompressedTensor.from_bytes(b).version == 3]
    v3_bytes = sum(ts[i].numel() * 4 for i in v3)
    stay = [t for i, t in enumerate(ts) if i not in set(v3)]  # what the encoder leaves version 2
    stay_bytes = sum(t.numel() * 4 for t in stay)
    inf = float("inf")
    best = {n: {"c": inf, "d": inf, "d3": inf, "c2": inf} for n, _ in ARMS}
    for r in range(repeats):
        order = ARMS if r % 2 == 0 else ARMS[::-1]
        for name, p in order:
            t0 = time.perf_counter()
            _compress(ts, p, threads)
            best[name]["c"] = min(best[name]["c"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            _compress(stay, p, threads)
            best[name]["c2"] = min(best[name]["c2"], time.perf_counter() - t0)
        for name, _ in order:
            t0 = time.perf_counter()
            _decompress(blobs[name], threads)
            best[name]["d"] = min(best[name]["d"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            _decompress([blobs[name][i] for i in v3], threads)
            best[name]["d3"] = min(best[name]["d3"], time.perf_counter() - t0)
    out: dict[str, dict[str, float]] = {}
    for name, _ in ARMS:
        out[name] = {
            "ratio": 100 * sum(len(b) for b in blobs[name]) / nbytes,
            "c_mbps": nbytes / best[name]["c"] / 1e6,
            "d_mbps": nbytes / best[name]["d"] / 1e6,
            "d3_mbps": v3_bytes / best[name]["d3"] / 1e6 if v3 else float("nan"),
            "c2_mbps": stay_bytes / best[name]["c2"] / 1e6 if stay else float("nan"),
            "v3": len(v3),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="0: every core")
    p.add_argument("--synthetic-mb", type=int, default=0)
    a = p.parse_args()
    sets = [("minilm-fp32", minilm_f32())]
    if a.synthetic_mb:
        sets.append((f"synthetic-{a.synthetic_mb}MB", synthetic_f32(a.synthetic_mb)))
    print(f"{'set':<18} {'arm':<5} {'ratio %':>8} {'comp MB/s':>10} {'decomp MB/s':>12} {'v3-only decomp':>15} "
          f"{'v2-only comp':>13}")  # fmt: skip
    for label, ts in sets:
        res = measure(ts, a.repeats, a.threads)
        for name, _ in ARMS:
            r = res[name]
            speeds = f"{r['c_mbps']:>10.1f} {r['d_mbps']:>12.1f} {r['d3_mbps']:>15.1f} {r['c2_mbps']:>13.1f}"
            print(f"{label:<18} {name:<5} {r['ratio']:>8.3f} {speeds}")
        v2, auto = res["v2"], res["auto"]
        print(
            f"{label:<18} auto/v2: compress {auto['c_mbps'] / v2['c_mbps']:.3f}x, decompress "
            f"{auto['d_mbps'] / v2['d_mbps']:.3f}x (the {auto['v3']:.0f} v3 tensors alone: "
            f"{auto['d3_mbps'] / v2['d3_mbps']:.3f}x; compress of the others: {auto['c2_mbps'] / v2['c2_mbps']:.3f}x), "
            f"ratio {auto['ratio'] - v2['ratio']:+.3f} points"
        )


if __name__ == "__main__":
    main()
