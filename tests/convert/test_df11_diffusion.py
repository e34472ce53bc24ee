"""DF11 diffusion checkpoints (FLUX and Wan transformers compressed by DFloat11's own encoder, as DFloat11
publishes them: config.json holds only dfloat11_config) converted with the diffusers model's config and loaded
through diffusers, bit for bit against the plain model."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from floatzip.cli import main as cli

from .conftest import quiet_call

diffusers = pytest.importorskip("diffusers")

from tests.runtime.test_diffusers import MODELS, _seeded  # noqa: E402

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
PATTERNS = {
    "flux": {
        r"transformer_blocks\.\d+": ["norm1.linear", "norm1_context.linear", *(f"attn.{a}" for a in ATTN),
                                     "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
                                     "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"],
        r"single_transformer_blocks\.\d+": ["norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k",
                                            "attn.to_v"],
    },
    "wan": {r"blocks\.\d+": [*(f"attn1.{a}" for a in ATTN), *(f"attn2.{a}" for a in ATTN), "ffn.net.0.proj",
                             "ffn.net.2"]},
}  # fmt: skip


def _model(name: str) -> torch.nn.Module:
    cls_name, config, _ = MODELS[name]
    model = getattr(diffusers, cls_name)(**config).to(torch.bfloat16)
    _seeded(model)
    return model


def _forward(name: str, path: Path, **kwargs: str) -> tuple[torch.nn.Module, torch.Tensor]:
    cls_name, _, inputs = MODELS[name]
    model = getattr(diffusers, cls_name).from_pretrained(path, dtype=torch.bfloat16, **kwargs)
    with torch.no_grad():
        return model, model(**inputs(torch.Generator().manual_seed(1)), return_dict=False)[0]


@pytest.mark.parametrize("single", [False, True], ids=["per-block files", "single file"])
@pytest.mark.parametrize("name", ["flux", "wan"])
def test_df11_diffusion_checkpoint_converts_and_runs(
    dfloat11: types.ModuleType, tmp_path: Path, name: str, single: bool
) -> None:
    _model(name).save_pretrained(tmp_path / "plain" / "transformer")
    df11 = tmp_path / "df11"
    quiet_call(dfloat11.compress_model, _model(name), PATTERNS[name], str(df11), save_single_file=single,
               check_correctness=False)  # fmt: skip
    original_config = tmp_path / "plain" / "transformer" / "config.json"
    # without the architecture, the refusal names what to pass
    assert cli(["convert", str(df11), str(tmp_path / "no"), "-q"]) == 2
    assert not (tmp_path / "no").exists()
    out = tmp_path / "fz"
    assert cli(["convert", str(df11), str(out), "-q", "--model-config", str(original_config)]) == 0
    assert (out / "diffusion_pytorch_model.safetensors").exists() or (
        out / "diffusion_pytorch_model.safetensors.index.json"
    ).exists()
    _, expect = _forward(name, tmp_path / "plain", subfolder="transformer")
    model, got = _forward(name, out)
    assert torch.equal(got.view(torch.uint8), expect.view(torch.uint8))
    assert type(model.hf_quantizer).__name__ == "FloatzipDiffusersQuantizer"
    assert "diffusers" in (out / "README.floatzip.md").read_text()
