"""Where floatzip's bytes go on MiniLM-L6-v2 in BF16, and what each format v2 layout choice costs.

    python benchmarks/ratio_breakdown.py [--json FILE] [--planes]

``--planes`` instead splits FP16 and FP32 plane by plane: the sign, the coded symbol's order-0 entropy and the
next mantissa byte below it (raw, order 0, given the exponent), and the rest of the raw bits.

Every figure is a percentage of the BF16 tensor bytes. The first table splits the default encoding
(entropy bound, code, lane index, tables, headers); the second re-encodes the same tensors with other
choices: symbols per lane (the tile's steps), the code-length cap (12 bits: no long-code path on the GPU),
and, computed from the same blobs, what a plain 16-bit length per lane (format v1's) would have cost
instead of v2's per-tile base + narrow deltas.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from safetensors.torch import load_file

import floatzip
from floatzip.demo import minilm_dir
from floatzip.format import spec


def tensors_bf16() -> list[torch.Tensor]:
    weights = load_file(minilm_dir() / "model.safetensors")
    return [t.to(torch.bfloat16).contiguous() for t in weights.values() if t.is_floating_point()]


def entropy_bits(words: np.ndarray, shift: int) -> float:
    counts = np.bincount((words >> shift) & ((1 << (16 - shift - 1)) - 1))
    p = counts[counts > 0] / words.size
    return float((-(p * np.log2(p)).sum() + shift + 1) * words.size)


def breakdown(tensors: list[torch.Tensor], steps: int | None = None, max_code_len: int = 16) -> dict[str, float]:
    """Bytes of each part of the encoded tensors (>= MIN_ENCODED_NUMEL elements)."""
    out = dict.fromkeys(
        ("exp_bound", "bound", "coded", "lane_index", "lane_index_u16", "tables", "headers", "blobs", "small"), 0.0
    )
    for t in tensors:
        if t.numel() < spec.MIN_ENCODED_NUMEL:
            out["small"] += 2 * t.numel()
            continue
        ct = floatzip.compress_tensor(t, steps=steps, max_code_len=max_code_len)
        words = t.reshape(-1).view(torch.int16).numpy().view(np.uint16).astype(np.int64)
        out["exp_bound"] += entropy_bits(words, 7) / 8
        out["bound"] += entropy_bits(words, ct.shift) / 8
        info = ct.v2
        out["coded"] += (4 * int(info["code_words"]) + 4 * int(info["raw_words"])) / 1
        n_tiles = int(info["n_tiles"])
        out["lane_index"] += 4 * (n_tiles + 1) + 4 * n_tiles + 4 * int(info["delta_words"])
        out["lane_index_u16"] += 4 * (n_tiles + 1) + 2 * spec.LANES * n_tiles
        out["tables"] += int(info["tables_len"])
        out["blobs"] += ct.nbytes
    out["headers"] = out["blobs"] - out["coded"] - out["lane_index"] - out["tables"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the figures here too")
    p.add_argument("--planes", action="store_true", help="FP16 / FP32: where the bits go, plane by plane")
    a = p.parse_args()
    if a.planes:
        for dt in ("fp16", "fp32"):
            r = planes(dt)
            print(f"MiniLM-L6-v2 {dt} (tensors >= 4096 elements), % of the tensor bytes: blobs {r['blobs']:.3f}")
            print(f"  sign {r['sign']:.3f} + symbol order-0 {r['symbol']:.3f} + next mantissa byte raw "
                  f"{r['next_raw']:.3f} (order-0 {r['next_h0']:.3f}, given the exponent {r['next_h_exp']:.3f}) "
                  f"+ rest raw {r['rest_raw']:.3f}")  # fmt: skip
        return
    tensors = tensors_bf16()
    total = sum(2 * t.numel() for t in tensors)
    pct = lambda x: 100 * x / total  # noqa: E731
    base = breakdown(tensors)
    print(f"MiniLM-L6-v2 in BF16: {len(tensors)} tensors, {total / 1e6:.2f} MB; default tile (1024 symbols per lane)")
    rows = [
        ("order-0 bound, exponent only (sign + mantissa raw)", base["exp_bound"]),
        ("order-0 bound of the chosen symbols (exponent + k mantissa bits) + raw bits", base["bound"]),
        ("coded streams: Huffman codes (16-bit cap) + raw bits", base["coded"]),
        ("+ lane index (tile offsets, lane bases, narrow deltas)", base["lane_index"]),
        ("+ code tables (bitmap + 4-bit lengths)", base["tables"]),
        ("+ blob headers, padding words, alignment", base["headers"]),
        ("= encoded tensors", base["blobs"]),
        ("+ tensors < 4096 elements, stored plain", base["small"]),
        ("= all BF16 tensor data", base["blobs"] + base["small"]),
    ]
    for label, value in rows:
        print(f"  {label:<78} {pct(value):7.3f}%")
    print(f"  (a 16-bit length per lane instead of the narrow deltas: {pct(base['lane_index_u16']):.3f}% "
          f"instead of {pct(base['lane_index']):.3f}%)")  # fmt: skip
    print("\nchoices (encoded tensors + small ones, % of BF16):")
    variants: dict[str, dict[str, float]] = {}
    for steps in (32, 64, 128, 256):
        variants[f"{8 * steps} symbols/lane, 16-bit cap"] = breakdown(tensors, steps=steps)
    variants["1024 symbols/lane, 12-bit cap"] = breakdown(tensors, max_code_len=12)
    for label, r in variants.items():
        print(f"  {label:<34} {pct(r['blobs'] + r['small']):7.3f}%   lane index {pct(r['lane_index']):.3f}%")
    if a.json:
        doc = {"total_bytes": total, "default": {k: pct(v) for k, v in base.items()},
               "variants": {k: {kk: pct(vv) for kk, vv in v.items()} for k, v in variants.items()}}  # fmt: skip
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)


def _h(x: np.ndarray, nb: int) -> float:
    """Order-0 entropy of x in bits (all of it)."""
    c = np.bincount(x, minlength=nb)
    p = c[c > 0] / x.size
    return float(-(p * np.log2(p)).sum() * x.size)


def planes(dtype: str) -> dict[str, float]:
    """Where the bits of FP16 / FP32 go (issue 11): the coded symbol's order-0 entropy, the raw bits below it
    split into the next mantissa byte and the rest, and what coding that next byte would save, alone
    (order 0) or conditioned on the symbol's exponent; percent of the tensor bytes."""
    tdt, bits = {"fp16": (torch.float16, 16), "fp32": (torch.float32, 32)}[dtype]
    weights = load_file(minilm_dir() / "model.safetensors")
    ts = [t.to(tdt).contiguous() for t in weights.values() if t.is_floating_point() and t.numel() >= 4096]
    view = torch.int16 if bits == 16 else torch.int32
    out = dict.fromkeys(("symbol", "next_raw", "next_h0", "next_h_exp", "rest_raw", "sign", "blobs"), 0.0)
    total = 0
    man = 10 if bits == 16 else 23
    for t in ts:
        ct = floatzip.compress_tensor(t)
        w = t.reshape(-1).view(view).numpy().astype(np.int64) & ((1 << bits) - 1)
        sym = (w >> ct.shift) & ((1 << ct.sym_bits) - 1)
        nxt_bits = min(8, ct.shift)
        nxt = (w >> (ct.shift - nxt_bits)) & ((1 << nxt_bits) - 1)
        exp = (w >> man) & ((1 << (bits - 1 - man)) - 1)
        out["symbol"] += _h(sym, 1 << ct.sym_bits) / 8
        out["next_raw"] += nxt_bits * w.size / 8
        out["next_h0"] += _h(nxt, 1 << nxt_bits) / 8
        out["next_h_exp"] += sum(_h(nxt[exp == e], 1 << nxt_bits) for e in np.unique(exp)) / 8
        out["rest_raw"] += (ct.shift - nxt_bits) * w.size / 8
        out["sign"] += w.size / 8
        out["blobs"] += ct.nbytes
        total += t.numel() * t.element_size()
    return {k: 100 * v / total for k, v in out.items()}


if __name__ == "__main__":
    main()
