"""Checkpoints: byte-for-byte round trips (sha256), the container's metadata, and every failure mode."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from floatzip.errors import FloatzipError, FormatError, InputError, IntegrityError, VersionError
from floatzip.format import spec
from floatzip.format.blob import CompressedTensor
from floatzip.format.checkpoint import (
    compress_checkpoint,
    decompress_checkpoint,
    open_compressed,
    read_compressed_file,
    verify_checkpoint,
)
from tests.conftest import digests, small_state_dict


def round_trip(src: Path, tmp: Path) -> Path:
    before = digests(src)
    compress_checkpoint(src, tmp / "c")
    verify_checkpoint(tmp / "c")
    decompress_checkpoint(tmp / "c", tmp / "d")
    assert digests(src) == before  # the input is untouched
    return tmp / "d"


def test_single_file_round_trip_is_byte_exact(small_file: Path, tmp_path: Path) -> None:
    restored = round_trip(small_file, tmp_path)
    assert digests(restored / "model.safetensors") == digests(small_file)


def test_sharded_directory_with_index_and_subdirs(tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    sd = small_state_dict()
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, src / shard)
    index = {"metadata": {"total_size": 1}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    (src / "config.json").write_text('{"model_type": "llama",  "hidden_size": 64}')
    (src / "sub" / "tokenizer.txt").write_bytes(b"\x00\x01binary")
    restored = round_trip(src, tmp_path)
    assert digests(restored) == digests(src)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "floatzip", "format_version": spec.FORMAT_VERSION}
    assert (tmp_path / "c" / "model.safetensors.index.json").read_bytes() == (
        src / "model.safetensors.index.json"
    ).read_bytes()


def test_the_real_minilm_weights(minilm_bf16: Path, tmp_path: Path) -> None:
    report = compress_checkpoint(minilm_bf16, tmp_path / "c")
    assert report.ratio < 0.665
    big = [t for t in report.tensors if t.dtype == "BF16" and int(np.prod(t.shape)) >= spec.MIN_ENCODED_NUMEL]
    assert big and all(t.encoded for t in big)
    tensor_ratio = sum(t.stored_bytes for t in report.tensors) / sum(t.original_bytes for t in report.tensors)
    assert tensor_ratio <= 0.663  # the target for MiniLM-BF16
    decompress_checkpoint(tmp_path / "c", tmp_path / "d")
    assert digests(tmp_path / "d") == digests(minilm_bf16)


def test_compressed_file_is_plain_safetensors_with_blobs(small_file: Path, tmp_path: Path) -> None:
    compress_checkpoint(small_file, tmp_path / "c")
    path = tmp_path / "c" / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert meta[spec.META_VERSION] == "4"
        names = list(json.loads(path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]]))[1:]
        bits = base64.b64decode(meta[spec.META_BLOBS])
        encoded = [n for i, n in enumerate(names) if bits[i >> 3] >> (i & 7) & 1]
        assert sorted(encoded) == ["a.weight", "b.weight", "c.weight", "d.weight"]
        assert f.get_tensor("a.weight").dtype == torch.uint8
        assert f.get_tensor("a.bias").dtype == torch.bfloat16
    # the original header is not stored: the file's own header and a few bytes of recipe rebuild it exactly
    assert spec.META_ORIGINAL_HEADER not in meta and spec.META_ENCODED not in meta
    assert json.loads(meta[spec.META_HEADER]) == {"pad": 5, "metadata": {"format": "pt"}}
    original = small_file.read_bytes()
    assert open_compressed(path).original.raw == original[8 : 8 + struct.unpack("<Q", original[:8])[0]]
    crcs = base64.b64decode(meta[spec.META_CRCS])
    assert len(crcs) == 4 * (len(names) + 1)
    tensors = read_compressed_file(path)
    original = load_file(small_file)
    for name, value in tensors.items():
        if isinstance(value, CompressedTensor):
            from floatzip import decompress_tensor

            value = decompress_tensor(value)
        assert torch.equal(value.view(torch.uint8), original[name].view(torch.uint8))


# ---------------------------------------------------------------------------------------------
# bad input: one clear error naming the file, nothing half-written, inputs untouched


def corrupt(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def compressed(small_file: Path, tmp_path: Path) -> Path:
    compress_checkpoint(small_file, tmp_path / "c")
    return tmp_path / "c"


def assert_nothing_written(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_corrupt_byte_is_caught_by_verify_and_decompress(compressed: Path, tmp_path: Path) -> None:
    corrupt(compressed / "model.safetensors", 3000)  # inside a blob
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        verify_checkpoint(compressed)
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        decompress_checkpoint(compressed, tmp_path / "out")
    assert_nothing_written(tmp_path, "out")


def test_corrupt_plain_tensor_fails_the_file_checksum(compressed: Path) -> None:
    corrupt(compressed / "model.safetensors", 1)  # the last plain tensor's bytes
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        verify_checkpoint(compressed)


def test_truncated_file(compressed: Path, tmp_path: Path) -> None:
    path = compressed / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FormatError, match=r"model\.safetensors.*truncated"):
        decompress_checkpoint(compressed, tmp_path / "out")
    assert_nothing_written(tmp_path, "out")


def test_unknown_versions(compressed: Path) -> None:
    manifest = compressed / spec.MANIFEST_NAME
    doc = json.loads(manifest.read_text())
    doc["format_version"] = 7
    manifest.write_text(json.dumps(doc))
    with pytest.raises(VersionError, match="version 7 is not supported"):
        verify_checkpoint(compressed)


def test_missing_paths_and_wrong_kinds(tmp_path: Path, small_file: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        compress_checkpoint(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match=r"not a \.safetensors file"):
        compress_checkpoint(tmp_path / "notes.txt", tmp_path / "out")
    with pytest.raises(FormatError, match="not a floatzip checkpoint"):
        verify_checkpoint(small_file.parent)
    with pytest.raises(InputError, match="a compressed checkpoint is a directory"):
        verify_checkpoint(small_file)
    assert_nothing_written(tmp_path, "out")


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    bad = tmp_path / "src" / "model.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not safetensors at all, just text")
    with pytest.raises(FormatError, match=r"model\.safetensors: not a safetensors file"):
        compress_checkpoint(bad, tmp_path / "out")
    assert_nothing_written(tmp_path, "out")


def test_destination_is_never_overwritten(small_file: Path, compressed: Path) -> None:
    before = digests(compressed)
    with pytest.raises(InputError, match="already exists"):
        compress_checkpoint(small_file, compressed)
    assert digests(compressed) == before


def test_already_quantized_config_is_refused(tmp_path: Path, small_file: Path) -> None:
    (small_file.parent / "config.json").write_text('{"quantization_config": {"quant_method": "gptq"}}')
    with pytest.raises(InputError, match="already quantized"):
        compress_checkpoint(small_file.parent, tmp_path / "out")


def test_fuzz_the_container_reader(compressed: Path, tmp_path: Path) -> None:
    """Random byte flips and truncations of the compressed file: only floatzip errors, or success."""
    path = compressed / "model.safetensors"
    pristine = path.read_bytes()
    rng = np.random.default_rng(1)
    errors = 0
    for i in range(60):
        data = bytearray(pristine)
        if i % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(data))
        try:
            verify_checkpoint(compressed)
        except FloatzipError:
            errors += 1
    path.write_bytes(pristine)
    verify_checkpoint(compressed)
    assert errors >= 55  # a flip that survives must have hit the header's padding spaces


# ---------------------------------------------------------------------------------------------
# format v3: the original header rebuilt from the file's own, or stored whole where it cannot be


def _hand_written(path: Path, items: list[tuple[str, object]], data: bytes, sep: tuple[str, str] = (",", ":")) -> None:
    head = json.dumps(dict(items), separators=sep, ensure_ascii=False).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


@pytest.mark.parametrize(
    ("case", "path_taken"),
    [("unicode names", spec.META_HEADER), ("no metadata", spec.META_HEADER), ("shuffled keys", spec.META_HEADER),
     ("ascii-escaped names", spec.META_ORIGINAL_HEADER), ("spaces", spec.META_ORIGINAL_HEADER)],
)  # fmt: skip
def test_every_header_restores_byte_for_byte(tmp_path: Path, case: str, path_taken: str) -> None:
    g = torch.Generator().manual_seed(5)
    w = (torch.randn(80, 64, generator=g) * 0.02).to(torch.bfloat16).view(torch.uint8).numpy().tobytes()
    b = torch.randn(8, generator=g).to(torch.bfloat16).view(torch.uint8).numpy().tobytes()
    names = ["poids.é", 'q"\\\n\x01名'] if case in ("unicode names", "ascii-escaped names") else ["w", "b"]
    entries = [(names[0], {"dtype": "BF16", "shape": [80, 64], "data_offsets": [0, len(w)]}),
               (names[1], {"dtype": "BF16", "shape": [8], "data_offsets": [len(w), len(w) + len(b)]})]  # fmt: skip
    items: list[tuple[str, object]] = [("__metadata__", {"format": "pt", "ü": "ß"}), *entries]
    if case == "no metadata":
        items = items[1:]
    if case == "shuffled keys":
        items = [entries[1], ("__metadata__", {"format": "pt"}), entries[0]]
    src = tmp_path / "src" / "model.safetensors"
    src.parent.mkdir()
    if case == "ascii-escaped names":  # Python's json.dumps, not the safetensors library: names as \\u escapes
        head = json.dumps(dict(items), separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)
        src.write_bytes(struct.pack("<Q", len(head)) + head + w + b)
    else:
        _hand_written(src, items, w + b, (", ", ": ") if case == "spaces" else (",", ":"))
    restored = round_trip(src.parent, tmp_path)
    assert digests(restored) == digests(src.parent)
    meta = open_compressed(tmp_path / "c" / "model.safetensors").header.metadata
    assert path_taken in meta and len({spec.META_HEADER, spec.META_ORIGINAL_HEADER} & meta.keys()) == 1


def test_per_file_overhead_is_the_names_and_a_checksum_a_tensor(tmp_path: Path) -> None:
    # 600 small tensors: the compressed header is the original's (names, dtypes, shapes, offsets: the U8 entries
    # are no longer) plus 4 bytes of checksum a tensor in base64, with little room left unused
    tensors = {f"model.layers.{i // 6}.block.part{i % 6}.bias": torch.full((16,), float(i)) for i in range(600)}
    src = tmp_path / "src" / "model.safetensors"
    src.parent.mkdir()
    save_file(tensors, src, metadata={"format": "pt"})
    compress_checkpoint(src, tmp_path / "c")
    original = struct.unpack("<Q", src.read_bytes()[:8])[0]
    ours = struct.unpack("<Q", (tmp_path / "c" / "model.safetensors").read_bytes()[:8])[0]
    assert ours <= original + 601 * 4 * 4 / 3 + 600


def test_the_safetensors_librarys_own_escapes_rebuild(tmp_path: Path) -> None:
    # serde_json's escaping (quotes, backslashes, control characters, UTF-8 kept) is the recipe's
    g = torch.Generator().manual_seed(6)
    names = ['q"uote\\back', "new\nline\x01\x1f\x7f", "名前.é", "tab\there"]
    tensors = {n: (torch.randn(70, 64, generator=g) * 0.02).to(torch.bfloat16) for n in names}
    tensors["small"] = torch.ones(3)
    src = tmp_path / "src" / "model.safetensors"
    src.parent.mkdir()
    save_file(tensors, src, metadata={"format": "pt", "note": 'a "quoted" ü'})
    restored = round_trip(src.parent, tmp_path)
    assert digests(restored) == digests(src.parent)
    assert spec.META_HEADER in open_compressed(tmp_path / "c" / "model.safetensors").header.metadata
