from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floatzip.codec.huffman import canonical_codes, check_lengths, code_lengths, decode_tables
from floatzip.errors import FormatError


def huffman_cost(counts: list[int]) -> int:
    """Total bits of an unconstrained Huffman code: the textbook heap construction."""
    heap = [c for c in counts if c > 0]
    if len(heap) < 2:
        return sum(heap)
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


counts_st = st.lists(st.integers(0, 10**6), min_size=1, max_size=300)


@given(counts_st)
@settings(max_examples=200, deadline=None)
def test_package_merge_is_optimal_without_a_binding_cap(counts: list[int]) -> None:
    lengths = code_lengths(counts, max_len=32)
    c = np.asarray(counts)
    assert ((lengths > 0) == (c > 0)).all() or (c > 0).sum() == 0
    if (c > 0).sum() >= 2:
        assert int((lengths.astype(np.int64) * c).sum()) == huffman_cost(counts)


@given(counts_st, st.integers(9, 16))
@settings(max_examples=200, deadline=None)
def test_lengths_respect_the_cap_and_form_a_complete_code(counts: list[int], cap: int) -> None:
    lengths = code_lengths(counts, max_len=cap)
    used = lengths[lengths > 0].astype(np.int64)
    assert used.size == sum(1 for x in counts if x > 0)
    if used.size >= 2:
        assert used.max() <= cap
        assert int((1 << (cap - used)).sum()) == 1 << cap  # Kraft sum exactly 1
    check_lengths(lengths, cap)


def test_a_binding_cap_costs_little_and_never_beats_huffman() -> None:
    counts = [2**i for i in range(30)]  # unconstrained Huffman would need 29-bit codes
    capped = code_lengths(counts, max_len=16)
    assert capped.max() == 16
    assert int((capped.astype(np.int64) * counts).sum()) >= huffman_cost(counts)


@given(counts_st)
@settings(max_examples=100, deadline=None)
def test_canonical_codes_are_prefix_free_and_tables_decode_them(counts: list[int]) -> None:
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    used = np.flatnonzero(lengths)
    words = {format(int(codes[s]), f"0{int(lengths[s])}b") for s in used}
    assert len(words) == used.size
    for a in words:
        assert not any(b != a and b.startswith(a) for b in words)
    tables = decode_tables(lengths)
    for s in used:
        n = int(lengths[s])
        v = int(codes[s]) << (16 - n)  # left-justified, the rest zero
        length = 1 + int((v >= tables.limits.astype(np.int64)).sum())
        assert length == n
        assert tables.symbols[tables.first_index[n] + (v >> (16 - n)) - tables.first_code[n]] == s
        if n <= 12:
            assert tables.primary[v >> 4] == (s << 5) | n


def test_single_symbol_gets_one_bit_and_empty_gets_none() -> None:
    assert code_lengths([0, 5, 0]).tolist() == [0, 1, 0]
    assert code_lengths([0, 0]).tolist() == [0, 0]


def test_check_lengths_rejects_an_oversubscribed_code() -> None:
    with pytest.raises(FormatError, match="Kraft"):
        check_lengths(np.array([1, 1, 1], dtype=np.uint8))
    with pytest.raises(FormatError, match="exceeds"):
        check_lengths(np.array([17, 1], dtype=np.uint8))
