"""The slow, obviously-right decoder: reads the streams bit by bit, following docs/FORMAT.md literally.

It exists to check the fast decoders against; use it on small tensors only.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from floatzip.codec.huffman import canonical_codes
from floatzip.errors import IntegrityError
from floatzip.format.spec import MAX_CODE_LEN
from floatzip.format.tensor import CompressedTensor


def _bit(words: npt.NDArray[np.uint32], p: int) -> int:
    return (int(words[p // 32]) >> (31 - p % 32)) & 1


def decode_words(ct: CompressedTensor) -> list[int]:
    """The tensor's words, in row-major order, as Python ints."""
    n, lanes, per_tile = ct.numel, ct.lanes, ct.lanes * ct.steps
    codebook = {(int(ct.code_lengths[s]), int(c)): s for s, c in enumerate(canonical_codes(ct.code_lengths))
                if ct.code_lengths[s]}  # fmt: skip
    symbols = [0] * n
    for t in range(ct.n_tiles):
        m = min(per_tile, n - t * per_tile)
        p = 32 * int(ct.tile_words[t])
        for c in range(lanes):
            end = p + int(ct.lane_bits[t * lanes + c])
            for e in range(c, m, lanes):
                code, length = 0, 0
                while (length, code) not in codebook:
                    if length == MAX_CODE_LEN or p >= end:
                        raise IntegrityError("a lane's code stream does not decode")
                    code = code << 1 | _bit(ct.codes, p)
                    length += 1
                    p += 1
                symbols[t * per_tile + e] = codebook[(length, code)]
            if p != end:
                raise IntegrityError("a lane's code stream has bits left over")
    bits, r, shift = ct.layout.bits, ct.raw_bits, ct.shift
    out = []
    for i, sym in enumerate(symbols):
        raw = 0
        for b in range(r):
            raw = raw << 1 | _bit(ct.raw, r * i + b)
        out.append((raw >> shift) << (bits - 1) | sym << shift | raw & ((1 << shift) - 1))
    return out


def decode(ct: CompressedTensor, out: npt.NDArray[np.unsignedinteger]) -> None:
    out[:] = np.array(decode_words(ct), dtype=out.dtype)
