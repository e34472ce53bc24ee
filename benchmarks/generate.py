"""Generation speed and memory: BF16 vs floatzip vs accelerate's CPU offload, on one device.

A Llama-3.1-8B-shaped model with random BF16 weights (normal, std 0.02: exponents spread like trained
weights) is built on the device, compressed in memory with floatzip (the same codec as the checkpoint
writer), and measured:

* tokens/s of greedy generation at batch 1 and 32 (prompt 64 tokens, 64 new tokens by default);
* peak device memory of each run;
* accelerate CPU offload when the BF16 model does not fit a too-small device budget (``--offload-gib``);
* the longest context that fits a fixed budget (``--budget-gib``): (budget - resident weights) /
  KV-cache bytes per token, marked "est.": computed, not run, activations not counted.

floatzip's generated tokens are checked to be identical to BF16's.

    python benchmarks/generate.py                      # on a CUDA device (an H100: ~10 minutes)
    python benchmarks/generate.py --tiny --device cpu  # a smoke run anywhere
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass
from typing import Any

import torch

from floatzip.codec.encode import compress_tensor
from floatzip.format import spec
from floatzip.runtime import install, memory_report


@dataclass
class Row:
    mode: str
    batch: int
    tokens_per_s: float
    peak_gib: float
    weights_gib: float
    note: str = ""


def llama_config(tiny: bool) -> Any:
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096)  # fmt: skip
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=131072,
                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0})  # fmt: skip


def build(config: Any, device: torch.device, seed: int = 0) -> Any:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
        model.model.rotary_emb.to(device)
        for m in model.modules():  # buffers (rotary inv_freq) were left uninitialised by to_empty
            if hasattr(m, "rope_init_fn") and hasattr(m, "inv_freq"):
                inv_freq, _ = m.rope_init_fn(m.config, device)
                m.inv_freq.copy_(inv_freq)
                m.original_inv_freq = inv_freq
    return model.eval()


def compress_in_memory(model: torch.nn.Module, device: torch.device) -> float:
    """Compress every eligible weight (as the checkpoint writer does) and install the runtime; seconds."""
    start = time.perf_counter()
    compressed = {}
    by_id = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.dtype in spec.LAYOUT_BY_TORCH and p.numel() >= spec.MIN_ENCODED_NUMEL:
            if id(p) not in by_id:
                by_id[id(p)] = compress_tensor(p.detach())
            compressed[name] = by_id[id(p)]
    install(model, compressed, device=device)
    gc.collect()
    return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")  # n/a on CPU


def generate(model: Any, ids: torch.Tensor, new: int, device: torch.device) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        mask = torch.ones_like(ids)
        model.generate(ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=2, min_new_tokens=2, do_sample=False)
        sync(device)
        reset_peak(device)
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        sync(device)
    return out, ids.shape[0] * new / (time.perf_counter() - start)


def kv_bytes_per_token(config: Any) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama (smoke run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--offload-gib", type=float, default=8.0, help="device budget for accelerate's CPU offload")
    ap.add_argument("--budget-gib", type=float, default=24.0, help="memory budget for the longest-context estimate")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    batches = [int(b) for b in args.batches.split(",")]
    config = llama_config(args.tiny)
    rows: list[Row] = []
    g = torch.Generator().manual_seed(1)
    prompts = {b: torch.randint(0, config.vocab_size, (b, args.prompt), generator=g).to(device) for b in batches}

    # BF16 reference
    model = build(config, device)
    bf16_weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    reference = {}
    for b in batches:
        out, tps = generate(model, prompts[b], args.new, device)
        reference[b] = out.cpu()
        rows.append(Row("bf16", b, tps, peak_gib(device), bf16_weights))

    # floatzip, same weights
    seconds = compress_in_memory(model, device)
    mem = memory_report(model)
    fz_weights = mem.resident_bytes / 2**30
    for b in batches:
        out, tps = generate(model, prompts[b], args.new, device)
        same = torch.equal(out.cpu(), reference[b])
        rows.append(Row("floatzip", b, tps, peak_gib(device), fz_weights, "tokens == bf16" if same else "MISMATCH"))
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # accelerate CPU offload with a device budget too small for the BF16 weights
    if device.type == "cuda":
        from accelerate import dispatch_model, infer_auto_device_map

        host = build(config, torch.device("cpu"))
        budget = f"{args.offload_gib}GiB"
        limits = {device.index: budget, "cpu": "200GiB"}
        no_split = sorted(host._no_split_modules)
        device_map = infer_auto_device_map(host, max_memory=limits, no_split_module_classes=no_split)
        offloaded = dispatch_model(host, device_map=device_map, main_device=device)
        on_device = sum(1 for d in device_map.values() if d == device.index)
        for b in batches:
            out, tps = generate(offloaded, prompts[b], args.new, device)
            note = f"budget {budget}, {on_device}/{len(device_map)} modules on GPU"
            rows.append(Row("accelerate offload", b, tps, peak_gib(device), args.offload_gib, note))
        del offloaded, host
        gc.collect()
        torch.cuda.empty_cache()

    print(f"\nLlama-shaped model ({'tiny' if args.tiny else '8B'}), {device}, prompt {args.prompt}, "
          f"{args.new} new tokens; floatzip compressed in {seconds:.1f} s")  # fmt: skip
    print(f"{'mode':<20} {'batch':>5} {'tok/s':>10} {'peak GiB':>9} {'weights GiB':>12}  note")
    for r in rows:
        line = f"{r.mode:<20} {r.batch:>5} {r.tokens_per_s:>10.1f} {r.peak_gib:>9.2f} {r.weights_gib:>12.3f}"
        print(f"{line}  {r.note}")
    print("\nfloatzip resident weight memory:")
    print(mem.format())

    # longest context in a fixed budget (batch 1): weights + overhead + kv per token
    per_token = kv_bytes_per_token(config)
    budget_b = args.budget_gib * 2**30
    kib = per_token / 1024
    print(f"\nlongest context in {args.budget_gib} GiB (batch 1, KV cache {kib:.0f} KiB/token, est.):")
    for mode, weights in (("bf16", bf16_weights * 2**30), ("floatzip", mem.resident_bytes)):
        tokens = max(0, int((budget_b - weights) // per_token))
        print(f"  {mode:<10} {tokens:>10,d} tokens")


if __name__ == "__main__":
    main()
