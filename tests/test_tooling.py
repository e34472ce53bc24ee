"""Lint, format and type checks are part of the test suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return [found]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(args: list[str]) -> None:
    proc = subprocess.run([*tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy() -> None:
    proc = subprocess.run(tool("mypy"), cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_core_stub_matches_the_compiled_module(tmp_path: Path) -> None:
    """src/floatzip/_core.pyi (the typed face of the compiled core) is what nanobind's stubgen writes for it."""
    out = tmp_path / "_core.pyi"
    subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "floatzip._core", "-o", str(out)], check=True)
    subprocess.run([*tool("ruff"), "format", "--quiet", str(out)], check=True, cwd=ROOT)
    committed = ROOT / "src" / "floatzip" / "_core.pyi"
    assert out.read_text() == committed.read_text(), "regenerate it: python -m nanobind.stubgen -m floatzip._core"
