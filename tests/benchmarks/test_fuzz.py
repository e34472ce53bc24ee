"""benchmarks/fuzz.py: a short run ends with no escape, crash or hang and reaches every case kind; its
no-access pages really fault (the ≥10⁵-case run's figures are in BENCHMARKS.md, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "benchmarks" / "fuzz.py"


def test_a_short_fuzz_run_is_clean(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    run = subprocess.run([sys.executable, str(FUZZ), "--cases", "500", "--seconds", "120", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(out.read_text())
    assert doc["cases"] == 500
    assert set(doc["outcomes"]) == {"v2", "packed", "kernel", "v1", "checkpoint"}
    assert doc["escapes"] == doc["crashes"] == doc["hangs"] == []
    # the mutations reach past the checksums: some cases decode or restore, most are refused
    assert sum(v.get("refused", 0) for v in doc["outcomes"].values()) > 250
    assert sum(v.get("decoded", 0) + v.get("restored", 0) for v in doc["outcomes"].values()) > 0


def _touch(offset: int, tail: bool) -> int:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import fuzz, numpy as np\n"
        f"g = fuzz.Guarded(100, tail={tail})\n"
        f"p = g.array.ctypes.data + ({offset})\n"
        "import ctypes; ctypes.c_uint8.from_address(p).value\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(FUZZ.parent)], capture_output=True, timeout=60).returncode


def test_guarded_memory_faults_one_byte_out() -> None:
    assert _touch(99, tail=True) == 0 and _touch(0, tail=False) == 0
    assert _touch(100, tail=True) != 0  # one past the end: the page after is mapped with no access
    assert _touch(-1, tail=False) != 0  # one before the start
