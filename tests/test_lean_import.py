"""`import floatzip` must stay light: no Triton, transformers, diffusers, matplotlib or CUDA initialisation."""

from __future__ import annotations

import subprocess
import sys


def test_import_floatzip_is_light() -> None:
    code = (
        "import sys, floatzip\n"
        "heavy = [m for m in ('triton', 'transformers', 'diffusers', 'matplotlib', 'accelerate') if m in sys.modules]\n"
        "import torch\n"
        "assert not torch.cuda.is_initialized()\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import floatzip pulled in: {out.stdout.strip()}"
