"""DF11 checkpoints built by DFloat11's own compressor from tiny seeded models, on the CPU
(:func:`floatzip.bench.load_dfloat11` imports it without CuPy or a GPU)."""

from __future__ import annotations

import contextlib
import io
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from floatzip.bench import DF11_LLAMA_PATTERNS, load_dfloat11

from ..runtime.conftest import build_causal_lm

pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def dfloat11() -> types.ModuleType:
    module = load_dfloat11()
    if module is None:
        pytest.skip("dfloat11 is not installed (pip install -e '.[test]' brings it)")
    return module


def quiet_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """DFloat11 prints every code table; keep the test log readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


@dataclass
class Df11Fixture:
    original: dict[str, torch.Tensor]  # the BF16 weights DFloat11 was given
    published: Path  # save_single_file=False: per-block files, config.json with the architecture
    single: Path  # save_single_file=True: one model.safetensors, config.json with dfloat11_config only
    plain: Path  # the same model saved by transformers (save_pretrained), uncompressed


@pytest.fixture(scope="session")
def tiny_df11(dfloat11: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Df11Fixture:
    root = tmp_path_factory.mktemp("df11")
    model = build_causal_lm("llama")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(root / "plain")
    for name, single in (("published", False), ("single", True)):
        model = build_causal_lm("llama")  # compress_model strips the weights out of the model it is given
        quiet_call(
            dfloat11.compress_model, model, DF11_LLAMA_PATTERNS, str(root / name), save_single_file=single,
            check_correctness=False,
        )  # fmt: skip
    return Df11Fixture(original, root / "published", root / "single", root / "plain")
