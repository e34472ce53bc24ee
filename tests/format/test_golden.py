"""Golden checkpoints: committed files of every released format version, never regenerated.

Each must keep decoding, byte for byte, with every later floatzip. tests/golden/v1 was written by format
version 1 (lanes=32, steps=16) from tests.conftest.small_state_dict() plus a config.json; tests/golden/v2 by
format version 2 (steps=8) from the same two files; tests/golden/v3 by format version 3 (steps=8) from the
same two files plus two written by hand, which take the version's other paths: order.safetensors (header keys
in reverse data order, ``__metadata__`` last: the recipe records the order) and spaced.safetensors (JSON with
spaces after the separators, which no rebuild gives: the header is stored whole); tests/golden/v4 by format
version 4 (steps=8) from v3's originals plus groups.safetensors (tests.format.test_groups.many_small(): small
tensors of two dtypes coded in group records), every blob in it packed; tests/golden/v1/blobs holds single v1
blobs of every dtype and odd shape (tests/format/test_blob.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from floatzip.format.blob import CompressedTensor
from floatzip.format.checkpoint import decompress_checkpoint, read_compressed_file, verify_checkpoint
from tests.conftest import digests

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ORIGINAL = {
    "config.json": "62b2d26b4da6b87806b16b1a9d958109b3f66ce5baa9c68be63f655c63940259",
    "model.safetensors": "34dfc39c5012d6b3182ad4969ae5c4af871b345e229a859655e881098869948c",
}
EXPECTED = {
    "v1": ORIGINAL,
    "v2": ORIGINAL,
    "v3": {
        **ORIGINAL,
        "order.safetensors": "bf8fa2627eb5608fa729995e9479c47467eeef248e55870e4c19e0341c588fb9",
        "spaced.safetensors": "caa0d91b4fdbcdb943aae5d1582213ba35e906195ff002f63b15c2db267ad536",
    },
}
EXPECTED["v4"] = {
    **EXPECTED["v3"],
    "groups.safetensors": "2cda1ed8869e59d9b72be6b5589b2f057436a9307d440f83a606040d8f3a153f",
}


@pytest.mark.parametrize("version", sorted(EXPECTED))
def test_golden_checkpoint_restores_byte_for_byte(version: str, tmp_path: Path) -> None:
    root = GOLDEN / version
    before = digests(root)
    verify_checkpoint(root)
    decompress_checkpoint(root, tmp_path / "restored")
    assert digests(tmp_path / "restored") == EXPECTED[version]
    assert digests(root) == before  # read only


def test_golden_v1_holds_every_dtype_as_blobs() -> None:
    tensors = read_compressed_file(GOLDEN / "v1" / "model.safetensors")
    blobs = {name: t for name, t in tensors.items() if isinstance(t, CompressedTensor)}
    assert {t.layout.name for t in blobs.values()} == {"BF16", "F16", "F32", "F8_E4M3"}
    assert all(t.version == 1 and t.v1.lanes == 32 and t.steps == 16 for t in blobs.values())


def test_golden_v3_takes_each_way_to_the_original_header() -> None:
    from floatzip.format import spec
    from floatzip.format.checkpoint import open_compressed

    names = ("model", "order", "spaced")
    metas = {n: open_compressed(GOLDEN / "v3" / f"{n}.safetensors").header.metadata for n in names}
    assert metas["model"][spec.META_HEADER] == '{"pad":5,"metadata":{"format":"pt"}}'
    recipe = metas["order"][spec.META_HEADER]
    assert '"order":[2,1,0]' in recipe and '"metadata_at":3' in recipe
    assert spec.META_HEADER not in metas["spaced"] and spec.META_ORIGINAL_HEADER in metas["spaced"]
    assert all(m[spec.META_VERSION] == "3" and spec.META_ENCODED not in m for m in metas.values())


def test_golden_v4_packs_its_blobs_and_groups_its_small_tensors() -> None:
    from floatzip.format import spec
    from floatzip.format.checkpoint import open_compressed

    cf = open_compressed(GOLDEN / "v4" / "groups.safetensors")
    assert cf.header.metadata[spec.META_VERSION] == "4"
    assert {r.layout.name for r in cf.records.values()} == {"BF16", "F16"} and len(cf.members) == 24
    with (GOLDEN / "v4" / "model.safetensors").open("rb") as f:
        model = open_compressed(GOLDEN / "v4" / "model.safetensors")
        for name in model.encoded:
            e = model.header.by_name()[name]
            f.seek(model.header.data_start + e.begin)
            assert f.read(4) == spec.PACKED_MAGIC


@pytest.mark.parametrize("version", ["v2", "v3", "v4"])
def test_golden_holds_every_dtype_as_v2_blobs_the_gpu_path_decodes(version: str) -> None:
    import numpy as np
    import torch

    from floatzip.decode import cuda, decompress_tensor

    tensors = read_compressed_file(GOLDEN / version / "model.safetensors")
    blobs = [t for t in tensors.values() if isinstance(t, CompressedTensor)]
    assert {t.layout.name for t in blobs} == {"BF16", "F16", "F32", "F8_E4M3"}
    assert all(t.version == 2 and t.steps == 8 for t in blobs)
    hb = cuda.host_batch(blobs)
    out = np.zeros(hb.nbytes, dtype=np.uint8)
    assert not cuda.emulate(hb, out).any()
    for ct, view in zip(blobs, cuda.tensor_views(hb.offsets, hb.dtypes, hb.shapes, torch.from_numpy(out)), strict=True):
        assert torch.equal(view.reshape(-1).view(torch.uint8), decompress_tensor(ct).reshape(-1).view(torch.uint8))
