"""The CPU decoder: the compiled core (src/floatzip/csrc), format v1, v2 and v3, on every core.

The core re-parses a v2/v3 blob before decoding (cheap, and nothing it indexes by comes from anywhere else),
bounds every read, and raises when a lane does not end exactly at its stored length or meets an
unassigned code; ``verify`` adds the check of the decoded bytes against the stored checksum.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from floatzip import _core
from floatzip.errors import IntegrityError
from floatzip.format.blob import CompressedTensor, core_error


def decode(ct: CompressedTensor, out: npt.NDArray[np.unsignedinteger], verify: bool = True) -> None:
    """Decode ``ct`` into ``out`` (flat, unsigned ints of the dtype's width)."""
    if ct.numel == 0:
        return
    try:
        if ct.tiled:
            _core.decode(ct.buffer, out, 0, False, verify)
            return
        s = ct.v1
        _core.decode_v1(s.codes, s.raw, s.tile_words, s.lane_bits, s.code_lengths, ct.numel, s.lanes, s.steps,
                        s.shift, s.sym_bits, ct.layout.bits, out)  # fmt: skip
    except (_core.FormatError, _core.IntegrityError) as exc:
        raise core_error(exc) from None
    if verify:
        ct.check_data(out.view(np.uint8))


def decode_tiles(ct: CompressedTensor, first: int, count: int, out: npt.NDArray[np.unsignedinteger]) -> None:
    """Decode tiles ``[first, first + count)`` of a v2 or v3 record into ``out`` (their elements, flat)."""
    try:
        _core.decode_tiles(ct.buffer, first, count, out)
    except (_core.FormatError, _core.IntegrityError) as exc:
        raise core_error(exc) from None


__all__ = ["IntegrityError", "decode", "decode_tiles"]
