"""What coding FP32's two lowest mantissa bytes saves under each design choice (docs/FORMAT.md §1.7's why-table).

    python benchmarks/planes_options.py [--caps 10,11,12,16]

Data: dtype_ratios.py's MiniLM FP32 set. For each tensor, the encoder's own blob (version 2, ``planes=0``) gives
the tiles' code tables; each low byte plane is then coded with optimal length-limited prefix codes (package-merge,
``floatzip._core.code_lengths``) under each length cap and each way of choosing a plane's table:

* ``tensor``: one plane table per tensor;
* ``shared``: one per code table, named by the tile's own table id (what version 3 does: no new section);
* ``tile``: one per tile (an upper bound for a grouping of the planes' own: a tile-to-table section would
  cost at least what ``shared`` saves on table bytes).

Cost counted: code bits plus each table's bytes (a 32-byte bitmap and a nibble per used byte value; a constant
plane, one byte value, its bitmap alone and 0-bit codes), against
8 raw bits per element and plane; per tensor, the better of 0, 1 (bits 0..7) or 2 planes. Lane lengths and
alignment are not counted (their change is a few bytes a tile). Percent points of the set's tensor bytes.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from floatzip import _core
from floatzip.codec.encode import compress_tensor


def minilm_f32() -> list[torch.Tensor]:
    from safetensors.torch import load_file

    from floatzip.demo import minilm_dir

    weights = load_file(minilm_dir() / "model.safetensors")
    return [t.contiguous() for t in weights.values() if t.is_floating_point() and t.numel() >= 4096]


def coded_bits(counts: np.ndarray, cap: int) -> int:
    """Code bits and table bytes of one plane table (a constant plane: its bitmap only, codes of 0 bits)."""
    if np.count_nonzero(counts) == 1:
        return 8 * 32
    lengths = np.frombuffer(_core.code_lengths([int(c) for c in counts], cap), dtype=np.uint8)
    table = 32 + (int(np.count_nonzero(lengths)) + 1) // 2
    return int((counts * lengths).sum()) + 8 * table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--caps", default="10,11,12,16")
    a = p.parse_args()
    caps = [int(c) for c in a.caps.split(",")]
    modes = ("tensor", "shared", "tile")
    saved = {(c, m): 0 for c in caps for m in modes}
    total = blobs = 0
    for t in minilm_f32():
        ct = compress_tensor(t, planes=0)
        total += t.numel() * 4
        blobs += ct.nbytes
        w = t.view(torch.int32).reshape(-1).numpy().view(np.uint32)
        n_tiles, tile = ct.n_tiles, ct.tile_elements
        ids = (
            np.frombuffer(ct.to_bytes(), np.uint8, n_tiles, int(ct.v2["tile_table_at"]))
            if int(ct.v2["n_tables"]) > 1
            else np.zeros(n_tiles, np.uint8)
        )
        tile_of = np.minimum(np.arange(w.size) // tile, n_tiles - 1)
        groups = {"tensor": np.zeros(w.size, np.int64), "shared": ids[tile_of].astype(np.int64), "tile": tile_of}
        planes = [(w & 255).astype(np.int64), ((w >> 8) & 255).astype(np.int64)]
        for m in modes:
            grp = groups[m]
            order = np.argsort(grp, kind="stable")
            bounds = np.flatnonzero(np.diff(grp[order])) + 1
            for cap in caps:
                gain = []
                for b in planes:
                    bits = sum(coded_bits(np.bincount(part, minlength=256), cap) for part in np.split(b[order], bounds))
                    gain.append(8 * w.size - bits)
                saved[(cap, m)] += max(0, gain[0], gain[0] + gain[1])
    print(f"MiniLM FP32, {total / 1e6:.1f} MB of tensors; version 2 blobs: {100 * blobs / total:.3f}%")
    print(f"{'cap':>4} " + " ".join(f"{m:>10}" for m in modes) + "   (points saved)")
    for cap in caps:
        print(f"{cap:>4} " + " ".join(f"{100 * saved[(cap, m)] / 8 / total:>10.4f}" for m in modes))


if __name__ == "__main__":
    main()
