"""DF11 import: DFloat11's own compressor builds the checkpoints, floatzip decodes them on the CPU, bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from floatzip.convert._df11_decode import Df11Block, decode_block
from floatzip.convert.df11 import (
    convert_df11,
    df11_hint,
    df11_sizes,
    is_df11_checkpoint,
    iter_df11,
    read_df11,
)
from floatzip.errors import FloatzipError, FormatError, InputError, IntegrityError
from floatzip.format.checkpoint import compress_checkpoint, decompress_checkpoint, verify_checkpoint
from floatzip.inspect import format_table, inspect_path

from ..runtime.conftest import COMMON as LLAMA  # the tiny Llama the DF11 fixture is built from
from .conftest import Df11Fixture, quiet_call


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype == torch.bfloat16
        and a.shape == b.shape
        and torch.equal(a.view(torch.int16), b.view(torch.int16))
    )


def tensors_of(root: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(root.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})  # noqa: SIM118
    return out


# ---------------------------------------------------------------------------------------------
# one block, straight from DFloat11's encoder functions


def _geometric_exponents(n: int, g: torch.Generator) -> torch.Tensor:
    """BF16 words whose exponents fall off by half per step: codes up to ~20 bits, three table levels."""
    k = torch.clamp(torch.floor(-torch.log2(torch.rand(n, generator=g))), max=90).to(torch.int32)
    sign = torch.randint(0, 2, (n,), generator=g, dtype=torch.int32) << 15
    mant = torch.randint(0, 128, (n,), generator=g, dtype=torch.int32)
    return (sign | ((120 - k) << 7) | mant).to(torch.int16).view(torch.bfloat16)


BLOCKS: dict[str, Callable[[torch.Generator], list[torch.Tensor]]] = {
    "trained-like": lambda g: [(torch.randn(300_000, generator=g) * 0.02).to(torch.bfloat16)],
    "several weights": lambda g: [(torch.randn(n, generator=g) * s).to(torch.bfloat16)
                                  for n, s in ((4096, 0.02), (777, 1.0), (20_000, 0.003))],
    "deep code": lambda g: [_geometric_exponents(200_000, g)],
    "two exponents": lambda g: [torch.tensor([1.0, -1.5, 2.0, 3.5] * 3001, dtype=torch.bfloat16)],
    "one window": lambda g: [torch.randn(40, generator=g).to(torch.bfloat16)],
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_block_decodes_bit_for_bit(dfloat11: types.ModuleType, kind: str) -> None:
    weights = BLOCKS[kind](torch.Generator().manual_seed(7))
    flat = torch.cat(weights)

    def encode() -> tuple[torch.Tensor, ...]:
        _codec, counter = dfloat11.get_codec(flat)
        codec, _counter, table = dfloat11.get_32bit_codec(counter)
        luts = dfloat11.get_luts(table)
        return (luts, *dfloat11.encode_weights(weights, codec, 8, 512))

    luts, encoded, other, positions, gaps, split = quiet_call(encode)
    block = Df11Block(
        luts=luts.numpy(),
        encoded_exponent=encoded.numpy(),
        sign_mantissa=other.numpy(),
        output_positions=positions.view(torch.uint8).numpy(),
        gaps=gaps.numpy(),
        split_positions=split.numpy(),
    )
    words = decode_block(block, bytes_per_thread=8, threads_per_block=512, file="f", prefix="b")
    assert np.array_equal(words, flat.view(torch.int16).numpy().view(np.uint16))
    if kind == "deep code":
        assert luts.shape[0] - 1 >= 3  # links two levels down: codes longer than 16 bits
    if kind == "trained-like":
        assert positions.numel() > 2  # several decode blocks


def test_flipped_bytes_never_escape_as_anything_but_floatzip_errors(dfloat11: types.ModuleType) -> None:
    """600 single-byte changes in the coded parts of one block: each either decodes (DF11 stores no
    checksum, so a change that keeps the stream consistent cannot be seen) or raises a FloatzipError."""
    g = torch.Generator().manual_seed(3)
    weights = [(torch.randn(30_000, generator=g) * 0.02).to(torch.bfloat16)]

    def encode() -> tuple[torch.Tensor, ...]:
        _codec, counter = dfloat11.get_codec(weights[0])
        codec, _counter, table = dfloat11.get_32bit_codec(counter)
        return (dfloat11.get_luts(table), *dfloat11.encode_weights(weights, codec, 8, 512))

    luts, encoded, other, positions, gaps, split = quiet_call(encode)
    parts = {
        "luts": luts.numpy(),
        "encoded_exponent": encoded.numpy(),
        "sign_mantissa": other.numpy(),
        "output_positions": positions.view(torch.uint8).numpy(),
        "gaps": gaps.numpy(),
        "split_positions": split.numpy(),
    }
    rng = np.random.default_rng(0)
    outcomes = {"decoded": 0, "refused": 0}
    for i in range(600):
        part = ("luts", "encoded_exponent", "output_positions", "gaps")[i % 4]
        damaged = parts[part].copy()
        flat = damaged.reshape(-1)
        flat[rng.integers(flat.size)] ^= np.uint8(rng.integers(1, 256))
        block = Df11Block(**{**parts, part: damaged})
        try:
            decode_block(block, bytes_per_thread=8, threads_per_block=512, file="f", prefix="b")
            outcomes["decoded"] += 1
        except FloatzipError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 400, outcomes  # decodes that pass every check are rare


# ---------------------------------------------------------------------------------------------
# whole checkpoints written by dfloat11.compress_model

LAYER = "model.layers.0"
LAYER_FILE = "model_layers_0.safetensors"


def test_read_published_layout_bit_exact(tiny_df11: Df11Fixture) -> None:
    got = dict(read_df11(tiny_df11.published))
    assert got.keys() == tiny_df11.original.keys()
    for name, t in tiny_df11.original.items():
        assert same_bits(got[name], t), name
    files = {t.name: t.file for t in iter_df11(tiny_df11.published)}
    assert files[f"{LAYER}.mlp.up_proj.weight"] == LAYER_FILE and files["lm_head.weight"] == "lm_head.safetensors"


def test_single_file_layout_needs_the_model_config(tiny_df11: Df11Fixture) -> None:
    with pytest.raises(FormatError, match="model_config"):
        list(read_df11(tiny_df11.single))
    got = dict(read_df11(tiny_df11.single, model_config=tiny_df11.published / "config.json"))
    assert got.keys() == tiny_df11.original.keys()
    for name, t in tiny_df11.original.items():
        assert same_bits(got[name], t), name
    one_file = dict(read_df11(tiny_df11.single / "model.safetensors", model_config=tiny_df11.published))
    assert one_file.keys() == got.keys()


def test_recognition_sizes_and_hint(tiny_df11: Df11Fixture, tmp_path: Path) -> None:
    plain = tiny_df11.plain
    compressed = tmp_path / "fz"
    compress_checkpoint(plain, compressed)
    assert is_df11_checkpoint(tiny_df11.published) and is_df11_checkpoint(tiny_df11.single)
    assert is_df11_checkpoint(tiny_df11.single / "model.safetensors")
    assert not is_df11_checkpoint(plain) and not is_df11_checkpoint(compressed)
    assert not is_df11_checkpoint(tmp_path / "missing")
    hint = df11_hint(tiny_df11.published)
    assert hint is not None and f"floatzip convert {tiny_df11.published} " in hint and "\n" not in hint
    single_hint = df11_hint(tiny_df11.single)
    assert single_hint is not None and single_hint.endswith("--model-config ORIGINAL_MODEL/config.json")
    assert df11_hint(tiny_df11.single / "model.safetensors") is None  # from_pretrained takes directories
    assert df11_hint(plain) is None and df11_hint(compressed) is None and df11_hint("meta-llama/Llama-3.1-8B") is None
    df11, bf16 = df11_sizes(tiny_df11.published)
    assert bf16 == sum(t.nbytes for t in tiny_df11.original.values())
    stored = sum(t.nbytes for t in tensors_of(tiny_df11.published).values())
    assert df11 == stored and 0.6 < df11 / bf16 < 0.75
    assert df11_sizes(tiny_df11.single) == (df11, bf16)
    with pytest.raises(FormatError, match="no DF11 block"):
        df11_sizes(plain)


def test_inspect_reports_floatzip_and_df11(tiny_df11: Df11Fixture) -> None:
    ins = inspect_path(tiny_df11.published)
    assert {t.name for t in ins.tensors} == set(tiny_df11.original)
    assert ins.original_bytes == sum(t.nbytes for t in tiny_df11.original.values())
    assert ins.df11_bytes == df11_sizes(tiny_df11.published)[0]
    plain = inspect_path(tiny_df11.plain)  # the same weights, uncompressed: floatzip's figures agree
    assert plain.df11_bytes is None and plain.stored_bytes == ins.stored_bytes
    table = format_table(ins)
    assert f"DF11 stores {ins.df11_bytes / 1e6:.2f} MB" in table and "floatzip would store" in table
    assert json.loads(ins.to_json())["df11_ratio"] == ins.df11_bytes / ins.original_bytes
    q = next(t for t in ins.tensors if t.name == "model.layers.0.self_attn.q_proj.weight")
    assert q.encoded and q.dtype == "BF16" and q.shape == [64, 64] and q.bits_per_weight is not None
    assert 9 < q.bits_per_weight < 12 and q.exponent_entropy is not None and 1 < q.exponent_entropy < 4
    assert sum(ins.exponent_histogram["BF16"]) == sum(t.numel() for t in tiny_df11.original.values())


def test_convert_is_bit_exact_and_runs(tiny_df11: Df11Fixture, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    import floatzip  # noqa: F401  (registers quant_method "floatzip" with transformers)

    dst = tmp_path / "fz"
    report = convert_df11(tiny_df11.published, dst)
    assert report.weights_decoded == 7 * LLAMA["num_hidden_layers"] + 2
    assert report.bf16_bytes == sum(t.nbytes for t in tiny_df11.original.values())
    assert (report.df11_bytes, report.bf16_bytes) == df11_sizes(tiny_df11.published)
    assert report.files_copied == ["generation_config.json"]
    assert sum(t.encoded for t in report.tensors) == 2 + 7 * LLAMA["num_hidden_layers"] - 2 * 2  # k/v are small
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the BF16 staging copy is gone
    verify_checkpoint(dst)
    restored = tmp_path / "restored"
    decompress_checkpoint(dst, restored)
    config = json.loads((restored / "config.json").read_text())
    assert "dfloat11_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    index = json.loads((restored / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tiny_df11.original)
    got = tensors_of(restored)
    assert got.keys() == tiny_df11.original.keys()
    for name, t in tiny_df11.original.items():
        assert same_bits(got[name], t), name
    ids = torch.randint(0, LLAMA["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expect = AutoModelForCausalLM.from_pretrained(tiny_df11.plain).eval()(ids).logits
        from_restored = AutoModelForCausalLM.from_pretrained(restored).eval()(ids).logits
        from_floatzip = AutoModelForCausalLM.from_pretrained(dst).eval()(ids).logits
    assert torch.equal(expect, from_restored)
    assert torch.equal(expect, from_floatzip)


def test_convert_single_file_layout(tiny_df11: Df11Fixture, tmp_path: Path) -> None:
    report = convert_df11(tiny_df11.single, tmp_path / "fz", model_config=tiny_df11.published)
    assert report.files == 2  # model.safetensors and config.json (the model config, no dfloat11_config)
    restored = tmp_path / "restored"
    decompress_checkpoint(tmp_path / "fz", restored)
    got = load_file(restored / "model.safetensors")
    for name, t in tiny_df11.original.items():
        assert same_bits(got[name], t), name
    assert "dfloat11_config" not in json.loads((restored / "config.json").read_text())


def test_layout_variants_are_read(tiny_df11: Df11Fixture, tmp_path: Path) -> None:
    """output_positions stored as U32 instead of bytes, and no split_positions for a one-weight block:
    both mean the same to DFloat11's own loader."""
    src = tmp_path / "df11"
    shutil.copytree(tiny_df11.published, src)
    sd = load_file(src / "lm_head.safetensors")
    sd["lm_head.output_positions"] = sd["lm_head.output_positions"].view(torch.uint32).clone()
    del sd["lm_head.split_positions"]
    save_file(sd, src / "lm_head.safetensors")
    got = dict(read_df11(src))
    assert same_bits(got["lm_head.weight"], tiny_df11.original["lm_head.weight"])
    sd = load_file(src / LAYER_FILE)
    del sd[f"{LAYER}.split_positions"]
    save_file(sd, src / LAYER_FILE)
    with pytest.raises(FormatError, match="split_positions"):
        list(read_df11(src))


def test_empty_plain_tensor_is_kept(tiny_df11: Df11Fixture, tmp_path: Path) -> None:
    src = tmp_path / "df11"
    shutil.copytree(tiny_df11.published, src)
    sd = load_file(src / "model.safetensors")
    sd["model.empty_buffer"] = torch.empty(0, dtype=torch.bfloat16)
    save_file(sd, src / "model.safetensors")
    got = dict(read_df11(src))
    assert got["model.empty_buffer"].shape == (0,) and got["model.empty_buffer"].dtype == torch.bfloat16
    convert_df11(src, tmp_path / "fz")
    decompress_checkpoint(tmp_path / "fz", tmp_path / "bf16")
    assert tensors_of(tmp_path / "bf16")["model.empty_buffer"].shape == (0,)


def test_convert_refuses_to_overwrite(tiny_df11: Df11Fixture, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(InputError, match="already exists"):
        convert_df11(tiny_df11.published, tmp_path / "taken")


# ---------------------------------------------------------------------------------------------
# damaged and old checkpoints


def _shortest_code(luts: torch.Tensor) -> int:
    lens = luts[-1]
    used = torch.nonzero(lens).flatten().tolist()
    return min(used, key=lambda s: int(lens[s]))


def _swap_entry(sd: dict[str, torch.Tensor]) -> str:
    """The first table entry of the most frequent exponent now names another used exponent."""
    luts = sd[f"{LAYER}.luts"].clone()
    s = _shortest_code(luts)
    other = next(int(v) for v in torch.nonzero(luts[-1]).flatten() if int(v) != s)
    luts[0, int(torch.nonzero(luts[0] == s).flatten()[0])] = other
    sd[f"{LAYER}.luts"] = luts
    return "luts"


def _unused_value(sd: dict[str, torch.Tensor]) -> str:
    luts = sd[f"{LAYER}.luts"].clone()
    luts[0, 5] = int(torch.nonzero(luts[-1] == 0).flatten()[0])
    sd[f"{LAYER}.luts"] = luts
    return "luts"


def _longer_length(sd: dict[str, torch.Tensor]) -> str:
    luts = sd[f"{LAYER}.luts"].clone()
    luts[-1, _shortest_code(luts)] += 1
    sd[f"{LAYER}.luts"] = luts
    return "encoded_exponent"  # the tables still look fine; the stream stops decoding consistently


def _truncate(part: str, keep: int) -> Callable[[dict[str, torch.Tensor]], str]:
    def damage(sd: dict[str, torch.Tensor]) -> str:
        sd[f"{LAYER}.{part}"] = sd[f"{LAYER}.{part}"][:keep].clone()
        return "encoded_exponent" if part == "encoded_exponent" else "sign_mantissa"

    return damage


def _shift_position(sd: dict[str, torch.Tensor]) -> str:
    pos = sd[f"{LAYER}.output_positions"].clone()
    pos[4] ^= 1
    sd[f"{LAYER}.output_positions"] = pos
    return "output_positions"


def _flip_gap(sd: dict[str, torch.Tensor]) -> str:
    gaps = sd[f"{LAYER}.gaps"].clone()
    gaps[10] ^= 0x04
    sd[f"{LAYER}.gaps"] = gaps
    return "encoded_exponent"


def _first_position(sd: dict[str, torch.Tensor]) -> str:
    pos = sd[f"{LAYER}.output_positions"].clone()
    pos[0] = 1  # decode block 0 must start at weight 0
    sd[f"{LAYER}.output_positions"] = pos
    return "output_positions"


DAMAGE: dict[str, Callable[[dict[str, torch.Tensor]], str]] = {
    "lut entry swapped": _swap_entry,
    "lut entry unused": _unused_value,
    "code length changed": _longer_length,
    "stream truncated by 1 byte": _truncate("encoded_exponent", -1),
    "stream truncated by 100 bytes": _truncate("encoded_exponent", -100),
    "sign_mantissa truncated": _truncate("sign_mantissa", -10),
    "output_positions changed": _shift_position,
    "first output position not 0": _first_position,
    "gap changed": _flip_gap,
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_block_is_rejected(tiny_df11: Df11Fixture, tmp_path: Path, kind: str) -> None:
    src = tmp_path / "df11"
    shutil.copytree(tiny_df11.published, src)
    sd = load_file(src / LAYER_FILE)
    part = DAMAGE[kind](sd)
    save_file(sd, src / LAYER_FILE)
    with pytest.raises((FormatError, IntegrityError)) as info:
        list(read_df11(src))
    assert str(src / LAYER_FILE) in str(info.value) and f"'{LAYER}.{part}'" in str(info.value)
    with pytest.raises(FloatzipError):
        convert_df11(src, tmp_path / "fz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["df11"]  # nothing left behind


def test_truncated_file_is_rejected(tiny_df11: Df11Fixture, tmp_path: Path) -> None:
    src = tmp_path / "df11"
    shutil.copytree(tiny_df11.published, src)
    data = (src / LAYER_FILE).read_bytes()
    (src / LAYER_FILE).write_bytes(data[:-1000])
    with pytest.raises(FormatError, match=LAYER_FILE):
        list(read_df11(src))


def test_block_not_in_pattern_dict_is_rejected(tiny_df11: Df11Fixture, tmp_path: Path) -> None:
    src = tmp_path / "df11"
    shutil.copytree(tiny_df11.published, src)
    config = json.loads((src / "config.json").read_text())
    del config["dfloat11_config"]["pattern_dict"]["lm_head"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match="'lm_head' matches no pattern"):
        list(read_df11(src))


def test_pickle_era_format_is_refused(tiny_df11: Df11Fixture, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((tiny_df11.published / "config.json").read_text())
    config["dfloat11_config"]["version"] = "0.1.0"
    (old / "config.json").write_text(json.dumps(config))
    torch.save({"model.layers.0.encoded_exponent": torch.zeros(8, dtype=torch.uint8)}, old / "model_layers_0.pt")
    assert is_df11_checkpoint(old)
    with pytest.raises(FormatError, match=r"old DFloat11 format \(dfloat11 < 0\.2") as info:
        list(read_df11(old))
    assert "floatzip compress" in str(info.value) and "model_layers_0.pt" in str(info.value)
    # an old version number is refused even next to safetensors files
    shutil.copytree(tiny_df11.published, tmp_path / "relabelled")
    (tmp_path / "relabelled" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match=r"DF11 version 0\.1\.0: an old DFloat11 format"):
        convert_df11(tmp_path / "relabelled", tmp_path / "fz")


# ---------------------------------------------------------------------------------------------
# from_pretrained on a DF11 directory


@pytest.mark.parametrize("first", ["floatzip", "transformers.modeling_utils"])
def test_from_pretrained_says_how_to_convert(tiny_df11: Df11Fixture, first: str) -> None:
    """Without floatzip, transformers loads a DF11 directory with random weights and no error; with it
    (imported before or after transformers), the one line that converts it."""
    src = str(tiny_df11.published)
    code = (
        f"import {first}\n"
        "import floatzip\n"
        "from floatzip.runtime.quantizer import FloatzipConfig\n"
        "from transformers import AutoModelForCausalLM\n"
        "for kwargs in ({}, {'quantization_config': FloatzipConfig()}):\n"
        "    try:\n"
        f"        AutoModelForCausalLM.from_pretrained({src!r}, **kwargs)\n"
        "    except floatzip.InputError as exc:\n"
        "        print(exc)\n"
        f"print(type(AutoModelForCausalLM.from_pretrained({str(tiny_df11.plain)!r})).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0] == lines[1] and lines[2] == "LlamaForCausalLM"
    assert f"floatzip convert {src} {src}-floatzip" in lines[0] and "DFloat11" in lines[0]
