"""Where floatzip's bytes go on MiniLM-L6-v2 in BF16: entropy bound, code cost, layout overheads.

    python benchmarks/ratio_breakdown.py

Every figure is a percentage of the BF16 tensor bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

import floatzip
from floatzip.demo import minilm_dir
from floatzip.format import spec


def main() -> None:
    weights = load_file(minilm_dir() / "model.safetensors")
    tensors = [t.to(torch.bfloat16) for t in weights.values() if t.is_floating_point()]
    total = sum(t.numel() * 2 for t in tensors)
    small = sum(t.numel() * 2 for t in tensors if t.numel() < spec.MIN_ENCODED_NUMEL)
    bound = coded = lanes = tables = blobs = 0.0
    exp_only = 0.0
    for t in tensors:
        if t.numel() < spec.MIN_ENCODED_NUMEL:
            continue
        ct = floatzip.compress_tensor(t)
        words = t.reshape(-1).view(torch.int16).numpy().view(np.uint16).astype(np.int64)
        for shift, acc in ((ct.shift, "bound"), (7, "exp_only")):
            counts = np.bincount((words >> shift) & ((1 << (16 - shift - 1)) - 1))
            p = counts[counts > 0] / words.size
            bits = (-(p * np.log2(p)).sum() + shift + 1) * words.size / 8
            if acc == "bound":
                bound += bits
            else:
                exp_only += bits
        coded += (int(ct.tile_words[-1]) * 32 + ct.numel * ct.raw_bits) / 8
        lanes += ct.lane_bits.nbytes + ct.tile_words.nbytes
        tables += (1 << ct.sym_bits) / 8 + int((ct.code_lengths > 0).sum())
        blobs += ct.nbytes
    rows = [
        ("order-0 bound, exponent only (sign+mantissa raw)", exp_only),
        ("order-0 bound of floatzip's chosen symbols + raw bits", bound),
        ("coded streams (Huffman, 16-bit cap)", coded),
        ("+ lane sizes and tile offsets", lanes),
        ("+ code tables (bitmap + lengths)", tables),
        ("+ blob headers and padding", blobs - coded - lanes - tables),
        ("= encoded tensors", blobs),
        ("+ tensors < 4096 elements, stored plain", small),
        ("= all BF16 tensor data", blobs + small),
    ]
    print(f"MiniLM-L6-v2 in BF16: {len(tensors)} tensors, {total / 1e6:.2f} MB")
    for label, value in rows:
        print(f"  {label:<55} {100 * value / total:7.3f}%")


if __name__ == "__main__":
    main()
