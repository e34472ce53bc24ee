"""benchmarks/gpu_model.py: the compiled-code model runs on a machine without a GPU and reports what the
issue asks for (its figures are recorded in BENCHMARKS.md, not asserted here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_model_reports_the_decode_kernel(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_model", ROOT / "benchmarks" / "gpu_model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_model"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    out = tmp_path / "model.json"
    assert mod.main(["--arch", "sm_90a", "--json", str(out), "--sass", str(tmp_path / "sass")]) == 0
    doc = json.loads(out.read_text())
    d = doc["decode"]
    assert doc["arch"] == "sm_90a" and d["spills"] == 0
    assert {"instructions_per_symbol", "est_tbps_h100", "est_tbps_h200"} <= set(d)
    main = next(k for k in doc["kernels"] if k["name"] == d["kernel"])
    # the hot loop decodes one block of 32 fields per lane: 32 primary-table lookups, 4 16-byte stores
    assert main["loop"]["symbols"] == 32 and main["loop"]["by_op"]["STG"] == 4
    assert main["loop"]["cold"] > 0  # the long-code calls were found and left out of the hot path
    assert len(list((tmp_path / "sass").glob("*.sass"))) == len(doc["kernels"])
