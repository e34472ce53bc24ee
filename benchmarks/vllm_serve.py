"""floatzip under vLLM on a GPU: the same greedy tokens as the BF16 model, memory, and throughput.

    python benchmarks/vllm_serve.py BF16_DIR FLOATZIP_DIR [--tp 1] [--tokens 128] [--batch 1 8 32] [--eager]

Needs a CUDA GPU and vLLM 0.33 with floatzip installed (``pip install "floatzip[vllm]"``); NOT RUN YET: the
machines floatzip is developed on have no GPU, and the lent H200 has no vLLM (its wheel is over the 64 MiB
that can be carried there). For each directory it starts ``vllm.LLM`` (CUDA graphs on unless ``--eager``),
generates greedily from fixed prompts at each batch size, and prints tokens/s and the model's weight memory
as vLLM reports it; then checks that floatzip's tokens equal the BF16 model's (decode + the same cuBLAS
matmul: they must, bit for bit).
"""

from __future__ import annotations

import argparse
import gc
import time

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Lossless compression of neural network weights",
    "In 1905, Albert Einstein published",
]


def run(model: str, args: argparse.Namespace) -> dict[int, tuple[list[list[int]], float]]:
    import torch
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="bfloat16", tensor_parallel_size=args.tp, enforce_eager=args.eager,
              gpu_memory_utilization=0.5, seed=0)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    out: dict[int, tuple[list[list[int]], float]] = {}
    for batch in args.batch:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=8))  # warm up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = llm.generate(prompts, params)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        out[batch] = ([list(r.outputs[0].token_ids) for r in res], batch * args.tokens / dt)
    print(f"{model}: peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bf16")
    ap.add_argument("floatzip")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    args = ap.parse_args()
    plain, ours = run(args.bf16, args), run(args.floatzip, args)
    print(f"{'batch':>5} {'BF16 tok/s':>11} {'floatzip tok/s':>15} {'ratio':>6} {'same tokens':>12}")
    ok = True
    for batch in args.batch:
        same = plain[batch][0] == ours[batch][0]
        ok &= same
        print(f"{batch:5d} {plain[batch][1]:11.1f} {ours[batch][1]:15.1f} {ours[batch][1] / plain[batch][1]:6.2f} "
              f"{'yes' if same else 'NO':>12}")  # fmt: skip
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
