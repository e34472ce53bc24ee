"""What loading a floatzip checkpoint into vLLM's layers costs on the CPU, against the plain BF16 load.

    .venv-vllm/bin/python benchmarks/vllm_load.py [--layers 1] [--tp 1]

Builds one Llama-3.1-8B decoder layer's linear layers (QKV 4096 -> 6144, O 4096 -> 4096, gate/up
4096 -> 2 x 14336, down 14336 -> 4096) with vLLM's real classes, with random trained-looking BF16 weights,
and loads them both ways from the same data on disk: the plain file through vLLM's loaders, and the
floatzip checkpoint through the plugin's weight stream (each blob decoded and checked) and its packing
(each complete shard coded again, freed from the host). Prints seconds, GB/s of BF16 weights, resident
bytes, and the same for a 8B model by proportion (an estimate: 32 such layers plus the embeddings). "fz re-coded"
hands the layers decoded tensors without their stored code, so each is coded again: what a tensor-parallel
rank does with its shards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file

from floatzip.format.checkpoint import compress_checkpoint
from tests.runtime.vllm_plugin import layers

H, INTER, HEAD, HEADS, KV = 4096, 14336, 128, 32, 8
PARAMS_8B = 8.03e9


def build(q: object) -> list[tuple[torch.nn.Module, list[tuple[str, object]]]]:
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear

    bf16 = torch.bfloat16
    out = []
    for i in range(args.layers):
        p = f"l{i}."
        out += [
            (QKVParallelLinear(H, HEAD, HEADS, KV, bias=False, params_dtype=bf16, quant_config=q, prefix=p + "qkv"),
             [(p + "q", "q"), (p + "k", "k"), (p + "v", "v")]),
            (RowParallelLinear(H, H, bias=False, params_dtype=bf16, quant_config=q, prefix=p + "o"), [(p + "o", None)]),
            (MergedColumnParallelLinear(H, [INTER, INTER], bias=False, params_dtype=bf16, quant_config=q,
                                        prefix=p + "gu"),
             [(p + "gate", 0), (p + "up", 1)]),
            (RowParallelLinear(INTER, H, bias=False, params_dtype=bf16, quant_config=q, prefix=p + "down"),
             [(p + "down", None)]),
        ]  # fmt: skip
    return out


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"q": (H, H), "k": (KV * HEAD, H), "v": (KV * HEAD, H), "o": (H, H), "gate": (INTER, H), "up": (INTER, H),
              "down": (H, INTER)}  # fmt: skip
    return {f"l{i}.{n}": (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16)
            for i in range(args.layers) for n, s in shapes.items()}  # fmt: skip


def load(mods: list[tuple[torch.nn.Module, list[tuple[str, object]]]], stream) -> float:  # type: ignore[no-untyped-def]
    where = {name: (m, shard) for m, parts in mods for name, shard in parts}
    t0 = time.perf_counter()
    for name, t in stream:
        m, shard = where[name]
        if shard is None:
            m.weight.weight_loader(m.weight, t)
        else:
            m.weight.weight_loader(m.weight, t, shard)
    for m, _ in mods:
        if type(m.quant_method).__module__.startswith("floatzip"):
            m.quant_method.process_weights_after_loading(m)
    return time.perf_counter() - t0


def main() -> None:
    from floatzip.runtime.vllm_plugin import FloatzipVllmConfig, resident_bytes

    root = Path(tempfile.mkdtemp())
    (root / "plain").mkdir()
    w = weights()
    nbytes = sum(t.numel() * 2 for t in w.values())
    save_file(w, str(root / "plain" / "model.safetensors"))
    del w
    t0 = time.perf_counter()
    compress_checkpoint(root / "plain", root / "fz")
    t_compress = time.perf_counter() - t0
    plain, fz = root / "plain" / "model.safetensors", root / "fz" / "model.safetensors"
    with layers.vllm_cpu():
        rows = []

        def recoded(path: Path):  # type: ignore[no-untyped-def]
            for name, t in layers.floatzip_stream(path):  # decoded, then coded again by the layer (as at TP > 1)
                yield name, t.clone()

        for label, q, stream in (("plain BF16", None, layers.plain_stream),
                                 ("floatzip", FloatzipVllmConfig(), layers.floatzip_stream),
                                 ("fz re-coded", FloatzipVllmConfig(), recoded)):  # fmt: skip
            best, resident = float("inf"), 0
            for _ in range(args.rounds):
                mods = build(q)
                best = min(best, load(mods, stream(plain if q is None else fz)))
                resident = sum(resident_bytes(m) if q is not None else m.weight.numel() * 2 for m, _ in mods)
                del mods
            rows.append((label, best, resident))
    print(f"{args.layers} Llama-3.1-8B layer(s), {nbytes / 1e6:.0f} MB of BF16 weights, {torch.get_num_threads()} "
          f"threads; `floatzip compress` took {t_compress:.2f} s")  # fmt: skip
    print(f"{'load':<12} {'s (best)':>9} {'GB/s':>6} {'resident MB':>12} {'8B model s (est.)':>18}")
    for label, s, resident in rows:
        est = s * PARAMS_8B * 2 / nbytes
        print(f"{label:<12} {s:9.2f} {nbytes / s / 1e9:6.2f} {resident / 1e6:12.1f} {est:18.0f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    main()
