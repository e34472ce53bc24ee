"""Golden checkpoints: committed files of every released format version, never regenerated.

Each must keep decoding, byte for byte, with every later floatzip. tests/golden/v1 was written by format
version 1 (lanes=32, steps=16) from tests.conftest.small_state_dict() plus a config.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from floatzip.format.checkpoint import decompress_checkpoint, read_compressed_file, verify_checkpoint
from floatzip.format.tensor import CompressedTensor
from tests.conftest import digests

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
EXPECTED = {
    "v1": {
        "config.json": "62b2d26b4da6b87806b16b1a9d958109b3f66ce5baa9c68be63f655c63940259",
        "model.safetensors": "34dfc39c5012d6b3182ad4969ae5c4af871b345e229a859655e881098869948c",
    }
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
    assert all(t.lanes == 32 and t.steps == 16 for t in blobs.values())
