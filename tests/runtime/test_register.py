"""Registration with transformers stays lazy: `import floatzip` never imports transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Fixture

pytest.importorskip("transformers")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def _load_code(path: Path) -> str:
    return (
        "import torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(path)!r})\n"
        "print(type(m.hf_quantizer).__name__, m(torch.tensor([[1, 2, 3]])).logits.shape[-1])\n"
    )


def test_hook_registers_when_transformers_loads_later(tiny_models: dict[str, Fixture]) -> None:
    out = _run(
        "import sys\n"
        "from floatzip.runtime import _register\n"
        "_register.install()\n"
        "assert 'transformers' not in sys.modules and _register.installed_hook()\n"
        + _load_code(tiny_models["llama"].compressed)
        + "assert not _register.installed_hook()\n"
    )
    assert out == "FloatzipHfQuantizer 256"


def test_registers_at_once_when_transformers_is_loaded(tiny_models: dict[str, Fixture]) -> None:
    out = _run(
        "import transformers.quantizers.auto as auto\n"
        "from floatzip.runtime import _register\n"
        "_register.install()\n"
        "assert not _register.installed_hook() and 'floatzip' in auto.AUTO_QUANTIZER_MAPPING\n"
        "_register.install()  # idempotent\n" + _load_code(tiny_models["llama"].compressed)
    )
    assert out == "FloatzipHfQuantizer 256"


def test_importing_the_quantizer_first_registers(tiny_models: dict[str, Fixture]) -> None:
    """The quantizer module imports transformers, whose registry load fires the hook mid-import."""
    out = _run(
        "from floatzip.runtime import _register\n"
        "_register.install()\n"
        "from floatzip.runtime.quantizer import FloatzipConfig\n"
        "import torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tiny_models['llama'].compressed)!r}, "
        "quantization_config=FloatzipConfig(offload=True))\n"
        "from floatzip.runtime import memory_report\n"
        "print(type(m.hf_quantizer).__name__, memory_report(m).host_bytes > 0)\n"
    )
    assert out == "FloatzipHfQuantizer True"


def test_import_floatzip_registers(tiny_models: dict[str, Fixture]) -> None:
    """`import floatzip` alone is enough (floatzip/__init__.py calls _register.install())."""
    out = _run("import sys, floatzip\nassert 'transformers' not in sys.modules\n" + _load_code(
        tiny_models["llama"].compressed))  # fmt: skip
    assert out == "FloatzipHfQuantizer 256"
