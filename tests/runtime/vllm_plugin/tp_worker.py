"""One tensor-parallel rank of tests/runtime/vllm_plugin/test_plugin.py::test_tensor_parallel (gloo, loopback):

    python -m tests.runtime.vllm_plugin.tp_worker RANK WORLD INIT_FILE PLAIN COMPRESSED

Builds every layer kind with floatzip and BF16 on this rank, compares its shards and outputs (row-parallel
all-reduce and vocabulary-parallel embeddings included), prints one line per failure, exits 1 on any."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.runtime.vllm_plugin.layers import check_all, vllm_cpu


def main(argv: list[str]) -> int:
    rank, world = int(argv[0]), int(argv[1])
    init_file, plain, compressed = Path(argv[2]), Path(argv[3]), Path(argv[4])
    with vllm_cpu(world, rank, init_file):
        failures = check_all(plain, compressed)
    for f in failures:
        print(f"rank {rank}: {f}")
    print(f"rank {rank}: {'FAILED' if failures else 'ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
