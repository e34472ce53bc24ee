"""Small tensors coded together (docs/FORMAT.md §2.4): group records and member marks in a checkpoint."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from floatzip.errors import FormatError, IntegrityError
from floatzip.format import groups, spec
from floatzip.format.checkpoint import (
    compress_checkpoint,
    decompress_checkpoint,
    open_compressed,
    read_compressed_file,
    verify_checkpoint,
)
from tests.conftest import digests


def many_small(seed: int = 0) -> dict[str, torch.Tensor]:
    """Norm-like and bias-like tensors of two dtypes, interleaved, beside one large weight and a few that
    stay plain (integers, a float too small to gain)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {"big.weight": (torch.randn(96, 80, generator=g) * 0.02).to(torch.bfloat16)}
    for i in range(12):
        out[f"l{i}.norm.weight"] = (1 + 0.05 * torch.randn(256, generator=g)).to(torch.bfloat16)
        out[f"l{i}.proj.bias"] = (0.02 * torch.randn(4, 128, generator=g)).to(torch.float16)
    out["tiny"] = torch.ones(3, dtype=torch.bfloat16)
    out["ids"] = torch.arange(40, dtype=torch.int32)
    return out


@pytest.fixture
def grouped(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    save_file(many_small(), src / "model.safetensors", metadata={"format": "pt"})
    compress_checkpoint(src, tmp_path / "c")
    return src, tmp_path / "c"


def test_small_tensors_are_coded_in_one_record_per_dtype_and_restore_byte_for_byte(
    grouped: tuple[Path, Path], tmp_path: Path
) -> None:
    src, dst = grouped
    cf = open_compressed(dst / "model.safetensors")
    assert sorted(cf.records) == ["l0.norm.weight", "l0.proj.bias"]
    assert {cf.records[n].layout.name for n in cf.records} == {"BF16", "F16"}
    assert len(cf.members) == 24 and "tiny" not in cf.members and "ids" not in cf.members
    assert cf.encoded == {"big.weight"}
    stored = cf.header.by_name()
    assert all(stored[n].nbytes == groups.MARK_BYTES for n, (f, _) in cf.members.items() if n != f)
    small = sum(t.nbytes for n, t in many_small().items() if n in cf.members)
    in_groups = sum(stored[n].nbytes for n in cf.members)
    assert in_groups < 0.8 * small
    decompress_checkpoint(dst, tmp_path / "back")
    assert digests(tmp_path / "back") == digests(src)


def test_each_member_loads_by_its_name_in_its_own_dtype_and_shape(grouped: tuple[Path, Path]) -> None:
    _, dst = grouped
    tensors = read_compressed_file(dst / "model.safetensors")
    for name, t in many_small().items():
        if name == "big.weight":
            continue
        got = tensors[name]
        assert isinstance(got, torch.Tensor) and got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(got.view(torch.uint8), t.view(torch.uint8)), name


def test_a_group_that_does_not_pay_is_stored_plain(tmp_path: Path) -> None:
    # one small tensor of almost incompressible values: its record would be larger than its bytes
    g = torch.Generator().manual_seed(1)
    src = tmp_path / "src"
    src.mkdir()
    noise = torch.randint(-(2**15), 2**15, (64,), generator=g, dtype=torch.int32).to(torch.int16).view(torch.float16)
    save_file({"noise": noise}, src / "model.safetensors")
    compress_checkpoint(src, tmp_path / "c")
    cf = open_compressed(tmp_path / "c" / "model.safetensors")
    assert not cf.records and not cf.members and cf.header.by_name()["noise"].dtype == "F16"


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    return json.loads(data[8 : 8 + n]), data


def _edit_tensor(path: Path, name: str, change: Callable[[bytearray], None]) -> None:
    doc, data = _header(path)
    n = struct.unpack_from("<Q", data)[0]
    b, e = doc[name]["data_offsets"]
    body = bytearray(data)
    piece = bytearray(body[8 + n + b : 8 + n + e])
    change(piece)
    body[8 + n + b : 8 + n + e] = piece
    path.write_bytes(bytes(body))


def _swap_marks(path: Path, a: str, b: str) -> None:
    doc, data = _header(path)
    n = struct.unpack_from("<Q", data)[0]
    body = bytearray(data)
    ra, rb = doc[a]["data_offsets"], doc[b]["data_offsets"]
    pa, pb = bytes(body[8 + n + ra[0] : 8 + n + ra[1]]), bytes(body[8 + n + rb[0] : 8 + n + rb[1]])
    body[8 + n + ra[0] : 8 + n + ra[1]], body[8 + n + rb[0] : 8 + n + rb[1]] = pb, pa
    path.write_bytes(bytes(body))


ATTACKS: dict[str, tuple[Callable[[Path], None], type[Exception], str]] = {
    "a flipped byte in a record": (
        lambda p: _edit_tensor(p, "l0.norm.weight", lambda b: b.__setitem__(len(b) - 3, b[-3] ^ 4)),
        IntegrityError, r"'l0\.norm\.weight'.*checksum mismatch"),
    "a mark naming no record": (
        lambda p: _edit_tensor(p, "l3.norm.weight", lambda b: b.__setitem__(5, b[5] ^ 1)),
        FormatError, r"'l3\.norm\.weight'.*names no earlier group record"),
    "a mark naming a place past the record": (
        lambda p: _edit_tensor(p, "l3.norm.weight", lambda b: b.__setitem__(8, 99)),
        FormatError, "names no earlier group record's member"),
    "a mark naming place 0": (
        lambda p: _edit_tensor(p, "l3.norm.weight", lambda b: b.__setitem__(slice(8, 12), bytes(4))),
        FormatError, "bad group member mark"),
    "two marks naming one place": (
        lambda p: _edit_tensor(p, "l3.norm.weight", lambda b: b.__setitem__(8, 1)),
        FormatError, "a member missing or stored twice"),
    "two members' marks swapped": (
        lambda p: _swap_marks(p, "l2.norm.weight", "l5.norm.weight"), IntegrityError, "checksum mismatch"),
    "a mark's magic broken": (
        lambda p: _edit_tensor(p, "l3.norm.weight", lambda b: b.__setitem__(0, 0)),
        FormatError, "no blob, group record or member mark"),
}  # fmt: skip


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_crafted_group_is_one_error_and_nothing_loads(grouped: tuple[Path, Path], attack: str) -> None:
    _, dst = grouped
    change, error, message = ATTACKS[attack]
    change(dst / "model.safetensors")
    with pytest.raises(error, match=message):
        verify_checkpoint(dst)
    with pytest.raises((FormatError, IntegrityError)):
        read_compressed_file(dst / "model.safetensors")


def test_a_record_of_members_that_do_not_add_up_is_refused() -> None:
    from floatzip.codec.encode import compress_tensor

    ct = compress_tensor(torch.ones(100, dtype=torch.bfloat16))
    record = groups.GroupRecord.build([(60,), (30,)], ct)  # 90 elements named, 100 coded
    with pytest.raises(FormatError, match="its members 90"):
        groups.GroupRecord.from_bytes(record, "tensor 'x'")
    assert groups.GroupRecord.from_bytes(groups.GroupRecord.build([(60,), (40,)], ct), "x").shapes == ((60,), (40,))


def test_versions_before_4_never_hold_groups() -> None:
    golden = Path(__file__).resolve().parents[1] / "golden" / "v3" / "model.safetensors"
    cf = open_compressed(golden)
    assert not cf.records and not cf.members and cf.header.metadata[spec.META_VERSION] == "3"


def test_a_record_or_mark_too_large_is_refused_before_it_is_read(
    grouped: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, dst = grouped
    path = dst / "model.safetensors"
    monkeypatch.setattr(groups, "MAX_RECORD_BYTES", 100)
    with pytest.raises(FormatError, match=r"a group record of \d+ bytes, over 100"):
        open_compressed(path)
    monkeypatch.undo()
    # a mark is 12 bytes: one stored longer (a crafted size) is refused, not read whole
    doc, data = _header(path)
    n = struct.unpack_from("<Q", data)[0]
    names = [k for k in doc if k != "__metadata__"]
    at = names.index("l3.norm.weight")
    body = bytearray(data[8 + n :])
    b, e = doc["l3.norm.weight"]["data_offsets"]
    body[e:e] = b"\0" * 4  # four more bytes in the mark; every later tensor moves by four
    doc["l3.norm.weight"]["data_offsets"] = [b, e + 4]
    doc["l3.norm.weight"]["shape"] = [16]
    for k in names[at + 1 :]:
        doc[k]["data_offsets"] = [v + 4 for v in doc[k]["data_offsets"]]
    raw = json.dumps(doc, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(body))
    with pytest.raises(FormatError, match="not a floatzip group member mark"):
        open_compressed(path)


def test_a_group_of_f32_members_may_be_a_version_3_blob_and_is_never_packed(tmp_path: Path) -> None:
    # F32 tensors cast up from BF16: their two low mantissa bytes are zero, which blob version 3 codes (§1.7);
    # a version 3 blob has no packed form (§2.3), so the record holds it whole
    from tests.codec.test_low_planes import low_plane_f32

    g = torch.Generator().manual_seed(3)
    tensors = {f"l{i}.norm.weight": low_plane_f32(1024, g, "cast") for i in range(8)}
    src = tmp_path / "src"
    src.mkdir()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    compress_checkpoint(src, tmp_path / "c")
    cf = open_compressed(tmp_path / "c" / "model.safetensors")
    assert sorted(cf.records) == ["l0.norm.weight"] and len(cf.members) == 8
    record = cf.header.by_name()["l0.norm.weight"]
    with open(cf.path, "rb") as f:
        f.seek(cf.header.data_start + record.begin)
        body = f.read(record.nbytes)
    at = body.find(spec.BLOB_MAGIC)
    assert at > 0 and body[at + 4 : at + 6] == b"\x03\x00" and spec.PACKED_MAGIC not in body
    # the BF16 half codes to about two thirds of 16 bits and the zero planes to almost nothing: about a third in all
    # (a version 2 blob, which stores 24 of the 32 bits raw, would be above four fifths)
    assert record.nbytes < 0.4 * sum(t.nbytes for t in tensors.values())
    got = read_compressed_file(tmp_path / "c" / "model.safetensors")
    for name, t in tensors.items():
        assert torch.equal(got[name].view(torch.int32), t.view(torch.int32)), name
    decompress_checkpoint(tmp_path / "c", tmp_path / "back")
    assert digests(tmp_path / "back") == digests(src)
