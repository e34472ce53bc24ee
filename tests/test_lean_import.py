"""`import floatzip` must stay light: no Triton, transformers, diffusers, matplotlib or CUDA initialisation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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


def test_inspect_and_verify_do_not_import_torch(tmp_path: Path) -> None:
    # start-up is most of a small command's time: torch alone takes over a second to import
    import numpy as np
    from safetensors.numpy import save_file

    from floatzip.format.checkpoint import compress_checkpoint

    w = (np.random.default_rng(0).standard_normal(8192).astype(np.float32) * 0.02).astype(np.float16)
    save_file({"w": w}, str(tmp_path / "m.safetensors"))
    compress_checkpoint(tmp_path / "m.safetensors", tmp_path / "fz")
    for verb in ("inspect", "verify"):
        code = (
            "import sys\nfrom floatzip.cli import main\n"
            f"assert main([{verb!r}, {str(tmp_path / 'fz')!r}, '-q']) == 0\n"
            f"assert 'torch' not in sys.modules, {verb!r}\n"
        )
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
