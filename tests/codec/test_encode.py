"""Round trips of compress_tensor for every dtype and every kind of bit pattern, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import floatzip
from floatzip.codec.huffman import code_lengths
from floatzip.decode import cuda
from floatzip.format.spec import LAYOUTS, FloatLayout

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32}
NP_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}
STEPS = [8, 16, 24, 128]


def special_words(layout: FloatLayout) -> list[int]:
    """±0, ±inf, NaNs with payloads, the smallest subnormals, the largest normals, every exponent."""
    b, m = layout.bits, layout.man_bits
    sign = 1 << (b - 1)
    top = ((1 << layout.exp_bits) - 1) << m
    words = [
        0,
        sign,
        top,
        sign | top,
        top | 1,
        top | (1 << (m - 1)),
        sign | top | ((1 << m) - 1),
        1,
        sign | 1,
    ]
    words += [(e << m) | (e * 2654435761 % (1 << m)) for e in range(1 << layout.exp_bits)]
    return [w & ((1 << b) - 1) for w in words]


def as_tensor(words: np.ndarray, layout: FloatLayout) -> torch.Tensor:
    return torch.from_numpy(words.astype(NP_UINT[layout.nbytes])).view(layout.torch_dtype)


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    view = INT_VIEW[a.element_size()]
    assert torch.equal(a.view(view), b.view(view))


def emulated_gpu_decode(ct: floatzip.CompressedTensor) -> torch.Tensor:
    """The tensor as the CUDA kernel decodes it: its batch, decoded on the CPU by the kernel's own code."""
    hb = cuda.host_batch([ct])
    out = np.zeros(max(hb.nbytes, 16), dtype=np.uint8)
    assert not cuda.emulate(hb, out).any()
    return cuda.tensor_views(hb.offsets, hb.dtypes, hb.shapes, torch.from_numpy(out))[0]


@st.composite
def word_arrays(draw: st.DrawFn, layout: FloatLayout) -> np.ndarray:
    n = draw(st.integers(0, 700))
    kind = draw(st.sampled_from(["any", "special", "gaussian", "constant"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "any":
        return rng.integers(0, 1 << layout.bits, n, dtype=np.uint64)
    if kind == "special":
        pool = np.array(special_words(layout), dtype=np.uint64)
        return pool[rng.integers(0, pool.size, n)]
    if kind == "constant":
        return np.full(n, draw(st.sampled_from(special_words(layout))), dtype=np.uint64)
    x = torch.from_numpy(rng.standard_normal(n) * draw(st.sampled_from([1e-3, 0.02, 1.0, 300.0])))
    return x.to(layout.torch_dtype).view(INT_VIEW[layout.nbytes]).numpy().astype(np.int64).astype(np.uint64) & (
        (1 << layout.bits) - 1
    )


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.name)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_round_trip_is_bit_exact(layout: FloatLayout, data: st.DataObject) -> None:
    words = data.draw(word_arrays(layout))
    steps = data.draw(st.sampled_from(STEPS))
    t = as_tensor(words, layout)
    shape = data.draw(st.sampled_from([(t.numel(),), (1, t.numel())]))
    t = t.reshape(shape)
    before = t.clone()
    ct = floatzip.compress_tensor(t, steps=steps)
    assert_bits_equal(t, before)  # the input is never modified
    assert ct.shape == tuple(shape) and ct.dtype == layout.torch_dtype
    for backend in ("cpu", "reference"):
        assert_bits_equal(floatzip.decompress_tensor(ct, backend=backend), t)
    assert_bits_equal(emulated_gpu_decode(ct), t)
    again = floatzip.CompressedTensor.from_bytes(ct.to_bytes())
    assert again.to_bytes() == ct.to_bytes()
    assert_bits_equal(floatzip.decompress_tensor(again), t)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.name)
def test_every_exponent_and_special_value_in_one_tensor(layout: FloatLayout) -> None:
    words = np.array(special_words(layout) * 337, dtype=np.uint64)
    t = as_tensor(words, layout).reshape(-1, 1)
    ct = floatzip.compress_tensor(t, steps=8)
    assert ct.n_tiles > 1
    assert_bits_equal(floatzip.decompress_tensor(ct), t)
    assert_bits_equal(emulated_gpu_decode(ct), t)


def test_long_codes_reach_the_16_bit_cap_and_decode() -> None:
    # a geometric exponent distribution: rare exponents get the longest codes
    exps = np.concatenate([np.full(2 ** max(0, 17 - i), 100 + i) for i in range(20)])
    words = (exps.astype(np.uint64) << 7) | (np.arange(exps.size, dtype=np.uint64) % 128)
    t = as_tensor(np.random.default_rng(1).permutation(words), LAYOUTS[0])
    ct = floatzip.compress_tensor(t, steps=64)
    assert ct.max_code_len == 16
    assert_bits_equal(floatzip.decompress_tensor(ct), t)
    assert_bits_equal(floatzip.decompress_tensor(ct, backend="reference"), t)
    assert_bits_equal(emulated_gpu_decode(ct), t)


def test_single_symbol_and_empty_tensors() -> None:
    ones = torch.ones(5000, dtype=torch.bfloat16)
    ct = floatzip.compress_tensor(ones)
    assert int((ct.code_lengths > 0).sum()) == 1
    assert ct.shift == 3  # all four extra mantissa bits go into the (free) symbol
    assert ct.coded_bits_per_weight < 1 + ct.raw_bits + 0.01  # one bit of code per weight
    assert_bits_equal(floatzip.decompress_tensor(ct), ones)
    empty = torch.empty(0, 3, dtype=torch.float16)
    ce = floatzip.compress_tensor(empty)
    assert ce.ratio == 1.0
    assert_bits_equal(floatzip.decompress_tensor(ce), empty)
    assert_bits_equal(floatzip.decompress_tensor(floatzip.CompressedTensor.from_bytes(ce.to_bytes())), empty)


def test_non_contiguous_input_and_out_buffer() -> None:
    base = (torch.randn(64, 96) * 0.02).to(torch.bfloat16)
    t = base.t()
    ct = floatzip.compress_tensor(t, steps=8)
    out = torch.empty(96, 64, dtype=torch.bfloat16)
    res = floatzip.decompress_tensor(ct, out=out)
    assert res.data_ptr() == out.data_ptr()
    assert_bits_equal(out, t.contiguous())


def test_split_choice_is_the_cheapest() -> None:
    """The core's split (mantissa bits joined to the exponent) gives the smallest coded size of all splits."""
    layout = LAYOUTS[0]
    rng = np.random.default_rng(0)
    t = (torch.from_numpy(rng.standard_normal(50000)) * 0.02).to(torch.bfloat16)
    w = t.view(torch.int16).numpy().view(np.uint16)
    wide = (w >> (layout.man_bits - layout.max_k)).astype(np.int64) & ((1 << (8 + layout.max_k)) - 1)
    hist = np.bincount(wide, minlength=1 << (8 + layout.max_k))
    costs = []
    for kk in range(layout.max_k + 1):
        merged = hist.reshape(-1, 1 << (layout.max_k - kk)).sum(axis=1)
        lens = code_lengths(merged)
        table = -(-merged.size // 8) + -(-int((lens > 0).sum()) // 2)
        costs.append(int((merged * lens).sum()) + w.size * (layout.man_bits - kk + 1) + 8 * table)
    ct = floatzip.compress_tensor(t)
    assert costs[layout.man_bits - ct.shift] == min(costs)


def test_ratio_on_gaussian_bf16_is_about_two_thirds() -> None:
    t = (torch.randn(512, 512, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    ct = floatzip.compress_tensor(t)
    assert 0.6 < ct.ratio < 0.7
    assert ct.nbytes == len(ct.to_bytes())


def test_wrong_inputs_are_refused() -> None:
    with pytest.raises(floatzip.InputError, match="floating"):
        floatzip.compress_tensor(torch.arange(10))
    with pytest.raises(floatzip.InputError, match="tile"):
        floatzip.compress_tensor(torch.zeros(10), steps=3)
    with pytest.raises(floatzip.InputError, match=r"torch\.Tensor"):
        floatzip.compress_tensor(np.zeros(3))  # type: ignore[arg-type]
    ct = floatzip.compress_tensor(torch.zeros(10))
    with pytest.raises(floatzip.InputError, match="out must"):
        floatzip.decompress_tensor(ct, out=torch.empty(11))
    with pytest.raises(floatzip.BackendError, match="unknown decode backend"):
        floatzip.decompress_tensor(ct, backend="nope")


def test_parallel_tiles_never_clobber_each_other() -> None:
    # thousands of word-aligned tiles packed in parallel: a write into a neighbour's first word would
    # race; the same input must give the same bytes every time, and decode
    t = (torch.randn(200_000, generator=torch.Generator().manual_seed(3)) * 0.02).to(torch.bfloat16)
    blobs = {floatzip.compress_tensor(t, steps=8).to_bytes() for _ in range(4)}
    assert len(blobs) == 1
    assert_bits_equal(floatzip.decompress_tensor(floatzip.CompressedTensor.from_bytes(blobs.pop())), t)


def skewed_words(layout: FloatLayout, n: int, k: int, p0: float, n_exp: int, seed: int) -> torch.Tensor:
    """Random sign, one of n_exp exponents, the top k mantissa bits 0 with probability about p0, the rest uniform:
    data whose best split codes about k mantissa bits (so raw fields of every width arise)."""
    rng = np.random.default_rng(seed)
    m, e = layout.man_bits, layout.exp_bits
    exps = (1 << (e - 1)) - n_exp + rng.integers(0, n_exp, n)
    top = np.where(rng.random(n) < p0, 0, rng.integers(0, 1 << k, n)) if k else np.zeros(n, np.int64)
    words = (rng.integers(0, 2, n) << (e + m)) | (exps << m) | (top << (m - k)) | rng.integers(0, 1 << (m - k), n)
    return torch.from_numpy(words.astype(np.uint16).view(np.int16)).view(layout.torch_dtype)


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_large_tensors_round_trip_for_every_raw_width(name: str) -> None:
    # tensors of >= 2^17 16-bit elements take the encoder's word-table path, compiled once per raw width
    layout = next(lay for lay in LAYOUTS if lay.torch_name == name)
    widths = set()
    for k in range(layout.man_bits + 1):
        for p0, n_exp in ((0.5, 8), (0.9, 1), (0.99, 8)):
            t = skewed_words(layout, 140_000, k, p0, n_exp, seed=k)
            ct = floatzip.compress_tensor(t)
            widths.add(ct.raw_bits)
            assert_bits_equal(floatzip.decompress_tensor(ct), t)
    assert widths == set(range(4, layout.man_bits + 2)), widths
