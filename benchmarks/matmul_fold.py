"""Does a weight's ``requires_grad`` change the speed of an LM head on the CPU?

``torch.matmul`` (which ``F.linear`` calls for a bias-free Linear) folds a 3-D input ``[B, T, in]`` into one
``[B*T, in]`` matrix product only when it can do so without a copy, or when the weight requires grad; otherwise it
runs a batched product over a broadcast weight. transformers' causal LMs call their ``lm_head`` on
``hidden_states[:, -1:, :]`` (``logits_to_keep``), a view whose strides do not fold (``.contiguous()`` leaves it
as it is: a size-1 dimension's stride does not count for contiguity, but it does for the fold): with a weight
that does not require grad that is the batched product. A ``[1, T, H]`` tensor of its own folds either way.

This script times ``F.linear`` on an 8B-shaped head (128256 x 4096, BF16) under ``torch.no_grad``, weight
``requires_grad`` False and True in the same run, for inputs of their own and for the last position sliced
from a prompt's hidden states, and then the same head installed by floatzip's runtime.

    python benchmarks/matmul_fold.py [--vocab 128256] [--hidden 4096] [--prompt 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from floatzip.codec.encode import compress_tensor
from floatzip.runtime import install, runtime_of


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--prompt", type=int, default=64, help="prompt length T of the hidden states sliced")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(args.vocab, args.hidden, generator=g) * 0.02).to(torch.bfloat16)
    hidden = torch.randn(1, args.prompt, args.hidden, generator=g).to(torch.bfloat16)
    inputs = {
        "x [1, 1, H] (its own tensor)": torch.randn(1, 1, args.hidden, generator=g).to(torch.bfloat16),
        f"x [1, {args.prompt}, H] (its own tensor)": hidden,
        f"hidden[:, -1:, :] of [1, {args.prompt}, H]": hidden[:, -1:, :],
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; weight [{args.vocab}, {args.hidden}] BF16, "
          f"F.linear under torch.no_grad, best of {args.repeat} (s)")  # fmt: skip
    print(f"  {'input':<36} {'requires_grad=False':>20} {'requires_grad=True':>20}")
    for label, x in inputs.items():
        times = []
        for rg in (False, True):
            p = nn.Parameter(weight, requires_grad=rg)
            with torch.no_grad():
                times.append(best_of(lambda p=p, x=x: F.linear(x, p), args.repeat))
        print(f"  {label:<36} {times[0]:>20.3f} {times[1]:>20.3f}")

    head = nn.Linear(args.hidden, args.vocab, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        head.weight.copy_(weight)
    install(head, {"weight": compress_tensor(weight)}, cpu_strategy="per_unit")
    rt = runtime_of(head)
    assert rt is not None and rt.is_view(head.weight)
    x = inputs[f"hidden[:, -1:, :] of [1, {args.prompt}, H]"]
    with torch.no_grad():
        seconds = best_of(lambda: head(x), args.repeat)
    print(f"floatzip's runtime (per unit: decode + matmul), installed weight requires_grad="
          f"{head.weight.requires_grad}: head(hidden[:, -1:, :]) {seconds:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
