"""CUDA graphs over a model running from floatzip weights (needs a GPU; benchmarks/gpu_run.sh runs these).

The default GPU path is capture-safe: each unit's pre-hook is one ``torch.ops.floatzip.decode_into``, whose
decoder launches floatzip's kernel on the current stream into the fixed decode buffer, with no allocation and no
host synchronisation. A replay decodes every unit again (the buffer is clobbered before each replay here, so stale
weights would show). Offload is refused while capturing (it copies into fresh device memory on a side stream)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from floatzip.errors import BackendError
from tests.runtime.conftest import Fixture, token_ids

HAS_GPU = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (tests/runtime/test_compile.py covers the CPU)"),
]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def _load(path: Path, **kwargs: object) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    import floatzip  # noqa: F401 (registers the quantizer)

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda", **kwargs).eval()


def _capture(fn: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """``fn`` warmed up on a side stream (module loads, workspaces), then captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _linear_stack(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(*[torch.nn.Linear(256, 256, bias=False) for _ in range(3)]).to(torch.bfloat16)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_((torch.randn_like(p, dtype=torch.float32) * 0.05).to(p.dtype))
    return net


def test_a_captured_forward_replays_the_decodes() -> None:
    import floatzip
    from floatzip.runtime.blocks import install

    plain = _linear_stack(0).cuda()
    cts = {n: floatzip.compress_tensor(p.detach().cpu()) for n, p in plain.named_parameters()}
    net = _linear_stack(1)  # other weights: only floatzip's decodes make it equal `plain`
    rt = install(net, cts, device="cuda", blocks=["0", "1", "2"])
    x = torch.randn(4, 256, device="cuda").to(torch.bfloat16)
    with torch.no_grad():
        graph, y = _capture(lambda: net(x))
        for seed in (1, 2):
            x.copy_(torch.randn(4, 256, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)))
            for buf in rt.buffers.values():
                buf.fill_(0xA5)
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(_bits(y), _bits(plain(x)))


def test_a_captured_llama_forward_is_bit_identical(tiny_models: dict[str, Fixture]) -> None:
    fx = tiny_models["llama"]
    ref, model = _load(fx.original), _load(fx.compressed)
    rt = model._floatzip_runtime
    assert {type(u.decoder).__name__ for u in rt.units} == {"_CudaDecoder"}
    ids = token_ids().cuda()
    with torch.no_grad():
        try:
            ref_graph, ref_out = _capture(lambda: ref(ids, use_cache=False).logits)
        except Exception as exc:  # transformers' own forward, not floatzip's decoding
            pytest.skip(f"the plain BF16 model's forward cannot be captured here: {exc}")
        graph, out = _capture(lambda: model(ids, use_cache=False).logits)
        for seed in (1, 2):
            ids.copy_(token_ids(seed=seed).cuda())
            for buf in rt.buffers.values():
                buf.fill_(0xA5)
            graph.replay()
            ref_graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(_bits(out), _bits(ref_out))
            assert torch.equal(_bits(out), _bits(ref(ids, use_cache=False).logits))


def test_reduce_overhead_compile_is_bit_identical(tiny_models: dict[str, Fixture]) -> None:
    # emulate_precision_casts: Inductor then rounds BF16 intermediates where eager does (see test_compile.py)
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    fx = tiny_models["llama"]
    ref, model = _load(fx.original), _load(fx.compressed)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad(), inductor_config.patch(emulate_precision_casts=True):
        for seed in (0, 1, 2, 3):  # the first calls record the graph, the later ones replay it
            ids = token_ids(seed=seed).cuda()
            got = compiled(ids, use_cache=False).logits.clone()
            assert torch.equal(_bits(got), _bits(ref(ids, use_cache=False).logits))
    assert counters["inductor"]["cudagraph_skips"] == 0  # CUDA graphs were used, not skipped


def test_offload_is_refused_while_capturing(tiny_models: dict[str, Fixture]) -> None:
    from floatzip.runtime.quantizer import FloatzipConfig

    model = _load(tiny_models["llama"].compressed, quantization_config=FloatzipConfig(offload=True))
    ids = token_ids().cuda()
    with torch.no_grad(), pytest.raises(BackendError, match="offload cannot be captured"):
        _capture(lambda: model(ids, use_cache=False).logits)
