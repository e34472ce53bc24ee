"""The transformers quantizer's own guards (the loading paths are in test_hf.py)."""

from __future__ import annotations

import struct

import pytest
import torch

import floatzip

pytest.importorskip("transformers")

from floatzip.runtime.quantizer import _header_guess


def blob_tensor(t: torch.Tensor) -> torch.Tensor:
    return torch.frombuffer(bytearray(floatzip.compress_tensor(t).to_bytes()), dtype=torch.uint8)


def test_a_placeholder_takes_the_shape_a_sane_blob_names() -> None:
    t = torch.randn(96, 80).to(torch.bfloat16)
    assert _header_guess(blob_tensor(t)) == ((96, 80), torch.bfloat16)


def test_a_blob_claiming_far_more_weights_than_its_bytes_sizes_no_placeholder() -> None:
    # a corrupt MoE expert whose header says (2^30, 16): 2^34 BF16 weights, 32 GiB, in a blob of ~10 KB
    b = blob_tensor(torch.randn(96, 80).to(torch.bfloat16))
    raw = bytearray(b.numpy().tobytes())
    struct.pack_into("<QQ", raw, 56, 1 << 30, 16)
    assert _header_guess(torch.frombuffer(raw, dtype=torch.uint8)) is None


def test_the_config_is_a_top_level_name_and_round_trips_its_loading_options() -> None:
    from floatzip.runtime import quantizer

    cfg = floatzip.FloatzipConfig(cpu_strategy="per_unit", backend="cpu")
    assert type(cfg) is quantizer.FloatzipConfig and "FloatzipConfig" in dir(floatzip)
    back = quantizer.FloatzipConfig.from_dict(cfg.to_dict())
    assert (back.cpu_strategy, back.backend, back.offload, back.fused) == ("per_unit", "cpu", False, False)
