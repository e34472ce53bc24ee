"""benchmarks/gemv_model.py: the fused GEMV's compiled-code model runs without a GPU and reports per-weight
counts and speed-up estimates (its figures are recorded in BENCHMARKS.md, not asserted here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gemv_model_reports_every_batch_and_shape(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gemv_model", ROOT / "benchmarks" / "gemv_model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gemv_model"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "gemv.json"
    assert mod.main(["--arch", "sm_90a", "--json", str(out), "--sass", str(tmp_path / "sass")]) == 0
    doc = json.loads(out.read_text())
    for nb in ("1", "2", "4", "8"):
        k = doc["kernels"][nb]
        # one block of 4 steps per iteration: 32 table lookups, one per weight; no spills; W is never stored
        assert k["weights_per_iteration"] == 32 and k["spills"] == 0
        assert "STG" not in k["by_op"] and k["row_end_instructions"] > 0 and k["cold_instructions"] > 0
        assert k["hot"]["fp32"] == int(nb)  # one FFMA per weight and row of X
    assert {(e["gpu"], e["batch"], e["lane_symbols"]) for e in doc["estimates"]} >= {
        ("h100", 1, 1024),
        ("h100", 8, 256),
    }
    assert all(len(e["shapes"]) == 4 for e in doc["estimates"])
    assert len(list((tmp_path / "sass").glob("*.sass"))) == 4
