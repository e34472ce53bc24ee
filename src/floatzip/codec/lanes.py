"""Compiled kernels of the encoder: the symbol histogram, the split choice, and the tile × lane packer.

The bytes they produce are fixed by docs/FORMAT.md §1.3–1.4; only the schedule is theirs.

* :func:`histogram` counts symbols, one slice of the tensor per thread, four interleaved sub-histograms
  per slice so that runs of equal symbols do not serialise on one counter.
* :func:`choose_split` runs package-merge for every candidate split in one compiled call. It is the
  same algorithm as :func:`floatzip.codec.huffman.code_lengths` (a stable sort of the merged list is a
  merge in which leaves win ties), so it returns the same lengths.
* :func:`pack` codes the tensor in one pass over the words. Work items are *segments* (a run of lanes
  of one tile) and *raw chunks* (a run of elements of the raw stream), balanced over the threads by
  :func:`schedule`, so even
  a one-tile tensor keeps every core busy. A segment walks its lanes one after the other (a lane's
  string follows the previous one with no gap) into its own scratch area with a 64-bit accumulator;
  the lane sizes fall out of the same pass. :func:`assemble` then shifts each tile's segments into
  place. Raw chunks start on word boundaries (multiples of 32 elements) and write the final stream.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_jit = nb.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
_pjit = nb.njit(parallel=True, nogil=True, cache=True, boundscheck=False, error_model="numpy")

HIST_CHUNK = 1 << 15  # fewest elements worth a thread of the histogram
SEGMENT_ELEMS = 1 << 15  # target elements per code segment and per raw chunk


@_pjit
def histogram(words, shift, sym_bits, threads):  # pragma: no cover - compiled
    """Counts (int64) of ``(word >> shift) & mask`` over all words: one slice of the words per thread."""
    n = words.size
    nbins = 1 << sym_bits
    mask = nbins - 1
    parts = max(1, min(threads, n // HIST_CHUNK))
    per = (n + parts - 1) // parts
    partial = np.zeros((parts, 4 * nbins), dtype=np.int64)
    for ch in nb.prange(parts):
        lo = ch * per
        hi = min(n, lo + per)
        h = partial[ch]
        i = lo
        while i + 4 <= hi:
            h[(np.int64(words[i]) >> shift) & mask] += 1
            h[nbins + ((np.int64(words[i + 1]) >> shift) & mask)] += 1
            h[2 * nbins + ((np.int64(words[i + 2]) >> shift) & mask)] += 1
            h[3 * nbins + ((np.int64(words[i + 3]) >> shift) & mask)] += 1
            i += 4
        while i < hi:
            h[(np.int64(words[i]) >> shift) & mask] += 1
            i += 1
    out = np.zeros(nbins, dtype=np.int64)
    for ch in range(parts):
        for s in range(4 * nbins):
            out[s & mask] += partial[ch, s]
    return out


@_jit
def _package_merge(counts, max_len):  # pragma: no cover - compiled
    """Optimal code lengths of at most ``max_len`` bits; identical to ``huffman.code_lengths``."""
    nsym = counts.size
    lengths = np.zeros(nsym, dtype=np.uint8)
    nused = 0
    for s in range(nsym):
        if counts[s] > 0:
            nused += 1
    if nused == 0:
        return lengths
    used = np.empty(nused, dtype=np.int64)
    j = 0
    for s in range(nsym):
        if counts[s] > 0:
            used[j] = s
            j += 1
    if nused == 1:
        lengths[used[0]] = 1
        return lengths
    order = used[np.argsort(counts[used], kind="mergesort")]
    n = nused
    leaves = counts[order]
    width = 2 * n
    weights = np.empty(width, dtype=np.int64)
    nxt = np.empty(width, dtype=np.int64)
    is_leaf = np.zeros((max_len, width), dtype=np.bool_)
    weights[:n] = leaves
    size = n
    is_leaf[0, :n] = True
    for level in range(1, max_len):
        npairs = size // 2
        # merge the sorted leaves with the sorted packages; a leaf goes first on a tie (stable sort)
        a = 0
        b = 0
        o = 0
        while a < n or b < npairs:
            if b >= npairs or (a < n and leaves[a] <= weights[2 * b] + weights[2 * b + 1]):
                nxt[o] = leaves[a]
                is_leaf[level, o] = True
                a += 1
            else:
                nxt[o] = weights[2 * b] + weights[2 * b + 1]
                b += 1
            o += 1
        size = o
        weights, nxt = nxt, weights
    depth = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for level in range(max_len - 1, -1, -1):
        taken = 0
        for i in range(min(take, width)):
            if is_leaf[level, i]:
                taken += 1
        for i in range(taken):
            depth[i] += 1
        take = 2 * (take - taken)
    for i in range(n):
        lengths[order[i]] = depth[i]
    return lengths


@_jit
def choose_split(hist, max_k, man_bits, max_len):  # pragma: no cover - compiled
    """(k, code lengths) giving the smallest blob; ``hist`` counts symbols of the widest split.

    The same choice as the reference: every ``k`` from ``max_k`` down, the first smallest size wins.
    """
    n = np.int64(0)
    for s in range(hist.size):
        n += hist[s]
    best_bits = np.int64(-1)
    best_k = max_k
    best_lengths = np.zeros(1, dtype=np.uint8)
    for k in range(max_k, -1, -1):
        group = 1 << (max_k - k)
        merged = np.zeros(hist.size // group, dtype=np.int64)
        for s in range(hist.size):
            merged[s // group] += hist[s]
        lengths = _package_merge(merged, max_len)
        coded = np.int64(0)
        used = 0
        for s in range(merged.size):
            coded += merged[s] * np.int64(lengths[s])
            if lengths[s] != 0:
                used += 1
        bits = coded + n * (man_bits - k + 1) + merged.size + 8 * used
        if best_bits < 0 or bits < best_bits:
            best_bits = bits
            best_k = k
            best_lengths = lengths
    return best_k, best_lengths


@_jit
def schedule(costs, threads):  # pragma: no cover - compiled
    """An order of the work items for a static ``prange`` that balances ``threads`` threads.

    numba hands each thread one contiguous block of iterations (its dynamic chunk size is not honoured
    by every threading layer), so the items are dealt to threads largest first, each to the least loaded
    (LPT), and laid out thread after thread, each block padded with -1 to the same length.
    """
    n = costs.size
    threads = max(1, min(threads, n))
    load = np.zeros(threads, dtype=np.int64)
    owner = np.empty(n, dtype=np.int64)
    count = np.zeros(threads, dtype=np.int64)
    for i in np.argsort(-costs, kind="mergesort"):
        best = 0
        for th in range(1, threads):
            if load[th] < load[best]:
                best = th
        load[best] += costs[i]
        owner[i] = best
        count[best] += 1
    per = 0
    for th in range(threads):
        per = max(per, count[th])
    order = np.full(threads * per, -1, dtype=np.int64)
    fill = np.zeros(threads, dtype=np.int64)
    for i in range(n):
        th = owner[i]
        order[th * per + fill[th]] = i
        fill[th] += 1
    return order


@_jit
def plan(n, lanes, steps, seg_lanes, raw_chunk, threads):  # pragma: no cover - compiled
    """Work items of :func:`pack` and their order (see :func:`schedule`).

    Items are (kind, a, b) rows: kind 0 = lanes [a, b) of a tile, kind 1 = raw elements [a, b).
    """
    per_tile = lanes * steps
    n_tiles = (n + per_tile - 1) // per_tile
    segs = lanes // seg_lanes
    n_raw = (n + raw_chunk - 1) // raw_chunk
    items = np.empty((n_tiles * segs + n_raw, 3), dtype=np.int64)
    costs = np.empty(n_tiles * segs + n_raw, dtype=np.int64)
    i = 0
    for t in range(n_tiles):
        m = min(per_tile, n - t * per_tile)
        for g in range(segs):
            lo = g * seg_lanes
            items[i, 0] = 0
            items[i, 1] = t * lanes + lo
            items[i, 2] = t * lanes + lo + seg_lanes
            # elements of lanes lo .. lo + seg_lanes - 1 of a tile of m; a code costs about 1.5 raw values
            elems = 0
            for c in range(lo, lo + seg_lanes):
                elems += (m - c + lanes - 1) // lanes if m > c else 0
            costs[i] = 3 * elems
            i += 1
    for r in range(n_raw):
        items[i, 0] = 1
        items[i, 1] = r * raw_chunk
        items[i, 2] = min(n, (r + 1) * raw_chunk)
        costs[i] = 2 * (items[i, 2] - items[i, 1])
        i += 1
    return items, schedule(costs, threads)


@_pjit
def pack(words, items, order, shift, sym_mask, enc, lanes, steps, seg_cap, lane_bits, seg_bits, scratch,
         out_raw):  # fmt: skip  # pragma: no cover - compiled
    """Code every segment into ``scratch`` and write the raw stream into ``out_raw``.

    ``enc[sym]`` is ``(code << 5) | length``. Segment ``s`` (``items`` row ``2s`` or so; its index is its
    first global lane over ``seg_lanes``) owns ``scratch[s * seg_cap : (s + 1) * seg_cap]``; its size in
    bits goes to ``seg_bits[s]`` and each lane's to ``lane_bits``.
    """
    n = words.size
    per_tile = lanes * steps
    raw_bits = shift + 1
    low_mask = (1 << shift) - 1
    sign_shift = words.itemsize * 8 - 1
    for k in nb.prange(order.size):
        it = order[k]
        if it < 0:
            continue
        kind = items[it, 0]
        a = items[it, 1]
        b = items[it, 2]
        if kind == 0:
            t = a // lanes
            base = t * per_tile
            m = min(per_tile, n - base)
            seg_lanes = b - a
            seg = a // seg_lanes
            wp = seg * seg_cap
            acc = np.uint64(0)
            pend = 0  # bits in acc not yet written
            total = 0
            for gl in range(a, b):
                c = gl - t * lanes
                before = total
                e = base + c
                stop = base + m
                # two codes per step of the accumulator: at most 32 new bits, 63 pending before a write
                while e + lanes < stop:
                    ent1 = enc[(np.int64(words[e]) >> shift) & sym_mask]
                    ent2 = enc[(np.int64(words[e + lanes]) >> shift) & sym_mask]
                    ln2 = ent2 & 31
                    ln = (ent1 & 31) + ln2
                    acc = (acc << np.uint64(ln)) | np.uint64(((ent1 >> 5) << ln2) | (ent2 >> 5))
                    pend += ln
                    total += ln
                    full = pend >= 32
                    pend -= 32 if full else 0
                    scratch[wp] = np.uint32((acc >> np.uint64(pend)) & np.uint64(0xFFFFFFFF))
                    wp += 1 if full else 0
                    e += 2 * lanes
                if e < stop:
                    ent = enc[(np.int64(words[e]) >> shift) & sym_mask]
                    ln = ent & 31
                    acc = (acc << np.uint64(ln)) | np.uint64(ent >> 5)
                    pend += ln
                    total += ln
                    full = pend >= 32
                    pend -= 32 if full else 0
                    scratch[wp] = np.uint32((acc >> np.uint64(pend)) & np.uint64(0xFFFFFFFF))
                    wp += 1 if full else 0
                lane_bits[gl] = total - before
            if pend > 0:
                scratch[wp] = np.uint32((acc << np.uint64(32 - pend)) & np.uint64(0xFFFFFFFF))
            seg_bits[seg] = total
        else:
            q = (a * raw_bits) >> 5
            acc = np.uint64(0)
            pend = 0
            # Within a chunk the word being filled is always the chunk's own, so it is written after every
            # element (a partial word is rewritten until it is full): no branch on the data.
            e = a
            per = 32 // raw_bits  # values per step of the accumulator: at most 32 new bits
            step_bits = per * raw_bits
            while e + per <= b:
                v = np.int64(0)
                for i in range(e, e + per):
                    x = np.int64(words[i])
                    v = (v << raw_bits) | (((x >> sign_shift) & 1) << shift) | (x & low_mask)
                acc = (acc << np.uint64(step_bits)) | np.uint64(v)
                pend += step_bits
                full = pend >= 32
                pend -= 32 if full else 0
                out_raw[q] = np.uint32((acc >> np.uint64(pend)) & np.uint64(0xFFFFFFFF))
                q += 1 if full else 0
                e += per
            while e < b:
                x = np.int64(words[e])
                rv = (((x >> sign_shift) & 1) << shift) | (x & low_mask)
                acc = (acc << np.uint64(raw_bits)) | np.uint64(rv)
                pend += raw_bits
                full = pend >= 32
                pend -= 32 if full else 0
                out_raw[q] = np.uint32((acc >> np.uint64(pend)) & np.uint64(0xFFFFFFFF))
                q += 1 if full else 0
                e += 1
            if pend > 0:
                out_raw[q] = np.uint32((acc << np.uint64(32 - pend)) & np.uint64(0xFFFFFFFF))


@_jit
def tile_word_offsets(seg_bits, segs_per_tile):  # pragma: no cover - compiled
    """``tile_words`` (uint32, n_tiles + 1): each tile starts on the word after the previous one ends."""
    n_tiles = seg_bits.size // segs_per_tile
    out = np.empty(n_tiles + 1, dtype=np.uint32)
    w = np.int64(0)
    out[0] = 0
    for t in range(n_tiles):
        bits = np.int64(0)
        for g in range(segs_per_tile):
            bits += seg_bits[t * segs_per_tile + g]
        w += (bits + 31) >> 5
        out[t + 1] = w
    return out


@_pjit
def assemble(scratch, seg_cap, seg_bits, segs_per_tile, tile_words, out_codes):  # pragma: no cover - compiled
    """Concatenate each tile's segments (bit strings, no gap) into the code stream at ``tile_words``."""
    n_tiles = tile_words.size - 1
    for t in nb.prange(n_tiles):
        wp = np.int64(tile_words[t])
        acc = np.uint64(0)
        pend = 0
        for g in range(segs_per_tile):
            seg = t * segs_per_tile + g
            bits = seg_bits[seg]
            src = seg * seg_cap
            nfull = bits >> 5
            for i in range(nfull):
                acc = (acc << np.uint64(32)) | np.uint64(scratch[src + i])
                out_codes[wp] = np.uint32((acc >> np.uint64(pend)) & np.uint64(0xFFFFFFFF))
                wp += 1
            tail = bits & 31
            if tail:
                acc = (acc << np.uint64(tail)) | np.uint64(scratch[src + nfull] >> np.uint32(32 - tail))
                pend += tail
                if pend >= 32:
                    pend -= 32
                    out_codes[wp] = np.uint32((acc >> np.uint64(pend)) & np.uint64(0xFFFFFFFF))
                    wp += 1
        if pend > 0:
            out_codes[wp] = np.uint32((acc << np.uint64(32 - pend)) & np.uint64(0xFFFFFFFF))


@_jit
def _gf2_times(mat, vec):  # pragma: no cover - compiled
    s = np.uint32(0)
    i = 0
    while vec:
        if vec & np.uint32(1):
            s ^= mat[i]
        vec >>= np.uint32(1)
        i += 1
    return s


@_jit
def _gf2_square(square, mat):  # pragma: no cover - compiled
    for i in range(32):
        square[i] = _gf2_times(mat, mat[i])


@_jit
def crc32_combine(crc1, crc2, len2):  # pragma: no cover - compiled
    """CRC-32 of A + B from crc32(A), crc32(B) and len(B) (zlib's crc32_combine, GF(2) matrix method)."""
    if len2 <= 0:
        return crc1
    even = np.empty(32, dtype=np.uint32)
    odd = np.empty(32, dtype=np.uint32)
    odd[0] = np.uint32(0xEDB88320)  # the CRC-32 polynomial, reflected: the operator for one zero bit
    row = np.uint32(1)
    for i in range(1, 32):
        odd[i] = row
        row <<= np.uint32(1)
    _gf2_square(even, odd)  # two zero bits
    _gf2_square(odd, even)  # four zero bits
    c = np.uint32(crc1)
    n = len2
    while True:
        _gf2_square(even, odd)  # first pass: one zero byte
        if n & 1:
            c = _gf2_times(even, c)
        n >>= 1
        if n == 0:
            break
        _gf2_square(odd, even)
        if n & 1:
            c = _gf2_times(odd, c)
        n >>= 1
        if n == 0:
            break
    return c ^ np.uint32(crc2)
