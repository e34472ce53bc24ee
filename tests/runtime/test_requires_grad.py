"""The parameters the runtime installs require grad as the plain model's do (with ``requires_grad=False``,
``torch.matmul`` did not fold a strided 3-D input into one matrix product: an 8B lm_head on
``hidden_states[:, -1:, :]`` took 50x longer on the CPU, BENCHMARKS.md), and the hooks still refill the decode
buffer under views that require grad, with grad mode on or off, without autograd errors and without storing a
gradient anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from floatzip.runtime import compress_model, load_model, runtime_of
from floatzip.runtime.blocks import PARAM_REQUIRES_GRAD

from .conftest import Fixture, token_ids
from .test_modules import Net, _net

transformers = pytest.importorskip("transformers")

from floatzip.runtime.quantizer import FloatzipConfig  # noqa: E402


def _load(path: Path, **options: object) -> torch.nn.Module:
    kwargs = {"quantization_config": FloatzipConfig(**options)} if options else {}
    return transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def _requires_grad(model: torch.nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}


@pytest.mark.parametrize("cpu_strategy", ["per_unit", "once"])
@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "mixtral"])  # tied + row-decoded; stacked MoE experts
def test_installed_parameters_require_grad_as_the_plain_models(
    tiny_models: dict[str, Fixture], arch: str, cpu_strategy: str
) -> None:
    fx = tiny_models[arch]
    expect = _requires_grad(_load(fx.original))
    model = _load(fx.compressed, cpu_strategy=cpu_strategy)
    rt = runtime_of(model)
    assert rt is not None
    assert PARAM_REQUIRES_GRAD and all(expect.values())
    assert _requires_grad(model) == expect
    installed = set(rt.slots) | rt.once  # the decode-buffer views and stand-ins, or the tensors decoded at load
    assert installed and installed <= set(expect)


def test_load_model_parameters_require_grad_as_the_modules(tmp_path: Path) -> None:
    net = _net()
    compress_model(net, tmp_path / "fz")
    for cpu_strategy in ("per_unit", "once"):
        loaded = load_model(Net().to(torch.bfloat16), tmp_path / "fz", keep_compressed=True, cpu_strategy=cpu_strategy)
        assert _requires_grad(loaded) == _requires_grad(net), cpu_strategy


def test_hooks_refill_views_that_require_grad(tiny_models: dict[str, Fixture]) -> None:
    fx = tiny_models["gemma3_text"]
    ref = _load(fx.original)
    model = _load(fx.compressed, cpu_strategy="per_unit")
    rt = runtime_of(model)
    assert rt is not None
    views = {n: p for n, p in model.named_parameters(remove_duplicate=False) if rt.is_view(p)}
    assert len(views) >= 8 and all(p.requires_grad for p in views.values())
    ids = token_ids()
    with torch.no_grad():
        expect = ref(ids).logits
    calls = sum(u.calls for u in rt.units)
    got = model(ids).logits  # grad mode on, as a caller who forgot no_grad: the same bits, as the plain model
    assert got.requires_grad == ref(ids).logits.requires_grad
    assert torch.equal(got.detach(), expect)
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, expect)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expect)
    assert sum(u.calls for u in rt.units) == calls + 3 * len([u for u in rt.units if u.handle is not None]) + 3
    # the same Parameter objects, still views of the one buffer, no gradient stored anywhere
    assert all(model.get_parameter(n) is p and rt.is_view(p) for n, p in views.items())
    assert all(p.grad is None for p in model.parameters())
    # a backward through weights the next unit overwrote refuses (autograd's version check), never wrong grads
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        got.float().sum().backward()


def test_the_fused_path_runs_with_grad_mode_on(tiny_models: dict[str, Fixture]) -> None:
    fx = tiny_models["llama"]
    model = _load(fx.compressed, backend="emulated", fused=True)
    rt = runtime_of(model)
    assert rt is not None and rt.fused
    ids = token_ids(batch=1, length=4)  # 4 rows: each fused Linear runs floatzip::gemv
    with torch.no_grad():
        expect = model(ids).logits
    assert torch.equal(model(ids).logits.detach(), expect)
    assert all(p.grad is None for p in model.parameters())
