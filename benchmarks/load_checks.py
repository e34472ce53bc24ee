"""What the loader's per-tensor checksums cost: ``from_pretrained`` of a compressed checkpoint with and
without ``check_stored_tensors``, and the check alone.

    python benchmarks/load_checks.py [--dir /tmp/fz-load-checks] [--rounds 3]

Data: a seeded Llama (hidden 1024, 8 layers, vocabulary 32000: 155M parameters, 311 MB in BF16), saved
and compressed once into ``--dir``. The check reads every plain tensor (CRC-32C of its bytes) and the
52-byte header of every blob; blobs themselves are checked as they are decoded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import transformers

import floatzip  # noqa: F401  (registers the quantizer)
from floatzip.format import checkpoint as ck
from floatzip.runtime import quantizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/fz-load-checks"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    src, dst = args.dir / "plain", args.dir / "floatzip"
    if not (dst / "floatzip.json").exists():
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                                       num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)  # fmt: skip
        transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(src)
        ck.compress_checkpoint(src, dst)
    files = sorted(dst.glob("*.safetensors"))

    def check_only() -> float:
        t = time.perf_counter()
        for p in files:
            cf = ck.open_compressed(p)
            with p.open("rb") as fh:
                ck.check_stored_tensors(cf, fh)
        return time.perf_counter() - t

    def load() -> float:
        t = time.perf_counter()
        transformers.AutoModelForCausalLM.from_pretrained(dst, device_map="cpu")
        return time.perf_counter() - t

    real = quantizer.check_stored_tensors
    times: dict[str, list[float]] = {"load, checked": [], "load, unchecked": [], "check alone": []}
    try:
        for _ in range(args.rounds):
            quantizer.check_stored_tensors = real
            times["load, checked"].append(load())
            quantizer.check_stored_tensors = lambda cf, f: None
            times["load, unchecked"].append(load())
            times["check alone"].append(check_only())
    finally:
        quantizer.check_stored_tensors = real
    size = sum(f.stat().st_size for f in files)
    print(f"{dst}: {size / 1e6:.1f} MB compressed in {len(files)} file(s)")
    for k, v in times.items():
        print(f"{k:16s} median {statistics.median(v) * 1e3:8.1f} ms  ({' '.join(f'{x * 1e3:.1f}' for x in v)})")


if __name__ == "__main__":
    main()
