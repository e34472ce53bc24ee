"""The compiled encoder and decoder kernels against their references (same bytes, same tables, same words).

The blob's bytes are fixed by docs/FORMAT.md; these tests pin the compiled pieces to the slow, obvious
implementations they replace: package-merge, the split choice, the decode tables, the CRC combination,
and the pure-Python decoder for odd tile shapes. They also check that a corrupt stream is reported, not
read out of bounds, and that the work split over threads changes nothing.
"""

from __future__ import annotations

import dataclasses
import zlib

import numba
import numpy as np
import pytest
import torch

from floatzip.codec import lanes
from floatzip.codec.encode import _crc32, choose_split, compress_tensor
from floatzip.codec.huffman import code_lengths, decode_tables
from floatzip.decode import cpu, decode_words
from floatzip.errors import IntegrityError
from floatzip.format.spec import LAYOUTS, MAX_CODE_LEN
from floatzip.format.tensor import CompressedTensor

NP_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def _histograms(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        size = int(rng.choice([2, 16, 256, 4096]))
        used = int(rng.integers(1, size + 1))
        h = np.zeros(size, dtype=np.int64)
        idx = rng.choice(size, used, replace=False)
        if i % 3 == 0:  # many ties
            h[idx] = rng.integers(1, 4, used)
        elif i % 3 == 1:  # very skewed: long codes, the 16-bit cap binds
            h[idx] = (rng.pareto(0.4, used) * 5 + 1).astype(np.int64)
        else:
            h[idx] = rng.integers(1, 1_000_000, used)
        out.append(h)
    return out


@pytest.mark.parametrize("hist", _histograms(0, 60))
def test_package_merge_matches_reference(hist: np.ndarray) -> None:
    assert np.array_equal(lanes._package_merge(hist, MAX_CODE_LEN), code_lengths(hist))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_choose_split_matches_reference(layout) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(layout.code)
    for _ in range(10):
        size = 1 << (layout.exp_bits + layout.max_k)
        hist = np.zeros(size, dtype=np.int64)
        idx = rng.choice(size, int(rng.integers(1, size + 1)), replace=False)
        hist[idx] = (rng.pareto(0.7, idx.size) * 20 + 1).astype(np.int64)
        k, lengths = lanes.choose_split(hist, layout.max_k, layout.man_bits, MAX_CODE_LEN)
        k_ref, lengths_ref = choose_split(hist, layout)
        assert k == k_ref
        assert np.array_equal(lengths, lengths_ref)


@pytest.mark.parametrize("hist", _histograms(1, 30))
def test_decode_tables_match_reference(hist: np.ndarray) -> None:
    lengths = code_lengths(hist)
    ref = decode_tables(lengths)
    got = cpu._tables(lengths, MAX_CODE_LEN, 12)
    want_all = (ref.primary, ref.limits, ref.first_code, ref.first_index, ref.symbols)
    for want, have in zip(want_all, got, strict=True):
        assert want.dtype == have.dtype
        assert np.array_equal(want, have)


@pytest.mark.parametrize(("n1", "n2"), [(0, 7), (7, 0), (1, 1), (1000, 3), (12345, 65537)])
def test_crc32_combine(n1: int, n2: int) -> None:
    rng = np.random.default_rng(n1 + n2)
    a = rng.integers(0, 256, n1, dtype=np.uint8).tobytes()
    b = rng.integers(0, 256, n2, dtype=np.uint8).tobytes()
    assert int(lanes.crc32_combine(zlib.crc32(a), zlib.crc32(b), n2)) == zlib.crc32(a + b)


def test_parallel_crc_matches_zlib() -> None:
    data = np.random.default_rng(3).integers(0, 256, (9 << 20) + 5, dtype=np.uint8)
    assert _crc32(data) == zlib.crc32(data)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_schedule_deals_every_item_once(threads: int) -> None:
    costs = np.array([5, 1, 9, 9, 2, 2, 7, 1, 1, 3], dtype=np.int64)
    order = lanes.schedule(costs, threads)
    used = min(threads, costs.size)
    assert order.size % used == 0
    assert sorted(int(i) for i in order if i >= 0) == list(range(costs.size))
    per = order.size // used
    loads = [int(costs[[i for i in order[t * per : (t + 1) * per] if i >= 0]].sum()) for t in range(used)]
    assert max(loads) - min(loads) <= int(costs.max())


# odd tiles: one lane, lanes with no symbols in the last tile, a partial tile smaller than one step
TILES = [(1, 32), (32, 1), (8, 12), (256, 3), (1024, 32)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize(("lanes_", "steps"), TILES)
def test_compiled_encoder_against_reference_decoder(layout, lanes_: int, steps: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(lanes_ * steps + layout.code)
    n = 3 * lanes_ * steps + 17
    words = rng.integers(0, 1 << layout.bits, n, dtype=np.uint64).astype(NP_UINT[layout.nbytes])
    # a skewed exponent for long codes, plus every special pattern (NaN payloads, inf, -0, subnormals)
    skew = np.minimum(rng.geometric(0.45, n), (1 << layout.exp_bits) - 1).astype(np.uint64)
    words = (words & ~np.array(((1 << layout.exp_bits) - 1) << layout.man_bits, dtype=words.dtype)) | (
        skew << np.uint64(layout.man_bits)
    ).astype(words.dtype)
    t = torch.from_numpy(words.copy()).view(layout.torch_dtype)
    ct = CompressedTensor.from_bytes(compress_tensor(t, lanes=lanes_, steps=steps).to_bytes())
    ref = np.empty(n, dtype=words.dtype)
    fast = np.empty(n, dtype=words.dtype)
    decode_words(ct, ref, backend="reference")
    decode_words(ct, fast, backend="cpu")
    assert np.array_equal(ref, words)
    assert np.array_equal(fast, words)


def test_thread_count_changes_nothing() -> None:
    g = torch.Generator().manual_seed(5)
    t = (torch.randn(147_456 + 333, generator=g) * 0.02).to(torch.bfloat16)
    before = numba.get_num_threads()
    blobs = []
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            blob = compress_tensor(t).to_bytes()
            blobs.append(blob)
            out = np.empty(t.numel(), np.uint16)
            decode_words(CompressedTensor.from_bytes(blob), out)
            assert np.array_equal(out, t.view(torch.int16).numpy().view(np.uint16))
    finally:
        numba.set_num_threads(before)
    assert all(b == blobs[0] for b in blobs)


def _record(seed: int) -> CompressedTensor:
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(40_000, generator=g) * 0.05).to(torch.bfloat16)
    return compress_tensor(t, lanes=64, steps=128)


@pytest.mark.parametrize("seed", range(12))
def test_corrupt_stream_raises_and_stays_in_bounds(seed: int) -> None:
    """Records built in memory skip the blob checksum: the decoder itself must catch a bad stream."""
    ct = _record(seed)
    rng = np.random.default_rng(seed)
    codes = ct.codes.copy()
    lane_bits = ct.lane_bits.copy()
    if seed % 3 == 0:  # flip bits in the code stream: lanes end in the wrong place or hit unassigned codes
        hits = rng.integers(0, codes.size - 1, 8)
        codes[hits] ^= rng.integers(1, 1 << 32, 8, dtype=np.uint64).astype(np.uint32)
    elif seed % 3 == 1:  # move a lane's stored size
        i = int(rng.integers(0, lane_bits.size))
        lane_bits[i] = lane_bits[i] + 1 if lane_bits[i] < 60000 else lane_bits[i] - 1
    else:  # all ones: long or unassigned codes everywhere, reads run toward the end of the array
        codes[:-1] = 0xFFFFFFFF
    bad = dataclasses.replace(ct, lane_bits=lane_bits, codes=codes)
    out = np.empty(ct.numel, np.uint16)
    try:
        cpu.decode(bad, out)
    except IntegrityError:
        return
    # flipped bits may turn codes into others of the same total length: then only the data CRC can tell
    assert seed % 3 == 0


def test_empty_code_stream_is_corrupt() -> None:
    ct = _record(0)
    zeros = {"tile_words": np.zeros_like(ct.tile_words), "lane_bits": np.zeros_like(ct.lane_bits)}
    bad = dataclasses.replace(ct, codes=np.zeros(1, np.uint32), **zeros)
    with pytest.raises(IntegrityError):
        cpu.decode(bad, np.empty(ct.numel, np.uint16))


@pytest.mark.parametrize(
    "change",
    [
        {"code_lengths": "too long"},
        {"code_lengths": "kraft"},
        {"raw": "short"},
        {"lane_bits": "short"},
    ],
    ids=["length-over-16", "kraft-above-one", "raw-too-short", "lane-bits-too-short"],
)
def test_record_that_does_not_fit_its_shape_is_refused(change: dict[str, str]) -> None:
    ct = _record(1)
    (field, how), *_ = change.items()
    if field == "code_lengths":
        lengths = ct.code_lengths.copy()
        used = np.flatnonzero(lengths)
        lengths[used[0]] = 40 if how == "too long" else 1
        lengths[used[1]] = lengths[used[1]] if how == "too long" else 1
        lengths[used[2]] = lengths[used[2]] if how == "too long" else 1
        bad = dataclasses.replace(ct, code_lengths=lengths)
    elif field == "raw":
        bad = dataclasses.replace(ct, raw=ct.raw[:-2].copy())
    else:
        bad = dataclasses.replace(ct, lane_bits=ct.lane_bits[:-1].copy())
    with pytest.raises(IntegrityError):
        cpu.decode(bad, np.empty(ct.numel, np.uint16))
