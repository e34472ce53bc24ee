"""torch.compile over a model running from floatzip weights, on the CPU.

Each unit's forward pre-hook is one ``torch.ops.floatzip.decode_into`` and a row-decoded embedding one
``floatzip::embedding_rows`` (custom operators, floatzip.runtime.ops): Dynamo traces the hooks (torch >= 2.5 inlines
nn.Module calls, hooks included) and keeps each decode as one node, so ``fullgraph=True`` holds. The decode
buffer is shared by every unit: a compiled graph that read a weight before its unit's decode, or after the next
unit's, would give other logits, so bit-identical logits show the order is kept."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from tests.runtime.conftest import Fixture, token_ids


def _load(path: Path, **kwargs: object) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    import floatzip  # noqa: F401 (registers the quantizer)

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kwargs).eval()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("llama", {}),  # embedding decoded by rows, blocks by the compiled core
        ("gemma3_text", {}),  # a scaled nn.Embedding subclass decoded by rows; lm_head tied to it
        ("llama", {"backend": "emulated"}),  # the GPU path's decoder (one batch per unit), run by its CPU twin
        ("qwen2", {"offload": True}),  # offload: staged copy, then decode
    ],
)
def test_fullgraph_compile_is_bit_identical(tiny_models: dict[str, Fixture], arch: str, options: dict) -> None:
    from floatzip.runtime.quantizer import FloatzipConfig

    fx = tiny_models[arch]
    ref = _load(fx.original)
    model = _load(fx.compressed, quantization_config=FloatzipConfig(**options))
    rt = model._floatzip_runtime
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for seed in (0, 1):  # the second call runs the compiled graph again, other ids
            ids = token_ids(seed=seed)
            before = {u.name: u.calls for u in rt.units}
            got = compiled(ids).logits
            assert torch.equal(_bits(ref(ids).logits), _bits(got))
            assert all(u.calls == before[u.name] + 1 for u in rt.units)  # every unit decoded (or looked up) once


@pytest.mark.slow
def test_inductor_compile_is_bit_identical(tiny_models: dict[str, Fixture]) -> None:
    # Inductor fuses pointwise ops and keeps their BF16 intermediates in fp32, so even the plain model compiled by it
    # differs from eager in the last bit (measured: max |diff| 0.00049 on these logits). With emulate_precision_casts
    # it rounds where eager rounds, and then the floatzip model compiled by it equals the eager BF16 model bit for bit.
    import torch._inductor.config as inductor_config

    fx = tiny_models["llama"]
    ref = _load(fx.original)
    compiled = torch.compile(_load(fx.compressed), fullgraph=True)
    with torch.no_grad(), inductor_config.patch(emulate_precision_casts=True):
        for seed in (0, 1):
            ids = token_ids(seed=seed)
            assert torch.equal(_bits(ref(ids).logits), _bits(compiled(ids).logits))


def test_an_out_of_range_id_still_raises_under_compile(tiny_models: dict[str, Fixture]) -> None:
    model = _load(tiny_models["llama"].compressed)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad(), pytest.raises(IndexError, match="index out of range"):
        compiled(torch.tensor([[1, 256]]))


def test_decoders_are_unregistered_when_the_model_goes(tiny_models: dict[str, Fixture]) -> None:
    from floatzip.runtime import ops

    model = _load(tiny_models["llama"].compressed)
    keys = [u.key for u in model._floatzip_runtime.units]
    assert all(k in ops._decoders or k in ops._gathers for k in keys)
    del model
    gc.collect()
    assert not any(k in ops._decoders or k in ops._gathers for k in keys)


def test_dequantize_unregisters(tiny_models: dict[str, Fixture]) -> None:
    from floatzip.runtime import ops

    model = _load(tiny_models["llama"].compressed)
    keys = [u.key for u in model._floatzip_runtime.units]
    model._floatzip_runtime.materialize(model)
    assert not any(k in ops._decoders or k in ops._gathers for k in keys)
