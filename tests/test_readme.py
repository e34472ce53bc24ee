"""Every snippet of the README runs: its Python blocks, and the `floatzip` commands of its "Use" block, each
in a fresh process in a folder holding tiny stand-ins for the paths they name (a Llama, its floatzip
checkpoint, a FLUX pipeline's). The two set-up commands are what CI itself runs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
# covered by their own tests (tests/test_bench.py, tests/convert/), and slow or needing a DF11 checkpoint here
NOT_HERE = {"bench", "convert"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from floatzip.format.checkpoint import compress_checkpoint
    from tests.runtime.conftest import build_causal_lm

    root = tmp_path_factory.mktemp("readme")
    build_causal_lm("llama").save_pretrained(root / "model")
    compress_checkpoint(root / "model", root / "llama-8b-floatzip")
    pytest.importorskip("diffusers")
    from tests.runtime.test_diffusers import _tiny_flux_pipeline

    torch.manual_seed(0)
    _tiny_flux_pipeline(root / "tokenizers").save_pretrained(root / "flux")
    compress_checkpoint(root / "flux", root / "flux-floatzip")
    return root


def test_the_readme_has_its_snippets() -> None:
    kinds = [k for k, _ in BLOCKS]
    assert kinds.count("python") >= 3 and kinds.count("bash") >= 3


@pytest.mark.parametrize("index", [i for i, (kind, _) in enumerate(BLOCKS) if kind == "python"])
def test_python_snippet_runs(workdir: Path, index: int) -> None:
    code = BLOCKS[index][1]
    run = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"README snippet {index}:\n{code}\n{run.stderr[-3000:]}"


def _use_commands() -> list[list[str]]:
    use = next(body for kind, body in BLOCKS if kind == "bash" and "floatzip compress" in body)
    commands = []
    for line in use.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "floatzip" and words[1] not in NOT_HERE:
            commands.append(words)
    return commands


def test_use_commands_run(tmp_path: Path) -> None:
    from tests.runtime.conftest import build_causal_lm

    workdir = tmp_path
    build_causal_lm("llama").save_pretrained(workdir / "Llama-3.1-8B")
    commands = _use_commands()
    assert [c[1] for c in commands] == ["compress", "verify", "decompress", "inspect"]
    for words in commands:  # in order: each uses what the one before wrote
        run = subprocess.run([sys.executable, "-m", "floatzip.cli", *words[1:], "--quiet"] if words[1] != "inspect"
                             else [sys.executable, "-m", "floatzip.cli", *words[1:]],
                             cwd=workdir, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, f"{' '.join(words)}:\n{run.stderr[-3000:]}"
    assert (workdir / "where.png").stat().st_size > 0
