"""Length-limited canonical prefix codes: lengths by package-merge, codes and tables from lengths.

Only the code lengths are ever stored; codes, encode tables and decode tables are rebuilt from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from floatzip.errors import FormatError
from floatzip.format.spec import MAX_CODE_LEN


def code_lengths(counts: npt.ArrayLike, max_len: int = MAX_CODE_LEN) -> npt.NDArray[np.uint8]:
    """Optimal prefix-code lengths, each at most ``max_len``, for symbol counts (0 = unused).

    Package-merge (Larmore & Hirschberg, 1990), vectorised: at each of ``max_len`` levels the
    current list is paired into packages and merged with the sorted leaves; the final lengths are
    read back by counting, level by level, how many leaves the chosen prefix holds.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.shape[0], dtype=np.uint8)
    used = np.flatnonzero(counts > 0)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    if used.size > (1 << max_len):
        raise ValueError(f"{used.size} symbols cannot be coded in at most {max_len} bits")
    order = used[np.argsort(counts[used], kind="stable")]
    leaves = counts[order]
    n = leaves.size

    # Level max_len holds only leaves; each level above merges the leaves with the packages of the
    # level below. is_leaf[level] marks which entries of that level's sorted list are leaves.
    weights = leaves.copy()
    is_leaf_levels: list[npt.NDArray[np.bool_]] = [np.ones(n, dtype=bool)]
    for _ in range(max_len - 1):
        pairs = weights[: weights.size // 2 * 2].reshape(-1, 2).sum(axis=1)
        merged = np.concatenate([leaves, pairs])
        kinds = np.concatenate([np.ones(n, dtype=bool), np.zeros(pairs.size, dtype=bool)])
        idx = np.argsort(merged, kind="stable")
        weights = merged[idx]
        is_leaf_levels.append(kinds[idx])

    # Take the 2n - 2 cheapest items of the top level; every leaf taken at a level adds one bit to
    # that leaf's length, and every package taken selects two items of the level below.
    depth = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for is_leaf in reversed(is_leaf_levels):
        leaves_taken = int(is_leaf[:take].sum())
        depth[:leaves_taken] += 1
        take = 2 * (take - leaves_taken)
    lengths[order] = depth.astype(np.uint8)
    return lengths


def check_lengths(lengths: npt.NDArray[np.uint8], max_len: int = MAX_CODE_LEN) -> None:
    """Raise FormatError unless ``lengths`` describe a prefix code (Kraft sum at most one)."""
    if lengths.size and int(lengths.max()) > max_len:
        raise FormatError(f"a code length exceeds {max_len} bits")
    used = lengths[lengths > 0].astype(np.int64)
    if used.size and int((1 << (max_len - used)).sum()) > (1 << max_len):
        raise FormatError("the code lengths do not form a prefix code (Kraft sum above 1)")


def canonical_codes(lengths: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    """The canonical code of each symbol (DEFLATE order: by length, then by symbol value)."""
    codes = np.zeros(lengths.size, dtype=np.uint32)
    used = np.flatnonzero(lengths)
    if used.size == 0:
        return codes
    order = used[np.lexsort((used, lengths[used]))]
    lens = lengths[order].astype(np.int64)
    # code_i = (code_{i-1} + 1) << (len_i - len_{i-1}); in max-length units this is a running sum.
    max_len = int(lens.max())
    units = np.concatenate([[0], np.cumsum(1 << (max_len - lens))[:-1]])
    codes[order] = (units >> (max_len - lens)).astype(np.uint32)
    return codes


@dataclass(frozen=True)
class DecodeTables:
    """Everything a decoder needs, rebuilt from the code lengths.

    Two ways to decode the next ``max_len`` bits ``v`` (left-justified) of a stream:

    * canonical: ``length = 1 + #{l : limits[l] <= v}`` (``limits`` has ``max_len`` entries for lengths
      1..max_len, non-decreasing); ``symbol = symbols[first_index[length] + (v >> (max_len - length))
      - first_code[length]]``. ``v >= limits[-1]`` is an unassigned code (corruption).
    * primary table: ``primary[v >> (max_len - PRIMARY_BITS)]`` is ``(symbol << 5) | length`` for codes of
      at most ``PRIMARY_BITS`` bits, and 0 where the code is longer (or unassigned): fall back to the above.
    """

    max_len: int
    limits: npt.NDArray[np.uint32]  # [max_len], limits[l - 1] for length l
    first_code: npt.NDArray[np.int32]  # [max_len + 1], by length
    first_index: npt.NDArray[np.int32]  # [max_len + 1], by length
    symbols: npt.NDArray[np.uint16]  # used symbols sorted by (length, symbol)
    primary: npt.NDArray[np.uint32]  # [2 ** PRIMARY_BITS]


PRIMARY_BITS = 12


def decode_tables(lengths: npt.NDArray[np.uint8], max_len: int = MAX_CODE_LEN) -> DecodeTables:
    """Decode tables for ``lengths``, which must have passed :func:`check_lengths`."""
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    per_len = np.bincount(lengths[used], minlength=max_len + 1)[: max_len + 1].astype(np.int64)
    per_len[0] = 0
    first_code = np.zeros(max_len + 1, dtype=np.int64)
    first_index = np.zeros(max_len + 1, dtype=np.int64)
    limits = np.zeros(max_len, dtype=np.int64)
    code = 0
    for length in range(1, max_len + 1):
        code = (code + per_len[length - 1]) << 1 if length > 1 else 0
        first_code[length] = code
        first_index[length] = per_len[:length].sum()
        limits[length - 1] = (code + per_len[length]) << (max_len - length)
    primary = np.zeros(1 << PRIMARY_BITS, dtype=np.uint32)
    short = used[lengths[used] <= PRIMARY_BITS]
    if short.size:
        lens = lengths[short].astype(np.int64)
        spans = 1 << (PRIMARY_BITS - lens)
        starts = canonical_codes(lengths)[short].astype(np.int64) << (PRIMARY_BITS - lens)
        offsets = np.arange(int(spans.sum())) - np.repeat(np.cumsum(spans) - spans, spans)
        primary[np.repeat(starts, spans) + offsets] = np.repeat((short.astype(np.int64) << 5) | lens, spans)
    return DecodeTables(
        max_len=max_len,
        limits=limits.astype(np.uint32),
        first_code=first_code.astype(np.int32),
        first_index=first_index.astype(np.int32),
        symbols=order.astype(np.uint16),
        primary=primary,
    )
