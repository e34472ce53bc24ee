"""Plain nn.Modules: compress_model / load_model, and block grouping without transformers."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from floatzip.errors import InputError
from floatzip.runtime import compress_model, load_model, memory_report, runtime_of
from floatzip.runtime.blocks import assign_units, find_blocks


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64)
        self.norm = nn.LayerNorm(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


class Net(nn.Module):
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 64)
        self.blocks = nn.ModuleList([Block() for _ in range(3)])
        self.head = nn.Linear(64, 256, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("steps", torch.arange(5))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().to(torch.bfloat16).eval()


IDS = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(("keep_compressed", "cpu_strategy"), [(False, "auto"), (True, "per_unit"), (True, "once")])
def test_compress_and_load_plain_module(tmp_path: Path, keep_compressed: bool, cpu_strategy: str) -> None:
    net = _net()
    report = compress_model(net, tmp_path / "fz")
    assert sum(t.encoded for t in report.tensors) == 7  # embed (tied head stored once) + 2 per block
    with torch.device("meta"):
        skeleton = Net().to(torch.bfloat16)
    loaded = load_model(skeleton, tmp_path / "fz", keep_compressed=keep_compressed, cpu_strategy=cpu_strategy).eval()
    with torch.no_grad():
        assert torch.equal(net(IDS).view(torch.int16), loaded(IDS).view(torch.int16))
    assert torch.equal(loaded.steps, torch.arange(5))
    rt = runtime_of(loaded)
    if cpu_strategy == "per_unit":
        assert rt is not None
        assert [u.name for u in rt.units] == ["embed", "blocks.0", "blocks.1", "blocks.2", "head"]
        mem = memory_report(loaded)
        assert mem.buffer_bytes == max(256 * 64, 2 * 128 * 64) * 2  # the largest unit: embed = one block
    elif cpu_strategy == "once":
        assert rt is not None and not rt.units and not rt.buffers and not rt._sources
        assert rt.once == {"embed.weight", "head.weight", *(f"blocks.{i}.{m}.weight" for i in range(3)
                                                            for m in ("up", "down"))}  # fmt: skip
        mem = memory_report(loaded)
        assert mem.compressed_bytes == mem.buffer_bytes == 0 and mem.once_tensors == 7  # the tied pair: one
        assert mem.once_bytes == (256 * 64 + 3 * 2 * 128 * 64) * 2
        assert loaded.head.weight is loaded.embed.weight
    else:
        assert rt is None
        assert loaded.head.weight is loaded.embed.weight


def test_compress_model_again_is_stable(tmp_path: Path) -> None:
    net = _net()
    compress_model(net, tmp_path / "a")
    with torch.device("meta"):
        skeleton = Net().to(torch.bfloat16)
    loaded = load_model(skeleton, tmp_path / "a", keep_compressed=True)
    compress_model(loaded, tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_offload_on_cpu(tmp_path: Path) -> None:
    net = _net()
    compress_model(net, tmp_path / "fz")
    loaded = load_model(Net().to(torch.bfloat16), tmp_path / "fz", keep_compressed=True, offload=True)
    mem = memory_report(loaded)
    assert mem.compressed_bytes == 0 and mem.host_bytes > 0 and mem.staging_bytes > 0
    with torch.no_grad():
        assert torch.equal(net(IDS), loaded(IDS))
        assert torch.equal(net(IDS[:1]), loaded(IDS[:1]))


def test_load_model_refuses_a_mismatched_module(tmp_path: Path) -> None:
    compress_model(_net(), tmp_path / "fz")
    with pytest.raises(InputError, match="does not match the module"):
        load_model(nn.Linear(3, 3), tmp_path / "fz")


def test_units_never_nest() -> None:
    units = assign_units(
        ["a.weight", "a.b.weight", "a.b.c.weight", "x.layers.0.q.weight", "x.layers.0.k.weight", "y.weight"],
        ["x.layers.0"],
    )
    assert units == {
        "a": ["a.weight", "a.b.weight", "a.b.c.weight"],
        "x.layers.0": ["x.layers.0.q.weight", "x.layers.0.k.weight"],
        "y": ["y.weight"],
    }


def test_find_blocks_uses_no_split_modules() -> None:
    assert find_blocks(_net()) == ["blocks.0", "blocks.1", "blocks.2"]
    assert find_blocks(nn.Sequential(nn.Linear(2, 2))) == []


class Outer(nn.Module):
    """Holds blocks and a weight of its own that its forward uses after them (a diffusion transformer's
    ``scale_shift_table``)."""

    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(64, 80))
        self.proj = nn.Linear(64, 64, bias=False)
        self.blocks = nn.ModuleList([Block() for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.proj(x) @ self.table


def test_a_weight_of_a_module_holding_blocks_is_not_overwritten_by_them(tmp_path: Path) -> None:
    # as a unit of its own, `table` (with `proj` merged in) was decoded before the blocks, which then reused
    # the buffer under it: the output was silently wrong
    torch.manual_seed(0)
    net = Outer().to(torch.bfloat16)
    compress_model(net, tmp_path / "fz")
    with torch.device("meta"):
        skeleton = Outer().to(torch.bfloat16)
    loaded = load_model(skeleton, tmp_path / "fz", keep_compressed=True, cpu_strategy="per_unit")
    x = torch.randn(3, 64).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(net(x).view(torch.int16), loaded(x).view(torch.int16))
    rt = runtime_of(loaded)
    assert rt is not None
    assert [u.name for u in rt.units] == ["proj", "blocks.0", "blocks.1"]
    assert not rt.is_view(loaded.table) and torch.equal(loaded.table, net.table)


class Lookup(nn.Module):
    """An embedding whose rows straddle tile boundaries (100 columns, tiles of 2048 elements at steps=8)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(300, 100, padding_idx=3)
        self.proj = nn.Linear(100, 100, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids))


def test_an_embedding_decodes_only_the_rows_it_looks_up(tmp_path: Path) -> None:
    from floatzip.runtime.blocks import _RowDecoder

    torch.manual_seed(0)
    net = Lookup().to(torch.bfloat16).eval()
    compress_model(net, tmp_path / "fz", steps=8)
    loaded = load_model(Lookup().to(torch.bfloat16), tmp_path / "fz", keep_compressed=True,
                        cpu_strategy="per_unit").eval()  # fmt: skip
    rt = runtime_of(loaded)
    assert rt is not None
    unit = next(u for u in rt.units if u.name == "embed")
    assert isinstance(unit.decoder, _RowDecoder) and unit.decoder.tile == 2048
    mem = memory_report(loaded)
    assert mem.buffer_bytes == mem.largest_unit_bytes == 100 * 100 * 2  # proj's: the embedding takes no room
    decoded: list[int] = []
    real = unit.decoder.gather
    unit.decoder.gather = lambda rows: (decoded.append(len(rows)), real(rows))[1]  # type: ignore[method-assign]
    cases = [torch.tensor([[0, 20, 21, 299]]), torch.tensor([[5, 5, 5], [3, 40, 5]]), torch.arange(300).view(3, 100),
             torch.zeros(0, dtype=torch.long)]  # fmt: skip
    with torch.no_grad():
        for ids in cases:  # row 20 spans elements 2000..2099: two tiles
            assert torch.equal(net(ids).view(torch.int16), loaded(ids).view(torch.int16)), ids
    assert decoded == [4, 3, 300, 0]  # each distinct row once
    for bad in (torch.tensor([300]), torch.tensor([-1])):
        with pytest.raises(IndexError):
            net(bad)
        with pytest.raises(IndexError):
            loaded(bad)
    assert loaded.embed.padding_idx == 3  # restored after each forward
    rt.materialize(loaded)
    assert torch.equal(loaded.embed.weight, net.embed.weight) and "forward" not in loaded.embed.__dict__


def test_a_corrupt_embedding_is_refused_at_install(tmp_path: Path) -> None:
    # its forward never decodes it whole, so install checks the whole CRC once, tile chunk by tile chunk
    import dataclasses

    from floatzip.codec.encode import compress_tensor
    from floatzip.errors import IntegrityError
    from floatzip.runtime.blocks import install

    net = Lookup().to(torch.bfloat16)
    ct = compress_tensor(net.embed.weight.detach(), steps=8)
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        install(Lookup().to(torch.bfloat16), {"embed.weight": dataclasses.replace(ct, data_crc32=ct.data_crc32 ^ 1)},
                cpu_strategy="per_unit")  # fmt: skip


def test_moving_or_casting_a_running_model_is_refused(tmp_path: Path) -> None:
    # each parameter would become a copy cut off from its unit's buffer: the model would run on stale weights
    net = _net()
    compress_model(net, tmp_path / "fz")
    loaded = load_model(Net().to(torch.bfloat16), tmp_path / "fz", keep_compressed=True, cpu_strategy="per_unit")
    for move in (lambda m: m.to(torch.float32), lambda m: m.to("meta"), lambda m: m.float(), lambda m: m.half()):
        with pytest.raises(InputError, match="cannot be moved or cast"):
            move(loaded)
    assert loaded.to("cpu") is loaded and loaded.to(torch.bfloat16) is loaded  # where and as it already is
    with torch.no_grad():
        assert torch.equal(net(IDS), loaded(IDS))
    rt = runtime_of(loaded)
    assert rt is not None
    rt.materialize(loaded)  # decoded for good: an ordinary module again
    assert loaded.to(torch.float32).embed.weight.dtype == torch.float32
