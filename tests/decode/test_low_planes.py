"""Decoding version 3 blobs (F32 with coded low planes): tile ranges, the GPU batch (emulated: the kernel's own
lane code on the CPU, bit for bit), its checks, the compiled kernels, and the fused GEMV's refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import floatzip
from floatzip import _core
from floatzip.decode import _nvrtc, cpu, cuda, gemv
from floatzip.errors import InputError, IntegrityError
from tests.codec.test_low_planes import low_plane_f32


def words_of(t: torch.Tensor) -> np.ndarray:
    return t.reshape(-1).view(torch.int32).numpy().view(np.uint32)


@pytest.mark.parametrize("planes", [1, 2])
def test_tile_ranges_decode_on_their_own(planes: int) -> None:
    """Random access (embedding rows): any run of tiles of a v3 blob decodes without the others."""
    t = low_plane_f32(1000 * 97, torch.Generator().manual_seed(1), "both").reshape(1000, 97)
    ct = floatzip.compress_tensor(t, steps=16, planes=planes)
    words, tile = words_of(t), ct.tile_elements
    assert ct.version == 3 and ct.n_tiles > 10
    for first, count in [(0, 1), (3, 2), (ct.n_tiles - 1, 1), (1, ct.n_tiles - 1), (0, ct.n_tiles)]:
        lo, hi = first * tile, min(words.size, (first + count) * tile)
        out = np.zeros(hi - lo, dtype=np.uint32)
        cpu.decode_tiles(ct, first, count, out)
        assert np.array_equal(out, words[lo:hi])


def test_a_batch_of_v2_and_v3_records_decodes_bit_exact() -> None:
    g = torch.Generator().manual_seed(2)
    ts = [
        low_plane_f32(50_000, g, "both"),
        low_plane_f32(40_001, g, "skewed"),
        low_plane_f32(30_000, g, "long"),
        torch.randn(7000, generator=g),  # F32 without planes: version 2, the <32, 0> kernel
        (torch.randn(9000, generator=g) * 0.02).to(torch.bfloat16),
        torch.randn(5000, generator=g).to(torch.float8_e4m3fn),
    ]
    cts = [floatzip.compress_tensor(t, steps=16) for t in ts]
    assert [ct.planes for ct in cts] == [2, 1, 2, 0, 0, 0]
    hb = cuda.host_batch(cts)
    planes = {(launch.bits, launch.planes) for launch in hb.launches}
    assert {(32, 0), (32, 1), (32, 2)} <= planes
    for launch in hb.launches:
        assert launch.kernel in _nvrtc.decode_kernel_names()
        jobs = hb.arrays["jobs"][launch.first_job : launch.first_job + launch.n_jobs]
        n_codes = hb.arrays["longcs"].size // int(_core.LONG_CODES_BYTES)
        if launch.planes:  # each job's plane tables lie after the codes' primaries
            assert (jobs["planes_at"] >= n_codes).all()
    out = np.zeros(hb.nbytes, dtype=np.uint8)
    assert not cuda.emulate(hb, out).any()
    for t, view in zip(ts, cuda.tensor_views(hb.offsets, hb.dtypes, hb.shapes, torch.from_numpy(out)), strict=True):
        assert torch.equal(view.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))


def test_the_batch_refuses_tiles_whose_planes_do_not_match_the_kernel() -> None:
    ct = floatzip.compress_tensor(low_plane_f32(20_000, torch.Generator().manual_seed(3), "both"), steps=8)
    hb = cuda.host_batch([ct])
    (launch,) = hb.launches
    a = hb.arrays

    def check(arrays: dict[str, np.ndarray], planes: int) -> None:
        _core.validate_batch(arrays["jobs"], arrays["tiles"], arrays["codes"], arrays["raw"], arrays["deltas"],
                             arrays["primaries"], arrays["longcs"], arrays["long_patterns"], arrays["long_at"],
                             hb.nbytes, 32, planes)  # fmt: skip

    check(a, 2)
    with pytest.raises(ValueError, match="low planes do not match"):
        check(a, 1)
    with pytest.raises(ValueError, match="F32 only"):
        _core.validate_batch(a["jobs"], a["tiles"], a["codes"], a["raw"], a["deltas"], a["primaries"], a["longcs"],
                             a["long_patterns"], a["long_at"], hb.nbytes, 16, 2)  # fmt: skip
    jobs = cuda._aligned_copy(a["jobs"])
    jobs["planes_at"][0] = a["primaries"].size // 4096  # one slot past the end
    with pytest.raises(ValueError, match="plane tables are out of range"):
        check({**a, "jobs": jobs}, 2)
    tiles = cuda._aligned_copy(a["tiles"])
    tiles["shift"][0] = 23 | 3 << 8
    with pytest.raises(ValueError, match="low planes"):
        check({**a, "tiles": tiles}, 2)
    with pytest.raises(ValueError, match="low planes"):  # the emulation validates first, as the launch does
        _core.decode_batch_host(jobs, a["tiles"], a["codes"], a["raw"], a["deltas"], a["primaries"], a["longcs"],
                                a["long_patterns"], a["long_at"], np.zeros(hb.nbytes, np.uint8),
                                np.zeros(hb.n_tiles, np.uint32), 32, 3, False)  # fmt: skip
    assert launch.variant == 2


def test_corrupt_plane_codes_flag_their_tile() -> None:
    from tests.format.test_blob import with_crc

    ct = floatzip.compress_tensor(low_plane_f32(20_000, torch.Generator().manual_seed(4), "both"), steps=8)
    b = bytearray(ct.to_bytes())
    at, n = int(ct.v2["codes_at"]), 4 * int(ct.v2["code_words"])
    b[at + n // 2 : at + n // 2 + 64] = bytes(64)  # zeros: the most frequent codes, where others stood
    bad = floatzip.CompressedTensor.from_bytes(with_crc(b))
    with pytest.raises(IntegrityError):
        floatzip.decompress_tensor(bad)
    hb = cuda.host_batch([bad])
    assert cuda.emulate(hb, np.zeros(hb.nbytes, dtype=np.uint8)).any()


def test_the_kernels_with_planes_compile_without_spills() -> None:
    """The F32 kernels with 1 and 2 coded planes, offline for sm_80 and sm_90a (NVRTC, no GPU)."""
    names = [_nvrtc.decode_kernel_name(32, 0, long, p) for p in (1, 2) for long in (False, True)]
    for arch in ("sm_80", "sm_90a"):
        c = _nvrtc.compile_decoder(arch, names)
        res = c.resources()
        for name in names:
            r = res[c.names[name]]
            assert r["spill_stores"] == r["spill_loads"] == 0, (arch, name)
            assert r["smem"] >= 4 * 4096 + 2 * 4096 * int(name.split(",")[1].strip().rstrip("u"))


def test_the_fused_gemv_refuses_f32_records() -> None:
    ct = floatzip.compress_tensor(low_plane_f32(256 * 64, torch.Generator().manual_seed(5), "cast").reshape(64, 256))
    assert ct.version == 3
    with pytest.raises(InputError, match="BF16 or F16"):
        gemv.plan(ct)
