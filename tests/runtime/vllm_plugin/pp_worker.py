"""One pipeline stage of tests/runtime/vllm_plugin/test_plugin.py::test_pipeline_parallel (gloo, loopback):

    python -m tests.runtime.vllm_plugin.pp_worker RANK WORLD INIT_FILE PLAIN_DIR FLOATZIP_DIR

Loads the stage's part of a Llama through vLLM's get_model from both folders, checks that the stage holds
only its own layers, decoded no blob of the other stage's, and that its floatzip weights equal vLLM's BF16
load bit for bit. Prints one line per failure, exits 1 on any."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


def _config(path: Path, world: int):  # type: ignore[no-untyped-def]
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(path), dtype="bfloat16", enforce_eager=True,
                      pipeline_parallel_size=world).create_engine_config()  # fmt: skip


def main(argv: list[str]) -> int:
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.model_loader import get_model
    from vllm.model_executor.models.utils import PPMissingLayer

    from floatzip.runtime import vllm_plugin
    from tests.runtime.vllm_plugin.layers import bits

    rank, world = int(argv[0]), int(argv[1])
    init_file, plain, compressed = Path(argv[2]), Path(argv[3]), Path(argv[4])
    vllm_plugin.register()
    failures: list[str] = []
    cfg = _config(compressed, world)
    with set_current_vllm_config(cfg):
        init_distributed_environment(world_size=world, rank=rank, distributed_init_method=f"file://{init_file}",
                                     local_rank=rank, backend="gloo")  # fmt: skip
        initialize_model_parallel(1, world)
        ours = get_model(vllm_config=cfg)
    stats = vllm_plugin.LAST_LOAD
    cfg_plain = _config(plain, world)
    with set_current_vllm_config(cfg_plain):
        theirs = get_model(vllm_config=cfg_plain)
    reference = dict(theirs.named_parameters())
    missing = [n for n, m in ours.named_modules() if isinstance(m, PPMissingLayer)]
    if not missing:
        failures.append("no layer of the other stage is missing: not pipeline parallel")
    if stats.skipped == 0 or stats.decoded == 0:
        failures.append(f"stream: {stats} (the other stage's tensors should pass undecoded)")
    methods = 0
    for name, module in ours.named_modules():
        if hasattr(module, "_floatzip"):
            methods += 1
            if not torch.equal(bits(vllm_plugin.decoded_weight(module)), bits(reference[f"{name}.weight"])):
                failures.append(f"{name}: differs from the BF16 load")
    if methods == 0:
        failures.append("no floatzip layer in this stage")
    for f in failures:
        print(f"rank {rank}: {f}")
    print(f"rank {rank}: {'FAILED' if failures else 'ok'} ({methods} floatzip layers, {len(missing)} missing, {stats})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
