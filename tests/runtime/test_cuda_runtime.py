"""The runtime's GPU path (one decode batch per unit) run end to end on the CPU: the unit's batch is built
exactly as for the GPU and decoded by the kernel's own per-tile and per-lane code (backend "emulated")."""

from __future__ import annotations

import pytest
import torch

from tests.runtime.conftest import Fixture


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_emulated_cuda_backend_gives_identical_logits(tiny_models: dict[str, Fixture], arch: str) -> None:
    from transformers import AutoModelForCausalLM

    import floatzip  # noqa: F401 (registers the quantizer)
    from floatzip.runtime.quantizer import FloatzipConfig

    fx = tiny_models[arch]
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    ref = AutoModelForCausalLM.from_pretrained(fx.original, dtype=torch.bfloat16)
    fz = AutoModelForCausalLM.from_pretrained(fx.compressed, quantization_config=FloatzipConfig(backend="emulated"))
    kinds = {type(u.decoder).__name__ for u in fz._floatzip_runtime.units}
    assert kinds == {"_CudaDecoder"}
    with torch.no_grad():
        a, b = ref(ids).logits, fz(ids).logits
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
