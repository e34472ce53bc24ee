"""floatzip.inspect on a version 4 file: small tensors coded in groups get their share of the group's bytes."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from floatzip.format.checkpoint import compress_checkpoint, open_compressed
from floatzip.inspect import inspect_path
from tests.format.test_groups import many_small


def test_group_members_are_shown_with_their_share_of_the_group(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    tensors = many_small()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    compress_checkpoint(src, tmp_path / "c")
    cf = open_compressed(tmp_path / "c" / "model.safetensors")
    ins = inspect_path(tmp_path / "c")
    by_name = {t.name: t for t in ins.tensors}
    stored = cf.header.by_name()
    for first in cf.records:
        names = [n for n, (f, _) in cf.members.items() if f == first]
        assert sum(by_name[n].stored_bytes for n in names) == sum(stored[n].nbytes for n in names)
        assert all(by_name[n].encoded and by_name[n].ratio < 0.9 for n in names)  # no member shows the whole record
        assert all(set(by_name[n].split) == {"groups of small tensors"} for n in names)
    assert by_name["tiny"].ratio == 1.0 and not by_name["tiny"].encoded
