"""The fused decode-GEMV as the runtime's opt-in (``FloatzipConfig(fused=True)``), on the CPU: the GPU path's
plumbing with the kernels' host twins (backend "emulated": the fused product by floatzip.decode.gemv.emulate,
the per-weight decode by floatzip.decode.cuda.emulate)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from tests.runtime.conftest import Fixture, token_ids

U = 2.0**-24  # fp32 unit roundoff


def _load(path: Path, **options: object) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    import floatzip  # noqa: F401 (registers the quantizer)
    from floatzip.runtime.quantizer import FloatzipConfig

    kwargs = {"quantization_config": FloatzipConfig(**options)} if options else {}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kwargs).eval()


@pytest.fixture(scope="module")
def llama(tiny_models: dict[str, Fixture]) -> tuple[torch.nn.Module, torch.nn.Module]:
    fx = tiny_models["llama"]
    return _load(fx.original), _load(fx.compressed, backend="emulated", fused=True)


def test_blocks_are_fused_and_prefill_stays_bit_identical(llama: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    ref, model = llama
    rt = model._floatzip_runtime
    kinds = {u.name: type(u.decoder).__name__ for u in rt.units}
    assert kinds == {"model.embed_tokens": "_CudaDecoder", "model.layers.0": "_FusedDecoder",
                     "model.layers.1": "_FusedDecoder", "lm_head": "_FusedDecoder"}  # fmt: skip
    assert all(u.handle is None for u in rt.units if kinds[u.name] == "_FusedDecoder")  # nothing decoded up front
    ids = token_ids(batch=1, length=12)  # 12 rows > 8: each Linear decodes its weight, then the same matmul
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, model(ids).logits)


@pytest.mark.parametrize("nb", [1, 3, 8])
def test_the_fused_product_is_within_the_fp32_bound(llama: tuple[torch.nn.Module, torch.nn.Module], nb: int) -> None:
    # docs/KERNELS.md: |y - y64| <= gamma_n sum |w||x|, n = 2 in + 5, gamma_n = n u / (1 - n u)
    _, model = llama
    rt = model._floatzip_runtime
    decoded = rt.decoded_tensors()
    assert rt.fused
    same_bits = 0
    for name, (_, key) in rt.fused.items():
        w = decoded[name]
        x = torch.randn(nb, w.shape[1], generator=torch.Generator().manual_seed(nb))
        y = torch.ops.floatzip.gemv(x, key)
        assert y.dtype == torch.float32 and y.shape == (nb, w.shape[0])
        w64, x64 = w.double().numpy(), x.double().numpy()
        n = 2 * w.shape[1] + 5
        bound = n * U / (1 - n * U) * (np.abs(x64) @ np.abs(w64).T)
        assert np.all(np.abs(y.double().numpy() - x64 @ w64.T) <= bound)
        same_bits += int(torch.equal(y, x @ w.float().T))
    assert same_bits < len(rt.fused)  # another summation order than torch's: not bit-identical in general


def test_batch_one_generation(llama: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    # measured on this tiny model (in = 64 and 128): the fused path's logits round to the same BF16 as the plain
    # model's, so greedy tokens agree; on real shapes the logits can differ in the last bit (docs/KERNELS.md)
    ref, model = llama
    rt = model._floatzip_runtime
    for m in (ref, model):
        m.generation_config.eos_token_id = None
    for seed in (0, 1):
        ids = token_ids(batch=1, length=6, seed=seed)
        before = sum(u.calls for u in rt.units if type(u.decoder).__name__ == "_FusedDecoder")
        with torch.no_grad():
            want = ref.generate(ids, max_new_tokens=16, do_sample=False)
            got = model.generate(ids, max_new_tokens=16, do_sample=False)
        assert torch.equal(want, got)
        after = sum(u.calls for u in rt.units if type(u.decoder).__name__ == "_FusedDecoder")
        assert after - before == 16 * len(rt.fused)  # every step of every fused Linear ran the fused product


def test_a_fused_model_compiles_whole(llama: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    _, model = llama
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for length in (6, 12):  # the fused product, then the per-weight decode
            ids = token_ids(batch=1, length=length)
            assert torch.equal(model(ids).logits, compiled(ids).logits)


def test_fused_is_off_by_default_and_a_no_op_on_the_cpu_backend(tiny_models: dict[str, Fixture]) -> None:
    fx = tiny_models["llama"]
    for options in ({"backend": "emulated"}, {"backend": "cpu", "fused": True}):
        rt = _load(fx.compressed, **options)._floatzip_runtime
        assert not rt.fused and all(type(u.decoder).__name__ != "_FusedDecoder" for u in rt.units)


def test_dequantize_a_fused_model(tiny_models: dict[str, Fixture]) -> None:
    fx = tiny_models["llama"]
    ref, model = _load(fx.original), _load(fx.compressed, backend="emulated", fused=True)
    model._floatzip_runtime.materialize(model)
    assert not any("forward" in m.__dict__ for m in model.modules())
    ids = token_ids(batch=1, length=6)
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, model(ids).logits)


class _NormedBlock(torch.nn.Module):
    """A block whose norm has 4096 elements, as an 8B Llama's RMSNorm: the checkpoint writer codes it as a blob."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(4096)
        self.proj = torch.nn.Linear(4096, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class _Normed(torch.nn.Module):
    _no_split_modules: ClassVar[list[str]] = ["_NormedBlock"]

    def __init__(self) -> None:
        super().__init__()
        self.block = _NormedBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def test_a_block_with_compressed_norm_weights_is_fused() -> None:
    # an 8B Llama's blocks hold compressed RMSNorm weights (4096 elements): a fused unit holds Linear weights only,
    # so its small other tensors are decoded once at install (CRC checked) and kept plain
    from floatzip.codec.encode import compress_tensor
    from floatzip.runtime.blocks import install

    torch.manual_seed(0)
    plain = _Normed().to(torch.bfloat16).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(0, 0.05)
    model = _Normed().to(torch.bfloat16).eval()
    model.load_state_dict(plain.state_dict())
    cts = {n: compress_tensor(p.detach()) for n, p in plain.named_parameters() if p.numel() >= 4096}
    assert set(cts) == {"block.norm.weight", "block.norm.bias", "block.proj.weight"}
    rt = install(model, cts, backend="emulated", fused=True)
    assert [type(u.decoder).__name__ for u in rt.units] == ["_FusedDecoder"] and set(rt.fused) == {"block.proj.weight"}
    for name in ("block.norm.weight", "block.norm.bias"):  # decoded once, plain, the original bits
        p = model.get_parameter(name)
        assert name not in rt.slots and not rt.is_view(p) and p.requires_grad
        assert torch.equal(p.view(torch.int16), plain.get_parameter(name).view(torch.int16))
    x = torch.randn(12, 4096, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(plain(x).view(torch.int16), model(x).view(torch.int16))  # 12 rows: decode + matmul
        calls = rt.units[0].calls
        model(x[:2])  # 2 rows: the fused product
    assert rt.units[0].calls == calls + 1
