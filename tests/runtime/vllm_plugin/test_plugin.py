"""floatzip's vLLM plugin with vLLM's real layers and loader, on the CPU (gloo for tensor parallel).

vLLM lives in its own virtual environment (a CUDA build of torch 2.14, ~9 GB); `.ci/run` builds it and runs
this folder there. In the main test environment these tests are skipped, saying so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "vllm", reason="vLLM is not installed here: .ci/run runs tests/runtime/vllm_plugin in its own venv (.venv-vllm)"
)

from tests.runtime.vllm_plugin import layers

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def vllm_env():
    with layers.vllm_cpu():
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return layers.write_checkpoints(tmp_path_factory.mktemp("layers"))


def test_entry_point_registers_method_and_loader() -> None:
    """vLLM's plugin discovery finds floatzip, which registers its quantization method and load format."""
    from importlib.metadata import entry_points

    from vllm.config.load import LoadConfig
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.plugins import load_general_plugins

    from floatzip.runtime.vllm_plugin import FloatzipModelLoader, FloatzipVllmConfig

    assert "floatzip" in {e.name for e in entry_points(group="vllm.general_plugins")}
    load_general_plugins()
    assert "floatzip" in QUANTIZATION_METHODS
    assert get_quantization_config("floatzip") is FloatzipVllmConfig
    for fmt in ("floatzip", "auto"):
        assert type(get_model_loader(LoadConfig(load_format=fmt))) is FloatzipModelLoader
    cfg = FloatzipVllmConfig.from_config({"quant_method": "floatzip", "format_version": 2})
    assert cfg.get_name() == "floatzip" and cfg.format_version == 2


def test_unknown_format_version_refused() -> None:
    from floatzip.errors import VersionError
    from floatzip.runtime.vllm_plugin import FloatzipVllmConfig

    with pytest.raises(VersionError, match="format version 99"):
        FloatzipVllmConfig.from_config({"quant_method": "floatzip", "format_version": 99})


def test_checkpoint_holds_blobs(files: tuple[Path, Path]) -> None:
    """The test data really is compressed: the layers' weights are blobs in the floatzip file."""
    from floatzip.runtime.vllm_plugin import floatzip_files

    (cf,) = floatzip_files([files[1]])
    assert {"col.weight", "row.weight", "gate.weight", "q.weight", "emb.weight", "head.weight"} <= cf.encoded
    assert "col.bias" not in cf.encoded  # small tensors pass through plain


@pytest.mark.parametrize("backend", ["auto", "emulated"])
@pytest.mark.parametrize("case", layers.cases(), ids=lambda c: c.name)
def test_layer_tp1(vllm_env, files: tuple[Path, Path], case: layers.Case, backend: str) -> None:
    """Each layer kind: the decoded weight is bit-identical to vLLM's BF16 load, the layer holds only the
    code, and its output equals the BF16 layer's (same matmul) bit for bit. ``emulated``: the CUDA path's
    batches (a merged layer's parts in one batch, decoded into consecutive rows) run by the kernel's own
    code on the CPU."""
    from floatzip.runtime.vllm_plugin import FloatzipVllmConfig, decoded_weight, resident_bytes

    plain, compressed = files
    ours, theirs = case.build(FloatzipVllmConfig(backend=backend)), case.build(None)
    layers.load(ours, case, layers.floatzip_stream(compressed))
    layers.load(theirs, case, layers.plain_stream(plain))
    assert torch.equal(layers.bits(decoded_weight(ours)), layers.bits(theirs.weight))
    assert ours.weight.shape == theirs.weight.shape and ours.weight.dtype == theirs.weight.dtype
    assert ours.weight.untyped_storage().nbytes() <= 2  # a stand-in: the weight itself is not resident
    if backend == "auto":
        assert resident_bytes(ours) < 0.8 * theirs.weight.numel() * 2
    else:  # what a GPU would hold: the batch, with a 16 KiB lookup table per code (large for layers this small)
        assert resident_bytes(ours) == ours._floatzip.packed.decoder.stored_nbytes
    x = layers.inputs(case)
    assert torch.equal(layers.bits(layers.forward(ours, case, x)), layers.bits(layers.reference(theirs, case, x)))


def test_corrupt_blob_refused(vllm_env, files: tuple[Path, Path], tmp_path: Path) -> None:
    """A flipped byte inside a blob stops the weight stream with the file and tensor named."""
    from floatzip.errors import FloatzipError
    from floatzip.format.safetensors_io import read_header

    bad = tmp_path / "model.safetensors"
    data = bytearray(files[1].read_bytes())
    e = read_header(files[1]).by_name()["row.weight"]
    data[read_header(files[1]).data_start + e.begin + e.nbytes // 2] ^= 0x10
    bad.write_bytes(bytes(data))
    with pytest.raises(FloatzipError, match=r"model\.safetensors: tensor 'row\.weight'|row\.weight"):
        dict(layers.floatzip_stream(bad))


def test_corrupt_small_tensor_refused(vllm_env, files: tuple[Path, Path], tmp_path: Path) -> None:
    """The biases are coded together in a group record (docs/FORMAT.md §2.4): a flipped byte in it is refused
    before the stream yields anything."""
    from floatzip.errors import IntegrityError
    from floatzip.format.checkpoint import open_compressed

    cf = open_compressed(files[1])
    assert cf.members["col.bias"][0] in cf.records
    bad = tmp_path / "model.safetensors"
    data = bytearray(files[1].read_bytes())
    e = cf.header.by_name()[cf.members["col.bias"][0]]
    data[cf.header.data_start + e.begin + e.nbytes - 2] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"checksum mismatch"):
        dict(layers.floatzip_stream(bad))


def test_blob_without_the_floatzip_loader_is_explained(vllm_env, files: tuple[Path, Path]) -> None:
    """vLLM's plain safetensors loader would hand a layer the blob itself: a clear error, not a shape assert."""
    from floatzip.errors import InputError
    from floatzip.runtime.vllm_plugin import FloatzipVllmConfig

    case = layers.cases()[0]
    layer = case.build(FloatzipVllmConfig())
    with pytest.raises(InputError, match="--load-format"):
        layers.load(layer, case, layers.plain_stream(files[1]))


def _run_ranks(module: str, world: int, *args: Path) -> None:
    """Start ``python -m module RANK WORLD *args`` for every rank (gloo on loopback); each must print ok."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_TARGET_DEVICE": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, str(rank), str(world), *map(str, args)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"rank {rank}:\n{out[-4000:]}"
        assert f"rank {rank}: ok" in out


@pytest.mark.parametrize("world", [2, 4])
def test_tensor_parallel(files: tuple[Path, Path], tmp_path: Path, world: int) -> None:
    """TP=2 and TP=4 (gloo ranks on loopback), each rank with its shard of every layer kind, bit for bit; at
    TP=4 the 2 KV heads are replicated, 2 ranks per head, as vLLM's QKV loader does."""
    _run_ranks("tests.runtime.vllm_plugin.tp_worker", world, tmp_path / "tp_init", *files)


# ---------------------------------------------------------------------------------------------
# a whole model through vLLM's get_model


def _tiny_llama(root: Path) -> tuple[Path, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from floatzip.format.checkpoint import compress_checkpoint

    config = LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
                         tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02 + (1.0 if p.dim() == 1 else 0.0))
    plain = root / "llama"
    model.save_pretrained(plain)
    compress_checkpoint(plain, root / "llama-fz")
    return plain, root / "llama-fz"


def _load(path: Path):
    from vllm.config import set_current_vllm_config
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model

    cfg = EngineArgs(model=str(path), dtype="bfloat16", enforce_eager=True).create_engine_config()
    with set_current_vllm_config(cfg):
        return cfg, get_model(vllm_config=cfg)


def test_whole_llama_through_get_model(vllm_env, tmp_path: Path) -> None:
    """vLLM picks floatzip from config.json, loads through the default load format, and every Linear and
    embedding runs floatzip's method; every weight is bit-identical to vLLM's own load of the BF16 folder."""
    from floatzip.runtime.vllm_plugin import FloatzipEmbeddingMethod, FloatzipLinearMethod, decoded_weight

    plain, compressed = _tiny_llama(tmp_path)
    assert json.loads((compressed / "config.json").read_text())["quantization_config"]["quant_method"] == "floatzip"
    cfg, ours = _load(compressed)
    assert cfg.model_config.quantization == "floatzip" and cfg.load_config.load_format == "auto"
    _, theirs = _load(plain)
    reference = dict(theirs.named_parameters())
    methods = 0
    for name, module in ours.named_modules():
        qm = getattr(module, "quant_method", None)
        if isinstance(qm, FloatzipLinearMethod | FloatzipEmbeddingMethod):
            methods += 1
            got = decoded_weight(module)
            assert torch.equal(layers.bits(got), layers.bits(reference[f"{name}.weight"])), name
    assert methods == 2 * 4 + 2  # qkv, o, gate_up, down per layer; embed_tokens, lm_head
    for name, p in ours.named_parameters():
        if not name.endswith(".weight") or "norm" in name:
            assert torch.equal(layers.bits(p), layers.bits(reference[name])), name


@pytest.mark.parametrize("name", ["column", "row", "replicated", "merged", "qkv"])
def test_whole_parts_kept_as_stored(vllm_env, files: tuple[Path, Path], name: str) -> None:
    """At TP=1 a layer keeps each stored blob as it is (not decoded into a staging tensor and coded again):
    the bytes it holds are the file's own (a small tensor's blob is stored packed, docs/FORMAT.md §2.3, and
    held as the version 2 blob it stands for, byte for byte)."""
    from safetensors import safe_open

    from floatzip.format import packed, spec
    from floatzip.runtime.vllm_plugin import FloatzipVllmConfig

    case = next(c for c in layers.cases() if c.name == name)
    layer = case.build(FloatzipVllmConfig())
    layers.load(layer, case, layers.floatzip_stream(files[1]))
    slot = layer._floatzip
    assert not slot.staged and slot.packed is not None
    with safe_open(str(files[1]), framework="pt") as f:
        stored = [f.get_tensor(n).numpy().tobytes() for n, p, _ in case.parts if p == "weight"]
    stored = [packed.unpack(b) if b[:4] == spec.PACKED_MAGIC else b for b in stored]
    assert [ct.to_bytes() for ct in slot.packed.cts] == stored


def test_sharded_layers_are_staged_and_coded(vllm_env, files: tuple[Path, Path]) -> None:
    """A padded vocabulary shard cannot be the stored tensor: it goes through staging, then is coded."""
    from floatzip.runtime.vllm_plugin import FloatzipVllmConfig

    case = next(c for c in layers.cases() if c.name == "embedding")
    layer = case.build(FloatzipVllmConfig())
    layers.load(layer, case, layers.floatzip_stream(files[1]))
    assert layer._floatzip.staged and layer._floatzip.packed is not None
    assert layer.weight.untyped_storage().nbytes() <= 2  # the staging tensor is gone


@pytest.mark.parametrize("backend", ["auto", "emulated"])
@pytest.mark.parametrize("name", ["column", "qkv", "embedding", "lm_head"])
def test_torch_compile_fullgraph(vllm_env, files: tuple[Path, Path], name: str, backend: str) -> None:
    """vLLM compiles its models: a floatzip layer compiles as one graph (the decode is one custom operator)
    and its compiled output equals the BF16 layer's bit for bit."""
    from floatzip.runtime.vllm_plugin import FloatzipVllmConfig

    case = next(c for c in layers.cases() if c.name == name)
    ours, theirs = case.build(FloatzipVllmConfig(backend=backend)), case.build(None)
    layers.load(ours, case, layers.floatzip_stream(files[1]))
    layers.load(theirs, case, layers.plain_stream(files[0]))
    x = layers.inputs(case)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: layers.forward(ours, case, t), fullgraph=True, backend="aot_eager")
    expected = layers.bits(layers.reference(theirs, case, x))
    assert torch.equal(layers.bits(compiled(x)), expected)
    assert torch.equal(layers.bits(compiled(x)), expected)  # replayed: decoded again, same bits


def test_pipeline_parallel(tmp_path: Path) -> None:
    """PP=2: two gloo ranks on loopback, each loads through get_model only its stage's layers (the other's
    tensors pass undecoded), and its floatzip weights equal vLLM's BF16 load of the same stage."""
    plain, compressed = _tiny_llama(tmp_path)
    _run_ranks("tests.runtime.vllm_plugin.pp_worker", 2, tmp_path / "pp_init", plain, compressed)
