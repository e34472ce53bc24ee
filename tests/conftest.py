"""Shared fixtures: real MiniLM weights in BF16, and small checkpoints built on the fly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from floatzip.format.safetensors_io import iter_files


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (or of ``root`` itself), by relative path."""
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in iter_files(root)}


@pytest.fixture(scope="session")
def minilm_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2's real weights, cast to BF16, as a model directory."""
    from floatzip.demo import make_bf16_copy

    return make_bf16_copy(tmp_path_factory.mktemp("minilm") / "minilm-bf16")


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A few tensors of every kind a checkpoint holds: encodable floats, tiny floats, integers."""
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": (torch.randn(96, 80, generator=g) * 0.02).to(torch.bfloat16),
        "a.bias": torch.randn(80, generator=g).to(torch.bfloat16),
        "b.weight": (torch.randn(70, 90, generator=g) * 0.05).to(torch.float16),
        "c.weight": torch.randn(64, 72, generator=g),
        "d.weight": torch.randn(80, 64, generator=g).to(torch.float8_e4m3fn),
        "ids": torch.arange(100, dtype=torch.int64),
        "mask": torch.ones(7, dtype=torch.bool),
    }


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.safetensors"
    path.parent.mkdir()
    save_file(small_state_dict(), path, metadata={"format": "pt"})
    return path
