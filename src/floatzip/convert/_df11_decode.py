"""CPU decoder of one DFloat11 (DF11) block: its Huffman-coded exponents back to BF16 words.

What a DF11 block holds (dfloat11 0.2-0.5, one block = the concatenated, flattened BF16 weights of
one module or of a list of its sub-modules):

* ``sign_mantissa`` (uint8, one per weight): ``sign << 7 | mantissa``.
* ``encoded_exponent`` (uint8): the 8-bit exponents, Huffman-coded, one bit string read MSB-first,
  the codes back to back. The code is not canonical; at most 32 bits per code. The tail of the last
  byte holds the start of an end-of-stream code, which decodes to nothing useful and is ignored.
* ``luts`` (uint8, ``(T + 1) x 256``): the code as ``T`` byte-indexed tables plus, in the last row,
  the code length of every exponent value (0 = unused). Table 0 decodes the first byte of a code;
  an entry is either an exponent value (the code ends in this byte) or, for values above
  ``256 - T``, a link ``256 - v`` to the table that decodes the next byte.
* ``gaps`` (5 bits per window, packed MSB-first): the stream is cut into windows of
  ``8 * bytes_per_thread`` bits; a window's gap is where, inside it, the first code *starting* in
  it begins. A window owns the codes that start inside it, so windows decode independently.
* ``output_positions`` (uint32 little-endian, stored as uint8): for each run of ``threads_per_block``
  windows, the index of its first weight, then the total number of weights.
* ``split_positions`` (int64): where the concatenated weights split into the sub-modules' weights.

Decoding here: one pass (the compiled core, parallel over decode blocks, every index bounded),
each decode block writing from its ``output_positions`` entry, as DF11's own kernel does. Nothing is
trusted, and nothing is returned until all of it is checked: the tables before use; every window must
end exactly where the next one's gap says its first code starts; each decode block must end where
``output_positions`` starts the next, the first at 0 and the last at the number of weights; and a code
that leads nowhere is an error.
A failure raises FormatError (malformed tables or sizes) or IntegrityError (a stream that does not
decode consistently), naming the file and the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from floatzip import _core
from floatzip.errors import FormatError, IntegrityError

MAX_CODE_BITS = 32  # DF11 limits its codes to 32 bits, so a code spans at most 4 table levels
GAP_BITS = 5
_PAD_BYTES = 8  # zero bytes after the stream, so a 5-byte read at any bit inside it stays in bounds
# after the last weight only the rest of the last byte is left: at most 7 more (meaningless) codes start there
_MAX_TAIL_CODES = 7
MAX_BYTES_PER_THREAD = 1 << 21  # DF11 writes 8; anything near this is a crafted file
MAX_THREADS_PER_BLOCK = 1 << 20


@dataclass(frozen=True)
class Df11Block:
    """The raw tensors of one DF11 block, as stored."""

    luts: npt.NDArray[np.uint8]
    encoded_exponent: npt.NDArray[np.uint8]
    sign_mantissa: npt.NDArray[np.uint8]
    output_positions: npt.NDArray[np.uint8]
    gaps: npt.NDArray[np.uint8]
    split_positions: npt.NDArray[np.int64]


def check_luts(luts: npt.NDArray[np.uint8], where: str) -> tuple[npt.NDArray[np.uint8], int]:
    """Validate the code tables; returns (code lengths by exponent value, smallest link value).

    A well-formed table set is a prefix code spread over byte-indexed tables: every used exponent
    value owns one aligned run of entries, as long as its code leaves free, in a table at the depth
    its length implies; every table after the first is linked from exactly one place; every entry is
    a used value or a link. (Entries outside every code are filled by DF11 with a copy of the entry
    before them, which only lengthens the run before them; that is allowed.)
    """
    if luts.ndim != 2 or luts.shape[1] != 256 or luts.shape[0] < 2:
        raise FormatError(f"{where}: the code tables must be (tables + 1) x 256 bytes, got {list(luts.shape)}")
    n_tables = luts.shape[0] - 1
    tables = luts[:n_tables].astype(np.int64)
    lens = luts[n_tables].copy()
    used = np.flatnonzero(lens)
    if used.size == 0:
        raise FormatError(f"{where}: the code tables define no code")
    if int(lens.max()) > MAX_CODE_BITS:
        raise FormatError(f"{where}: a code length exceeds {MAX_CODE_BITS} bits")
    link_min = 257 - n_tables if n_tables > 1 else 256
    if used.max() >= link_min:
        raise FormatError(f"{where}: exponent value {int(used.max())} collides with a table link")
    kraft = float(np.sum(np.ldexp(1.0, -lens[used].astype(np.int64))))
    if kraft > 1.0:
        raise FormatError(f"{where}: the code lengths are not a prefix code (Kraft sum {kraft:.6f} > 1)")
    valid = np.zeros(256, dtype=bool)
    valid[used] = True
    valid[link_min:] = True
    if not valid[tables].all():
        t, i = np.argwhere(~valid[tables])[0]
        raise FormatError(f"{where}: table {t} entry {i} holds {tables[t, i]}, neither a used exponent nor a link")
    # run starts: an entry that differs from the one before it (across a table boundary too: DF11's
    # filler may carry the last entry of one table into the first of the next)
    flat = tables.reshape(-1)
    starts = np.ones(flat.size, dtype=bool)
    starts[1:] = flat[1:] != flat[:-1]
    run_end = np.append(np.flatnonzero(starts)[1:], flat.size)
    start_pos = np.flatnonzero(starts)
    run_len = dict(zip(start_pos.tolist(), (run_end - start_pos).tolist(), strict=True))
    owners: dict[int, list[int]] = {}
    for p in start_pos.tolist():
        owners.setdefault(int(flat[p]), []).append(p)
    depth = np.full(n_tables, -1, dtype=np.int64)
    depth[0] = 0
    for t in range(1, n_tables):
        places = owners.get(256 - t, [])
        if len(places) != 1:
            raise FormatError(f"{where}: table {t} is linked from {len(places)} places (expected 1)")
        parent = places[0] // 256
        if parent >= t or depth[parent] < 0:
            raise FormatError(f"{where}: table {t} is linked from table {parent}, which does not come before it")
        depth[t] = depth[parent] + 1
    if depth.max() > 3:
        raise FormatError(f"{where}: the tables nest deeper than a {MAX_CODE_BITS}-bit code can")
    for s in used.tolist():
        length = int(lens[s])
        places = owners.get(s, [])
        if len(places) != 1:
            raise FormatError(f"{where}: exponent value {s} (a {length}-bit code) appears in {len(places)} places")
        p = places[0]
        t, i = divmod(p, 256)
        level = (length - 1) // 8
        room = 1 << (8 * (level + 1) - length)
        if depth[t] != level or i % room or run_len[p] < room:
            raise FormatError(f"{where}: exponent value {s} has a {length}-bit code that its table entries contradict")
    return lens, link_min


def gap_values(gaps: npt.NDArray[np.uint8], n_windows: int) -> npt.NDArray[np.int64]:
    bits = np.unpackbits(gaps)[: n_windows * GAP_BITS].reshape(n_windows, GAP_BITS).astype(np.int64)
    return bits @ (1 << np.arange(GAP_BITS - 1, -1, -1, dtype=np.int64))


def decode_block(
    block: Df11Block, *, bytes_per_thread: int, threads_per_block: int, file: str, prefix: str
) -> npt.NDArray[np.uint16]:
    """The block's BF16 words (flat, concatenated in DF11's order); errors name ``file`` and the tensor."""

    def where(part: str) -> str:
        return f"{file}: tensor {prefix + '.' + part!r}"

    if not (4 <= bytes_per_thread <= MAX_BYTES_PER_THREAD and 1 <= threads_per_block <= MAX_THREADS_PER_BLOCK):
        raise FormatError(f"{file}: unsupported DF11 layout (bytes_per_thread={bytes_per_thread}, "
                          f"threads_per_block={threads_per_block})")  # fmt: skip
    lens, link_min = check_luts(block.luts, where("luts"))
    n = block.sign_mantissa.size
    n_bytes = block.encoded_exponent.size
    window_bits = 8 * bytes_per_thread
    n_blocks = -(-n_bytes // (threads_per_block * bytes_per_thread))
    n_windows = n_blocks * threads_per_block
    if block.output_positions.size % 4:
        raise FormatError(f"{where('output_positions')}: {block.output_positions.size} bytes, not whole uint32s")
    positions = block.output_positions.view("<u4").astype(np.int64)
    if positions.size != n_blocks + 1:
        raise IntegrityError(
            f"{where('encoded_exponent')}: {n_bytes} bytes make {n_blocks} decode blocks, but output_positions "
            f"describes {positions.size - 1} (truncated or mismatched stream)"
        )
    if positions[-1] != n:
        raise IntegrityError(f"{where('sign_mantissa')}: holds {n} weights, output_positions says {positions[-1]}")
    if block.gaps.size != -(-n_windows * GAP_BITS // 8):
        raise IntegrityError(f"{where('gaps')}: {block.gaps.size} bytes, {n_windows} windows need "
                             f"{-(-n_windows * GAP_BITS // 8)}")  # fmt: skip
    out = np.empty(n, dtype=np.uint16)
    if n == 0:
        return out
    if n_bytes == 0:
        raise IntegrityError(f"{where('encoded_exponent')}: empty, but the block holds {n} weights")
    gaps = gap_values(block.gaps, n_windows)
    stream = np.zeros(n_bytes + _PAD_BYTES, dtype=np.uint8)
    stream[:n_bytes] = block.encoded_exponent
    n_bits = 8 * n_bytes
    luts = np.ascontiguousarray(block.luts)
    firsts = np.empty(n_windows, dtype=np.int64)
    ends = np.empty(n_windows, dtype=np.int64)
    bad = np.empty(n_windows, dtype=np.int64)
    block_ends = np.empty(n_blocks, dtype=np.int64)
    try:
        _core.df11_decode(stream, n_bits, gaps, window_bits, threads_per_block, luts[:-1], lens, link_min, positions,
                          np.ascontiguousarray(block.sign_mantissa), out, firsts, ends, bad, block_ends)  # fmt: skip
    except _core.FormatError as exc:
        raise FormatError(f"{where('encoded_exponent')}: {exc}") from None
    wrong = np.flatnonzero((bad >= 0) & (bad < n))
    if wrong.size:
        w = int(wrong[0])
        raise IntegrityError(f"{where('encoded_exponent')}: no valid code at weight {int(bad[w])} (window {w}): "
                             f"corrupt stream or code tables")  # fmt: skip
    # a window must stop exactly where the next one's first code starts, wherever real weights follow
    nxt = np.arange(1, n_windows, dtype=np.int64) * window_bits + gaps[1:]
    broken = np.flatnonzero((ends[:-1] != nxt) & (firsts[1:] < n))
    if broken.size:
        w = int(broken[0])
        raise IntegrityError(f"{where('encoded_exponent')}: window {w} ends at bit {int(ends[w])}, but gaps says the "
                             f"next code starts at bit {int(nxt[w])}: corrupt stream, gaps or code tables")  # fmt: skip
    if positions[0] != 0:
        raise IntegrityError(f"{where('output_positions')}: decode block 0 starts at weight {int(positions[0])}, not 0")
    chain = np.flatnonzero(block_ends[:-1] != positions[1:-1])
    if chain.size:
        b = int(chain[0])
        raise IntegrityError(f"{where('output_positions')}: decode block {b} ends at weight {int(block_ends[b])} "
                             f"by the stream; output_positions starts the next at {int(positions[b + 1])}")  # fmt: skip
    total = int(block_ends[-1])
    if total < n:
        raise IntegrityError(f"{where('encoded_exponent')}: the stream holds {total} codes for {n} weights "
                             f"(truncated?)")  # fmt: skip
    if total > n + _MAX_TAIL_CODES:
        raise IntegrityError(f"{where('encoded_exponent')}: the stream holds {total} codes for {n} weights "
                             f"(is sign_mantissa truncated?)")  # fmt: skip
    return out
