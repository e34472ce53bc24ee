"""The runtime's GPU path (one Triton launch per unit) run end to end in Triton's interpreter, on the CPU.

A subprocess, because TRITON_INTERPRET is fixed when triton is first imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.runtime.conftest import Fixture

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    import floatzip
    from transformers import AutoModelForCausalLM
    from floatzip.runtime.quantizer import FloatzipConfig
    from floatzip.runtime import blocks
    original, compressed = sys.argv[1], sys.argv[2]
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    ref = AutoModelForCausalLM.from_pretrained(original, dtype=torch.bfloat16)
    fz = AutoModelForCausalLM.from_pretrained(compressed, quantization_config=FloatzipConfig(backend="triton"))
    kinds = {type(u.decoder).__name__ for u in fz._floatzip_runtime.units}
    assert kinds == {"_TritonDecoder"}, kinds
    with torch.no_grad():
        a, b = ref(ids).logits, fz(ids).logits
    assert torch.equal(a.view(torch.int16), b.view(torch.int16)), "logits differ"
    print("OK", sorted(kinds))
    """
)


@pytest.mark.interpreter
def test_triton_backend_in_the_interpreter_gives_identical_logits(tiny_models: dict[str, Fixture]) -> None:
    fx = tiny_models["llama"]
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(fx.original), str(fx.compressed)],
        capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2], check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")
