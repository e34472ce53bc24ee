"""Diffusion models from floatzip checkpoints through diffusers: tiny FLUX, SD3, Wan and Qwen-Image
transformers (seeded BF16 weights) saved as diffusers folders, compressed with the CLI, loaded with the model
class's own ``from_pretrained`` and compared bit for bit with the plain folder loaded the same way; and a
whole tiny FLUX pipeline (transformer, VAE, CLIP and T5 text encoders) through ``DiffusionPipeline``."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import floatzip  # noqa: E402, F401  (registers with diffusers, lazily)
from floatzip.cli import main as cli  # noqa: E402
from floatzip.errors import InputError, IntegrityError  # noqa: E402
from floatzip.format.checkpoint import open_compressed  # noqa: E402
from floatzip.runtime import memory_report, runtime_of  # noqa: E402


def _bf16(*shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g).to(torch.bfloat16)


# name -> (model class, config, inputs of one forward); widths chosen so that the attention and MLP
# matrices (and Wan's own top-level table) reach the 4096 elements from which floatzip codes a tensor
MODELS: dict[str, tuple[str, dict[str, Any], Callable[[torch.Generator], dict[str, Any]]]] = {
    "flux": ("FluxTransformer2DModel",
             dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=32,
                  num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[8, 12, 12]),
             lambda g: dict(hidden_states=_bf16(1, 16, 16, g=g), encoder_hidden_states=_bf16(1, 8, 32, g=g),
                            pooled_projections=_bf16(1, 32, g=g), timestep=torch.tensor([0.5]),
                            img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3))),
    "sd3": ("SD3Transformer2DModel",
            dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=32, num_attention_heads=4,
                 joint_attention_dim=32, caption_projection_dim=128, pooled_projection_dim=32, out_channels=4,
                 pos_embed_max_size=16),  # its position table is a float buffer saved with the weights: coded too
            lambda g: dict(hidden_states=_bf16(1, 4, 8, 8, g=g), encoder_hidden_states=_bf16(1, 8, 32, g=g),
                           pooled_projections=_bf16(1, 32, g=g), timestep=torch.tensor([500]))),
    "wan": ("WanTransformer3DModel",
            dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4,
                 text_dim=32, freq_dim=32, ffn_dim=256, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32),
            lambda g: dict(hidden_states=_bf16(1, 4, 2, 8, 8, g=g), timestep=torch.tensor([500]),
                           encoder_hidden_states=_bf16(1, 8, 32, g=g))),  # keeps modules in float32
    "qwenimage": ("QwenImageTransformer2DModel",
                  dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=32,
                       num_attention_heads=4, joint_attention_dim=32, axes_dims_rope=(8, 12, 12)),
                  lambda g: dict(hidden_states=_bf16(1, 16, 16, g=g), encoder_hidden_states=_bf16(1, 8, 32, g=g),
                                 encoder_hidden_states_mask=torch.ones(1, 8, dtype=torch.long),
                                 timestep=torch.tensor([0.5]), img_shapes=[(1, 4, 4)])),
}  # fmt: skip


def _seeded(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking scales
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.05).to(p.dtype))


def _compress(src: Path, dst: Path) -> None:
    assert cli(["compress", str(src), str(dst), "--quiet"]) == 0


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (plain diffusers folder, its floatzip twin), the model in ``transformer/``."""
    out = {}
    for name, (cls_name, config, _) in MODELS.items():
        root = tmp_path_factory.mktemp(name)
        model = getattr(diffusers, cls_name)(**config).to(torch.bfloat16)
        _seeded(model)
        model.save_pretrained(root / "plain" / "transformer")
        _compress(root / "plain", root / "fz")
        out[name] = (root / "plain", root / "fz")
    return out


def _run(name: str, path: Path, **options: Any) -> tuple[torch.nn.Module, torch.Tensor]:
    """One forward of ``name`` loaded from ``path``; ``options``: floatzip's loading options (cpu_strategy...)."""
    from floatzip.runtime.diffusers_quantizer import FloatzipDiffusersConfig

    cls_name, _, inputs = MODELS[name]
    extra = {"quantization_config": FloatzipDiffusersConfig(**options)} if options else {}
    model = getattr(diffusers, cls_name).from_pretrained(path, subfolder="transformer", dtype=torch.bfloat16, **extra)
    with torch.no_grad():
        out = model(**inputs(torch.Generator().manual_seed(1)), return_dict=False)[0]
    return model, out


@pytest.mark.parametrize("name", list(MODELS))
def test_diffusion_transformer_runs_compressed_bit_for_bit(folders: dict[str, tuple[Path, Path]], name: str) -> None:
    plain, fz = folders[name]
    _, expect = _run(name, plain)
    model, got = _run(name, fz, cpu_strategy="per_unit")
    assert got.dtype == expect.dtype and torch.equal(got.view(torch.uint8), expect.view(torch.uint8))
    rt = runtime_of(model)
    assert rt is not None and type(model.hf_quantizer).__name__ == "FloatzipDiffusersQuantizer"
    blocks = {u.name.split(".")[0] for u in rt.units if u.name.rpartition(".")[2].isdigit()}
    assert blocks, "the repeated blocks were found from _no_split_modules"
    encoded = open_compressed(fz / "transformer" / "diffusion_pytorch_model.safetensors").encoded
    assert set(rt.slots) <= encoded and len(rt.slots) >= len(encoded) - 4  # buffers and fp32 modules: plain
    report = memory_report(model)
    # one buffer for the largest unit (in these tiny models a block is most of the model, so no total saving)
    assert report.compressed_bytes < 0.75 * report.decoded_bytes
    assert report.buffer_bytes == report.largest_unit_bytes
    assert "resident total" in str(report) and "decoded just before it runs" in str(report)


@pytest.mark.parametrize("name", ["flux", "wan"])  # wan: float32 modules and a top-level table besides
@pytest.mark.parametrize("cpu_strategy", ["once", "auto"])
def test_decoded_once_at_load_bit_for_bit(
    folders: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch, name: str, cpu_strategy: str
) -> None:
    from floatzip.runtime import strategy

    monkeypatch.setattr(strategy, "available_memory", lambda: (1 << 40, "injected"))
    plain, fz = folders[name]
    _, expect = _run(name, plain)
    model, got = _run(name, fz, cpu_strategy=cpu_strategy)
    assert got.dtype == expect.dtype and torch.equal(got.view(torch.uint8), expect.view(torch.uint8))
    rt = runtime_of(model)
    assert rt is not None and rt.once and not rt.units and not rt._sources
    report = memory_report(model)
    assert report.strategy == "once" and report.cpu.asked == cpu_strategy and report.compressed_bytes == 0
    assert f"once{'' if cpu_strategy == 'once' else ' (asked: auto)'}" in str(report)
    monkeypatch.setattr(strategy, "available_memory", lambda: (1 << 20, "injected"))
    scarce, again = _run(name, fz)  # the default, "auto", with too little memory: per unit
    assert memory_report(scarce).strategy == "per_unit" and torch.equal(again.view(torch.uint8), got.view(torch.uint8))


@pytest.mark.parametrize("cpu_strategy", ["per_unit", "once"])
def test_installed_parameters_require_grad_as_the_plain_models(
    folders: dict[str, tuple[Path, Path]], cpu_strategy: str
) -> None:
    plain, fz = folders["wan"]  # with float32 modules, decoded once and kept plain
    a, _ = _run("wan", plain)
    b, _ = _run("wan", fz, cpu_strategy=cpu_strategy)
    expect = {n: p.requires_grad for n, p in a.named_parameters(remove_duplicate=False)}
    assert (
        all(expect.values()) and {n: p.requires_grad for n, p in b.named_parameters(remove_duplicate=False)} == expect
    )


@pytest.mark.parametrize(
    "options", [{}, {"cpu_strategy": "once"}, {"cpu_strategy": "per_unit", "backend": "cpu", "fused": True}]
)
def test_the_options_round_trip_through_the_diffusers_config(options: dict[str, Any]) -> None:
    from floatzip.runtime.diffusers_quantizer import FloatzipDiffusersConfig

    cfg = FloatzipDiffusersConfig(**options)
    back = FloatzipDiffusersConfig.from_dict(cfg.to_dict())
    for key, default in {"backend": "auto", "fused": False, "cpu_strategy": "auto"}.items():
        assert getattr(back, key) == getattr(cfg, key) == options.get(key, default), key
    assert set(cfg.to_dict()) == {"quant_method", "format_version", *options}
    assert back.get_loading_attributes() == cfg.get_loading_attributes()


def test_bad_diffusers_options_are_one_line() -> None:
    from floatzip.runtime.diffusers_quantizer import FloatzipDiffusersConfig

    for bad, message in (({"cpu_strategy": "lazy"}, "cpu_strategy must be one of 'auto', 'once', 'per_unit'"),
                         ({"offload": True}, "offload is not available for diffusers models")):  # fmt: skip
        with pytest.raises(InputError, match=message) as exc:
            FloatzipDiffusersConfig(**bad)
        assert "\n" not in str(exc.value)


def test_wan_keeps_its_float32_modules(folders: dict[str, tuple[Path, Path]]) -> None:
    plain, fz = folders["wan"]
    a, _ = _run("wan", plain)
    b, _ = _run("wan", fz, cpu_strategy="per_unit")
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and pa.dtype == pb.dtype, na
    assert b.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    # its top-level scale_shift_table is used after the blocks: decoded once, not left in the shared buffer
    rt = runtime_of(b)
    assert rt is not None and "scale_shift_table" not in rt.slots


def test_loading_without_a_dtype_is_one_line(folders: dict[str, tuple[Path, Path]]) -> None:
    with pytest.raises(InputError, match="dtype it was stored in"):
        diffusers.FluxTransformer2DModel.from_pretrained(folders["flux"][1], subfolder="transformer")


def test_a_corrupt_diffusers_checkpoint_refuses_to_load(folders: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(folders["flux"][1], bad)
    path = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    cf = open_compressed(path)
    e = cf.header.by_name()[next(iter(cf.records))]  # small tensors (norms, biases) coded together
    data = bytearray(path.read_bytes())
    data[cf.header.data_start + e.begin + e.nbytes - 5] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        diffusers.FluxTransformer2DModel.from_pretrained(bad, subfolder="transformer", dtype=torch.bfloat16)


def _tokenizers(where: Path) -> tuple[Any, Any]:
    """A CLIP tokenizer (characters as BPE symbols) and a T5 one (a few Unigram words), built offline."""
    import json

    import transformers

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c + "</w>": i + 2 for i, c in enumerate(letters)},
             **{c: i + 30 for i, c in enumerate(letters)}}  # fmt: skip
    where.mkdir(parents=True, exist_ok=True)
    (where / "vocab.json").write_text(json.dumps(vocab))
    (where / "merges.txt").write_text("#version: 0.2\n")
    clip = transformers.CLIPTokenizer(str(where / "vocab.json"), str(where / "merges.txt"), model_max_length=16)
    words = ["<pad>", "</s>", "<unk>", "▁a", "▁cat", "▁photo", "▁of", *(f"▁w{i}" for i in range(50))]
    t5 = transformers.T5TokenizerFast(vocab=[(w, -1.0 - i / 100) for i, w in enumerate(words)], extra_ids=0)
    return clip, t5


def _tiny_flux_pipeline(scratch: Path) -> Any:
    import transformers

    transformer = diffusers.FluxTransformer2DModel(**{**MODELS["flux"][1], "joint_attention_dim": 64,
                                                      "pooled_projection_dim": 64})  # fmt: skip
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64],
                                  layers_per_block=1, latent_channels=4, norm_num_groups=16, shift_factor=0.1,
                                  scaling_factor=0.5)  # fmt: skip
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
        projection_dim=64, bos_token_id=0, eos_token_id=1, pad_token_id=1))  # fmt: skip
    t5 = transformers.T5EncoderModel(transformers.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16,
                                                           vocab_size=256))  # fmt: skip
    for i, m in enumerate((transformer, vae, clip, t5)):
        _seeded(m, i)
    clip_tok, t5_tok = _tokenizers(scratch)
    return diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip,
                                  tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok,
                                  transformer=transformer).to(torch.bfloat16)  # fmt: skip


def _generate(path: Path, **options: Any) -> tuple[Any, torch.Tensor, list[torch.Tensor]]:
    """A tiny generation by the pipeline at ``path``; ``options``: floatzip's loading options for every component
    (diffusers' PipelineQuantizationConfig builds floatzip's diffusers or transformers config for each)."""
    extra = {}
    if options:
        extra["quantization_config"] = diffusers.PipelineQuantizationConfig(quant_backend="floatzip",
                                                                            quant_kwargs=options)  # fmt: skip
    pipe = diffusers.DiffusionPipeline.from_pretrained(path, dtype=torch.bfloat16, **extra)
    ids = torch.randint(0, 56, (1, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        images = pipe("a photo of a cat", num_inference_steps=2, height=32, width=32, max_sequence_length=8,
                      output_type="pt", generator=torch.Generator().manual_seed(4)).images  # fmt: skip
        text = [pipe.text_encoder(ids).last_hidden_state, pipe.text_encoder_2(ids).last_hidden_state]
    return pipe, images, text


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_a_whole_pipeline_round_trips_and_runs_compressed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _tiny_flux_pipeline(tmp_path / "tokenizers").save_pretrained(tmp_path / "plain")
    _compress(tmp_path / "plain", tmp_path / "fz")
    assert cli(["decompress", str(tmp_path / "fz"), str(tmp_path / "restored"), "--quiet"]) == 0
    assert _digests(tmp_path / "restored") == _digests(tmp_path / "plain")  # the note below is not restored
    from floatzip.inspect import format_table, inspect_path, plot

    ins = inspect_path(tmp_path / "fz")
    assert all(sum(t.split.values()) == t.stored_bytes and min(t.split.values()) >= 0 for t in ins.tensors)
    assert set(ins.file_headers) == {"text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
                                     "transformer/diffusion_pytorch_model.safetensors",
                                     "vae/diffusion_pytorch_model.safetensors"}  # fmt: skip
    plot(ins, tmp_path / "where.png")
    assert (tmp_path / "where.png").stat().st_size > 10_000
    table = format_table(ins, limit=None)  # which component each tensor is in
    assert table.startswith("file") and "text_encoder_2/model.safetensors" in table and "exp H: " in table
    note = (tmp_path / "fz" / "README.floatzip.md").read_text()
    assert 'pip install "floatzip[diffusers]"' in note and "DiffusionPipeline.from_pretrained" in note

    _, images, text = _generate(tmp_path / "plain")
    pipe, got_images, got_text = _generate(tmp_path / "fz", cpu_strategy="per_unit")
    assert torch.equal(images, got_images)
    assert all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(text, got_text, strict=True))
    kinds = {k: type(getattr(v, "hf_quantizer", None)).__name__ for k, v in pipe.components.items() if v is not None}
    assert kinds == {"vae": "FloatzipDiffusersQuantizer", "transformer": "FloatzipDiffusersQuantizer",
                     "text_encoder": "FloatzipHfQuantizer", "text_encoder_2": "FloatzipHfQuantizer",
                     "scheduler": "NoneType", "tokenizer": "NoneType", "tokenizer_2": "NoneType"}  # fmt: skip
    for name in ("vae", "transformer", "text_encoder", "text_encoder_2"):
        rt = runtime_of(pipe.components[name])
        assert rt is not None and rt.units, name


def test_import_floatzip_alone_registers_with_diffusers(folders: dict[str, tuple[Path, Path]]) -> None:
    code = (
        "import sys, torch, floatzip\n"
        "from floatzip.runtime import _register\n"
        "assert 'diffusers' not in sys.modules and _register.installed_hook(_register.DIFFUSERS_TARGET)\n"
        "from diffusers import FluxTransformer2DModel\n"
        f"m = FluxTransformer2DModel.from_pretrained({str(folders['flux'][1])!r}, subfolder='transformer', "
        "dtype=torch.bfloat16)\n"
        "assert not _register.installed_hook(_register.DIFFUSERS_TARGET)\n"
        "print(type(m.hf_quantizer).__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "FloatzipDiffusersQuantizer"
