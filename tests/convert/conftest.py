"""DF11 checkpoints built by DFloat11's own compressor from tiny seeded models.

``dfloat11`` imports CuPy and ``pkg_resources`` at module level to load its CUDA decoder. Neither is
needed to *compress* (``compress_model(..., check_correctness=False)`` never touches the GPU), so on a
machine without them the module is imported with two inert stand-ins, and only for that import.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=256,
)
LLAMA_PATTERNS = {
    r"model\.layers\.\d+": [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ],
    r"model\.embed_tokens": [],
    "lm_head": [],
}


def load_dfloat11() -> types.ModuleType:
    """``dfloat11.dfloat11`` (compress_model and the encoder functions), importable without a GPU."""
    if importlib.util.find_spec("dfloat11") is None:
        pytest.skip("dfloat11 is not installed (pip install -e '.[test]' brings it)")
    stubs: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("cupy") is None:
        cupy = types.ModuleType("cupy")
        cupy.RawModule = lambda path: types.SimpleNamespace(get_function=lambda name: None)  # type: ignore[attr-defined]
        stubs["cupy"] = cupy
    if importlib.util.find_spec("pkg_resources") is None:
        spec = importlib.util.find_spec("dfloat11")
        assert spec is not None and spec.submodule_search_locations is not None
        pkg_dir = Path(next(iter(spec.submodule_search_locations)))
        pkg_resources = types.ModuleType("pkg_resources")
        pkg_resources.resource_filename = lambda pkg, name: str(pkg_dir / name)  # type: ignore[attr-defined]
        stubs["pkg_resources"] = pkg_resources
    sys.modules.update(stubs)
    try:
        return importlib.import_module("dfloat11.dfloat11")
    finally:  # the stand-ins leave sys.modules again (the module keeps its reference to them)
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


@pytest.fixture(scope="session")
def dfloat11() -> types.ModuleType:
    return load_dfloat11()


def quiet_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """DFloat11 prints every code table; keep the test log readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def build_llama(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**LLAMA)).to(torch.bfloat16).eval()


@dataclass
class Df11Fixture:
    original: dict[str, torch.Tensor]  # the BF16 weights DFloat11 was given
    published: Path  # save_single_file=False: per-block files, config.json with the architecture
    single: Path  # save_single_file=True: one model.safetensors, config.json with dfloat11_config only
    plain: Path  # the same model saved by transformers (save_pretrained), uncompressed


@pytest.fixture(scope="session")
def tiny_df11(dfloat11: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Df11Fixture:
    root = tmp_path_factory.mktemp("df11")
    model = build_llama()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(root / "plain")
    for name, single in (("published", False), ("single", True)):
        model = build_llama()  # compress_model strips the weights out of the model it is given
        quiet_call(
            dfloat11.compress_model, model, LLAMA_PATTERNS, str(root / name), save_single_file=single,
            check_correctness=False,
        )  # fmt: skip
    return Df11Fixture(original, root / "published", root / "single", root / "plain")
