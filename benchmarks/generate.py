"""Generation speed and memory on one device: BF16, floatzip exact, floatzip fused, accelerate's CPU offload.

A Llama-3.1-8B-shaped model with random BF16 weights (normal, std 0.02, norms 1: exponents spread like trained
weights) is built on the device and compressed in memory by floatzip's codec, with the checkpoint writer's rule
(every float tensor of at least 4096 elements; ties once). Measured, greedy generation (prompt ``--prompt``
tokens, ``--new`` new ones, no early stop) at batch 1, 8 and 32:

* ``bf16``: the model itself;
* ``floatzip exact``: ``install(model, compressed)``, what ``from_pretrained`` on a floatzip checkpoint does by
  default: each block decoded just before it runs, bit-identical, checked (its tokens must equal bf16's);
* ``floatzip fused``: ``install(..., fused=True)`` (``FloatzipConfig(fused=True)``): the Linear layers by the fused
  decode-GEMV at up to 8 rows; not bit-identical (another fp32 summation order), its agreement with bf16's tokens
  reported;
* ``accelerate offload``: the same BF16 weights dispatched by accelerate under a device budget too small for them
  (``--offload-gib``, at most half the BF16 weights), the rest in host memory and copied per forward; it runs
  ``--offload-new`` new tokens (it is slow);
* on the CPU (``--device cpu``) also ``floatzip per_unit`` (``cpu_strategy="per_unit"``: "exact" there takes the
  default ``cpu_strategy="auto"``, which decodes a model that fits once, at load); fused runs through the GPU
  kernels' CPU twins (backend ``emulated``) and offload is skipped (nothing to offload from).

Each run's peak device memory is ``torch.cuda.max_memory_allocated``, reset before it. The longest context that
fits ``--budget-gib`` at batch 1 is an estimate, printed with its arithmetic: (budget - resident weights) / KV
cache bytes per token (activations and the allocator's slack not counted).

Time budget: the command ends within ``--seconds`` (default 450, inside an 8-minute GPU slot). The layer count
(``--layers``; default: as many of Llama-3.1-8B's 32 as the budget allows, from the host's compression speed
measured first) and any run the time left cannot hold are cut, and the output says so. Exit status 1 when floatzip
exact's tokens differ from bf16's.

    python benchmarks/generate.py                      # on a CUDA GPU (H100/H200): within 8 minutes
    python benchmarks/generate.py --tiny --device cpu  # a smoke run anywhere: seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from floatzip.codec.encode import compress_tensor
from floatzip.format import spec
from floatzip.format.blob import CompressedTensor
from floatzip.runtime import install, memory_report, runtime_of

FULL_LAYERS = 32  # Llama-3.1-8B's
COMPRESS_SHARE = 0.25  # of the time budget, at most, for compressing the model on the host
RESERVE_S = 15.0  # seconds kept back for the summary and teardown


@dataclass
class Row:
    mode: str
    batch: int
    new: int
    tokens_per_s: float | None  # None: skipped
    seconds: float | None
    peak_gib: float | None  # None on the CPU
    weights_gib: float
    tokens_equal: bool | None = None  # the generated tokens equal bf16's (None: bf16 itself, or skipped)
    agreement: float | None = None  # the share of new tokens equal to bf16's
    note: str = ""


@dataclass
class Clock:
    seconds: float
    start: float = field(default_factory=time.perf_counter)
    cuts: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def llama_config(tiny: bool, layers: int) -> Any:
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096)  # fmt: skip
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=131072,
                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0})  # fmt: skip


def skeleton(config: Any, device: torch.device) -> Any:
    """The model with uninitialised weights on ``device`` and its rotary buffers computed."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device=device)
    for m in model.modules():  # buffers (rotary inv_freq) were left uninitialised by to_empty
        if hasattr(m, "rope_init_fn") and hasattr(m, "inv_freq"):
            inv_freq, _ = m.rope_init_fn(m.config, device)
            m.inv_freq.copy_(inv_freq)
            m.original_inv_freq = inv_freq
    model.generation_config.eos_token_id = None  # every run generates exactly its tokens
    model.generation_config.pad_token_id = 0
    return model.eval()


def build(config: Any, device: torch.device, seed: int = 0) -> Any:
    model = skeleton(config, device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model


def compress(model: torch.nn.Module) -> tuple[dict[str, CompressedTensor], float]:
    """Every eligible weight compressed on the host, as the checkpoint writer does (ties once); seconds."""
    start = time.perf_counter()
    by_id: dict[int, CompressedTensor] = {}
    out: dict[str, CompressedTensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if spec.layout_for(p.dtype) is not None and p.numel() >= spec.MIN_ENCODED_NUMEL:
            if id(p) not in by_id:
                by_id[id(p)] = compress_tensor(p.detach().cpu())
            out[name] = by_id[id(p)]
    return out, time.perf_counter() - start


def compress_speed() -> float:
    """Bytes of BF16 weights the host compresses per second (one 8B MLP matrix)."""
    w = (torch.randn(14336, 4096, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    start = time.perf_counter()
    compress_tensor(w)
    return w.numel() * 2 / (time.perf_counter() - start)


def layer_bytes(config: Any) -> tuple[int, int]:
    """BF16 bytes of one decoder layer, and of the rest (embedding, lm_head, final norm)."""
    h, i, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads
    head_dim = h // config.num_attention_heads
    per_layer = 2 * (2 * h * h + 2 * h * kv * head_dim + 3 * h * i + 2 * h)
    return per_layer, 2 * (2 * config.vocab_size * h + h)


def pick_layers(args: argparse.Namespace, clock: Clock) -> tuple[int, str]:
    if args.tiny:
        return args.layers or 4, f"{args.layers or 4} layers (tiny)"
    if args.layers:
        return args.layers, f"{args.layers} of Llama-3.1-8B's {FULL_LAYERS} layers (--layers)"
    per_layer, rest = layer_bytes(llama_config(False, FULL_LAYERS))
    speed = compress_speed()
    allowed = COMPRESS_SHARE * clock.seconds * speed
    layers = max(1, min(FULL_LAYERS, int((allowed - rest) // per_layer)))
    why = f"compressing at {speed / 1e9:.2f} GB/s on the host, {COMPRESS_SHARE:.0%} of the {clock.seconds:.0f} s budget"
    if layers < FULL_LAYERS:
        clock.cuts.append(f"layers: {layers} of {FULL_LAYERS} ({why})")
        return layers, f"{layers} of Llama-3.1-8B's {FULL_LAYERS} layers (time budget: {why})"
    return layers, f"all {FULL_LAYERS} layers of Llama-3.1-8B ({why})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def generate(model: Any, ids: torch.Tensor, new: int, device: torch.device) -> tuple[torch.Tensor, float, float | None]:
    """Greedy generation of ``new`` tokens after a short warm-up; (tokens, seconds, peak GiB or None)."""
    mask = torch.ones_like(ids)
    with torch.no_grad():
        model.generate(ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=2, min_new_tokens=2, do_sample=False)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        sync(device)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return out.cpu(), seconds, peak


def compare(out: torch.Tensor, ref: torch.Tensor, prompt: int) -> tuple[bool, float, str]:
    """Whether ``out`` equals ``ref``, the share of new tokens that agree, and a note."""
    new = min(out.shape[1], ref.shape[1]) - prompt
    a, b = out[:, prompt : prompt + new], ref[:, prompt : prompt + new]
    same = a == b
    share = float(same.float().mean()) if same.numel() else 1.0
    if bool(same.all()):
        return True, share, "tokens == bf16"
    first = int(torch.nonzero(~same.all(dim=0))[0])
    return False, share, f"{int(same.sum())}/{same.numel()} new tokens == bf16 (first difference at step {first})"


def run_mode(
    mode: str,
    model: Any,
    batches: list[int],
    prompts: dict[int, torch.Tensor],
    new: int,
    device: torch.device,
    weights_gib: float,
    clock: Clock,
    reference: dict[int, torch.Tensor] | None,
    first_estimate: float,
    later_modes: int,
    note: str = "",
) -> tuple[list[Row], dict[int, torch.Tensor]]:
    """One mode at every batch, and its tokens by batch; a run whose estimate exceeds the time left (less what the
    later modes need) is skipped and said so."""
    rows: list[Row] = []
    outs: dict[int, torch.Tensor] = {}
    estimate = first_estimate
    for b in batches:
        budget = clock.left() - RESERVE_S - later_modes * 20.0
        if estimate > budget:
            clock.cuts.append(f"{mode} batch {b}: skipped (estimated {estimate:.0f} s, {max(0.0, budget):.0f} s left)")
            rows.append(Row(mode, b, new, None, None, None, weights_gib, note="skipped: time budget"))
            continue
        out, seconds, peak = generate(model, prompts[b], new, device)
        outs[b] = out
        equal = share = None
        text = note
        if reference is not None and b in reference:
            equal, share, said = compare(out, reference[b], prompts[b].shape[1])
            text = f"{said}; {note}" if note else said
        rows.append(Row(mode, b, new, b * new / seconds, seconds, peak, weights_gib, equal, share, text))
        estimate = 2.0 * seconds  # the next batch: at most about twice as long, with its warm-up
    return rows, outs


def offload_rows(config: Any, state: dict[str, torch.Tensor], batches: list[int], prompts: dict[int, torch.Tensor],
                 device: torch.device, args: argparse.Namespace, bf16_bytes: int, clock: Clock,
                 reference: dict[int, torch.Tensor]) -> list[Row]:  # fmt: skip
    from accelerate import dispatch_model, infer_auto_device_map

    budget_gib = min(args.offload_gib, 0.5 * bf16_bytes / 2**30)
    host = skeleton(config, torch.device("cpu"))
    host.load_state_dict(state, strict=False, assign=True)  # the very weights bf16 ran with
    limits = {device.index: int(budget_gib * 2**30), "cpu": 512 * 2**30}
    device_map = infer_auto_device_map(host, max_memory=limits, no_split_module_classes=sorted(host._no_split_modules))
    on_device = [k for k, d in device_map.items() if d == device.index]
    offloaded = dispatch_model(host, device_map=device_map, main_device=device)
    resident = sum(p.numel() * p.element_size() for p in offloaded.parameters() if p.device == device)
    moved = bf16_bytes - resident
    note = f"budget {budget_gib:.2f} GiB: {len(on_device)}/{len(device_map)} modules on {device}"
    first = (args.offload_new + 1) * moved / 5e9 * 1.5  # ~5 GB/s pageable copies per forward, then some
    rows, _ = run_mode("accelerate offload", offloaded, batches, prompts, args.offload_new, device,
                       resident / 2**30, clock, reference, first, 0, note)  # fmt: skip
    del offloaded, host
    return rows


def kv_bytes_per_token(config: Any, layers: int) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * layers * config.num_key_value_heads * head_dim * 2  # K and V, BF16


def context_lines(config: Any, weights: dict[str, int], budget_gib: float, layers: int,
                  per_layer: dict[str, float], scale: bool) -> list[str]:  # fmt: skip
    """The longest context in the budget at batch 1, estimated, with the arithmetic; for the full 32 layers too
    when fewer ran (each mode's weights plus its measured bytes per layer for the layers not run)."""
    budget = budget_gib * 2**30
    lines = [f"longest context in {budget_gib:g} GiB at batch 1 (estimate: (budget - resident weights) / KV cache "
             f"per token; activations and allocator slack not counted):"]  # fmt: skip
    cases = [(layers, weights)]
    if scale and layers < FULL_LAYERS:
        full = {m: int(w + (FULL_LAYERS - layers) * per_layer[m]) for m, w in weights.items()}
        cases.append((FULL_LAYERS, full))
    for n, table in cases:
        kv = kv_bytes_per_token(config, n)
        lines.append(f"  {n} layers{' (run)' if n == layers else ' (scaled from the run: + per-layer bytes)'}:")
        for mode, w in table.items():
            tokens = max(0, int((budget - w) // kv))
            lines.append(f"    {mode:<20} ({budget_gib:.2f} - {w / 2**30:.3f}) GiB / {kv / 1024:g} KiB = "
                         f"{tokens:>12,d} tokens")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama (smoke run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 64; tiny: 16)")
    ap.add_argument("--new", type=int, default=None, help="new tokens per run (default 64; tiny: 8)")
    ap.add_argument("--offload-new", type=int, default=8, help="new tokens per accelerate offload run")
    ap.add_argument("--offload-gib", type=float, default=8.0, help="device budget for accelerate's CPU offload")
    ap.add_argument("--budget-gib", type=float, default=24.0, help="memory budget for the longest-context estimate")
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (default: by the time budget, up to 32)")
    ap.add_argument("--seconds", type=float, default=450.0, help="time budget of the whole command")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows and figures here")
    args = ap.parse_args(argv)
    clock = Clock(args.seconds)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    prompt = args.prompt or (16 if args.tiny else 64)
    new = args.new or (8 if args.tiny else 64)
    batches = [int(b) for b in args.batches.split(",")]
    layers, layers_said = pick_layers(args, clock)
    config = llama_config(args.tiny, layers)
    g = torch.Generator().manual_seed(1)
    prompts = {b: torch.randint(0, config.vocab_size, (b, prompt), generator=g).to(device) for b in batches}
    modes_after = 3  # after bf16: exact, fused, offload on a GPU; exact, per_unit, fused on the CPU
    rows: list[Row] = []

    model = build(config, device)
    bf16_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bf16_gib = bf16_bytes / 2**30
    bf16_rows, reference = run_mode("bf16", model, batches, prompts, new, device, bf16_gib, clock, None, 0.0,
                                    modes_after)  # fmt: skip
    rows += bf16_rows
    bf16_first = next((r.seconds for r in rows if r.seconds), 1.0)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if device.type == "cuda" else {}

    cts, compress_s = compress(model)
    ratio = sum({id(c): c.nbytes for c in cts.values()}.values()) / sum(
        {id(c): c.original_nbytes for c in cts.values()}.values()
    )
    weights: dict[str, int] = {"bf16": bf16_bytes}
    per_layer: dict[str, float] = {"bf16": float(layer_bytes(config)[0])}
    reports: dict[str, str] = {}

    variants: list[tuple[str, dict[str, Any], str]] = [("floatzip exact", {}, "")]
    if device.type == "cpu":
        variants.append(("floatzip per_unit", {"cpu_strategy": "per_unit"}, ""))
        variants.append(("floatzip fused", {"fused": True, "backend": "emulated"}, "emulated (the kernels' CPU twins)"))
    else:
        variants.append(("floatzip fused", {"fused": True}, ""))
    for i, (mode, options, note) in enumerate(variants):
        start = time.perf_counter()
        install(model, cts, device=device, **options)
        install_s = time.perf_counter() - start
        free(device)
        report = memory_report(model)
        rt = runtime_of(model)
        assert rt is not None
        said = f"install {install_s:.1f} s; cpu_strategy {report.strategy}" if device.type == "cpu" else \
            f"install {install_s:.1f} s"  # fmt: skip
        if options.get("fused"):
            fused_units = sum(type(u.decoder).__name__ == "_FusedDecoder" for u in rt.units)
            said += f"; {fused_units}/{len(rt.units)} units fused"
        text = f"{note}; {said}" if note else said
        got, _ = run_mode(mode, model, batches, prompts, new, device, report.resident_bytes / 2**30, clock,
                          reference, bf16_first * 4, modes_after - 1 - i, text)  # fmt: skip
        rows += got
        weights[mode] = report.resident_bytes
        # what one more layer would add: its compressed bytes (with a fused unit's fp32 rooms), or its decoded ones
        stored = [u.decoder.stored_nbytes for u in rt.units if u.name.startswith("model.layers.")]
        per_layer[mode] = sum(stored) / len(stored) if stored else per_layer["bf16"]
        reports[mode] = report.format()
        rt.materialize(model)  # decoded back, bit for bit: the next variant installs on the plain model
        free(device)

    if device.type == "cuda":
        del model
        free(device)
        try:
            off = offload_rows(config, state, batches, prompts, device, args, bf16_bytes, clock, reference)
        except ImportError as exc:
            off = [Row("accelerate offload", b, args.offload_new, None, None, None, 0.0, note=f"skipped: {exc}")
                   for b in batches]  # fmt: skip
        rows += off
        resident = [r.weights_gib for r in off if r.weights_gib]
        if resident:
            weights["accelerate offload"] = int(resident[0] * 2**30)
            per_layer["accelerate offload"] = 0.0  # its budget is fixed: more layers go to the host
        free(device)
    else:
        rows += [Row("accelerate offload", b, 0, None, None, None, 0.0, note="skipped: needs a CUDA device")
                 for b in batches]  # fmt: skip

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\nLlama-shaped model, {layers_said}; random BF16 weights; {device} ({name}); prompt {prompt}, {new} new "
          f"tokens (offload {args.offload_new}); torch {torch.__version__}")  # fmt: skip
    print(f"floatzip compressed the weights in {compress_s:.1f} s on the host: {100 * ratio:.2f}% of their BF16 bytes")
    head = f"{'mode':<20} {'batch':>5} {'new':>4} {'tok/s':>10} {'peak GiB':>9} {'weights GiB':>12}  tokens / note"
    print(head)
    for r in rows:
        tps = f"{r.tokens_per_s:10.1f}" if r.tokens_per_s is not None else f"{'–':>10}"
        peak = f"{r.peak_gib:9.2f}" if r.peak_gib is not None else f"{'–':>9}"
        print(f"{r.mode:<20} {r.batch:>5} {r.new:>4} {tps} {peak} {r.weights_gib:>12.3f}  {r.note}")
    for mode, text in reports.items():
        print(f"\n{mode}, memory_report:\n{text}")
    print()
    lines = context_lines(config, weights, args.budget_gib, layers, per_layer, scale=not args.tiny)
    print("\n".join(lines))
    print(f"\ntime: {clock.elapsed():.0f} s of the {args.seconds:.0f} s budget" +
          (f"; cut: {'; '.join(clock.cuts)}" if clock.cuts else "; nothing cut"))  # fmt: skip
    exact_ok = all(r.tokens_equal for r in rows if r.mode in ("floatzip exact", "floatzip per_unit") and r.seconds)
    if not exact_ok:
        print("MISMATCH: floatzip exact's tokens differ from bf16's")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "device": str(device), "device_name": name, "layers": layers, "layers_note": layers_said,
            "prompt": prompt, "new": new, "compress_seconds": compress_s, "ratio": ratio,
            "rows": [asdict(r) for r in rows], "weights_bytes": weights, "context": lines,
            "seconds": clock.elapsed(), "cuts": clock.cuts, "exact_tokens_equal": exact_ok,
        }, indent=1))  # fmt: skip
    return 0 if exact_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
