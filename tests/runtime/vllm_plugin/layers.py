"""vLLM's parallel layers built twice, with floatzip and unquantized (BF16), loaded from the same weights:
one from a floatzip checkpoint through the plugin's weight stream, one from the plain file. Shared by the
single-process tests and the tensor-parallel workers (tests/runtime/vllm_plugin/tp_worker.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

HIDDEN = 128
HEAD = 32
HEADS = 4
KV_HEADS = 2
VOCAB = 1000  # not a multiple of 64: vLLM pads each rank's vocabulary shard
INTER = 192


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    return {
        "col.weight": w(INTER, HIDDEN),
        "col.bias": w(INTER),
        "row.weight": w(HIDDEN, INTER),
        "row.bias": w(HIDDEN),
        "rep.weight": w(96, HIDDEN),
        "gate.weight": w(INTER, HIDDEN),
        "up.weight": w(INTER, HIDDEN),
        "q.weight": w(HEADS * HEAD, HIDDEN),
        "k.weight": w(KV_HEADS * HEAD, HIDDEN),
        "v.weight": w(KV_HEADS * HEAD, HIDDEN),
        "emb.weight": w(VOCAB, HIDDEN),
        "head.weight": w(VOCAB, HIDDEN),
    }


def write_checkpoints(root: Path) -> tuple[Path, Path]:
    """The layers' weights as a plain safetensors file and as a floatzip checkpoint of it."""
    from floatzip.format.checkpoint import compress_checkpoint

    plain = root / "plain"
    plain.mkdir(parents=True)
    save_file(_weights(), str(plain / "model.safetensors"))
    compress_checkpoint(plain, root / "fz")
    return plain / "model.safetensors", root / "fz" / "model.safetensors"


def plain_stream(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            yield name, f.get_tensor(name)


def floatzip_stream(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from floatzip.runtime.vllm_plugin import floatzip_files, restored_weights

    return restored_weights(plain_stream(path), floatzip_files([path]))


@dataclass
class Case:
    """One layer kind: how to build it, which checkpoint tensors load into it (with which shard id)."""

    name: str
    build: Callable[[object], torch.nn.Module]
    parts: list[tuple[str, str, object]]  # (checkpoint name, parameter, shard id or None)
    kind: str  # "linear" or "embedding"


def cases() -> list[Case]:
    from vllm.model_executor.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        ReplicatedLinear,
        RowParallelLinear,
    )
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    bf16 = torch.bfloat16
    return [
        Case("column", lambda q: ColumnParallelLinear(HIDDEN, INTER, bias=True, params_dtype=bf16, quant_config=q,
                                                      prefix="col"),
             [("col.weight", "weight", None), ("col.bias", "bias", None)], "linear"),
        Case("row", lambda q: RowParallelLinear(INTER, HIDDEN, bias=True, params_dtype=bf16, quant_config=q,
                                                prefix="row"),
             [("row.weight", "weight", None), ("row.bias", "bias", None)], "linear"),
        Case("replicated", lambda q: ReplicatedLinear(HIDDEN, 96, bias=False, params_dtype=bf16, quant_config=q,
                                                      prefix="rep"),
             [("rep.weight", "weight", None)], "linear"),
        Case("merged", lambda q: MergedColumnParallelLinear(HIDDEN, [INTER, INTER], bias=False, params_dtype=bf16,
                                                            quant_config=q, prefix="gate_up"),
             [("gate.weight", "weight", 0), ("up.weight", "weight", 1)], "linear"),
        Case("qkv", lambda q: QKVParallelLinear(HIDDEN, HEAD, HEADS, KV_HEADS, bias=False, params_dtype=bf16,
                                                quant_config=q, prefix="qkv"),
             [("q.weight", "weight", "q"), ("k.weight", "weight", "k"), ("v.weight", "weight", "v")], "linear"),
        Case("embedding", lambda q: VocabParallelEmbedding(VOCAB, HIDDEN, params_dtype=bf16, quant_config=q,
                                                           prefix="emb"),
             [("emb.weight", "weight", None)], "embedding"),
        Case("lm_head", lambda q: ParallelLMHead(VOCAB, HIDDEN, params_dtype=bf16, quant_config=q, prefix="head"),
             [("head.weight", "weight", None)], "linear"),
    ]  # fmt: skip


def load(layer: torch.nn.Module, case: Case, stream: Iterator[tuple[str, torch.Tensor]]) -> None:
    """What a model's ``load_weights`` does for these tensors: each goes to its parameter's loader."""
    wanted = {name: (param, shard) for name, param, shard in case.parts}
    for name, tensor in stream:
        if name not in wanted:
            continue
        param_name, shard = wanted[name]
        param = getattr(layer, param_name)
        loader = param.weight_loader
        if shard is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard)
    quant_method = getattr(layer, "quant_method", None)
    if quant_method is not None and type(quant_method).__module__.startswith("floatzip"):
        quant_method.process_weights_after_loading(layer)


def inputs(case: Case, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if case.kind == "embedding":
        return torch.randint(0, VOCAB, (3, 7), generator=g)
    width = INTER if case.name == "row" else HIDDEN
    return (torch.randn(5, width, generator=g)).to(torch.bfloat16)


def reference(layer: torch.nn.Module, case: Case, x: torch.Tensor) -> torch.Tensor:
    """The BF16 layer's output computed with the matmul floatzip's method runs on the CPU (``F.linear``):
    vLLM's own CPU matmul needs its C++ kernels, which its CPU-less wheel lacks."""
    from vllm.distributed import get_tensor_model_parallel_rank, tensor_model_parallel_all_reduce

    w = layer.weight
    if case.kind == "embedding":
        if layer.tp_size == 1:
            return torch.nn.functional.embedding(x, w)
        from vllm.model_executor.layers.vocab_parallel_embedding import get_masked_input_and_mask

        s = layer.shard_indices
        masked, mask = get_masked_input_and_mask(x, s.org_vocab_start_index, s.org_vocab_end_index,
                                                 s.num_org_vocab_padding, s.added_vocab_start_index,
                                                 s.added_vocab_end_index)  # fmt: skip
        out = torch.nn.functional.embedding(masked, w)
        out.masked_fill_(mask.unsqueeze(-1), 0)
        return tensor_model_parallel_all_reduce(out)
    if case.name == "lm_head":
        return torch.nn.functional.linear(x, w)
    bias = getattr(layer, "bias", None)
    if case.name == "row":
        if layer.tp_size > 1:
            x = x.chunk(layer.tp_size, dim=-1)[get_tensor_model_parallel_rank()].contiguous()
        out = torch.nn.functional.linear(x, w, bias if get_tensor_model_parallel_rank() == 0 else None)
        return tensor_model_parallel_all_reduce(out) if layer.tp_size > 1 else out
    return torch.nn.functional.linear(x, w, bias)


def forward(layer: torch.nn.Module, case: Case, x: torch.Tensor) -> torch.Tensor:
    from vllm.distributed import get_tensor_model_parallel_rank

    if case.name == "lm_head":
        return layer.quant_method.apply(layer, x)
    if case.name == "row" and layer.tp_size > 1:
        x = x.chunk(layer.tp_size, dim=-1)[get_tensor_model_parallel_rank()].contiguous()
    out = layer(x)
    return out[0] if isinstance(out, tuple) else out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(-1).view(torch.int16 if t.element_size() == 2 else torch.uint8)


@contextmanager
def vllm_cpu(world_size: int = 1, rank: int = 0, init_file: Path | None = None) -> Iterator[None]:
    """vLLM's config and distributed state for layers on the CPU (gloo), as its workers set them up."""
    import tempfile

    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    from floatzip.runtime.vllm_plugin import register

    register()
    if init_file is None:
        init_file = Path(tempfile.mkdtemp()) / "init"
    config = VllmConfig(device_config=DeviceConfig(device="cpu"))
    with set_current_vllm_config(config):
        init_distributed_environment(world_size=world_size, rank=rank, distributed_init_method=f"file://{init_file}",
                                     local_rank=rank, backend="gloo")  # fmt: skip
        initialize_model_parallel(world_size)
        yield


def check_all(plain: Path, compressed: Path) -> list[str]:
    """Every case built both ways and compared; the list of failures (empty when all hold)."""
    from floatzip.runtime.vllm_plugin import FloatzipVllmConfig, decoded_weight, resident_bytes

    failures = []
    for case in cases():
        ours, theirs = case.build(FloatzipVllmConfig()), case.build(None)
        load(ours, case, floatzip_stream(compressed))
        load(theirs, case, plain_stream(plain))
        if not torch.equal(bits(decoded_weight(ours)), bits(theirs.weight)):
            failures.append(f"{case.name}: decoded shard differs from the BF16 shard")
        if ours.weight.shape != theirs.weight.shape or ours.weight.dtype != theirs.weight.dtype:
            failures.append(f"{case.name}: weight stand-in {ours.weight.shape} {ours.weight.dtype}")
        if resident_bytes(ours) >= theirs.weight.numel() * 2:
            failures.append(f"{case.name}: {resident_bytes(ours)} bytes resident, not compressed")
        x = inputs(case)
        if not torch.equal(bits(forward(ours, case, x)), bits(reference(theirs, case, x))):
            failures.append(f"{case.name}: output differs from the BF16 layer's")
    return failures
