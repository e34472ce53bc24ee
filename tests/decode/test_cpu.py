"""The compiled core's own pieces: CRC-32C, code lengths, threads, tile-by-tile decoding, bounds."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import floatzip
from floatzip import _core
from floatzip.codec.huffman import code_lengths
from floatzip.decode import cpu
from floatzip.decode.reference import crc32c


@given(st.binary(max_size=3000), st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_crc32c_matches_the_bytewise_definition_and_chains(data: bytes, seed: int) -> None:
    want = crc32c(data)
    for path in ["auto", *_core.crc32c_paths()]:
        assert _core.crc32c(data, path=path) == want, path
    cut = seed % (len(data) + 1)
    for path in ["auto", *_core.crc32c_paths()]:
        assert _core.crc32c(data[cut:], _core.crc32c(data[:cut]), path=path) == want, path


def test_crc32c_known_vector_and_long_unaligned_buffers() -> None:
    assert _core.crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    big = np.random.default_rng(0).integers(0, 256, 3 * 8192 * 5 + 77, dtype=np.uint8)
    for off in (0, 1, 5, 256, 1000):
        for n in (len(big) - off, 256, 257, 511, 1024, 4096 + 3):
            want = _core.crc32c(big[off : off + n], path="portable")
            for path in ["auto", *_core.crc32c_paths()]:
                assert _core.crc32c(big[off : off + n], 0x1234567, path=path) == _core.crc32c(
                    big[off : off + n], 0x1234567, path="portable"
                )
                assert _core.crc32c(big[off : off + n], path=path) == want, (path, off, n)
    assert zlib.crc32(b"x") != _core.crc32c(b"x")  # it is not zlib's
    with pytest.raises(ValueError, match="path"):
        _core.crc32c(b"x", path="nope")


def test_this_machine_runs_the_fast_crc32c_paths() -> None:
    # the x86-64 CI machines have SSE4.2; AVX-512 + VPCLMULQDQ where the CPU has them (this project's do)
    import platform

    if platform.machine() in ("x86_64", "AMD64"):
        assert "instruction" in _core.crc32c_paths()


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=300), st.sampled_from([12, 16, 24]))
@settings(max_examples=150, deadline=None)
def test_code_lengths_are_optimal_and_limited(counts: list[int], limit: int) -> None:
    used = sum(c > 0 for c in counts)
    if used > 1 << limit:
        return
    ours = np.frombuffer(_core.code_lengths(counts, limit), dtype=np.uint8)
    ref = code_lengths(np.array(counts), max_len=limit)
    c = np.array(counts, dtype=np.int64)
    assert int((c * ours).sum()) == int((c * ref).sum())  # the same (optimal) cost
    assert int(ours.max(initial=0)) <= limit
    assert ((ours > 0) == (c > 0)).all()
    assert sum(2.0 ** -int(lv) for lv in ours if lv) <= 1.0


def test_output_does_not_depend_on_the_thread_count() -> None:
    t = (torch.randn(600_000, generator=torch.Generator().manual_seed(2)) * 0.02).to(torch.bfloat16)
    blobs = {floatzip.compress_tensor(t, threads=n).to_bytes() for n in (1, 2, 3)}
    assert len(blobs) == 1
    ct = floatzip.CompressedTensor.from_bytes(blobs.pop())
    words = t.view(torch.int16).numpy().view(np.uint16)
    for n in (1, 2):
        out = np.zeros_like(words)
        _core.decode(ct.to_bytes(), out, n)
        assert np.array_equal(out, words)


def test_tiles_decode_on_their_own() -> None:
    """Random access: any run of tiles decodes without the others (embedding rows, sharding)."""
    t = (torch.randn(1000, 333, generator=torch.Generator().manual_seed(4)) * 0.02).to(torch.bfloat16)
    ct = floatzip.compress_tensor(t, steps=16)
    words = t.reshape(-1).view(torch.int16).numpy().view(np.uint16)
    tile = ct.tile_elements
    for first, count in [(0, 1), (3, 2), (ct.n_tiles - 1, 1), (0, ct.n_tiles)]:
        lo, hi = first * tile, min(words.size, (first + count) * tile)
        out = np.zeros(hi - lo, dtype=np.uint16)
        cpu.decode_tiles(ct, first, count, out)
        assert np.array_equal(out, words[lo:hi])
    with pytest.raises(floatzip.FormatError, match="out of bounds"):
        cpu.decode_tiles(ct, ct.n_tiles, 1, np.zeros(1, dtype=np.uint16))


def test_lane_starts_follow_the_tile_index() -> None:
    ct = floatzip.compress_tensor((torch.randn(40000) * 0.02).to(torch.bfloat16), steps=16)
    start, end = _core.lane_starts(ct.to_bytes(), 1)
    assert start[0] == 32 * int(ct.section("tile_words")[1])
    assert all(e == s for s, e in zip(start[1:], end[:-1], strict=True))  # lanes follow each other, no gap
    assert -(-(end[-1] - start[0]) // 32) == int(ct.section("tile_words")[2] - ct.section("tile_words")[1])


PATH_SCRIPT = """
import sys, numpy as np, torch, floatzip
from floatzip.decode import cuda
g = torch.Generator().manual_seed(7)
cases = [(torch.randn(300_000, generator=g) * 0.02).to(torch.bfloat16),        # several full tiles, raw width 6
         (torch.randn(200_000, generator=g) * 0.1).to(torch.float16),
         (torch.randn(70_001, generator=g) * 0.02).to(torch.bfloat16)]         # a partial last tile
# raw width 4 (k = 4): the top four mantissa bits skewed, as in trained weights
exp = 120 + torch.clamp((torch.randn(250_000, generator=g) * 2).round(), -8, 6).to(torch.int32)
top = torch.clamp(torch.distributions.Geometric(0.5).sample((250_000,)), max=15).to(torch.int32)
low = torch.randint(0, 8, (250_000,), generator=g, dtype=torch.int32)
sign = torch.randint(0, 2, (250_000,), generator=g, dtype=torch.int32)
skewed = ((sign << 15) | (exp << 7) | (top << 3) | low).to(torch.int16).view(torch.bfloat16)
assert floatzip.compress_tensor(skewed).raw_bits == 4
cases.append(skewed)
exps = torch.clamp(torch.distributions.Geometric(0.3).sample((120_000,)), max=40).to(torch.int32)
cases.append(((100 + exps) << 7 | torch.randint(0, 128, (120_000,), generator=g, dtype=torch.int32))
             .to(torch.int16).view(torch.bfloat16))                             # long codes
for t in cases:
    for mcl in (16, 12):
        ct = floatzip.compress_tensor(t, max_code_len=mcl)
        out = floatzip.decompress_tensor(ct)
        assert torch.equal(out.view(torch.int16), t.view(torch.int16)), (t.dtype, mcl, ct.raw_bits)
print("OK")
"""


@pytest.mark.parametrize("path", ["lane", "portable", "auto"])
def test_every_cpu_decode_path_is_bit_exact(path: str) -> None:
    """The 16-bit tile decoders the core picks between (FLOATZIP_CPU_PATH is read once per process)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FLOATZIP_CPU_PATH": path}
    proc = subprocess.run([sys.executable, "-c", PATH_SCRIPT], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stdout + proc.stderr[-2000:]
