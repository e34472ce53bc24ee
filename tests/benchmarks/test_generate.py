"""benchmarks/generate.py's smoke mode (``--tiny --device cpu``) runs in seconds and reports real rows: every mode
at every batch (offload skipped, saying why), floatzip's exact tokens equal BF16's, the context estimate with its
arithmetic (its GPU figures are recorded in BENCHMARKS.md, not asserted here)."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("generate_bench", ROOT / "benchmarks" / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generate_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_generate_smoke_run_reports_every_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _module()
    out = tmp_path / "generate.json"
    start = time.perf_counter()
    assert mod.main(["--tiny", "--device", "cpu", "--json", str(out)]) == 0
    assert time.perf_counter() - start < 60
    doc = json.loads(out.read_text())
    rows = {(r["mode"], r["batch"]): r for r in doc["rows"]}
    modes = ["bf16", "floatzip exact", "floatzip per_unit", "floatzip fused", "accelerate offload"]
    assert set(rows) == {(m, b) for m in modes for b in (1, 8, 32)}
    for (mode, _), r in rows.items():
        if mode == "accelerate offload":
            assert r["tokens_per_s"] is None and r["note"] == "skipped: needs a CUDA device"
            continue
        assert r["tokens_per_s"] > 0 and r["seconds"] > 0 and r["new"] == 8 and r["weights_gib"] > 0
        if mode in ("floatzip exact", "floatzip per_unit"):
            assert r["tokens_equal"] is True and r["agreement"] == 1.0 and "tokens == bf16" in r["note"]
        elif mode == "floatzip fused":
            assert 0.0 <= r["agreement"] <= 1.0 and "units fused" in r["note"]
    assert "cpu_strategy once" in rows[("floatzip exact", 1)]["note"]  # the default, auto, on a model that fits
    assert "cpu_strategy per_unit" in rows[("floatzip per_unit", 1)]["note"]
    assert doc["exact_tokens_equal"] is True and doc["cuts"] == [] and doc["seconds"] < 60
    text = capsys.readouterr().out
    assert "longest context in 24 GiB at batch 1 (estimate" in text
    assert any(line.strip().startswith("floatzip per_unit") and "GiB /" in line and "tokens" in line
               for line in doc["context"])  # fmt: skip
    assert "floatzip per_unit, memory_report:" in text and "cpu_strategy" in text


def test_runs_the_time_budget_cannot_hold_are_skipped_and_said(tmp_path: Path) -> None:
    out = tmp_path / "generate.json"
    assert _module().main(["--tiny", "--device", "cpu", "--seconds", "16", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    skipped = [r for r in doc["rows"] if r["note"] == "skipped: time budget"]
    assert skipped and all(r["tokens_per_s"] is None for r in skipped)
    assert len(doc["cuts"]) == len(skipped) and all("skipped (estimated" in c for c in doc["cuts"])
